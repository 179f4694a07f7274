"""Choosing the draft tree at run time from measured acceptance and costs (layer L1).

A Sequoia-like choice made online: the chance that the draft's r-th ranked candidate is the one the
target accepts, p_r, is measured during generation (decayed counts, so it follows the text). Under that
positional model a node is reached with probability prod(p_rank) along its path, and the best tree of
n nodes takes the n most reachable positions (best-first growth). Among sizes n, `AutoShapeController`
picks the tree maximising expected committed tokens per second, (1 + sum of reach) divided by the
measured draft cost per level times depth plus the measured cost of verifying n + 1 tokens.
A chain is the tree this gives when rank 0 dominates.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from specdec.core.tree import Tree
from specdec.planning.costs import PROBE_EVERY, CostProfile


@dataclass(frozen=True)
class DraftPlan:
    """What to draft this step: at most `max_depth` levels, in the shape of `tree` when given."""

    max_depth: int
    tree: Tree | None = None


@runtime_checkable
class Planner(Protocol):
    """Plans each step's draft (chain length or tree shape) from what the steps so far measured:
    `DraftLengthController` (chains) and `AutoShapeController` (chains and trees)."""

    def plan(self, free_reach: Sequence[float] = ()) -> DraftPlan:
        """This step's plan; free_reach[j]: the chance free candidates (n-gram copies) are followed
        past position j, which drafted nodes must beat."""

    def observe_step(
        self,
        tree: Tree,
        path: tuple[int, ...],
        draft_time: float | None,
        verify_time: float | None,
        planned: list[bool] | None = None,
    ) -> None:
        """A verified draft `tree`, its accepted `path` and the step's times (None: not counted)."""


class RankAcceptance:
    """Decayed estimate of p_r: P(the rank-r candidate is accepted | its parent was reached and it
    was offered)."""

    def __init__(
        self, max_rank: int = 8, decay: float = 0.97, prior: tuple[float, ...] = (0.5, 0.15, 0.08, 0.05)
    ):
        self.decay = decay
        self.taken = [0.0] * max_rank
        self.offered = [0.0] * max_rank
        for r in range(max_rank):
            prior_p = prior[r] if r < len(prior) else prior[-1] / (r - len(prior) + 2)
            self.taken[r] = 2.0 * prior_p
            self.offered[r] = 2.0

    def observe(self, tree: Tree, path: tuple[int, ...], planned: list[bool] | None = None) -> None:
        """Count one verified tree; `planned` restricts the count to the planned nodes (ranks among
        planned siblings; an accepted unplanned node counts as none of its planned siblings taken)."""
        self.taken = [t * self.decay for t in self.taken]
        self.offered = [o * self.decay for o in self.offered]
        node, level = -1, 0
        while True:
            kids = [k for k in tree.children_of(node) if planned is None or planned[k]]
            if not kids:
                return
            for r in range(min(len(kids), len(self.offered))):
                self.offered[r] += 1.0
            if level >= len(path) or path[level] not in kids:
                return
            child = path[level]
            rank = kids.index(child)
            if rank < len(self.taken):
                self.taken[rank] += 1.0
            node, level = child, level + 1

    def probabilities(self) -> list[float]:
        return [min(t / o, 1.0) if o > 0 else 0.0 for t, o in zip(self.taken, self.offered, strict=True)]


def grow_tree(p: list[float], size: int, max_depth: int) -> tuple[list[int], list[float], list[int]]:
    """Best-first growth of up to `size` nodes under rank probabilities p, no deeper than max_depth:
    (parents, reach, depth) per node in the order grown. The first n nodes are the best n-node tree,
    so one growth serves every size up to `size`."""
    parents: list[int] = []
    reaches: list[float] = []
    depths: list[int] = []
    # heap of candidate positions: (-reach, tie, parent, rank, depth, parent_reach)
    heap = [(-p[0], 0, -1, 0, 1, 1.0)] if p and size > 0 else []
    tie = 1
    while heap and len(parents) < size:
        neg_reach, _, parent, rank, depth, parent_reach = heapq.heappop(heap)
        parents.append(parent)
        index = len(parents) - 1
        reach = -neg_reach
        reaches.append(reach)
        depths.append(depth)
        if depth < max_depth:
            heapq.heappush(heap, (-reach * p[0], tie, index, 0, depth + 1, reach))
            tie += 1
        if rank + 1 < len(p):
            heapq.heappush(heap, (-parent_reach * p[rank + 1], tie, parent, rank + 1, depth, parent_reach))
            tie += 1
    return parents, reaches, depths


def best_tree(p: list[float], size: int, max_depth: int) -> tuple[Tree, float]:
    """The `size`-node tree with the largest expected accepted length under rank probabilities p,
    no deeper than max_depth, and that expected length (the sum of the nodes' reach)."""
    parents, reaches, _ = grow_tree(p, size, max_depth)
    return Tree.from_parents(parents), sum(reaches)


class AutoShapeController:
    """Plans each step's tree (or chain) from measured rank acceptance and measured costs."""

    SIZES = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # 0: no speculation this step
    EXPLORE = (4, 16)  # tree sizes measured first, so the cost model has two points

    def __init__(
        self,
        max_nodes: int = 64,
        max_depth: int = 8,
        costs: CostProfile | None = None,
        free_depth: int = 0,
        refine_costs: bool = False,
    ) -> None:
        """costs: a measured CostProfile (fixed during generation, for reproducible seeded sampling);
        without it costs are measured from this generation's own steps, exploring sizes 4 and 16 first.
        free_depth: depth of candidates that cost no draft pass (n-gram copies merged in by a hybrid
        drafter); a plan with no model nodes still lets them be proposed."""
        self.free_depth = free_depth
        self._exploring = costs is None  # without a profile: measure two sizes first
        self._live_costs = costs is None or refine_costs  # refine: fold step times into `costs`
        self.costs = CostProfile() if costs is None else costs
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.ranks = RankAcceptance()
        self._idle_steps = 0

    def plan(self, free_reach: Sequence[float] = ()) -> DraftPlan:
        """This step's plan. free_reach[j]: the chance that an accepted path follows this step's free
        candidate (an n-gram copy, no draft pass) past its position j, from measured acceptance; empty
        when there is none. The copy is cut at the length with the best expected tokens per second,
        then model trees of every size are weighed against it; a tree with both is credited,
        conservatively, with the larger of the two expectations."""
        p = self.ranks.probabilities()
        measured = len(self.costs.verify_seconds)
        if self._live_costs and self._exploring and measured < len(self.EXPLORE):
            tree, _ = best_tree(p, min(self.EXPLORE[measured], self.max_nodes), self.max_depth)
            return DraftPlan(tree.depth, tree)
        copy_length, copy_expected = self._best_copy(free_reach)
        sizes = [size for size in self.SIZES if size <= self.max_nodes]
        parents, reaches, depths = grow_tree(p, sizes[-1], self.max_depth)
        best_size, best_rate = 0, -1.0
        expected, depth, grown = 0.0, 0, 0
        for size in sizes:
            if size > len(parents):
                break
            for node in range(grown, size):  # the best tree of `size` nodes: the first `size` grown
                expected += reaches[node]
                depth = max(depth, depths[node])
            grown = size
            verified = size + copy_length + 1
            cost = self.costs.draft(depth, size) + self.costs.verify(verified)
            rate = (1.0 + max(expected, copy_expected)) / max(cost, 1e-9)
            if rate > best_rate:
                best_size, best_rate = size, rate
        best = Tree.from_parents(parents[:best_size])
        if len(best) == 0:
            self._idle_steps += 1
            if self._idle_steps % PROBE_EVERY:
                return DraftPlan(copy_length, best) if copy_length else DraftPlan(0)
            best, _ = best_tree(p, 2, self.max_depth)
        else:
            self._idle_steps = 0
        return DraftPlan(max(best.depth, copy_length), best)

    def _best_copy(self, reach: Sequence[float]) -> tuple[int, float]:
        """(length, expected accepted tokens) of the free copy cut where it verifies the most
        expected tokens per second on its own (0 when none pays)."""
        best_length, best_expected = 0, 0.0
        best_rate = 1.0 / max(self.costs.verify(1), 1e-9)
        expected = 0.0
        for length in range(1, min(len(reach), self.free_depth) + 1):
            expected += reach[length - 1]
            rate = (1.0 + expected) / max(self.costs.verify(length + 1), 1e-9)
            if rate > best_rate:
                best_length, best_expected, best_rate = length, expected, rate
        return best_length, best_expected

    def observe_step(
        self,
        tree: Tree,
        path: tuple[int, ...],
        draft_time: float | None,
        verify_time: float | None,
        planned: list[bool] | None = None,
    ) -> None:
        """Count the verified tree (only its planned nodes, when `planned` is given) and, without a
        fixed cost profile, its draft and verify times. Draft passes are counted over the planned
        (draft-model) nodes' depth only: free copies cost no pass."""
        if len(tree) == 0:
            return
        self.ranks.observe(tree, path, planned)
        if self._live_costs:
            levels, nodes = tree.depth, len(tree)
            if planned is not None:
                mine = [d for d, is_planned in zip(tree.depths, planned, strict=True) if is_planned]
                levels, nodes = max(mine, default=0), len(mine)
            self.costs.observe(levels, len(tree) + 1, draft_time if levels else None, verify_time, nodes)
