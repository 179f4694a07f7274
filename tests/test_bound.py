"""The clairvoyant bound (`specdec.planning.bound`): accepted lengths reconstructed with hindsight equal
what a real generation accepts, and the dynamic program finds the fastest schedule (checked against
brute force) that no fixed policy beats."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

import specdec
from specdec.core.tree import Tree
from specdec.planning.bound import (
    Shape,
    accepted_by_copy,
    accepted_by_tree,
    accepted_lengths,
    best_class_policy,
    fastest_schedule,
    model_shape,
    policy_seconds,
    rank_acceptance,
    rank_paths,
    shape_family,
)
from specdec.planning.costs import CostProfile
from tests.families import draft_for
from tests.tiny_models import prompt, tiny_llama


def test_rank_paths_and_tree_acceptance():
    tree = Tree.from_parents([-1, -1, 0, 0, 2])  # root's ranks 0, 1; below node 0 ranks 0, 1; below 2: 0
    assert rank_paths(tree) == {(0,), (1,), (0, 0), (0, 1), (0, 0, 0)}
    paths = rank_paths(tree)
    assert accepted_by_tree(paths, [0, 0, 0, 0], 0) == 3  # the tree is 3 deep
    assert accepted_by_tree(paths, [0, 1, 0, 0], 0) == 2  # (0, 1) is a leaf
    assert accepted_by_tree(paths, [1, 0], 0) == 1
    assert accepted_by_tree(paths, [2, 0], 0) == 0  # rank 2 is not offered at the root
    assert accepted_by_tree(paths, [5, 0, 0], 1) == 2  # from position 1
    assert accepted_by_tree(paths, [0, 0], 1) == 1  # the output ends


def test_copy_acceptance_and_merged_shapes():
    reference = [5, 6, 7, 8]
    assert accepted_by_copy([6, 7, 9], reference, 1) == 2
    assert accepted_by_copy([], reference, 0) == 0
    chain2 = model_shape("chain2", Tree.chain(2))
    merged = model_shape("chain2+copy3", Tree.chain(2), copy=3)
    copy3 = Shape("copy3", frozenset(), 0, 0, 3)
    # position 0: the draft's true-token ranks give 2 tokens along the chain, the copy agrees for 3
    ranks = [0, 0, 4, 0]
    copies = [[5, 6, 7, 1], [], [], []]
    table = accepted_lengths([chain2, merged, copy3], ranks, copies, reference)
    assert table[0] == [2, 3, 3]  # the merged tree accepts along its deeper branch
    assert table[2] == [0, 0, 0]


def brute_force(accepted, costs):
    """The fastest schedule by enumerating every choice sequence (small cases only)."""
    n = len(accepted)
    best = float("inf")
    for choices in itertools.product(range(len(costs)), repeat=n):
        position, seconds = 0, 0.0
        for choice in choices:
            if position >= n:
                break
            seconds += costs[choice]
            position += accepted[position][choice] + 1
        if position >= n:
            best = min(best, seconds)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_fastest_schedule_equals_brute_force(seed):
    rng = random.Random(seed)
    n, shapes = rng.randint(1, 6), rng.randint(1, 3)
    accepted = [[rng.randint(0, 3) for _ in range(shapes)] for _ in range(n)]
    costs = [rng.uniform(0.5, 3.0) for _ in range(shapes)]
    seconds, steps = fastest_schedule(accepted, costs)
    assert seconds == pytest.approx(brute_force(accepted, costs))
    # the returned steps are a schedule that covers the output at that cost
    position, replay = 0, 0.0
    for step in steps:
        replay += costs[step]
        position += accepted[position][step] + 1
    assert position >= n and replay == pytest.approx(seconds)
    # no fixed shape does better
    for fixed in range(shapes):
        position, fixed_seconds = 0, 0.0
        while position < n:
            fixed_seconds += costs[fixed]
            position += accepted[position][fixed] + 1
        assert seconds <= fixed_seconds + 1e-12


def test_first_step_costs_replace_the_first_steps_cost():
    accepted = [[0, 2], [0, 0], [0, 0]]
    costs = [1.0, 2.5]
    assert fastest_schedule(accepted, costs)[0] == pytest.approx(2.5)  # one step of shape 1
    assert fastest_schedule(accepted, costs, [0.0, 0.1])[0] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="at least one shape"):
        fastest_schedule(accepted, [])


def test_shape_family_and_costs():
    profile = CostProfile(draft_level_seconds=0.002, verify_seconds={1: 0.010, 9: 0.018})
    family = shape_family([0.8, 0.3, 0.1], sizes=(1, 4, 16), max_depth=4, max_copy=2)
    names = {s.name for s in family}
    assert {"none0+copy0", "none0+copy2", "chain4+copy0", "chain1+copy1"} <= names
    assert any(s.nodes == 16 and s.depth < 16 for s in family)  # a best-first tree, not a chain
    plain = next(s for s in family if s.name == "none0+copy0")
    assert plain.cost(profile) == pytest.approx(0.010)
    copy2 = next(s for s in family if s.name == "none0+copy2")
    assert copy2.cost(profile) == pytest.approx(0.012)  # verify 3 tokens, no draft pass
    chain4 = next(s for s in family if s.name == "chain4+copy2")
    assert chain4.cost(profile) == pytest.approx(4 * 0.002 + 0.014)  # verify max(4, 2) + 1 tokens
    assert rank_acceptance([0, 0, 1, 3], max_rank=3) == pytest.approx([0.5, 0.5, 0.0])


def _steps_of_a_fixed_tree(target, draft, tree_spec, ids, new_tokens):
    spec = specdec.wrap(target, draft, strategy="tree", tree=tree_spec)
    out = spec.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    return out[0, ids.shape[1] :].tolist(), spec.stats.accepted_at, spec.stats.drafted_at


@torch.no_grad()
@pytest.mark.parametrize("tree_spec", [(1, 1, 1), (2, 2, 1), (3, 1)])
def test_reconstructed_acceptance_matches_a_real_generation(tree_spec):
    """Teacher-forced ranks predict exactly how many steps a static tree takes in a real greedy run
    (the first step verifies the prompt with its tree): the bound's accepted lengths are real ones."""
    target = tiny_llama(seed=3, eos=None)
    draft = draft_for(target, noise=0.05)  # rank 0 for 35 of the 60 true tokens, ranks 1-2 for 16
    ids = prompt(12, seed=4)
    reference, accepted_at, drafted_at = _steps_of_a_fixed_tree(target, draft, tree_spec, ids, 60)
    assert reference == target.generate(ids, max_new_tokens=60, do_sample=False)[0, 12:].tolist()
    full = torch.cat([ids[0], torch.tensor(reference)])[None]
    logits = draft(full).logits[0, 11:-1]  # [60, V]: after the prompt and each true token
    ranks = (logits > logits.gather(1, torch.tensor(reference)[:, None])).sum(dim=1).tolist()
    tree = Tree.from_branching(tree_spec)
    paths = rank_paths(tree)
    position = 0
    reconstructed_accepted, reconstructed_drafted = [0] * tree.depth, [0] * tree.depth
    while position < len(reference):
        # near the end the engine cuts the tree to the tokens left (the target adds one itself)
        depth = min(tree.depth, len(reference) - position - 1)
        taken = min(accepted_by_tree(paths, ranks, position), depth)
        for level in range(depth):
            reconstructed_drafted[level] += 1
            reconstructed_accepted[level] += level < taken
        position += taken + 1
    assert 0.3 < sum(r == 0 for r in ranks) / len(ranks) < 0.9  # the draft is right sometimes, not always
    # per depth: steps that drafted it, steps that accepted it
    assert (accepted_at, drafted_at) == (reconstructed_accepted, reconstructed_drafted)


def test_class_policy_is_simulated_and_fitted():
    """policy_seconds follows the rule step by step; best_class_policy finds the best shape per class
    (checked against every policy), never beats the clairvoyant schedule and never loses to the best
    single shape."""
    rng = random.Random(7)
    cases = []
    for _ in range(3):
        n = 12
        classes = [rng.randint(0, 1) for _ in range(n)]
        # class 1 positions reward the long shape, class 0 positions do not
        accepted = [[0, 3 if c else 0, rng.randint(0, 1)] for c in classes]
        cases.append((accepted, classes))
    costs = [1.0, 1.6, 1.2]
    accepted, classes = cases[0]
    position, expected = 0, 0.0
    while position < len(accepted):
        shape = [2, 1][classes[position]]
        expected += costs[shape]
        position += accepted[position][shape] + 1
    assert policy_seconds(accepted, costs, classes, [2, 1]) == pytest.approx(expected)
    policy, seconds = best_class_policy(cases, costs, 2)
    every = {
        p: sum(policy_seconds(a, costs, c, list(p)) for a, c in cases)
        for p in itertools.product(range(3), repeat=2)
    }
    assert seconds == pytest.approx(min(every.values()))
    assert policy[1] == 1  # the long shape where it is accepted
    assert seconds <= min(every[(s, s)] for s in range(3))
    clairvoyant = sum(fastest_schedule(a, costs)[0] for a, _ in cases)
    assert clairvoyant <= seconds + 1e-12
