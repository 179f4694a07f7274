"""runtime="compiled": the runner's passes through torch.compile against its eager passes (1e-5).

The compiled graph takes where each row starts, how many columns it attends and how many logit
rows it returns as tensors or symbolic sizes, so a handful of graphs serve every step; these tests
drive every kind of pass through it and compare with the same runner uncompiled.
"""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import specdec
from specdec.core.tree import Tree
from specdec.runtime.factory import make_runner
from specdec.runtime.llama_runner import LlamaRunner
from tests.test_batch import assert_rows_equal, expected_rows, left_padded
from tests.tiny_models import prompt, tiny_llama


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0, hidden=64, heads=4, kv_heads=2)


def both(runners, *args):
    """Run extend_rows on (compiled, eager) and check the logits agree."""
    a, b = (runner.extend_rows(*args) for runner in runners)
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert runners[0].lengths == runners[1].lengths
    return a


def test_compiled_passes_equal_eager_passes(target):
    """One row: prefill, decode, a tree with pending tokens (block mask), the draft's tree feeding
    (absolute mask), compaction, rollback; logits equal to the eager runner's after each."""
    runners = (LlamaRunner(target, compiled=True), LlamaRunner(target))
    ids = prompt(20, 1)
    both(runners, ids[:, :12], [12], None, None, 3)  # prefill
    both(runners, ids[:, 12:13], [1], None, None, 1)  # decode
    tree = Tree.from_branching((2, 2, 1))
    attention = tree.block_attention(1)[None]  # [1, 1 + T, 1 + T]
    tokens = prompt(len(tree) + 1, 2)  # [1, 1 + T]
    positions = 13 + torch.cat([torch.zeros(1, dtype=torch.long), tree.depth_tensor()])[None]
    rows = torch.arange(len(tree) + 1)[None]
    both(runners, tokens, [len(tree) + 1], positions, attention, rows)  # verify, chosen rows
    for runner in runners:
        runner.compact(14, [14 + 1, 14 + 4])
    both(runners, ids[:, 13:15], [2], None, None, 2)  # a chain of 2 after the compaction
    cached = runners[0].length
    absolute = torch.ones(1, 3, cached + 3, dtype=torch.bool)
    absolute[0, 1, cached] = False  # the second new token does not see the first one
    absolute[0, 0, cached + 1 :] = False
    absolute[0, 1, cached + 2] = False
    both(runners, ids[:, 15:18], [3], None, absolute, 3)  # the draft's tree feeding
    for runner in runners:
        runner.truncate(10)  # rollback
    both(runners, ids[:, 10:11], [1], None, None, 1)
    with torch.no_grad():
        full = target(ids[:, :11]).logits[:, -1:]  # [1, 1, V]
    both(runners, ids[:, 11:12], [1], None, None, 1)
    fresh = LlamaRunner(target, compiled=True)
    assert torch.allclose(fresh.extend_rows(ids[:, :11], [11], None, None, 1), full, atol=1e-5)


def test_compiled_batch_rows(target):
    """Rows of different lengths (prefill, tree verify at different offsets, compaction of different
    paths, decode, keep_rows): equal to the eager runner."""
    runners = (LlamaRunner(target, compiled=True), LlamaRunner(target))
    lengths = [9, 4, 6]
    for runner in runners:
        runner.reset(3)
    block = torch.stack(
        [
            torch.cat([prompt(n, 30 + b)[0], torch.zeros(9 - n, dtype=torch.long)])
            for b, n in enumerate(lengths)
        ]
    )
    both(runners, block, lengths, None, None, torch.tensor(lengths)[:, None] - 1)
    tree = Tree.from_branching((2, 1))
    attention = tree.block_attention(0)[None]
    tokens = torch.stack([prompt(len(tree), 40 + b)[0] for b in range(3)])
    positions = torch.tensor(lengths)[:, None] - 1 + tree.depth_tensor()[None]
    both(runners, tokens, [len(tree)] * 3, positions, attention, len(tree))
    starts = list(lengths)
    for runner in runners:
        runner.compact_rows(starts, [[starts[0] + 1, starts[0] + 3], [], [starts[2] + 0]])
    both(runners, torch.tensor([[5], [6], [7]]), [1, 1, 1], None, None, 1)
    for runner in runners:
        runner.keep_rows([0, 2])
    both(runners, torch.tensor([[8], [9]]), [1, 1], None, None, 1)


@pytest.mark.parametrize("strategy, kwargs", [("chain", {"num_draft_tokens": 3}), ("tree", {"tree": (2, 2)})])
def test_generate_with_the_compiled_runtime(target, strategy, kwargs):
    """Greedy output identical to the target's own generate(), one prompt and a batch."""
    draft = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1)
    spec = specdec.wrap(target, draft, strategy=strategy, runtime="compiled", **kwargs)
    assert spec._target_runner.compiled and spec._drafter.runner.compiled
    for seed in range(2):
        ids = prompt(9 + seed, 930 + seed)
        want = target.generate(ids, max_new_tokens=16, do_sample=False)
        assert torch.equal(spec.generate(ids, max_new_tokens=16), want)
    ids, mask, prompts = left_padded([5, 11, 3], 931)
    want = expected_rows(target, prompts, 2, max_new_tokens=12, do_sample=False)
    assert_rows_equal(spec.generate(ids, attention_mask=mask, max_new_tokens=12), ids.shape[1], want, pad=2)


def test_compiled_runtime_needs_a_llama_layout():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=96, n_positions=64))
    with pytest.raises(ValueError, match='runtime="compiled" needs a Llama-layout model'):
        make_runner(gpt2, "compiled")


def test_compiled_runtime_on_cpu_needs_a_compiler(target, monkeypatch):
    monkeypatch.setattr("specdec.runtime.llama_runner.shutil.which", lambda name: None)
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        LlamaRunner(target, compiled=True)


def test_graphs_are_compiled_at_the_first_pass_only(target):
    """After the first pass of a batch size compiled every variant, whole generations (prefill,
    decode, chains and trees of other sizes, rollbacks) compile nothing more."""
    from torch._dynamo.utils import counters

    draft = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=2)
    spec = specdec.wrap(target, draft, strategy="auto", runtime="compiled")
    spec._target_runner.extend_rows(prompt(3, 940), [3], None, None, 1)  # the first pass compiles
    spec._drafter.model.runner.extend_rows(prompt(3, 940), [3], None, None, 1)
    graphs = counters["stats"]["unique_graphs"]
    for seed in range(3):
        ids = prompt(5 + 4 * seed, 941 + seed)
        want = target.generate(ids, max_new_tokens=20, do_sample=False)
        assert torch.equal(spec.generate(ids, max_new_tokens=20), want)
    assert counters["stats"]["unique_graphs"] == graphs
