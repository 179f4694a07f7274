"""One speculative step: propose -> verify -> accept -> commit -> observe (layer L5)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from specdec.acceptance import (
    Accepted,
    NodeKind,
    greedy_chain_outcome,
    greedy_tree_outcome,
    greedy_tree_values,
    stochastic_chain_outcome,
    stochastic_tree_outcome,
    stochastic_tree_result,
)
from specdec.drafters.base import Draft, Drafter
from specdec.errors import NonFiniteLogitsError
from specdec.models.runner import Runner
from specdec.sampling import LogitsPipeline, probabilities
from specdec.shaping import DraftPlan, Planner
from specdec.stats import GenerationStats
from specdec.timing import StepClock


@dataclass(frozen=True)
class StepResult:
    """Tokens committed by one step, with the target's scores for each of them.

    tokens: [m] long (1 <= m <= k + 1) on the device; token_ids: the same tokens on the host;
    scores: [m, V] processed target scores; logits: [m, V] raw.
    """

    tokens: torch.Tensor
    token_ids: list[int]
    scores: torch.Tensor
    logits: torch.Tensor


class SpeculativeEngine:
    """Owns the target runner and a drafter for one generation; `step` commits 1..k+1 tokens."""

    def __init__(
        self,
        target: Runner,
        drafter: Drafter,
        controller: Planner,
        pipeline: LogitsPipeline,
        stats: GenerationStats,
        generator: torch.Generator | None = None,
    ) -> None:
        self.target = target
        self.drafter = drafter
        self.controller = controller
        self.pipeline = pipeline
        self.stats = stats
        stats.runtime = target.name
        self.generator = generator
        self.clock = StepClock(target.device)  # 0: step start, 1: draft done, 2: verified and judged
        self._steps = 0

    def begin(self) -> None:
        self.target.reset()
        self.drafter.begin()
        self._steps = 0

    def _draft_length(self, sequence_length: int, budget: int, planned: int) -> int:
        """Depth for this step: the plan's, capped so that no token is drafted past the budget (the
        target adds one token itself) or past the draft model's context."""
        k = min(planned, budget - 1)
        draft_context = self.drafter.context_length
        if draft_context is not None:
            k = min(k, draft_context - sequence_length + 1)
        return max(k, 0)

    def step(self, sequence: torch.Tensor, budget: int) -> StepResult:
        """Advance by one target pass. sequence: [1, N] committed tokens; budget: tokens still allowed."""
        n_committed = sequence.shape[1]
        free = self.drafter.free_candidates(sequence, self.pipeline.do_sample)  # n-gram copies' reach
        plan = self.controller.plan(free)
        max_depth = self._draft_length(n_committed, budget, plan.max_depth)
        first = self._steps == 0

        # 1. propose
        self.clock.mark(0)
        step_start = time.perf_counter()
        try:
            draft = self._propose(sequence, max_depth, plan)
        except NonFiniteLogitsError as error:
            raise NonFiniteLogitsError(error.model, self._steps) from None
        self.clock.mark(1)
        tree = draft.tree
        t = len(draft)

        # 2. verify: the target scores the root and all T nodes in one pass
        logits = self._verify(sequence, draft)  # [T + 1, V]
        finite = torch.isfinite(logits).all()  # [] on the device; read with the acceptance
        scores = self.pipeline.scores_tree(sequence, draft.tokens, tree, logits)  # [T + 1, V]

        # 3. accept: one host sync brings the draft's finiteness flag (when its drafter left that to
        # this sync), the target's, the draft tokens and the rule's outcome
        outcome = acceptance_values(draft, scores, self.pipeline.do_sample, self.generator, finite)
        self.clock.mark(2)  # before the read below, which then waits for all three marks
        draft_ok = draft.valid if draft.valid is not None else torch.ones((), dtype=torch.bool)
        flags = torch.stack([draft_ok.to(finite.device), finite]).long()  # [2]
        draft_ok, ok, *values = torch.cat([flags, draft.tokens.to(finite.device), outcome]).tolist()
        draft_ids, values = values[:t], values[t:]
        if not draft_ok:
            raise NonFiniteLogitsError("draft", self._steps)
        if not ok:
            raise NonFiniteLogitsError("target", self._steps)
        accepted = accepted_from_values(draft, values, self.pipeline.do_sample)
        draft_seconds, verify_seconds = self.clock.seconds(0, 1), self.clock.seconds(1, 2)

        # 4. commit: the accepted path moves to contiguous cache rows, every other node is dropped
        path = accepted.path
        self.target.compact(n_committed, [n_committed + node for node in path])
        self.drafter.observe(n_committed, path)
        token_ids = [draft_ids[node] for node in path] + [accepted.next_token]  # on the host already
        tokens = torch.tensor(token_ids, dtype=sequence.dtype, device=sequence.device)  # [n + 1]
        rows = torch.tensor([0] + [node + 1 for node in path], device=scores.device)

        # 5. observe
        n = len(path)
        self.stats.draft_time += draft_seconds
        self.stats.verify_time += verify_seconds
        self.stats.record_step(t, tree.depth, n, n + 1)
        if draft.sources is not None:
            self.stats.record_sources(draft.sources, path)
        # the planner weighs whole steps: all but the draft's time counts as verifying (the host's
        # reading, deciding and committing included), by the wall clock, which the sync aligned
        rest_of_step = time.perf_counter() - step_start - draft_seconds
        self.controller.observe_step(
            tree,
            path,
            None if first or not self.drafter.uses_model else draft_seconds,
            None if first else rest_of_step,
            planned=draft.planned,
        )
        self._steps += 1
        self.drafter.committed(token_ids)  # drafters that search host ids
        return StepResult(tokens, token_ids, scores[rows], logits[rows].float())

    def _propose(self, sequence: torch.Tensor, max_depth: int, plan: DraftPlan) -> Draft:
        if max_depth <= 0:
            return Draft(sequence.new_empty(0))
        return self.drafter.propose(sequence, max_depth, self.pipeline, self.generator, tree=plan.tree)

    def _verify(self, sequence: torch.Tensor, draft: Draft) -> torch.Tensor:
        """Target logits [T + 1, V]: row 0 after the committed sequence, row i + 1 after node i."""
        n_committed = sequence.shape[1]
        pending = sequence[0, self.target.length :]  # [m] committed tokens not yet in the target cache
        block = torch.cat([pending, draft.tokens.to(pending.device)])  # [m + T]
        t = len(draft)
        if draft.tree.is_chain:
            return self.target.extend(block, num_logits=t + 1)
        m = pending.shape[0]
        start = self.target.length
        positions = torch.cat(
            [
                torch.arange(start, n_committed),
                n_committed - 1 + draft.tree.depth_tensor(),
            ]
        )  # [m + T]
        attention = draft.tree.block_attention(m)  # [m + T, m + T]
        return self.target.extend(block, num_logits=t + 1, positions=positions, attention=attention)


def accept_draft(
    draft: Draft, scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None
) -> Accepted:
    """The acceptance rule for a draft: greedy or exact stochastic, chain or tree (one host sync).

    scores: [T + 1, V] processed target scores (row 0 at the root, row i + 1 after node i).
    """
    values = acceptance_values(draft, scores, do_sample, generator).tolist()
    return accepted_from_values(draft, values, do_sample)


def acceptance_values(
    draft: Draft,
    scores: torch.Tensor,
    do_sample: bool,
    generator: torch.Generator | None,
    finite: torch.Tensor | None = None,
) -> torch.Tensor:
    """What the acceptance rule hands the host, still on the device (long; `accepted_from_values`
    reads it). finite: [] bool, whether the target's logits were finite; when False the sampled
    distributions are replaced by uniform ones so that sampling stays defined (the caller raises)."""
    tree = draft.tree
    if not do_sample:
        if tree.is_chain:
            return greedy_chain_outcome(draft.tokens, scores)  # [2]
        return greedy_tree_values(draft.tokens, scores)  # [2T + 1]
    p = probabilities(scores)  # [T + 1, V]
    if finite is not None:
        p = torch.where(finite, p, torch.full_like(p, 1.0 / p.shape[-1]))
    kinds = draft.kinds
    if _is_uniform_chain(draft):
        deterministic = kinds is not None and len(kinds) and int(kinds[0]) == NodeKind.DETERMINISTIC
        q = None if deterministic else draft.q
        return stochastic_chain_outcome(draft.tokens, p, q, generator)  # [2]
    return stochastic_tree_outcome(tree, draft.tokens, p, draft.q, kinds, generator)  # [depth + 1]


def accepted_from_values(draft: Draft, values: list[int], do_sample: bool) -> Accepted:
    """The accepted path and appended token from the host values of `acceptance_values`."""
    if draft.tree.is_chain and (not do_sample or _is_uniform_chain(draft)):
        n, next_token = values
        return Accepted(tuple(range(n)), next_token)
    if not do_sample:
        return greedy_tree_outcome(draft.tree, values)
    return stochastic_tree_result(values)


def _is_uniform_chain(draft: Draft) -> bool:
    """A chain whose nodes were all proposed the same way (kinds live on the host)."""
    kinds = draft.kinds
    return draft.tree.is_chain and (kinds is None or bool((kinds == kinds[:1]).all()))
