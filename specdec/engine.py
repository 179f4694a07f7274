"""One speculative step: propose -> verify -> accept -> commit -> observe (layer L5)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from specdec.acceptance import Accepted, accept_greedy_chain, accept_stochastic_chain
from specdec.adaptive import DraftLengthController
from specdec.drafters.base import Draft, Drafter
from specdec.models.runner import CausalRunner
from specdec.sampling import LogitsPipeline, probabilities
from specdec.stats import GenerationStats


@dataclass(frozen=True)
class StepResult:
    """Tokens committed by one step, with the target's scores for each of them.

    tokens: [m] long (1 <= m <= k + 1); scores: [m, V] processed target scores; logits: [m, V] raw.
    """

    tokens: torch.Tensor
    scores: torch.Tensor
    logits: torch.Tensor
    num_drafted: int
    num_accepted: int


class SpeculativeEngine:
    """Owns the target runner and a drafter for one generation; `step` commits 1..k+1 tokens."""

    def __init__(
        self,
        target: CausalRunner,
        drafter: Drafter,
        controller: DraftLengthController,
        pipeline: LogitsPipeline,
        stats: GenerationStats,
        generator: torch.Generator | None = None,
    ) -> None:
        self.target = target
        self.drafter = drafter
        self.controller = controller
        self.pipeline = pipeline
        self.stats = stats
        self.generator = generator
        self._steps = 0

    def begin(self) -> None:
        self.target.reset()
        self.drafter.begin()
        self._steps = 0

    def _draft_length(self, sequence_length: int, budget: int) -> int:
        """k for this step: the controller's choice, capped so that no token is drafted past the
        budget (the target adds one token itself) or past the draft model's context."""
        k = min(self.controller.choose(), budget - 1)
        draft_context = getattr(self.drafter, "context_length", None)
        if draft_context is not None:
            k = min(k, draft_context - sequence_length + 1)
        return max(k, 0)

    def step(self, sequence: torch.Tensor, budget: int) -> StepResult:
        """Advance by one target pass. sequence: [1, N] committed tokens; budget: tokens still allowed."""
        n_committed = sequence.shape[1]
        k = self._draft_length(n_committed, budget)
        first = self._steps == 0

        # 1. propose
        t0 = time.perf_counter()
        if k > 0:
            draft = self.drafter.propose(sequence, k, self.pipeline, self.generator)
        else:
            draft = Draft(sequence.new_empty(0))
        t1 = time.perf_counter()
        k = len(draft)

        # 2. verify: the target scores the k + 1 positions after the committed sequence in one pass
        pending = sequence[0, self.target.length :]  # [m] committed tokens not yet in the target cache
        block = torch.cat([pending, draft.tokens.to(pending.device)])  # [m + k]
        logits = self.target.extend(block, num_logits=k + 1)  # [k + 1, V]
        scores = self.pipeline.scores_along(sequence, draft.tokens, logits)  # [k + 1, V]

        # 3. accept
        accepted = self._accept(draft, scores)
        t2 = time.perf_counter()

        # 4. commit: keep the accepted drafts in both caches, drop the rest
        n = accepted.num_accepted
        self.target.truncate(n_committed + n)
        self.drafter.observe(n_committed + n)
        new_token = torch.tensor([accepted.next_token], dtype=sequence.dtype, device=sequence.device)
        tokens = torch.cat([draft.tokens[:n].to(sequence.device), new_token])  # [n + 1]

        # 5. observe
        self.stats.draft_time += t1 - t0
        self.stats.verify_time += t2 - t1
        self.stats.record_step(k, n, n + 1)
        self.controller.observe(
            k,
            n,
            None if first or not self.drafter.uses_model else t1 - t0,
            None if first else t2 - t1,
        )
        self._steps += 1
        return StepResult(tokens, scores[: n + 1], logits[: n + 1].float(), k, n)

    def _accept(self, draft: Draft, scores: torch.Tensor) -> Accepted:
        if not self.pipeline.do_sample:
            return accept_greedy_chain(draft.tokens, scores)
        return accept_stochastic_chain(draft.tokens, probabilities(scores), draft.q, self.generator)
