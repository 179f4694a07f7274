"""The runner's attention through every tree_attention backend: greedy output stays the target's own.

SPECDEC_ATTENTION picks the backend the runner's attention layers call during verification (and the
draft's chain steps). On CPU the Triton kernel runs under TRITON_INTERPRET=1, set before triton loads.
The tiny models have head dim 64, one of the sizes the kernel takes (TRITON_HEAD_DIMS).
"""

from __future__ import annotations

import importlib.util
import os

import torch

if not torch.cuda.is_available():  # as in test_kernels.py: compiled kernels on a GPU machine
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import specdec  # noqa: E402
from specdec.kernels import resolve_backend, triton_available  # noqa: E402
from specdec.runtime.llama_runner import LlamaRunner  # noqa: E402
from tests.test_batch import assert_rows_equal, expected_rows, left_padded  # noqa: E402
from tests.tiny_models import prompt, tiny_llama  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = [
    "eager",
    "sdpa",
    pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="no triton")),
]


def target_model() -> torch.nn.Module:
    """Head dim 64 (128 / 2 heads), two query heads per kv head."""
    return tiny_llama(seed=0, hidden=128, heads=2, kv_heads=1, layers=2)


def draft_model() -> torch.nn.Module:
    """Head dim 64 (64 / 1 head)."""
    return tiny_llama(hidden=64, layers=1, heads=1, kv_heads=1, seed=1)


@pytest.fixture(scope="module")
def target():
    return target_model()


@pytest.fixture(scope="module")
def draft():
    return draft_model()


@pytest.mark.parametrize("backend", BACKENDS)
def test_runner_calls_the_chosen_backend(monkeypatch, target, backend):
    monkeypatch.setenv("SPECDEC_ATTENTION", backend)
    if backend == "triton" and not triton_available("cpu"):
        pytest.skip("the Triton kernel cannot run on CPU here (interpreter off, or triton < 3.7)")
    calls = []
    import specdec.runtime.llama_runner as runner_module

    real = runner_module.tree_attention

    def spy(*args, **kwargs):
        calls.append(kwargs["backend"])
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "tree_attention", spy)
    runner = LlamaRunner(target)
    runner.extend(prompt(6, 0)[0], 1)
    if backend == "sdpa":
        assert calls == []  # the runner's own SDPA over its zero-initialised cache
    else:
        assert calls and set(calls) == {backend}
    probe = torch.empty(0, 0, 0, 64)
    assert resolve_backend(probe, None) == backend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy, kwargs", [("chain", {"num_draft_tokens": 3}), ("tree", {"tree": (2, 2)})])
def test_greedy_output_through_every_backend(monkeypatch, target, draft, backend, strategy, kwargs):
    monkeypatch.setenv("SPECDEC_ATTENTION", backend)
    if backend == "triton" and not triton_available("cpu"):
        pytest.skip("the Triton kernel cannot run on CPU here (interpreter off, or triton < 3.7)")
    spec = specdec.wrap(target, draft, strategy=strategy, **kwargs)
    ids = prompt(7, 900)
    expected = target.generate(ids, max_new_tokens=10, do_sample=False)
    assert torch.equal(spec.generate(ids, max_new_tokens=10), expected)
    # a batch: rows of different prefix lengths in one kernel call
    ids, mask, prompts = left_padded([5, 9], 901)
    want = expected_rows(target, prompts, 2, max_new_tokens=8, do_sample=False)
    assert_rows_equal(spec.generate(ids, attention_mask=mask, max_new_tokens=8), ids.shape[1], want, pad=2)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (the CPU twin is the interpreter test above)"
)
@pytest.mark.parametrize("strategy, kwargs", [("chain", {"num_draft_tokens": 3}), ("tree", {"tree": (2, 2)})])
def test_greedy_on_cuda_through_the_compiled_kernel(monkeypatch, strategy, kwargs):
    # the automatic choice sends fp16/bf16 to the kernel and float32 to SDPA; float32 keeps greedy
    # output comparable with transformers', so the compiled kernel is asked for by name here
    tree = torch.ones(2, 2, dtype=torch.bool)
    monkeypatch.delenv("SPECDEC_ATTENTION", raising=False)
    assert resolve_backend(torch.empty(0, 0, 0, 64, device="cuda", dtype=torch.float16), tree) == "triton"
    assert resolve_backend(torch.empty(0, 0, 0, 64, device="cuda"), tree) == "sdpa"
    monkeypatch.setenv("SPECDEC_ATTENTION", "triton")
    cuda_target = target_model().cuda()
    cuda_draft = draft_model().cuda()
    spec = specdec.wrap(cuda_target, cuda_draft, strategy=strategy, **kwargs)
    ids, mask, prompts = left_padded([5, 9], 901)
    want = [
        cuda_target.generate(p.cuda(), max_new_tokens=8, do_sample=False)[0, p.shape[1] :].cpu()
        for p in prompts
    ]
    out = spec.generate(ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=8).cpu()
    assert_rows_equal(out, ids.shape[1], want, pad=2)
