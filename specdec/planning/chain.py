"""Choosing the draft length k each step from measured acceptance and costs (layer L1).

Leviathan et al. (2023), section 3: with per-token acceptance rate alpha, a step that drafts k tokens
commits E(k) = (1 - alpha^(k+1)) / (1 - alpha) tokens on average and costs k * c_draft + c_verify(k).
The controller picks the k in [1, max_k] that maximises E(k) / cost(k), where alpha and the costs are
running estimates from this generation (exponentially decayed so they follow the text).
"""

from __future__ import annotations

from collections.abc import Sequence

from specdec.core.tree import Tree
from specdec.planning.costs import PROBE_EVERY, CostProfile
from specdec.planning.trees import DraftPlan


def expected_tokens(alpha: float, k: int) -> float:
    """E(k): mean tokens committed by a step that drafts k tokens, including the target's token."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


class DraftLengthController:
    """Fixed k when `fixed_k` is set; otherwise the k with the best expected tokens per second.

    min_k: the smallest k considered; 0 (for batches, where verifying k + 1 tokens per row can cost
    more than it gains) compares against plain decoding, E(0) = 1 token per verify(1).
    refine_costs: keep folding this generation's step times into the given profile (batches: a
    profile measured on a short dummy prompt is corrected by the real steps' times).
    nodes: nodes[k] = tokens drafted when cutting at depth k (a static tree cut by depth; default
    k, a chain); verification then costs verify(nodes[k] + 1).

    costs: a measured CostProfile; when given, costs are not re-measured during generation, so the
    k schedule depends only on acceptance (reproducible seeded sampling). Without it, costs are
    running estimates of this generation's own step times (`initial_k` until the first).
    """

    def __init__(
        self,
        max_k: int,
        fixed_k: int | None = None,
        initial_k: int = 4,
        prior_alpha: float = 0.6,
        prior_weight: float = 2.0,
        decay: float = 0.9,
        costs: CostProfile | None = None,
        min_k: int = 1,
        refine_costs: bool = False,
        nodes: Sequence[int] | None = None,
    ) -> None:
        self._live_costs = costs is None or refine_costs
        self.costs = CostProfile() if costs is None else costs
        self.max_k = max_k
        self.fixed_k = fixed_k
        self.min_k = min_k  # 0 lets a measured profile choose no draft at all (batches)
        self.nodes = list(nodes) if nodes is not None else list(range(max_k + 1))  # verified at depth k
        self._undrafted_steps = 0
        self._drafted_steps = 0
        self.initial_k = min(initial_k, max_k)
        self.decay = decay
        self._accepted = prior_alpha * prior_weight  # decayed count of accepted draft tokens
        self._trials = prior_weight  # decayed count of drafted tokens that were judged

    @property
    def alpha(self) -> float:
        return self._accepted / self._trials

    def choose(self) -> int:
        if self.fixed_k is not None:
            return self.fixed_k
        if not self.costs.verify_seconds:
            return self.initial_k
        alpha = min(self.alpha, 0.999)
        best_k, best_rate = max(self.min_k, 1), -1.0
        for k in range(self.min_k, self.max_k + 1):
            cost = self.costs.draft(k, self.nodes[k]) + self.costs.verify(self.nodes[k] + 1)
            rate = expected_tokens(alpha, k) / max(cost, 1e-9)
            if rate > best_rate:
                best_k, best_rate = k, rate
        if best_k == 0:
            # without drafts alpha is never measured again: probe with k = 1 now and then
            self._undrafted_steps += 1
            if self._undrafted_steps > PROBE_EVERY:
                self._undrafted_steps = 0
                return 1
        elif self.min_k == 0 and self._live_costs:
            # and the cost of a plain step is re-measured now and then while drafting
            self._drafted_steps += 1
            if self._drafted_steps > PROBE_EVERY:
                self._drafted_steps = 0
                return 0
        return best_k

    def plan(self, free_reach: Sequence[float] = ()) -> DraftPlan:
        """This step's chain length (the drafter's own shape, cut at that depth); free candidates
        do not change it."""
        return DraftPlan(self.choose())

    def observe_step(
        self,
        tree: Tree,
        path: tuple[int, ...],
        draft_time: float | None,
        verify_time: float | None,
        planned: list[bool] | None = None,
    ) -> None:
        """`observe` for a verified draft tree and its accepted path."""
        self.observe(tree.depth, len(path), draft_time, verify_time, num_nodes=len(tree))

    def observe(
        self,
        num_drafted: int,
        num_accepted: int,
        draft_time: float | None,
        verify_time: float | None,
        num_nodes: int | None = None,
    ) -> None:
        """Update estimates after a step that drafted `num_drafted` levels (a chain's k) in
        `num_nodes` nodes (default k) and accepted `num_accepted`; times are None when they should
        not count (the prefill step)."""
        if num_drafted == 0:
            return
        num_nodes = num_drafted if num_nodes is None else num_nodes
        trials = num_accepted + (1 if num_accepted < num_drafted else 0)
        self._accepted = self._accepted * self.decay + num_accepted
        self._trials = self._trials * self.decay + trials
        if self._live_costs:
            self.costs.observe(num_drafted, num_nodes + 1, draft_time, verify_time, num_nodes)
