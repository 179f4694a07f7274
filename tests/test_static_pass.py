"""Fixed-shape runner passes (the unit a CUDA graph captures) against the runner's ordinary passes.

On CPU the static pass runs eagerly with the same arithmetic a captured graph replays: blocks padded
to their bucket, inputs as device tensors, attention over the whole cache through tree_attention.
"""

import pytest
import torch

import specdec
from specdec.core.tree import Tree
from specdec.runtime.llama_runner import LlamaRunner
from specdec.runtime.static_pass import BUCKETS, bucket
from tests.test_batch import assert_rows_equal, expected_rows, left_padded
from tests.tiny_models import prompt, tiny_llama


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0, hidden=64, heads=4, kv_heads=2)


def test_buckets():
    assert [bucket(n) for n in (1, 2, 3, 5, 9, 64, 65, 128)] == [1, 2, 4, 8, 16, 64, 128, 128]
    assert bucket(BUCKETS[-1] + 1) is None


def test_static_passes_equal_ordinary_passes(target):
    """Prefill (too long for a bucket: ordinary), decode, a tree with pending tokens, rows of different
    lengths, compaction: every logit equal to the ordinary runner's (1e-5), and one pass per shape."""
    static, plain = LlamaRunner(target, static=True), LlamaRunner(target)
    lengths = [150, 7, 30]
    for runner in (static, plain):
        runner.reset(3)
    block = torch.stack(
        [
            torch.cat([prompt(n, 60 + b)[0], torch.zeros(150 - n, dtype=torch.long)])
            for b, n in enumerate(lengths)
        ]
    )
    last = torch.tensor(lengths)[:, None] - 1
    a = static.extend_rows(block, lengths, None, None, last)
    b = plain.extend_rows(block, lengths, None, None, last)
    assert torch.allclose(a, b, atol=1e-5) and not static._passes  # 150 tokens: no bucket
    tree = Tree.from_branching((2, 2, 1))
    attention = tree.block_attention(1)[None]  # [1, 1 + T, 1 + T]
    tokens = torch.stack([prompt(len(tree) + 1, 70 + b)[0] for b in range(3)])  # [B, 1 + T]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), tree.depth_tensor()])
    positions = torch.tensor(lengths)[:, None] + offsets[None]
    rows = torch.arange(len(tree) + 1)[None].expand(3, -1)
    for _ in range(2):  # the second time reuses the captured shape
        a = static.extend_rows(tokens, [len(tree) + 1] * 3, positions, attention, rows)
        b = plain.extend_rows(tokens, [len(tree) + 1] * 3, positions, attention, rows)
        assert torch.allclose(a, b, atol=1e-5)
        paths = [[1, 2, 4], [], [2, 8]]
        starts = [n + 1 for n in lengths]
        kept = [[s + node for node in p] for s, p in zip(starts, paths, strict=True)]
        for runner in (static, plain):
            runner.compact_rows(starts, kept)
        assert static.lengths == plain.lengths
        step = torch.tensor([[5], [6], [7]])
        a = static.extend_rows(step, [1, 1, 1], None, None, 1)
        b = plain.extend_rows(step, [1, 1, 1], None, None, 1)
        assert torch.allclose(a, b, atol=1e-5)
        lengths = list(static.lengths)
        positions = torch.tensor(lengths)[:, None] + offsets[None]
    assert set(static._passes) == {(3, 16), (3, 1)}
    assert static._passes[(3, 16)].runs == 2


@pytest.mark.parametrize("strategy, kwargs", [("chain", {"num_draft_tokens": 3}), ("tree", {"tree": (2, 2)})])
def test_generate_through_static_passes(target, strategy, kwargs):
    """Greedy output, one prompt and a batch, with the target's and the draft's runners static."""
    draft = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1)
    spec = specdec.wrap(target, draft, strategy=strategy, **kwargs)
    spec._target_runner = LlamaRunner(target, static=True)
    spec._drafter.runner = LlamaRunner(draft, static=True)
    ids = prompt(9, 910)
    assert torch.equal(
        spec.generate(ids, max_new_tokens=16), target.generate(ids, max_new_tokens=16, do_sample=False)
    )
    assert spec._target_runner._passes and spec._drafter.runner._passes  # the static paths ran
    ids, mask, prompts = left_padded([5, 11, 3], 911)
    want = expected_rows(target, prompts, 2, max_new_tokens=12, do_sample=False)
    assert_rows_equal(spec.generate(ids, attention_mask=mask, max_new_tokens=12), ids.shape[1], want, pad=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_graphs_refused_without_a_cuda_model(target):
    with pytest.raises(ValueError, match="cuda_graphs=True needs the whole model on one CUDA device"):
        LlamaRunner(target, cuda_graphs=True)
    with pytest.raises(ValueError, match="cuda_graphs=True needs the whole model on one CUDA device"):
        specdec.wrap(target, target, strategy="chain", cuda_graphs=True)
    with pytest.raises(ValueError, match="cuda_graphs=True needs specdec's runtime"):
        specdec.wrap(target, target, strategy="chain", runtime="transformers", cuda_graphs=True)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (the CPU twin is the eager static pass above)"
)
@pytest.mark.parametrize("strategy, kwargs", [("chain", {"num_draft_tokens": 3}), ("tree", {"tree": (2, 2)})])
def test_cuda_graph_replay_is_exact(strategy, kwargs):
    cuda_target = tiny_llama(seed=0, hidden=64, heads=4, kv_heads=2).cuda()
    cuda_draft = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1).cuda()
    spec = specdec.wrap(cuda_target, cuda_draft, strategy=strategy, cuda_graphs=True, **kwargs)
    for seed in range(3):
        ids = prompt(9, 920 + seed).cuda()
        want = cuda_target.generate(ids, max_new_tokens=24, do_sample=False)
        assert torch.equal(spec.generate(ids, max_new_tokens=24), want)
    assert any(p._graph is not None for p in spec._target_runner._passes.values())
