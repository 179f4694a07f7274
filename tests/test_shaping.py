"""Run-time tree shaping: best tree under rank probabilities, cost model, the auto controller."""

import itertools

import pytest

from specdec.core.tree import Tree
from specdec.planning.costs import CostProfile
from specdec.planning.trees import AutoShapeController, RankAcceptance, best_tree


def _reach_sum(tree: Tree, p):
    total = 0.0
    for node in range(len(tree)):
        reach = 1.0
        for n in tree.path_to(node):
            reach *= p[tree.ranks[n]]
        total += reach
    return total


def _all_trees(size, max_depth):
    """Every tree of `size` nodes as parent lists in topological order (small sizes only)."""
    for parents in itertools.product(*[range(-1, i) for i in range(size)]):
        try:
            tree = Tree.from_parents(parents)
        except ValueError:
            continue
        if tree.depth <= max_depth:
            yield tree


@pytest.mark.parametrize("p", [[0.9, 0.05], [0.5, 0.3, 0.1], [0.3, 0.3, 0.3], [0.7, 0.2, 0.05, 0.01]])
@pytest.mark.parametrize("size", [1, 3, 5])
def test_best_tree_is_optimal_by_brute_force(p, size):
    tree, expected = best_tree(p, size, max_depth=4)
    assert len(tree) == size
    assert expected == pytest.approx(_reach_sum(tree, p))
    best = max(
        _reach_sum(t, p) for t in _all_trees(size, 4) if max(len(k) for k in t.children.values()) <= len(p)
    )
    assert expected == pytest.approx(best)


def test_best_tree_shapes():
    chain, _ = best_tree([0.95, 0.01], 5, max_depth=8)
    assert chain.is_chain
    wide, _ = best_tree([0.3, 0.3, 0.3, 0.05], 3, max_depth=8)
    assert wide.parents == (-1, -1, -1)
    capped, _ = best_tree([0.99, 0.5], 6, max_depth=2)
    assert capped.depth == 2


def test_rank_acceptance_counts_the_accepted_rank():
    ranks = RankAcceptance(max_rank=3, decay=1.0, prior=(0.5, 0.5, 0.5))
    tree = Tree.from_parents([-1, -1, 0, 0])  # root: ranks 0, 1; node 0: ranks 0, 1
    for _ in range(100):
        ranks.observe(tree, (1,))  # rank 1 accepted at the root; node 1 has no children
    p = ranks.probabilities()
    assert p[0] < 0.05 and p[1] > 0.95


def test_running_costs_interpolate_linearly():
    model = CostProfile()
    model.observe(1, 5, None, 0.010)
    assert model.verify(20) == pytest.approx(0.010)  # one point: flat
    model.observe(1, 17, None, 0.022)
    assert model.verify(11) == pytest.approx(0.016)
    assert model.verify(33) == pytest.approx(0.038)
    model.observe(4, 5, 0.004, None)
    model.observe(2, 5, 0.004, None)  # decayed mean of 0.001 and 0.002 per level
    assert model.draft_level_seconds == pytest.approx(0.7 * 0.001 + 0.3 * 0.002)


def _run(controller, accept_rank0, steps=40, draft=0.001, verify=lambda n: 0.01 + 0.0005 * n):
    for _ in range(steps):
        plan = controller.plan()
        tree = plan.tree if plan.tree is not None else Tree.from_parents([])
        path = []
        node = -1
        while tree.children_of(node) and accept_rank0:
            node = tree.children_of(node)[0]
            path.append(node)
        controller.observe_step(tree, tuple(path), draft * max(tree.depth, 1), verify(len(tree) + 1))
    return controller.plan()


def test_auto_drafts_deep_when_rank0_is_always_accepted():
    plan = _run(AutoShapeController(max_depth=8), accept_rank0=True)
    assert plan.tree is not None and plan.tree.depth == 8


def test_auto_stops_drafting_when_nothing_is_accepted_and_drafting_costs():
    plan = _run(AutoShapeController(max_depth=8), accept_rank0=False, draft=0.02)
    assert plan.max_depth == 0


def test_cost_profile_interpolation():
    profile = CostProfile(draft_level_seconds=0.001, verify_seconds={1: 0.010, 5: 0.014, 9: 0.022})
    assert profile.verify(1) == pytest.approx(0.010)
    assert profile.verify(3) == pytest.approx(0.012)
    assert profile.verify(7) == pytest.approx(0.018)
    assert profile.verify(13) == pytest.approx(0.030)  # the last slope continues


def test_rank_counts_ignore_unplanned_nodes():
    ranks = RankAcceptance(max_rank=2, decay=1.0, prior=(0.5, 0.5))
    tree = Tree.from_parents([-1, -1, -1])  # two planned model nodes, then an n-gram node
    for _ in range(50):
        ranks.observe(tree, (2,), planned=[True, True, False])  # the n-gram node was accepted
    p = ranks.probabilities()
    assert p[0] < 0.05 and p[1] < 0.05  # the planned ranks were offered and not taken


def test_split_draft_costs_recovers_step_level_and_node_costs():
    """Proposal times made from known costs give those costs back; the profile prices plans with them."""
    from specdec.planning.costs import CostProfile, split_draft_costs

    step, level, node = 1.6e-3, 0.9e-3, 0.2e-3

    def seconds(depth, nodes):
        return step + depth * level + nodes * node

    got = split_draft_costs(seconds(1, 1), seconds(4, 4), seconds(2, 20), 2, 20)
    assert all(abs(a - b) < 1e-12 for a, b in zip(got, (step, level, node), strict=True))
    profile = CostProfile(draft_level_seconds=level, draft_step_seconds=step, draft_node_seconds=node)
    assert profile.draft(0, 0) == 0.0 and abs(profile.draft(8, 64) - seconds(8, 64)) < 1e-12
    profile.observe(2, 3, 2 * seconds(2, 2), None, nodes=2)  # twice as slow as predicted
    assert abs(profile.draft(2, 2) - 1.3 * seconds(2, 2)) < 1e-12  # moved 30% of the way
