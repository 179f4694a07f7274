"""Batched generation (B > 1): per-row cache lengths, ragged acceptance, every row exact."""

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

import specdec
from specdec.core.tree import Tree
from specdec.planning.chain import DraftLengthController
from specdec.planning.costs import PROBE_EVERY, CostProfile
from specdec.runtime.llama_runner import LlamaRunner
from tests.test_generate_sampling import V, chi_square_pvalue, exact_joint
from tests.tiny_models import prompt, tiny_llama


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0, hidden=64, heads=4, kv_heads=2)


@pytest.fixture(scope="module")
def small_draft():
    return tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1)


def left_padded(lengths: list[int], seed: int, vocab: int = 96, pad: int = 0):
    """([B, L] ids, [B, L] mask, list of [1, L_b] prompts): prompts of different lengths, left-padded."""
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    prompts = []
    for b, n in enumerate(lengths):
        p = prompt(n, seed + b, vocab=vocab)
        ids[b, width - n :], mask[b, width - n :] = p[0], 1
        prompts.append(p)
    return ids, mask, prompts


def expected_rows(model, prompts, pad: int, **kwargs) -> list[torch.Tensor]:
    """Each prompt generated alone by the target, new tokens only."""
    return [model.generate(p, **kwargs)[0, p.shape[1] :] for p in prompts]


def assert_rows_equal(out: torch.Tensor, width: int, expected: list[torch.Tensor], pad: int) -> None:
    longest = max(e.shape[0] for e in expected)
    assert out.shape[1] == width + longest
    for b, row in enumerate(expected):
        new = out[b, width:]
        assert torch.equal(new[: row.shape[0]], row), f"row {b} differs from the target alone"
        assert bool((new[row.shape[0] :] == pad).all()), f"row {b} is not padded after it stopped"


# ---------------------------------------------------------------------- runner
def test_runner_rows_of_different_lengths_match_one_row_runners(target):
    """extend_rows / compact_rows / keep_rows give each row the logits a one-row runner gives it."""
    lengths = [7, 3, 11]
    seqs = [prompt(n, 40 + i)[0] for i, n in enumerate(lengths)]
    batch = LlamaRunner(target)
    batch.reset(3)
    singles = [LlamaRunner(target) for _ in lengths]
    width = max(lengths)
    block = torch.zeros(3, width, dtype=torch.long)
    for b, s in enumerate(seqs):
        block[b, : s.shape[0]] = s
    last = torch.tensor(lengths)[:, None] - 1
    got = batch.extend_rows(block, lengths, None, None, last)[:, 0]  # [B, V]
    for b, runner in enumerate(singles):
        assert torch.allclose(got[b], runner.extend(seqs[b])[0], atol=1e-5)
    assert batch.lengths == lengths

    # a tree verification on every row at its own offset, then different accepted paths per row
    tree = Tree.from_branching((2, 2))
    tokens = torch.stack([prompt(len(tree), 50 + b)[0] for b in range(3)])  # [B, T]
    positions = torch.tensor(lengths)[:, None] - 1 + tree.depth_tensor()[None]
    rows = torch.arange(len(tree))[None].expand(3, -1)
    got = batch.extend_rows(tokens, [len(tree)] * 3, positions, tree.ancestor_mask[None], rows)
    for b, runner in enumerate(singles):
        want = runner.extend(tokens[b], len(tree), positions[b], tree.ancestor_mask)
        assert torch.allclose(got[b], want, atol=1e-5)
    paths = [[1, 4], [], [0, 2]]
    batch.compact_rows(lengths, [[n + node for node in p] for n, p in zip(lengths, paths, strict=True)])
    for b, runner in enumerate(singles):
        runner.compact(lengths[b], [lengths[b] + node for node in paths[b]])
    assert batch.lengths == [r.length for r in singles] == [9, 3, 13]

    # decode one token per row, then drop the middle row and decode again
    step = torch.tensor([[5], [6], [7]])
    got = batch.extend_rows(step, [1, 1, 1], None, None, torch.zeros(3, 1, dtype=torch.long))[:, 0]
    for b, runner in enumerate(singles):
        assert torch.allclose(got[b], runner.extend(step[b])[0], atol=1e-5)
    batch.keep_rows([0, 2])
    step = torch.tensor([[8], [9]])
    got = batch.extend_rows(step, [1, 1], None, None, torch.zeros(2, 1, dtype=torch.long))[:, 0]
    for row, b in enumerate([0, 2]):
        assert torch.allclose(got[row], singles[b].extend(step[row])[0], atol=1e-5)


def test_runner_padding_tokens_are_never_attended(target):
    """A row with fewer real tokens than the block: its padding must not change any real logit."""
    runner = LlamaRunner(target)
    runner.reset(2)
    tokens = torch.tensor([[5, 6, 7], [8, 0, 0]])
    rows = torch.tensor([[2], [0]])
    a = runner.extend_rows(tokens, [3, 1], None, None, rows)
    runner.reset(2)
    b = runner.extend_rows(torch.tensor([[5, 6, 7], [8, 90, 91]]), [3, 1], None, None, rows)
    assert torch.allclose(a, b)
    assert runner.lengths == [3, 1]
    following = runner.extend_rows(
        torch.tensor([[9], [9]]), [1, 1], None, None, torch.zeros(2, 1, dtype=torch.long)
    )
    single = LlamaRunner(target)
    single.extend(torch.tensor([8]))
    assert torch.allclose(following[1, 0], single.extend(torch.tensor([9]))[0], atol=1e-5)


# ---------------------------------------------------------------------- greedy identity
@pytest.mark.parametrize(
    "strategy, kwargs",
    [
        ("chain", {}),
        ("chain", {"num_draft_tokens": 3}),
        ("tree", {"tree": (2, 2, 1)}),
        ("tree", {"tree": (3, 1)}),
        ("none", {}),
    ],
)
@pytest.mark.parametrize("draft_kind", ["same", "small"])
def test_greedy_rows_equal_the_target_alone(target, small_draft, strategy, kwargs, draft_kind):
    draft = None if strategy == "none" else (target if draft_kind == "same" else small_draft)
    spec = specdec.wrap(target, draft, strategy=strategy, **kwargs)
    for seed, lengths in ((100, [5, 9, 3]), (200, [4, 4, 12, 1])):
        ids, mask, prompts = left_padded(lengths, seed)
        expected = expected_rows(target, prompts, 0, max_new_tokens=24, do_sample=False)
        out = spec.generate(ids, attention_mask=mask, max_new_tokens=24)
        assert_rows_equal(out, ids.shape[1], expected, pad=2)  # no pad_token_id: EOS pads, as in HF
    if draft_kind == "same" and "num_draft_tokens" in kwargs:  # adaptive depths skip so costly a draft
        assert spec.stats.tau > 2.0  # the draft is the target: rows accept whole drafts


def test_rows_that_stop_early_are_padded_and_exact(target):
    """EOS ids chosen from the rows' own outputs make rows stop at different steps."""
    ids, mask, prompts = left_padded([6, 8, 3], 300)
    free = expected_rows(target, prompts, 0, max_new_tokens=30, do_sample=False, eos_token_id=None)
    eos = [int(free[0][4]), int(free[2][15])]  # row 0 stops early, row 2 later, row 1 maybe never
    spec = specdec.wrap(target, target, strategy="chain", num_draft_tokens=4)
    kwargs = dict(max_new_tokens=30, eos_token_id=eos, pad_token_id=1)
    expected = expected_rows(target, prompts, 1, do_sample=False, **kwargs)
    assert expected[0].shape[0] <= 5 < expected[2].shape[0] or expected[0].shape[0] != expected[1].shape[0]
    out = spec.generate(ids, attention_mask=mask, **kwargs)
    assert_rows_equal(out, ids.shape[1], expected, pad=1)


def test_processors_see_each_rows_own_context(target, small_draft):
    """Repetition penalty, n-gram bans and min_new_tokens apply per row as if the row were alone."""
    ids, mask, prompts = left_padded([7, 2, 10], 400)
    kwargs = dict(
        max_new_tokens=20, repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=5, eos_token_id=2
    )
    expected = expected_rows(target, prompts, 2, do_sample=False, **kwargs)
    for strategy, extra in (("chain", {"num_draft_tokens": 3}), ("tree", {"tree": (2, 1, 1)})):
        spec = specdec.wrap(target, small_draft, strategy=strategy, **extra)
        out = spec.generate(ids, attention_mask=mask, **kwargs)
        assert_rows_equal(out, ids.shape[1], expected, pad=2)


def test_stopping_criteria_per_row(target):
    class StopAfter(StoppingCriteria):
        def __init__(self, length: int) -> None:
            self.length = length

        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)

    ids, mask, prompts = left_padded([3, 9], 500)
    # criteria see each row with its padding, as in transformers' batch: both rows are 9 + 3 long
    stop = StoppingCriteriaList([StopAfter(12)])
    spec = specdec.wrap(target, target, strategy="chain", num_draft_tokens=3)
    out = spec.generate(ids, attention_mask=mask, max_new_tokens=20, stopping_criteria=stop, pad_token_id=0)
    expected = [target.generate(p, max_new_tokens=3, do_sample=False)[0, p.shape[1] :] for p in prompts]
    assert_rows_equal(out, ids.shape[1], expected, pad=0)
    batched = target.generate(
        ids, attention_mask=mask, max_new_tokens=20, stopping_criteria=stop, pad_token_id=0, do_sample=False
    )
    assert torch.equal(out, batched)
    # a criterion that stops one row: the other goes on, the stopped one is padded
    first = StoppingCriteriaList([StopWhenFirstTokenIs(int(ids[1, 0]))])
    out = spec.generate(ids, attention_mask=mask, max_new_tokens=6, stopping_criteria=first, pad_token_id=0)
    expected = [target.generate(prompts[0], max_new_tokens=6, do_sample=False)[0, 3:], expected[1][:1]]
    assert_rows_equal(out, ids.shape[1], expected, pad=0)


class StopWhenFirstTokenIs(StoppingCriteria):
    """Stops the rows whose first token (padding included) is `token`."""

    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, 0] == self.token


def test_return_dict_and_unpadded_batch(target):
    prompts = [prompt(6, 600), prompt(6, 601)]
    ids = torch.cat(prompts)
    spec = specdec.wrap(target, target, strategy="tree", tree=(2, 1))
    result = spec.generate(ids, max_new_tokens=10, return_dict_in_generate=True)
    expected = expected_rows(target, prompts, 0, max_new_tokens=10, do_sample=False)
    assert_rows_equal(result.sequences, 6, expected, pad=0)


# ---------------------------------------------------------------------- sampling
def sample_first_pairs(spec, ids, mask, calls: int, seed: int, **kwargs) -> tuple[torch.Tensor, int]:
    """([B, V, V] counts of each row's first two sampled tokens over `calls` batched calls, tokens
    drafted in all)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.zeros(ids.shape[0], V, V)
    width, drafted = ids.shape[1], 0
    for _ in range(calls):
        out = spec.generate(ids, attention_mask=mask, max_new_tokens=3, generator=g, **kwargs)
        drafted += spec.stats.drafted_tokens
        for b in range(ids.shape[0]):
            first, second = out[b, width : width + 2].tolist()
            counts[b, first, second] += 1
    return counts, drafted


@pytest.mark.parametrize("strategy, kwargs", [("chain", {"num_draft_tokens": 2}), ("tree", {"tree": (2, 1)})])
def test_sampled_rows_follow_the_target_distribution(monkeypatch, strategy, kwargs):
    """Chi-square per row; the tree is held at its full depth (batched trees otherwise choose their
    depth from measured costs, which on these tiny models is mostly 0: no tree would be tested)."""
    target = tiny_llama(vocab=V, seed=0, init=0.1)
    draft = tiny_llama(vocab=V, hidden=32, layers=1, heads=2, kv_heads=1, seed=5, init=0.1)
    sample_kwargs = dict(do_sample=True, temperature=0.9, top_k=6, eos_token_id=None)
    ids, mask, prompts = left_padded([5, 3, 7], 700, vocab=V)
    spec = specdec.wrap(target, draft, strategy=strategy, **kwargs)
    depth = spec.config.static_tree.depth if strategy == "tree" else spec.config.num_draft_tokens
    fixed = DraftLengthController(depth, fixed_k=depth)
    monkeypatch.setattr(spec, "_planner", lambda do_sample, batch: fixed)
    counts, drafted = sample_first_pairs(spec, ids, mask, 700, 11, **sample_kwargs)
    assert drafted > 700  # every call drafted
    for b, p in enumerate(prompts):
        joint = exact_joint(target, p, **sample_kwargs)
        assert chi_square_pvalue(counts[b], joint) > 1e-3, f"row {b}"
    # the statistic can fail: row 0's counts against a half-and-half mix with row 1's distribution
    mix = 0.5 * exact_joint(target, prompts[0], **sample_kwargs) + 0.5 * exact_joint(
        target, prompts[1], **sample_kwargs
    )
    assert chi_square_pvalue(counts[0], mix) < 1e-6


# ---------------------------------------------------------------------- adaptive depth
def test_controller_falls_back_to_no_draft_and_probes():
    costs = CostProfile(draft_level_seconds=1.0, verify_seconds={1: 1.0, 2: 2.0, 9: 9.0})
    controller = DraftLengthController(8, costs=costs, min_k=0)
    choices = [controller.choose() for _ in range(2 * PROBE_EVERY + 2)]
    assert choices.count(0) == len(choices) - 2 and choices.count(1) == 2  # probes only
    cheap = CostProfile(draft_level_seconds=0.05, verify_seconds={1: 1.0, 9: 1.1})
    assert DraftLengthController(8, costs=cheap, min_k=0).choose() > 0


# ---------------------------------------------------------------------- bad input
def test_batch_bad_input(target, small_draft):
    ids, mask, _ = left_padded([4, 6], 800)
    spec = specdec.wrap(target, small_draft, strategy="chain")
    with pytest.raises(ValueError, match="does not match input_ids"):
        spec.generate(ids, attention_mask=mask[:, 1:], max_new_tokens=4)
    right = torch.flip(mask, dims=[1])
    with pytest.raises(ValueError, match="row 0 has padding after its first real token"):
        spec.generate(ids, attention_mask=right, max_new_tokens=4)
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match="row 1 masks every token"):
        spec.generate(ids, attention_mask=empty, max_new_tokens=4)
    with pytest.raises(ValueError, match="streamer needs batch size 1"):
        spec.generate(ids, attention_mask=mask, max_new_tokens=4, streamer=object())
    with pytest.raises(ValueError, match="output_scores / output_logits"):
        spec.generate(
            ids, attention_mask=mask, max_new_tokens=4, output_scores=True, return_dict_in_generate=True
        )
    # max_new_tokens past the context is not refused (rows stop there with a warning); a prompt longer
    # than the context is
    long_ids, long_mask, _ = left_padded([4, 257], 810)
    with pytest.raises(ValueError, match="row 1 .* longer than the target's context of 256"):
        spec.generate(long_ids, attention_mask=long_mask, max_new_tokens=4)


def test_tree_depth_controller_prices_the_nodes_of_each_depth():
    """A static tree cut at depth k verifies nodes[k] tokens: a wide last level that costs more than
    it returns is left off, and with cheap verification the whole tree is drafted."""
    nodes = [0, 2, 4, 36]  # (2, 1, 8): depth 3 adds 32 nodes
    costs = CostProfile(draft_level_seconds=0.01, verify_seconds={1: 1.0, 5: 1.05, 37: 3.0})
    controller = DraftLengthController(3, costs=costs, min_k=0, nodes=nodes)
    assert controller.choose() == 2
    flat = CostProfile(draft_level_seconds=0.01, verify_seconds={1: 1.0, 37: 1.01})
    assert DraftLengthController(3, costs=flat, min_k=0, nodes=nodes).choose() == 3


def test_seeded_batched_sampling_repeats(target, small_draft):
    """Sampling plans with the measured profile (no refinement), so the same seed gives the same rows."""
    ids, mask, _ = left_padded([4, 7], 1000)
    for strategy, kwargs in (("chain", {}), ("tree", {"tree": (2, 1)})):
        spec = specdec.wrap(target, small_draft, strategy=strategy, **kwargs)
        runs = [
            spec.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=12,
                do_sample=True,
                generator=torch.Generator().manual_seed(3),
            )
            for _ in range(2)
        ]
        assert torch.equal(runs[0], runs[1])


def repetitive_batch(lengths: list[int], seed: int, vocab: int = 96):
    """Left-padded prompts that repeat themselves, so prompt lookup finds copies."""
    _, _, prompts = left_padded(lengths, seed, vocab=vocab)
    prompts = [torch.cat([p, p, p[:, :2]], dim=1) for p in prompts]
    width = max(p.shape[1] for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, width - p.shape[1] :], mask[b, width - p.shape[1] :] = p[0], 1
    return ids, mask, prompts


@pytest.mark.parametrize("kwargs", [{}, {"num_draft_tokens": 3}])
def test_batched_prompt_lookup_rows_equal_the_target_alone(target, kwargs):
    """Rows with and without n-gram matches in one batch; each row exact."""
    ids, mask, prompts = repetitive_batch([4, 9, 2], 1100)
    spec = specdec.wrap(target, None, strategy="prompt-lookup", **kwargs)
    expected = expected_rows(target, prompts, 2, max_new_tokens=20, do_sample=False)
    out = spec.generate(ids, attention_mask=mask, max_new_tokens=20)
    assert_rows_equal(out, ids.shape[1], expected, pad=2)
    if kwargs:
        assert spec.stats.drafted_tokens > 0


def test_batched_prompt_lookup_sampling_follows_the_target_distribution():
    target = tiny_llama(vocab=V, seed=0, init=0.1)
    sample_kwargs = dict(do_sample=True, temperature=0.9, top_k=6, eos_token_id=None)
    ids, mask, prompts = repetitive_batch([5, 3], 1200, vocab=V)
    spec = specdec.wrap(target, None, strategy="prompt-lookup", num_draft_tokens=2)
    counts, drafted = sample_first_pairs(spec, ids, mask, 800, 13, **sample_kwargs)
    assert drafted > 800  # copies were proposed on most calls
    for b, p in enumerate(prompts):
        assert chi_square_pvalue(counts[b], exact_joint(target, p, **sample_kwargs)) > 1e-3, f"row {b}"


# ---------------------------------------------------------------------- every strategy
def repetitive_rows(lengths: list[int], seed: int):
    """Left-padded rows whose ends repeat earlier stretches (n-gram copies exist), and the prompts."""
    rows = []
    for b, n in enumerate(lengths):
        base = prompt(n, seed + b)
        rows.append(torch.cat([base, prompt(2, seed + 50 + b), base[:, : max(1, n - 2)]], dim=1))
    width = max(r.shape[1] for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - r.shape[1] :], mask[b, width - r.shape[1] :] = r[0], 1
    return ids, mask, rows


FLAT_COSTS = CostProfile(draft_level_seconds=1e-4, verify_seconds={1: 0.01, 65: 0.0101}, draft_measured=True)


@pytest.mark.parametrize(
    "strategy, kwargs",
    [("dynamic-tree", {"tree_budget": 8}), ("hybrid", {}), ("auto", {}), ("prompt-lookup", {}), ("tree", {})],
)
@pytest.mark.parametrize("runtime", ["specdec", "transformers"])
def test_every_strategy_runs_batches(target, small_draft, strategy, kwargs, runtime):
    """Every strategy at B = 3 with ragged prompts, on specdec's runner and on transformers' forward:
    each row equals the target alone (greedy); tree strategies verify branching trees."""
    draft = None if strategy == "prompt-lookup" else small_draft
    spec = specdec.wrap(target, draft, strategy=strategy, runtime=runtime, **kwargs)
    ids, mask, rows = repetitive_rows([5, 8, 3], 900)
    if strategy in ("auto", "tree"):
        spec.cost_profiles[3] = FLAT_COSTS  # verification nearly free: trees are planned
    expected = expected_rows(target, rows, 0, max_new_tokens=20, do_sample=False)
    out = spec.generate(ids, attention_mask=mask, max_new_tokens=20)
    assert_rows_equal(out, ids.shape[1], expected, pad=2)
    assert spec.stats.runtime == ("transformers" if runtime == "transformers" else "specdec")
    if strategy in ("dynamic-tree", "hybrid", "auto", "tree"):
        assert spec.stats.tree_passes > 0, strategy
    else:
        assert spec.stats.drafted_tokens > 0


@pytest.mark.parametrize("strategy", ["dynamic-tree", "hybrid", "auto"])
def test_sampled_rows_of_adaptive_strategies_follow_the_target(strategy):
    """Per-row chi-square of the first two sampled tokens for per-row dynamic trees, hybrid trees
    (chosen nodes merged with each row's n-gram copies) and auto's plans."""
    target = tiny_llama(vocab=V, seed=0, init=0.1)
    draft = tiny_llama(vocab=V, hidden=32, layers=1, heads=2, kv_heads=1, seed=5, init=0.1)
    sample_kwargs = dict(do_sample=True, temperature=0.9, top_k=6, eos_token_id=None)
    ids, mask, prompts = left_padded([5, 3], 710, vocab=V)
    spec = specdec.wrap(
        target, draft, strategy=strategy, **({"tree_budget": 6} if strategy == "dynamic-tree" else {})
    )
    spec.cost_profiles[2] = FLAT_COSTS
    counts, drafted = sample_first_pairs(spec, ids, mask, 600, 13, **sample_kwargs)
    assert drafted > 600
    for b, p in enumerate(prompts):
        joint = exact_joint(target, p, **sample_kwargs)
        assert chi_square_pvalue(counts[b], joint) > 1e-3, f"row {b}"
