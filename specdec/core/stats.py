"""Statistics of one generate() call: passes, acceptance per draft position, tau, time split (L1)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenerationStats:
    """Counters of the last `generate()` call.

    tau = new_tokens / target_passes: mean tokens committed per target forward pass.
    acceptance_per_position[i]: fraction of the steps that drafted depth i + 1 whose accepted path
    reached it (for a chain: position i kept).
    Times are wall-clock seconds; `rest_time` is everything outside drafting and verification.
    """

    #: The runner that ran the target: "specdec" / "compiled" (specdec's own forward) or "transformers".
    runtime: str = ""
    #: Steps per row, summed over the rows (one per step for one prompt): tau's denominator.
    target_passes: int = 0
    #: Target forward passes: one per step, whatever the number of rows it verified.
    batched_passes: int = 0
    #: Target passes that verified a branching tree (more draft nodes than levels), not a chain.
    tree_passes: int = 0
    new_tokens: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    drafted_at: list[int] = field(default_factory=list)
    accepted_at: list[int] = field(default_factory=list)
    draft_lengths: list[int] = field(default_factory=list)
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)
    draft_time: float = 0.0
    verify_time: float = 0.0
    total_time: float = 0.0

    @property
    def tau(self) -> float:
        return self.new_tokens / self.target_passes if self.target_passes else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def acceptance_per_position(self) -> list[float]:
        return [a / d if d else 0.0 for a, d in zip(self.accepted_at, self.drafted_at, strict=True)]

    @property
    def rest_time(self) -> float:
        return max(self.total_time - self.draft_time - self.verify_time, 0.0)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.total_time if self.total_time > 0 else 0.0

    def record_step(self, num_drafted: int, depth: int, num_accepted: int, num_committed: int) -> None:
        """One target pass that verified `num_drafted` draft nodes in a tree of `depth` levels (a chain
        of k: k nodes, depth k), kept a path of `num_accepted`, and committed `num_committed` tokens."""
        self.target_passes += 1
        self.tree_passes += int(num_drafted > depth)
        self.new_tokens += num_committed
        self.drafted_tokens += num_drafted
        self.accepted_tokens += num_accepted
        self.draft_lengths.append(num_drafted)
        while len(self.drafted_at) < depth:
            self.drafted_at.append(0)
            self.accepted_at.append(0)
        for i in range(depth):
            self.drafted_at[i] += 1
            if i < num_accepted:
                self.accepted_at[i] += 1

    def record_sources(self, sources: list[tuple[str, ...]], path: tuple[int, ...]) -> None:
        """Proposed and accepted nodes per draft source (a node shared by sources counts for each)."""
        for node_sources in sources:
            for source in node_sources:
                entry = self.per_source.setdefault(source, {"proposed": 0, "accepted": 0})
                entry["proposed"] += 1
        for node in path:
            for source in sources[node]:
                self.per_source[source]["accepted"] += 1

    def summary(self) -> str:
        per_pos = " ".join(f"{a:.2f}" for a in self.acceptance_per_position)
        return (
            f"{self.new_tokens} tokens in {self.target_passes} target passes ({self.tree_passes} trees; "
            f"runtime {self.runtime or '?'}; tau {self.tau:.2f}), "
            f"accepted {self.accepted_tokens}/{self.drafted_tokens} drafts; per position [{per_pos}]; "
            f"time draft {self.draft_time:.3f}s verify {self.verify_time:.3f}s rest {self.rest_time:.3f}s"
        )
