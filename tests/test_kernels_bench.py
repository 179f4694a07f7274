"""benchmarks/bench_attention.py builds each timed method right: on CPU, every method's output equals
the float64 reference (tree methods) or the chain reference (causal methods). Timing itself is CUDA-only."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from specdec.kernels import reference_tree_attention, triton_available  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "bench_attention", ROOT / "benchmarks" / "bench_attention.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name", ["sdpa-mask", "fa2-causal", "flex", "triton-tree", "triton-chain", "flash-kvcache"]
)
def test_bench_methods_compute_tree_attention(name):
    bench = load_bench()
    if name.startswith("triton") and not triton_available("cpu"):
        pytest.skip("the Triton kernel cannot run on CPU here (not installed, or triton < 3.7)")
    if name == "flash-kvcache":
        from specdec.kernels.flash import flash_attn_available

        if flash_attn_available():
            pytest.skip("flash-attn is installed: bench_attention.py times it on the GPU")
        with pytest.raises(RuntimeError, match="flash-attn"):  # flash-attn cannot be installed here
            bench.method_calls(name, [], 0, 1, None)
        return
    prefix, t = 37, 10
    inputs = [
        bench.make_inputs(4, 2, prefix, t, torch.float32, "cpu", prefix + t + 9, seed=s) for s in (0, 1)
    ]
    tree = bench.tree_for(t).ancestor_mask  # [T, T]
    chain = name in ("fa2-causal", "triton-chain")
    calls = bench.method_calls(name, inputs, prefix, t, tree, compile_flex=False)
    assert len(calls) == len(inputs)
    for call, (q, k, v, pl) in zip(calls, inputs, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flex_attention warns when not compiled
            out = call()
        ref = reference_tree_attention(q.double(), k.double(), v.double(), pl, None if chain else tree)
        assert (out.double() - ref).abs().max().item() < 1e-5


def test_bench_tree_is_a_real_tree():
    bench = load_bench()
    for t in bench.NEW_ROWS:
        tree = bench.tree_for(t)
        assert len(tree) == t and not tree.is_chain and tree.depth >= 2


def test_bench_exits_cleanly_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    assert load_bench().main([]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out


def load_steps():
    spec = importlib.util.spec_from_file_location(
        "bench_steps_gpu", ROOT / "benchmarks" / "bench_steps_gpu.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_projected_step_model_counts_the_published_models():
    """The roofline model's weights are the published parameter counts (embedding and norms aside),
    and its chain speedup at an assumed acceptance a is Leviathan et al.'s closed form."""
    steps = load_steps()
    published = {"llama2-7b": 6.74e9, "llama2-13b": 13.02e9, "llama2-70b": 68.98e9, "tinyllama-1.1b": 1.10e9}
    for shape, params in published.items():
        hidden, _, _, _, _, vocab = steps.SHAPES[shape]
        assert abs(steps.matmul_params(shape) + vocab * hidden - params) / params < 0.01, shape
    moved, flops = steps.step_cost("llama2-7b", 1, 2048)
    kv = 2 * 32 * 4096 * 2 * 2049  # K and V, 32 layers, 4096 wide, bf16, prefix + the new row
    assert moved == 2 * steps.matmul_params("llama2-7b") + kv
    assert flops > 2 * steps.matmul_params("llama2-7b")  # plus attention
    # memory-bound at batch 1: a verify of 64 rows costs what a decode costs on every GPU listed
    for hardware in steps.HARDWARE:
        decode = steps.roofline_ms(steps.step_cost("llama2-7b", 1, 2048), hardware)
        assert steps.roofline_ms(steps.step_cost("llama2-7b", 64, 2048), hardware) < 1.01 * decode
        assert steps.compute_bound_rows("llama2-7b", 2048, hardware) > 64
    alpha, k = 0.7, 3
    speedup, best_k, tokens = steps.chain_speedup(
        [alpha**i for i in range(1, k + 1)], 1.0, 0.0, lambda rows: 1.0
    )
    assert best_k == k and abs(tokens - (1 - alpha ** (k + 1)) / (1 - alpha)) < 1e-12
    assert abs(speedup - tokens) < 1e-12  # free drafts and verify = decode: speedup = tokens per step


def test_projection_prints_without_a_gpu(capsys):
    assert load_steps().main(["--project", "--prefix", "2048"]) == 0
    out = capsys.readouterr().out
    assert "PROJECTED" in out and "ASSUMED a=0.7" in out and "MEASURED-acceptance" in out
    assert out.count("| H200 |") == 7  # 4 step rows + 3 speedup rows


def test_tensor_parallel_projection_splits_weights_and_adds_collectives(capsys):
    """--tp: per-GPU weight bytes halve from 1 GPU to 2, no collective on one GPU, and each collective
    is the assumed latency plus a ring's 2 (tp - 1) / tp of the payload over the bus bandwidth."""
    steps = load_steps()
    shape, hardware = steps.TP_TARGET, "H100 SXM"
    hidden, _, layers, _, _, vocab = steps.SHAPES[shape]
    assert steps.tp_weight_bytes(shape, 2) == steps.tp_weight_bytes(shape, 1) / 2
    assert steps.tp_weight_bytes(shape, 1) == 2 * steps.matmul_params(shape)
    assert steps.tp_comm_ms(shape, 16, 1, hardware) == 0.0
    assert steps.tp_step_ms(shape, 16, 2048, 1, hardware) == steps._verify_ms(shape, 2048, hardware, 16)
    bus, latency = steps.NVLINK_BUS[hardware], steps.ALLREDUCE_LATENCY_S
    all_reduce = latency + 2 * (4 - 1) / 4 * (2 * 16 * hidden) / bus
    gather = latency + (4 - 1) / 4 * (2 * 16 * vocab) / bus
    expected = 1000 * (2 * layers * all_reduce + gather)
    assert abs(steps.tp_comm_ms(shape, 16, 4, hardware) - expected) < 1e-12
    moved, flops = steps.step_cost(shape, 16, 2048)
    split = steps.roofline_ms((moved / 4, flops / 4), hardware) + expected
    assert abs(steps.tp_step_ms(shape, 16, 2048, 4, hardware) - split) < 1e-12
    with pytest.raises(ValueError, match="must divide"):
        steps.check_tp([3])
    assert steps.main(["--project", "--tp", "1,2,4,8"]) == 0
    out = capsys.readouterr().out
    assert out.count("PROJECTED") == 2 and "ASSUMED 10 us per collective" in out
    assert len(re.findall(r"^\| H200 \| [1248] \| ", out, flags=re.M)) == 4


def test_gpu_check_dry_run(tmp_path):
    """benchmarks/gpu_check.sh --dry-run (what it does on any machine without CUDA): every step that
    needs no CUDA runs and passes (interpreter kernel smoke, tiny step benchmark with greedy identity,
    projected step model), the CUDA steps are listed as skipped, and the summary table comes last."""
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils' timeout")
    env = dict(os.environ, OUT=str(tmp_path))
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    summary = run.stdout[run.stdout.index("=== summary") :]
    assert "DRY RUN" in summary
    for name in ("kernel-tests", "other-cuda-tests", "bench-flex"):
        assert re.search(rf"\| {name} +\| skipped \(no CUDA", summary), name
    for name in ("attention-cpu-smoke", "bench-steps-dry-run", "step-model"):
        assert re.search(rf"\| {name} +\| ok +\|", summary), name
    assert "2 identical of 2 greedy checks" in summary
    assert "PROJECTED H100, 7B: chain" in summary
