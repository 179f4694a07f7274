"""The weight-bound benchmark's widened targets compute what the model they widen computes.

`benchmarks/bench_membound.py` widens the MLPs (`widen_mlps`: new units with zero down-projection
columns) and, with --hidden, the residual stream and the heads (`widen_hidden`: old weights in the
top-left block, new entries 0, RMSNorm rescaled). Both must leave the function unchanged: on a tiny random
Llama the float32 logits stay within rounding and greedy output is identical; the memory check counts
exactly the parameters the widening builds.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tests.tiny_models import prompt, tiny_llama

ROOT = Path(__file__).resolve().parent.parent


def _bench_membound():
    spec = importlib.util.spec_from_file_location("bench_membound", ROOT / "benchmarks" / "bench_membound.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def test_widened_targets_compute_the_same_function():
    bench = _bench_membound()
    ids = prompt(12, seed=4)  # [1, 12]
    reference = tiny_llama(hidden=64, heads=4, kv_heads=2, seed=3)
    expected_logits = reference(ids).logits  # [1, 12, V]
    expected = reference.generate(ids, max_new_tokens=16, do_sample=False)
    base = sum(p.numel() for p in reference.parameters())

    mlp_only = bench.widen_mlps(tiny_llama(hidden=64, heads=4, kv_heads=2, seed=3), 700)
    wide = bench.widen_mlps(
        bench.widen_hidden(tiny_llama(hidden=64, heads=4, kv_heads=2, seed=3), 160, 10, 5), 700
    )
    assert wide.config.hidden_size == 160 and wide.model.layers[0].self_attn.q_proj.out_features == 10 * 16
    for model, widths in ((mlp_only, None), (wide, (160, 10, 5))):
        assert (model(ids).logits - expected_logits).abs().max().item() < 1e-4
        assert torch.equal(model.generate(ids, max_new_tokens=16, do_sample=False), expected)
        built = sum(p.numel() for p in model.parameters())
        assert built == base + bench.added_parameters(reference.config, 700, widths)


def test_widening_must_keep_the_heads_per_key_value_head():
    bench = _bench_membound()
    with pytest.raises(ValueError, match="the same 2 query heads per key/value head"):
        bench.widen_hidden(tiny_llama(hidden=64, heads=4, kv_heads=2), 128, 8, 2)
