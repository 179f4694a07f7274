"""The drafter protocol (B rows at once): propose(sequences, max_depth) -> one Draft per row;
observe(accepted paths)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from specdec.core.sampling import LogitsPipeline
from specdec.core.tree import Tree
from specdec.errors import NonFiniteLogitsError


@dataclass(frozen=True)
class Draft:
    """Candidate tokens for one step, as a tree (a chain is a tree whose node i has parent i - 1).

    tokens: [T] long on the target's device, in the tree's topological order.
    q: [T, V] float32, row i the draft distribution node i's token was drawn from; None when every
        node is deterministic (q is a point mass on its token) or the step is greedy.
    tree: the structure; default the chain of T nodes.
    kinds: [T] NodeKind per node (how it was proposed); default SAMPLED with q, else DETERMINISTIC.
    sources: optional names of the sources that proposed each node (per-source statistics).
    planned: optional, per node, whether it belongs to the run-time planned tree (the rest, e.g.
        n-gram nodes merged in, do not count in the planner's acceptance-per-rank statistics).
    valid: optional [] bool on the device, False when the draft model's logits were not finite; a
        drafter that did not read it itself leaves it to its caller's next host sync, which must
        raise NonFiniteLogitsError("draft") (the tokens are then meaningless).
    """

    tokens: torch.Tensor
    q: torch.Tensor | None = None
    tree: Tree | None = None
    kinds: torch.Tensor | None = None
    sources: list[tuple[str, ...]] | None = None
    planned: list[bool] | None = None
    valid: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.tree is None:
            object.__setattr__(self, "tree", Tree.chain(int(self.tokens.shape[0])))
        if len(self.tree) != self.tokens.shape[0]:
            raise ValueError(f"draft has {self.tokens.shape[0]} tokens but its tree {len(self.tree)} nodes")

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def drafts_on_host(drafts: list[Draft]) -> list[list[int]]:
    """Every draft's tokens as host ints in one read, with their `valid` flags (raises
    NonFiniteLogitsError("draft") when a draft model's logits were not finite)."""
    flags = [d.valid.long().view(1) for d in drafts if d.valid is not None]
    parts = [d.tokens.reshape(-1).long() for d in drafts]
    if not flags and not any(p.numel() for p in parts):
        return [[] for _ in drafts]
    device = (flags or parts)[0].device
    values = torch.cat([f.to(device) for f in flags] + [p.to(device) for p in parts]).tolist()
    if not all(values[: len(flags)]):
        raise NonFiniteLogitsError("draft")
    values, tokens = values[len(flags) :], []
    for part in parts:
        tokens.append(values[: part.numel()])
        values = values[part.numel() :]
    return tokens


def pipelines_scores(
    pipelines: list[LogitsPipeline], contexts: list[torch.Tensor] | None, logits: torch.Tensor
) -> torch.Tensor:
    """Processed scores [B, V] of one position per row, each row through its own pipeline.

    contexts: per row [1, n_b] tokens before the position (None when no pipeline has processors);
    logits: [B, V] raw."""
    if not any(p.processors for p in pipelines):
        return logits.float()
    return torch.cat([p.scores(contexts[b], logits[b : b + 1]) for b, p in enumerate(pipelines)])  # [B, V]


@runtime_checkable
class Drafter(Protocol):
    """A source of draft tokens for B rows at once (B = 1: one prompt): everything the engine calls.
    Implementations may keep per-row state (a KV cache row, a host copy of the committed ids)
    between steps. `sequences` are per row [1, N_b] committed tokens, without padding."""

    name: str
    #: True when proposing costs model forward passes (its time is worth measuring per token).
    uses_model: bool
    #: Positions the drafter's model can hold (the engine caps the draft depth by it); None: no limit.
    context_length: int | None

    def begin(self, batch_size: int = 1) -> None:
        """Start a new generation of `batch_size` rows (drop any state from a previous one)."""

    def keep(self, rows: list[int]) -> None:
        """Continue with the rows `rows` (ascending indices) only, e.g. when others finished."""

    def free_candidates(self, sequences: list[torch.Tensor], do_sample: bool) -> list[list[float]]:
        """Per row, per position j of candidates that cost no draft pass (n-gram copies): the chance
        the accepted path follows them past j, which a planner must beat with draft-model nodes.
        A row's list is empty when it has none."""

    def propose(
        self,
        sequences: list[torch.Tensor],
        max_depth: int,
        pipelines: list[LogitsPipeline],
        generator: torch.Generator | None,
        tree: Tree | None = None,
    ) -> list[Draft]:
        """One draft per row, at most `max_depth` deep (max_depth >= 1); `tree` (a planned static
        shape) overrides the drafter's own shape for this step where it has one."""

    def observe(self, committed_lengths: list[int], paths: list[tuple[int, ...]]) -> None:
        """After verification, per row: the first committed_lengths[b] tokens were committed before
        this step and the draft nodes on paths[b] (root first) were accepted; anything else the
        drafter holds for the row is stale."""

    def committed(self, token_ids: list[list[int]]) -> None:
        """Each row's committed tokens of this step as host ints (read in the step's one sync),
        e.g. for n-gram search over a host copy of the sequence."""
