"""The clairvoyant bound: the fastest schedule of draft shapes a planner could pick with hindsight (L1).

After a generation, the target's own output is known. Teacher-forcing the draft model over it gives the
rank of every true next token among the draft's candidates, and the n-gram search over the text so far
gives every position's copy; from these, each draft shape's accepted length at each position follows
without running a step (a rank tree accepts as deep as the true tokens' ranks stay on one of its
paths; a copy as long as it agrees with the output). `fastest_schedule` then chooses, by dynamic
programming over positions, the shape per step that commits the whole output soonest under a cost
profile. A planner choosing among the same shapes, with the same drafters and costs, cannot commit the
output faster, so target time / this time bounds its speedup from above (host work between steps,
ignored here, only lowers the real figure further).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from specdec.core.tree import Tree
from specdec.planning.costs import CostProfile
from specdec.planning.trees import grow_tree


@dataclass(frozen=True)
class Shape:
    """One step's draft: draft-model nodes as a rank tree (each node's path of sibling ranks from the
    root), merged with the first `copy` tokens of the step's n-gram copy."""

    name: str
    paths: frozenset[tuple[int, ...]]
    depth: int
    nodes: int
    copy: int = 0

    def cost(self, costs: CostProfile) -> float:
        """Draft passes for the model nodes plus verifying the merged tree and the pending token. The
        merged tree has at least max(nodes, copy) nodes (they share at most the shorter branch)."""
        return self.draft_cost(costs) + costs.verify(max(self.nodes, self.copy) + 1)

    def draft_cost(self, costs: CostProfile) -> float:
        """The draft passes alone."""
        return costs.draft(self.depth, self.nodes)


def rank_paths(tree: Tree) -> frozenset[tuple[int, ...]]:
    """Every node of `tree` as the tuple of sibling ranks on its path from the root."""
    paths: list[tuple[int, ...]] = []
    for parent, rank in zip(tree.parents, tree.ranks, strict=True):
        paths.append((paths[parent] if parent >= 0 else ()) + (rank,))
    return frozenset(paths)


def model_shape(name: str, tree: Tree, copy: int = 0) -> Shape:
    return Shape(name, rank_paths(tree), tree.depth, len(tree), copy)


def shape_family(
    rank_probabilities: Sequence[float], sizes: Sequence[int], max_depth: int, max_copy: int
) -> list[Shape]:
    """The shapes `strategy="auto"` chooses among: the best-first rank tree of each size under the
    given rank acceptance (chains among them when rank 0 dominates), every chain up to max_depth, each
    alone or merged with the copy cut at 0..max_copy tokens; size 0 with copy 0 is plain decoding."""
    trees: dict[tuple[int, ...], Tree] = {(): Tree.from_parents([])}  # no model nodes
    parents, _, _ = grow_tree(list(rank_probabilities), max(sizes), max_depth)
    for size in sizes:
        if size <= len(parents):
            trees.setdefault(tuple(parents[:size]), Tree.from_parents(parents[:size]))
    for k in range(1, max_depth + 1):
        chain = Tree.chain(k)
        trees.setdefault(chain.parents, chain)
    shapes = []
    for tree in trees.values():
        kind = "none" if len(tree) == 0 else ("chain" if tree.depth == len(tree) else "tree")
        for copy in range(max_copy + 1):
            shapes.append(model_shape(f"{kind}{len(tree)}+copy{copy}", tree, copy))
    return shapes


def accepted_by_tree(paths: frozenset[tuple[int, ...]], ranks: Sequence[int], start: int) -> int:
    """Tokens a rank tree accepts at `start`: the deepest d with (ranks[start], ..., ranks[start + d - 1])
    a path of the tree, where ranks[j] is the draft's rank of the true token j given the true prefix."""
    depth = 0
    while start + depth < len(ranks) and tuple(ranks[start : start + depth + 1]) in paths:
        depth += 1
    return depth


def accepted_by_copy(copy: Sequence[int], reference: Sequence[int], start: int) -> int:
    """Tokens of `copy` (proposed at position `start`) that agree with reference[start:], in order."""
    accepted = 0
    for proposed, true in zip(copy, reference[start:], strict=False):
        if proposed != true:
            break
        accepted += 1
    return accepted


def accepted_lengths(
    shapes: Sequence[Shape],
    ranks: Sequence[int],
    copies: Sequence[Sequence[int]],
    reference: Sequence[int],
) -> list[list[int]]:
    """[position][shape] accepted tokens: a merged shape accepts along whichever of its branches goes
    deeper (the merged tree holds both). copies[j]: the n-gram copy offered at position j (may be empty)."""
    table = []
    for start in range(len(reference)):
        by_tree: dict[frozenset, int] = {}
        copy_run = accepted_by_copy(copies[start], reference, start)
        row = []
        for shape in shapes:
            if shape.paths not in by_tree:
                by_tree[shape.paths] = accepted_by_tree(shape.paths, ranks, start)
            row.append(max(by_tree[shape.paths], min(copy_run, shape.copy)))
        table.append(row)
    return table


def fastest_schedule(
    accepted: Sequence[Sequence[int]], costs: Sequence[float], first_costs: Sequence[float] | None = None
) -> tuple[float, list[int]]:
    """(seconds, shape index per step) of the fastest way to commit all positions: a step at position s
    with shape i costs costs[i] and commits accepted[s][i] + 1 tokens (the target adds one).
    first_costs: the first step's cost per shape instead (e.g. its draft alone, when its verification
    rides on the prompt's pass, which is counted apart)."""
    if not costs:
        raise ValueError("fastest_schedule needs at least one shape")
    n = len(accepted)
    best = [0.0] * (n + 1)  # best[s]: seconds to commit positions s..n-1
    choice = [0] * n
    for start in range(n - 1, -1, -1):
        best[start] = math.inf
        step_costs = first_costs if start == 0 and first_costs is not None else costs
        for index, (tokens, cost) in enumerate(zip(accepted[start], step_costs, strict=True)):
            total = cost + best[min(n, start + tokens + 1)]
            if total < best[start]:
                best[start], choice[start] = total, index
    steps, position = [], 0
    while position < n:
        steps.append(choice[position])
        position = min(n, position + accepted[position][choice[position]] + 1)
    return best[0], steps


def rank_acceptance(ranks: Sequence[int], max_rank: int = 8) -> list[float]:
    """The positional model's p_r from observed true-token ranks: P(rank r | rank >= r), r < max_rank."""
    p = []
    for r in range(max_rank):
        at_least = sum(1 for rank in ranks if rank >= r)
        p.append(sum(1 for rank in ranks if rank == r) / at_least if at_least else 0.0)
    return p


def policy_seconds(
    accepted: Sequence[Sequence[int]],
    costs: Sequence[float],
    classes: Sequence[int],
    policy: Sequence[int],
    first_costs: Sequence[float] | None = None,
) -> float:
    """Seconds to commit all positions when every step at position s takes shape policy[classes[s]]
    (a rule that sees only the class of the step's start, e.g. the length of the n-gram matched there)."""
    position, seconds = 0, 0.0
    while position < len(accepted):
        shape = policy[classes[position]]
        seconds += (first_costs if position == 0 and first_costs is not None else costs)[shape]
        position += accepted[position][shape] + 1
    return seconds


def best_class_policy(
    cases: Sequence[tuple[Sequence[Sequence[int]], Sequence[int]]],
    costs: Sequence[float],
    num_classes: int,
    first_costs: Sequence[float] | None = None,
    rounds: int = 4,
) -> tuple[list[int], float]:
    """A shape per class, fitted in hindsight over all cases (accepted table, class per position) by
    coordinate descent from the best single shape: (policy, total seconds). A rule of this form can be
    learned online, so its time is a realistic target for a planner that sees those classes, where
    `fastest_schedule`'s is not (it knows every step's outcome)."""

    def total(policy: list[int]) -> float:
        return sum(policy_seconds(a, costs, c, policy, first_costs) for a, c in cases)

    single = min(range(len(costs)), key=lambda shape: total([shape] * num_classes))
    policy = [single] * num_classes
    best = total(policy)
    for _ in range(rounds):
        improved = False
        for cls in range(num_classes):
            for shape in range(len(costs)):
                trial = policy[:cls] + [shape] + policy[cls + 1 :]
                seconds = total(trial)
                if seconds < best - 1e-12:
                    policy, best, improved = trial, seconds, True
        if not improved:
            break
    return policy, best
