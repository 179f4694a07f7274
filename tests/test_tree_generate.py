"""Token trees end to end: one-pass verification, cache compaction, greedy identity, sampling."""

import pytest
import torch

import specdec
from specdec.core.tree import Tree
from specdec.planning.costs import CostProfile
from specdec.runtime.cache import cache_tensors
from specdec.runtime.runner import CausalRunner
from tests.test_generate_sampling import SAMPLE_KWARGS, V, chi_square_pvalue, exact_joint, sample_pairs
from tests.tiny_models import prompt, tiny_llama

SHAPES = [(3,), (2, 2), (4, 2, 2, 1), (1, 3, 1), [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]]


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0)


def _tree(spec):
    return Tree.from_branching(spec) if isinstance(spec[0], int) else Tree.from_paths(spec)


def _verify_tree(runner, committed, pending, tree, tokens):
    """Put `committed` in the cache, then verify pending + tree nodes in one pass (as the engine does)."""
    runner.reset()
    if committed.numel():
        runner.extend(committed, num_logits=1)
    m, t = pending.shape[0], len(tree)
    n = committed.shape[0] + m
    positions = torch.cat([torch.arange(committed.shape[0], n), n - 1 + tree.depth_tensor()])
    return runner.extend(
        torch.cat([pending, tokens]), t + 1, positions, tree.block_attention(m)
    )  # [T + 1, V]


@pytest.mark.parametrize("spec", SHAPES, ids=str)
@pytest.mark.parametrize("prefix, pending", [(0, 5), (7, 1), (12, 3)])
def test_every_node_gets_the_logits_of_its_own_path(target, spec, prefix, pending):
    tree = _tree(spec)
    ids = prompt(prefix + pending, prefix)[0]
    tokens = torch.randint(3, 96, (len(tree),), generator=torch.Generator().manual_seed(1))
    logits = _verify_tree(CausalRunner(target), ids[:prefix], ids[prefix:], tree, tokens)
    with torch.no_grad():
        root = target(ids[None]).logits[0, -1]
        assert torch.allclose(logits[0], root, atol=1e-5)
        for node in range(len(tree)):
            path = tokens[tree.path_to(node)]
            expected = target(torch.cat([ids, path])[None]).logits[0, -1]
            assert torch.allclose(logits[node + 1], expected, atol=1e-5), node


@pytest.mark.parametrize("spec", SHAPES[1:], ids=str)
def test_cache_after_commit_equals_recomputing_the_accepted_sequence(target, spec):
    tree = _tree(spec)
    ids = prompt(9, 3)[0]
    tokens = torch.randint(3, 96, (len(tree),), generator=torch.Generator().manual_seed(2))
    runner = CausalRunner(target)
    for leaf_path in tree.paths[-2:]:
        _verify_tree(runner, ids[:6], ids[6:], tree, tokens)
        path = list(leaf_path[:-1]) if len(leaf_path) > 1 else list(leaf_path)
        runner.compact(9, [9 + node for node in path])
        fresh = CausalRunner(target)
        fresh.extend(torch.cat([ids, tokens[path]]), num_logits=1)
        assert runner.length == fresh.length == 9 + len(path)
        for a, b in zip(cache_tensors(runner.cache), cache_tensors(fresh.cache), strict=True):
            assert torch.allclose(a, b, atol=1e-5)  # keys and values of every layer


@pytest.mark.parametrize("spec", SHAPES, ids=str)
def test_static_trees_greedy_identical(target, spec):
    unrelated = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1)
    for draft in (target, unrelated):
        spec_model = specdec.wrap(target, draft, strategy="tree", tree=spec)
        for seed in range(2):
            ids = prompt(4 + 3 * seed, 200 + seed)
            expected = target.generate(ids, max_new_tokens=21, do_sample=False)
            assert torch.equal(spec_model.generate(ids, max_new_tokens=21), expected)
    assert spec_model.stats.drafted_tokens > 0


@pytest.mark.parametrize("budget", [1, 5, 16, 40])
def test_dynamic_trees_greedy_identical(target, budget):
    unrelated = tiny_llama(hidden=48, layers=3, heads=8, kv_heads=2, seed=2)
    for draft in (target, unrelated):
        spec_model = specdec.wrap(target, draft, strategy="dynamic-tree", tree_budget=budget)
        for seed in range(2):
            ids = prompt(5 + seed, 300 + seed)
            expected = target.generate(ids, max_new_tokens=19, do_sample=False)
            assert torch.equal(spec_model.generate(ids, max_new_tokens=19), expected)
        assert max(spec_model.stats.draft_lengths) <= budget


def test_auto_greedy_identical(target):
    unrelated = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1)
    for draft in (target, unrelated):
        spec_model = specdec.wrap(target, draft, strategy="auto")
        for seed in range(3):
            ids = prompt(5 + seed, 400 + seed)
            expected = target.generate(ids, max_new_tokens=40, do_sample=False)
            assert torch.equal(spec_model.generate(ids, max_new_tokens=40), expected)


def test_draft_equal_to_target_accepts_full_depth(target):
    spec_model = specdec.wrap(target, target, strategy="tree", tree=(3, 2, 1))
    ids = prompt(6, 7)
    out = spec_model.generate(ids, max_new_tokens=24, eos_token_id=None)
    assert torch.equal(out, target.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=None))
    assert spec_model.stats.target_passes == 6  # 3 accepted + 1 per pass
    assert spec_model.stats.acceptance_per_position == [1.0, 1.0, 1.0]


def test_tree_processors_see_each_nodes_own_path(target):
    kwargs = dict(max_new_tokens=25, repetition_penalty=1.7, no_repeat_ngram_size=2)
    ids = prompt(6, 8)
    expected = target.generate(ids, do_sample=False, **kwargs)
    for strategy, extra in (("tree", dict(tree=(3, 2, 1))), ("dynamic-tree", dict(tree_budget=12))):
        out = specdec.wrap(target, target, strategy=strategy, **extra).generate(ids, **kwargs)
        assert torch.equal(out, expected)


@pytest.mark.parametrize(
    "strategy, extra", [("tree", dict(tree=(4, 2))), ("dynamic-tree", dict(tree_budget=6)), ("auto", {})]
)
def test_tree_sampling_follows_target_distribution(strategy, extra):
    small_target = tiny_llama(vocab=V, seed=0, init=0.1)
    draft = tiny_llama(vocab=V, hidden=32, layers=1, heads=2, kv_heads=1, seed=5)
    spec_model = specdec.wrap(small_target, draft, strategy=strategy, **extra)
    if strategy == "auto":  # costs under which drafting pays, so auto verifies trees here
        spec_model.cost_profile = CostProfile(draft_level_seconds=1e-4, verify_seconds={1: 0.01, 65: 0.012})
    ids = prompt(5, 3, vocab=V)
    joint = exact_joint(small_target, ids, **SAMPLE_KWARGS)
    counts = sample_pairs(spec_model, ids, draws=1200, seed=9, **SAMPLE_KWARGS)
    assert chi_square_pvalue(counts, joint) > 1e-3
    spec_model.generate(ids, max_new_tokens=40, **SAMPLE_KWARGS)
    assert spec_model.stats.accepted_tokens > 0 and max(spec_model.stats.draft_lengths) > 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strategy="chain", tree=(2, 2)), 'only used with strategy="tree"'),
        (dict(strategy="chain", tree_budget=8), 'only used with strategy="dynamic-tree"'),
        (dict(strategy="dynamic-tree", tree_budget=0), "tree_budget must be"),
        (dict(strategy="tree", tree=()), "not a tree specification"),
        (dict(strategy="tree", tree=[(0,), (0, 1)]), "skips sibling rank"),
        (dict(strategy="tree", tree=(1,) * 70), "does not fit the target's context"),
        (dict(strategy="tree", tree=(2, 2), num_draft_tokens=3), "num_draft_tokens is for chains"),
    ],
)
def test_bad_tree_options(kwargs, message):
    target = tiny_llama(seed=0, context=64)
    with pytest.raises(ValueError, match=message):
        specdec.wrap(target, target, **kwargs)
