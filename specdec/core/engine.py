"""One speculative step for B rows: propose -> verify -> accept -> commit -> observe (layer L5).

Batch-first: a step takes B rows (B = 1 is a batch of one) with ragged committed lengths. Every row
drafts its own tree (a chain is a tree; rows of a dynamic or hybrid strategy differ), the target
verifies every row's tree in one pass, and each row accepts by the single-row rule on its own tree,
so every row is exact. One host read per step carries every row's outcome, the draft tokens and the
finiteness flags. Each runner row keeps its own cache length and positions, so no row ever attends
to padding or to another row's rejected nodes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from specdec.core.acceptance import Accepted, outcome_from_values, outcome_values
from specdec.core.sampling import LogitsPipeline
from specdec.core.stats import GenerationStats
from specdec.core.timing import StepClock
from specdec.drafters.base import Draft, Drafter
from specdec.errors import NonFiniteLogitsError
from specdec.planning.trees import DraftPlan, Planner
from specdec.runtime.runner import Runner


@dataclass
class Row:
    """One prompt of the batch: its committed tokens (no padding) and its own logits pipeline."""

    sequence: torch.Tensor  # [1, N] on the target's device
    pipeline: LogitsPipeline


@dataclass(frozen=True)
class StepResult:
    """Tokens one row committed in one step, with the target's scores for each of them.

    tokens: [m] long (1 <= m <= depth + 1) on the device; token_ids: the same tokens on the host;
    scores: [m, V] processed target scores; logits: [m, V] raw (float32).
    """

    tokens: torch.Tensor
    token_ids: list[int]
    scores: torch.Tensor
    logits: torch.Tensor


class SpeculativeEngine:
    """Owns the target runner and a drafter for one generation of B rows; `step` commits 1..depth + 1
    tokens in every row."""

    def __init__(
        self,
        target: Runner,
        drafter: Drafter,
        controller: Planner,
        stats: GenerationStats,
        generator: torch.Generator | None = None,
        timed: bool = True,
    ) -> None:
        """timed=False: the planner sees no step times (ranks of a tensor-parallel target, whose clocks
        differ, must plan from acceptance alone, which is the same on every rank); stats keep them."""
        self.target = target
        self.timed = timed
        self.drafter = drafter
        self.controller = controller
        self.stats = stats
        stats.runtime = target.name
        self.generator = generator
        self.clock = StepClock(target.device)  # 0: step start, 1: draft done, 2: verified and judged
        self._steps = 0

    def begin(self, batch_size: int = 1) -> None:
        """Empty caches for `batch_size` rows (also after a generation, to leave nothing half-used)."""
        self.target.reset(batch_size)
        self.drafter.begin(batch_size)
        self._steps = 0

    def keep(self, rows: list[int]) -> None:
        """Continue with the rows `rows` (ascending) only: finished rows stop costing compute."""
        self.target.keep_rows(rows)
        self.drafter.keep(rows)

    def _draft_depth(self, rows: list[Row], budgets: list[int], planned: int) -> int:
        """Depth for this step: the plan's, capped so that no row drafts past the largest budget (the
        target adds one token itself; a row with less left keeps only its own budget's tokens, which
        the caller cuts: exact, since every committed prefix is) and no node lies past the target's
        or the draft model's context in any row."""
        k = min(planned, max(budgets) - 1)
        longest = max(row.sequence.shape[1] for row in rows)
        if self.target.context_length is not None:
            k = min(k, self.target.context_length - longest)
        if self.drafter.context_length is not None:  # the deepest level is never fed to the draft
            k = min(k, self.drafter.context_length - longest + 1)
        return max(k, 0)

    def step(self, rows: list[Row], budgets: list[int]) -> list[StepResult]:
        """Advance every row by one target pass. budgets[b]: tokens row b may still add."""
        sequences = [row.sequence for row in rows]
        pipelines = [row.pipeline for row in rows]
        do_sample = pipelines[0].do_sample
        plan = self.controller.plan(_mean_reach(self.drafter.free_candidates(sequences, do_sample)))
        max_depth = self._draft_depth(rows, budgets, plan.max_depth)
        starts = [int(s.shape[1]) for s in sequences]  # N_b
        first = self._steps == 0

        # 1. propose
        self.clock.mark(0)
        step_start = time.perf_counter()
        try:
            drafts = self._propose(sequences, max_depth, pipelines, plan)
        except NonFiniteLogitsError as error:
            raise NonFiniteLogitsError(error.model, self._steps) from None
        self.clock.mark(1)

        # 2. verify: the target scores every row's root and nodes in one pass
        verified = self._verify(sequences, drafts)  # [B, r, V]
        finite = torch.isfinite(verified).all()  # [] read below (padding rows repeat real ones)
        logits = [verified[b, : len(d) + 1] for b, d in enumerate(drafts)]  # per row [T_b + 1, V]
        scores = [
            row.pipeline.scores_tree(row.sequence, d.tokens, d.tree, x)
            for row, d, x in zip(rows, drafts, logits, strict=True)
        ]  # per row [T_b + 1, V]

        # 3. accept: one host read brings the drafts' finiteness flag (when the drafter left that to
        # this read), the target's, every draft token and every row's outcome
        outcomes = [
            outcome_values(d.tree, d.tokens, d.q, d.kinds, s, do_sample, self.generator, finite)
            for d, s in zip(drafts, scores, strict=True)
        ]
        self.clock.mark(2)  # before the read below, which then waits for all three marks
        valid = [d.valid.to(finite.device) for d in drafts if d.valid is not None]
        draft_ok = (
            torch.stack(valid).all() if valid else torch.ones((), dtype=torch.bool, device=finite.device)
        )
        parts = [torch.stack([draft_ok, finite]).long()]
        parts += [d.tokens.to(finite.device) for d in drafts] + [o.to(finite.device) for o in outcomes]
        values = torch.cat(parts).tolist()
        if not values[0]:
            raise NonFiniteLogitsError("draft", self._steps)
        if not values[1]:
            raise NonFiniteLogitsError("target", self._steps)
        offset = 2
        draft_ids = []
        for d in drafts:
            draft_ids.append(values[offset : offset + len(d)])
            offset += len(d)
        accepted: list[Accepted] = []
        for d, o in zip(drafts, outcomes, strict=True):
            accepted.append(
                outcome_from_values(d.tree, d.kinds, values[offset : offset + o.shape[0]], do_sample)
            )
            offset += o.shape[0]
        draft_seconds, verify_seconds = self.clock.seconds(0, 1), self.clock.seconds(1, 2)

        # 4. commit: each row's accepted path moves to contiguous cache rows, every other node drops
        paths = [a.path for a in accepted]
        self.target.compact_rows(
            starts, [[n + node for node in p] for n, p in zip(starts, paths, strict=True)]
        )
        self.drafter.observe(starts, paths)
        token_ids = [
            [ids[node] for node in a.path] + [a.next_token]
            for ids, a in zip(draft_ids, accepted, strict=True)
        ]
        self.drafter.committed(token_ids)  # drafters that search host ids

        # 5. observe: the planner weighs whole steps; all but the draft's time counts as verifying
        # (the host's reading, deciding and committing included), by the wall clock, which the read
        # aligned. Times count once per pass (on the first row that drafted), not on the first step.
        rest_of_step = time.perf_counter() - step_start - draft_seconds
        self.stats.draft_time += draft_seconds
        self.stats.verify_time += verify_seconds
        timed_row = next((b for b, d in enumerate(drafts) if len(d)), 0)
        for b, (d, a) in enumerate(zip(drafts, accepted, strict=True)):
            n = len(a.path)
            self.stats.record_step(len(d), d.tree.depth, n, n + 1)
            if d.sources is not None:
                self.stats.record_sources(d.sources, a.path)
            timed = self.timed and not first and b == timed_row
            self.controller.observe_step(
                d.tree,
                a.path,
                draft_seconds if timed and self.drafter.uses_model else None,
                rest_of_step if timed else None,
                planned=d.planned,
            )
        self._steps += 1
        self.stats.batched_passes += 1
        results = []
        for row, ids, a, s, x in zip(rows, token_ids, accepted, scores, logits, strict=True):
            picked = torch.tensor([0] + [node + 1 for node in a.path], device=s.device)  # [n + 1]
            tokens = torch.tensor(ids, dtype=row.sequence.dtype, device=row.sequence.device)  # [n + 1]
            results.append(StepResult(tokens, ids, s[picked], x[picked].float()))
        return results

    def _propose(
        self, sequences: list[torch.Tensor], max_depth: int, pipelines: list[LogitsPipeline], plan: DraftPlan
    ) -> list[Draft]:
        if max_depth <= 0:
            return [Draft(s.new_empty(0)) for s in sequences]
        return self.drafter.propose(sequences, max_depth, pipelines, self.generator, tree=plan.tree)

    def _verify(self, sequences: list[torch.Tensor], drafts: list[Draft]) -> torch.Tensor:
        """The target's logits [B, r, V], r = max T_b + 1: row b's 0 after its committed tokens, i + 1
        after its node i (then its last repeated). Each row's block (its committed tokens not yet
        cached, then its nodes) is right-padded to the longest; padding is never attended by a real
        token and never kept."""
        target = self.target
        device = target.device
        batch = len(sequences)
        cached = list(target.lengths)
        pending = [s[0, c:] for s, c in zip(sequences, cached, strict=True)]  # [m_b]
        m = [int(p.shape[0]) for p in pending]
        sizes = [len(d) for d in drafts]  # T_b
        counts = [mb + t for mb, t in zip(m, sizes, strict=True)]
        width = max(counts)
        block = torch.zeros(batch, width, dtype=torch.long, device=device)  # [B, n]
        for b, (p, d) in enumerate(zip(pending, drafts, strict=True)):
            block[b, : counts[b]] = torch.cat([p.to(device), d.tokens.to(device)])
        r = max(sizes) + 1
        if len(set(counts)) == 1 and len(set(sizes)) == 1:
            logit_rows: torch.Tensor | int = r  # the last T + 1 rows of every row's block
        else:
            logit_rows = torch.tensor(
                [[min(mb - 1 + i, mb - 1 + t) for i in range(r)] for mb, t in zip(m, sizes, strict=True)]
            )  # [B, r]: row b's root and nodes, its last repeated as padding
        if all(d.tree.is_chain for d in drafts):
            logits = target.extend_rows(block, counts, None, None, logit_rows)  # causal, consecutive
        else:
            positions = torch.zeros(batch, width, dtype=torch.long)  # [B, n]
            attention = torch.eye(width, dtype=torch.bool).repeat(batch, 1, 1)  # [B, n, n] padding: itself
            for b, d in enumerate(drafts):
                n_committed = int(sequences[b].shape[1])
                row_positions = torch.cat(
                    [torch.arange(cached[b], n_committed), n_committed - 1 + d.tree.depth_tensor()]
                )
                positions[b, : counts[b]] = row_positions
                positions[b, counts[b] :] = row_positions[-1]
                attention[b, : counts[b], : counts[b]] = d.tree.block_attention(m[b])
            logits = target.extend_rows(block, counts, positions, attention, logit_rows)  # [B, r, V]
        return logits


def _mean_reach(per_row: list[list[float]]) -> list[float]:
    """The rows' free-candidate reach averaged per position (a row without candidates counts 0)."""
    if len(per_row) == 1:
        return per_row[0]
    longest = max((len(r) for r in per_row), default=0)
    return [sum(r[j] for r in per_row if len(r) > j) / len(per_row) for j in range(longest)]
