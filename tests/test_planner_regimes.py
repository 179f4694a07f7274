"""The planners in both regimes (issue 19): synthetic cost profiles and simulated acceptance.

Memory-bound ("flat"): verifying 65 tokens costs about what verifying 1 does (a big model's decode step
reads its weights once, whatever the row count); the planner must draft wide/deep trees (auto) or the
longest chain (chain length). Compute-bound ("linear"): every verified token costs a sizeable part of a
decode step; the planner must draft a chain (auto) or a short one. No timing: costs are numbers given.
"""

from __future__ import annotations

import random

import pytest

from specdec.core.tree import Tree
from specdec.planning.chain import DraftLengthController
from specdec.planning.costs import CostProfile, monotone_fit
from specdec.planning.trees import AutoShapeController, RankAcceptance

SIZES = (1, 2, 3, 5, 9, 17, 33, 65)
#: P(the rank-r child is the accepted one | its parent was reached), disjoint over r: the draft's top
#: candidate is right 60% of the time and its second 15% (as the embedded pair measures, roughly).
RANK_SHARE = (0.6, 0.15, 0.08, 0.05)


def flat_profile(decode: float = 0.1) -> CostProfile:
    """Memory-bound: verification ~flat in node count (65 tokens cost 1.15x one); cheap draft levels."""
    return CostProfile(
        verify_seconds={n: decode * (1 + 0.0025 * (n - 1)) for n in SIZES},
        draft_level_seconds=decode * 0.03,
        draft_measured=True,
        draft_step_seconds=decode * 0.02,
        draft_node_seconds=decode * 0.002,
    )


def linear_profile(decode: float = 0.015) -> CostProfile:
    """Compute-bound: each verified token adds 15% of a decode step (16 tokens: 3.25x one, the embedded
    float32 target measures 2.4x). Draft costs are the flat profile's (relative to a decode step), so
    only the verification curve differs between the two regimes."""
    flat = flat_profile(decode)
    flat.verify_seconds = {n: decode * (1 + 0.15 * (n - 1)) for n in SIZES}
    return flat


def accepted_path(tree: Tree, rng: random.Random, shares=RANK_SHARE) -> tuple[int, ...]:
    """A path through `tree` drawn level by level: the rank-r child is accepted with probability
    shares[r] (none with the rest), as a target would under the positional model."""
    path: list[int] = []
    node = -1
    while kids := tree.children_of(node):
        draw, cumulative, chosen = rng.random(), 0.0, None
        for rank, child in enumerate(kids[: len(shares)]):
            cumulative += shares[rank]
            if draw < cumulative:
                chosen = child
                break
        if chosen is None:
            break
        path.append(chosen)
        node = chosen
    return tuple(path)


def run_auto(controller: AutoShapeController, profile: CostProfile, steps: int, seed: int = 0) -> Tree:
    """Plan/observe `steps` steps with acceptance drawn from RANK_SHARE and times from `profile`;
    returns the tree planned after them."""
    rng = random.Random(seed)
    for _ in range(steps):
        plan = controller.plan()
        tree = plan.tree if plan.tree is not None and len(plan.tree) else Tree.chain(1)
        draft = profile.draft(tree.depth, len(tree))
        controller.observe_step(tree, accepted_path(tree, rng), draft, profile.verify(len(tree) + 1))
    plan = controller.plan()
    return plan.tree if plan.tree is not None else Tree.chain(plan.max_depth)


def test_simulated_acceptance_matches_the_rank_shares():
    controller = AutoShapeController(costs=flat_profile())
    controller.ranks = RankAcceptance(decay=1.0)  # no decay: the estimate averages all 300 steps
    run_auto(controller, flat_profile(), steps=300)
    p = controller.ranks.probabilities()
    for rank, share in enumerate(RANK_SHARE[:2]):
        # a rank-r child counts as offered whenever it exists, taken or not its elder siblings
        assert p[rank] == pytest.approx(share, abs=0.05)


@pytest.mark.parametrize("fixed_costs", [True, False], ids=["given-profile", "measured-from-steps"])
def test_auto_drafts_wide_deep_trees_when_verification_is_flat(fixed_costs):
    profile = flat_profile()
    controller = AutoShapeController(costs=flat_profile() if fixed_costs else None)
    tree = run_auto(controller, profile, steps=200)
    assert not tree.is_chain, tree.parents
    assert len(tree) >= 24 and tree.depth >= 5, (len(tree), tree.depth)
    assert max(len(kids) for kids in tree.children.values()) >= 2  # wide somewhere


@pytest.mark.parametrize("fixed_costs", [True, False], ids=["given-profile", "measured-from-steps"])
def test_auto_drafts_a_chain_when_verification_is_linear(fixed_costs):
    profile = linear_profile()
    controller = AutoShapeController(costs=linear_profile() if fixed_costs else None)
    tree = run_auto(controller, profile, steps=200)
    assert len(tree) >= 1 and tree.is_chain, tree.parents
    assert tree.depth <= 4


def test_auto_tree_grows_as_verification_flattens():
    """Between the regimes the planned tree's size falls monotonically as verification gets steeper."""
    sizes = []
    for slope in (0.0, 0.01, 0.05, 0.15, 0.5):
        profile = CostProfile(
            verify_seconds={n: 0.1 * (1 + slope * (n - 1)) for n in SIZES},
            draft_level_seconds=0.003,
            draft_measured=True,
        )
        tree = run_auto(AutoShapeController(costs=profile), profile, steps=150)
        sizes.append(len(tree))
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1], sizes


def run_chain(controller: DraftLengthController, profile: CostProfile, alpha: float, steps: int) -> int:
    """choose/observe `steps` chain steps, each drafted token kept with probability alpha while the
    previous ones were; returns the k chosen after them."""
    rng = random.Random(1)
    for _ in range(steps):
        k = max(controller.choose(), 1)
        accepted = 0
        while accepted < k and rng.random() < alpha:
            accepted += 1
        controller.observe(k, accepted, profile.draft(k, k), profile.verify(k + 1))
    return controller.choose()


@pytest.mark.parametrize("fixed_costs", [True, False], ids=["given-profile", "measured-from-steps"])
def test_chain_length_is_long_when_flat_and_short_when_linear(fixed_costs):
    flat = DraftLengthController(8, costs=flat_profile() if fixed_costs else None)
    linear = DraftLengthController(8, costs=linear_profile() if fixed_costs else None)
    # flat: k = 7 and 8 are within 0.2% of each other once the per-step draft cost is folded into levels
    assert run_chain(flat, flat_profile(), alpha=0.75, steps=100) >= 7
    assert run_chain(linear, linear_profile(), alpha=0.75, steps=100) <= 3


def test_half_precision_on_a_cpu_without_fast_matmul_warns_one_line(monkeypatch):
    """Bad input of issue 19: bf16 on a CPU without bf16 matmul is a warning, never an error."""
    import warnings

    import torch

    from specdec.planning import calibration

    monkeypatch.setattr(calibration, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))
    with pytest.warns(UserWarning, match="float32 may be faster") as caught:
        assert calibration.warn_slow_half_precision(torch.bfloat16, torch.device("cpu"))
    assert "\n" not in str(caught[0].message)
    monkeypatch.setattr(calibration, "_cpu_flags", lambda: frozenset({"avx512_bf16"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not calibration.warn_slow_half_precision(torch.bfloat16, torch.device("cpu"))
        assert not calibration.warn_slow_half_precision(torch.float32, torch.device("cpu"))


def test_noisy_verify_profile_is_read_non_decreasing():
    """Measured on a shared CPU (ms): verifying 65 tokens looked cheaper than verifying 1. The cost
    model pools the out-of-order sizes (least-squares monotone fit) instead of believing it."""
    noisy = {1: 949.4, 2: 838.3, 3: 1064.7, 5: 655.1, 9: 563.2, 17: 1668.9, 33: 1022.5, 65: 776.1}
    profile = CostProfile(verify_seconds=noisy)
    costs = [profile.verify(n) for n in range(1, 100)]
    assert costs == sorted(costs)
    assert costs[0] == pytest.approx(sum(list(noisy.values())[:5]) / 5)  # sizes 1-9 pooled
    assert monotone_fit([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]
    clean = flat_profile()
    assert [clean.verify(n) for n in SIZES] == [clean.verify_seconds[n] for n in SIZES]  # unchanged


def test_wrap_warns_once_for_half_precision_on_a_slow_cpu(monkeypatch):
    """wrap() of a bf16 target on a CPU without bf16 matmul: the one-line warning, and it still runs."""
    import torch

    import specdec
    from specdec.planning import calibration
    from tests.tiny_models import prompt, tiny_llama

    target = tiny_llama(seed=0).to(torch.bfloat16)
    monkeypatch.setattr(calibration, "_cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.warns(UserWarning, match="bfloat16 on a CPU without hardware bfloat16 matmul"):
        spec = specdec.wrap(target, strategy="prompt-lookup")
    assert spec.generate(prompt(6, 0), max_new_tokens=3).shape == (1, 9)
