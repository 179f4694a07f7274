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


@torch.no_grad()
def test_divergences_name_where_outputs_part_and_the_targets_gap_there():
    """bench_membound's divergence report: the first differing new token and the target's own logit
    gap between its token and the other method's there; identical outputs are not reported."""
    bench = _bench_membound()
    model = tiny_llama(seed=3, eos=None)
    ids = prompt(6, seed=4)  # [1, 6]
    reference = model.generate(ids, max_new_tokens=8, do_sample=False)  # [1, 14]
    other = reference.clone()
    logits = model(reference[:, :9]).logits[0, -1]  # after the prompt and 3 new tokens
    runner_up = int(logits.topk(2).indices[1])
    other[0, 9] = runner_up
    outputs = {("target", 0): reference, ("same", 0): reference.clone(), ("other", 0): other}
    (found,) = bench.divergences(model, [ids], outputs)
    assert (found["method"], found["prompt"], found["position"]) == ("other", 0, 3)
    assert found["target_token"] == int(reference[0, 9]) and found["method_token"] == runner_up
    assert found["gap"] == pytest.approx(float(logits.max() - logits[runner_up]), abs=1e-5)
    assert found["gap"] > 0
    assert "| other | 0 | 3 |" in bench.divergence_table([found])
