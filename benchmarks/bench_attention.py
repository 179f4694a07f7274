"""Tree-verification attention on a GPU: the Triton kernel against SDPA, flex_attention and FlashAttention-2.

Llama-2-7B (32 query / 32 kv heads) and Llama-2-70B (64 / 8) heads, D 128, bf16, batch 1, prefix
512 / 2048 / 4096, T 16 / 64 new rows, in a preallocated cache of 4096 + T + 64 slots. Methods:
- triton-tree: specdec.kernels.tree_attention(backend="triton") with a tree mask (max_prefix_len given)
- triton-chain: the same kernel on a chain (tree_mask None), the like-for-like partner of fa2-causal
- sdpa-mask: F.scaled_dot_product_attention with a dense bool mask (prebuilt, not timed)
- flex: torch.compile(flex_attention) with a block mask (prefix 2048 only unless --flex-all: it
  compiles once per shape)
- fa2-causal: SDPA's FlashAttention-2 backend on the lower-right causal block of the same T (the
  yardstick of issue 6: what a tree kernel cannot beat, a chain of the same size)
- flash-kvcache: flash-attn's flash_attn_with_kvcache on the chain, when the package imports

Goals (issue 6): triton-tree >= 2x faster than sdpa-mask, within 1.3x of fa2-causal at prefix 2048.
Times are GPU microseconds per call: CUDA events around a CUDA-graph replay of several calls (eager
back-to-back calls when a method cannot be captured, marked *), median over repeats; the inputs
rotate over enough K/V copies to keep the L2 cache cold, as in a real forward (each layer has its
own cache). Any method that fails prints "n/a (reason)" and the others still run.

    python benchmarks/bench_attention.py --check         # verify on the GPU first, then time
    python benchmarks/bench_attention.py --tune          # also sweep kernel block configs
    python benchmarks/bench_attention.py --cpu-smoke     # no GPU: a tiny interpreter run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

MODELS = {"llama2-7b": (32, 32), "llama2-70b": (64, 8)}
HEAD_DIM = 128
PREFIXES = (512, 2048, 4096)
NEW_ROWS = (16, 64)
L2_BYTES = 50 * 2**20  # H100: 50 MiB; the input copies together exceed 2x this


def tree_for(t: int):
    """A T-node tree: the first T nodes of a (4, 4, 4) branching tree (ancestor-closed)."""
    from specdec.core.tree import Tree

    return Tree.from_parents(Tree.from_branching((4, 4, 4, 4)).parents[:t])


def make_inputs(hq: int, hkv: int, prefix: int, t: int, dtype, device: str, cache_len: int, seed: int = 0):
    """q [1, Hq, T, D], k/v [1, Hkv, cache_len, D] with prefix + T valid rows, prefix_lens [1]."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(1, hq, t, HEAD_DIM, generator=gen, device=device, dtype=dtype)
    k = torch.randn(1, hkv, cache_len, HEAD_DIM, generator=gen, device=device, dtype=dtype)
    v = torch.randn(1, hkv, cache_len, HEAD_DIM, generator=gen, device=device, dtype=dtype)
    prefix_lens = torch.tensor([prefix], dtype=torch.int32, device=device)
    return q, k, v, prefix_lens


# ------------------------------------------------------------------------------------------ timing
def time_us(calls: list[Callable[[], object]], repeats: int) -> tuple[float, bool]:
    """(median GPU microseconds per call, captured in a CUDA graph?) for a list of equivalent calls."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (compiles) outside any capture
        for _ in range(2):
            for call in calls:
                call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = None
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for call in calls:
                call()
        graph.replay()
        torch.cuda.synchronize()
    except Exception:  # not capturable: time eager back-to-back calls instead
        graph = None
        torch.cuda.synchronize()

    def run_all():
        if graph is not None:
            graph.replay()
        else:
            for call in calls:
                call()

    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run_all()
        end.record()
        end.synchronize()
        samples.append(1000 * start.elapsed_time(end) / len(calls))
    return statistics.median(samples), graph is not None


# ----------------------------------------------------------------------------------------- methods
def method_calls(
    name: str, inputs: list[tuple], prefix: int, t: int, tree_mask, config=None, compile_flex: bool = True
):
    """One closure per input copy for method `name` (raises when the method is unavailable).

    Chain methods (triton-chain, fa2-causal, flash-kvcache) ignore tree_mask: they compute the causal
    block. compile_flex=False runs flex_attention eagerly (slow; lets tests check the mask on CPU)."""
    import torch
    import torch.nn.functional as F

    from specdec.kernels import dense_tree_mask, tree_attention

    scale = 1.0 / math.sqrt(HEAD_DIM)
    used = prefix + t
    calls = []
    if name in ("triton-tree", "triton-chain"):
        mask = tree_mask if name == "triton-tree" else None
        if config is None:
            for q, k, v, pl in inputs:
                calls.append(
                    lambda q=q, k=k, v=v, pl=pl: tree_attention(
                        q, k, v, pl, mask, backend="triton", max_prefix_len=prefix
                    )
                )
        else:
            from specdec.kernels.triton_tree import triton_tree_attention

            for q, k, v, pl in inputs:
                calls.append(
                    lambda q=q, k=k, v=v, pl=pl: triton_tree_attention(
                        q, k, v, pl, mask, scale, max_prefix_len=prefix, config=config
                    )
                )
        return calls
    if name == "sdpa-mask":
        q0, _, _, pl0 = inputs[0]
        dense = dense_tree_mask(pl0, tree_mask, t, used)[:, None]  # [1, 1, T, P + T]
        gqa = q0.shape[1] != inputs[0][1].shape[1]
        for q, k, v, _ in inputs:
            ks, vs = k[:, :, :used], v[:, :, :used]
            calls.append(
                lambda q=q, ks=ks, vs=vs: F.scaled_dot_product_attention(
                    q, ks, vs, attn_mask=dense, scale=scale, enable_gqa=gqa
                )
            )
        return calls
    if name == "fa2-causal":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.attention.bias import causal_lower_right

        gqa = inputs[0][0].shape[1] != inputs[0][1].shape[1]
        bias = causal_lower_right(t, used)

        def fa2(q, ks, vs):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, ks, vs, attn_mask=bias, scale=scale, enable_gqa=gqa)

        for q, k, v, _ in inputs:
            ks, vs = k[:, :, :used], v[:, :, :used]
            calls.append(lambda q=q, ks=ks, vs=vs: fa2(q, ks, vs))
        return calls
    if name == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        tree_dev = tree_mask.to(inputs[0][0].device)

        def mask_mod(b, h, q_idx, kv_idx):
            j = kv_idx - prefix
            return (kv_idx < prefix) | ((j >= 0) & tree_dev[q_idx, j.clamp(0, t - 1)])

        block_mask = create_block_mask(mask_mod, None, None, t, used, device=inputs[0][0].device)
        flex = torch.compile(flex_attention, dynamic=False) if compile_flex else flex_attention
        gqa = inputs[0][0].shape[1] != inputs[0][1].shape[1]
        for q, k, v, _ in inputs:
            ks, vs = k[:, :, :used], v[:, :, :used]
            calls.append(
                lambda q=q, ks=ks, vs=vs: flex(q, ks, vs, block_mask=block_mask, scale=scale, enable_gqa=gqa)
            )
        return calls
    if name == "flash-kvcache":
        from specdec.kernels.flash import flash_attn_available, flash_chain_attention

        if not flash_attn_available():
            raise RuntimeError("flash-attn not installed")
        for q, k, v, pl in inputs:
            calls.append(lambda q=q, k=k, v=v, pl=pl: flash_chain_attention(q, k, v, pl, scale, False))
        return calls
    raise ValueError(name)


METHODS = ("triton-tree", "triton-chain", "sdpa-mask", "flex", "fa2-causal", "flash-kvcache")
TUNE_CONFIGS = [
    {"block_m": bm, "block_n": bn, "num_warps": w, "num_stages": s}
    for bm, bn, w, s in [
        (16, 64, 4, 2),
        (16, 128, 4, 3),
        (32, 64, 4, 2),
        (64, 64, 4, 2),
        (64, 64, 4, 3),
        (64, 128, 8, 2),
        (128, 64, 8, 2),
        (128, 32, 4, 2),
    ]
]


def short_reason(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text[:70]


# ------------------------------------------------------------------------------------------- check
def check_on_gpu(dtypes) -> bool:
    """Kernel vs the float64 reference on the benchmark shapes (tree and chain, split-K on/off)."""
    import torch

    from specdec.kernels import reference_tree_attention, tree_attention

    ok = True
    print("| check | dtype | T | prefix | kernel max err | sdpa same-dtype err | ok |")
    print("|---|---|---:|---:|---:|---:|---|")
    for dtype in dtypes:
        for model, (hq, hkv) in MODELS.items():
            for t in NEW_ROWS:
                for prefix, hint in ((2048, True), (4096, False), (300, True)):
                    cache_len = max(PREFIXES) + t + 64
                    q, k, v, pl = make_inputs(hq, hkv, prefix, t, dtype, "cuda", cache_len, seed=prefix + t)
                    k[:, :, prefix + t :] = float("nan")  # garbage past the used slots must not leak
                    v[:, :, prefix + t :] = float("inf")
                    for mask in (tree_for(t).ancestor_mask.cuda(), None):
                        kwargs = {"max_prefix_len": prefix} if hint else {}
                        out, lse = tree_attention(
                            q, k, v, pl, mask, return_lse=True, backend="triton", **kwargs
                        )
                        ref, ref_lse = reference_tree_attention(
                            q.double(), k.double(), v.double(), pl, mask, return_lse=True
                        )
                        torch_out = tree_attention(q, k, v, pl, mask, backend="sdpa")
                        err = (out.double() - ref).abs().max().item()
                        torch_err = (torch_out.double() - ref).abs().max().item()
                        lse_err = (lse.double() - ref_lse.double()).abs().max().item()
                        good = (
                            math.isfinite(err)
                            and err <= 2 * torch_err + (1e-3 if dtype == torch.bfloat16 else 1e-4)
                            and lse_err < 1e-3
                        )
                        ok &= good
                        what = f"{model} {'tree' if mask is not None else 'chain'}"
                        print(
                            f"| {what} | {str(dtype)[6:]} | {t} | {prefix}{'' if hint else ' (no hint)'} "
                            f"| {err:.2e} | {torch_err:.2e} | {'yes' if good else 'NO'} |"
                        )
    return ok


# ------------------------------------------------------------------------------------------- bench
def bench(args) -> list[dict]:
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", end="")
    try:
        import triton

        print(f", triton {triton.__version__}", end="")
    except ImportError:
        print(", triton not installed", end="")
    print(f", {args.dtype}, batch 1, {time.strftime('%Y-%m-%d')}")
    results = []
    header = ["model", "P", "T", *METHODS, "tree/sdpa-mask", "tree/fa2-causal"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for model, (hq, hkv) in MODELS.items():
        for t in NEW_ROWS:
            cache_len = max(max(PREFIXES), *(int(p) for p in args.prefixes.split(","))) + t + 64
            bytes_per_copy = 2 * hkv * cache_len * HEAD_DIM * 2
            copies = max(1, min(16, math.ceil(2 * L2_BYTES / bytes_per_copy)))
            inputs = [make_inputs(hq, hkv, 0, t, dtype, "cuda", cache_len, seed=i) for i in range(copies)]
            tree_mask = tree_for(t).ancestor_mask.cuda()
            for prefix in (int(p) for p in args.prefixes.split(",")):
                for *_, pl in inputs:
                    pl.fill_(prefix)
                row = {"model": model, "P": prefix, "T": t}
                for name in METHODS:
                    if name not in args.methods.split(","):
                        row[name] = "skipped"
                        continue
                    if name == "flex" and prefix != 2048 and not args.flex_all:
                        row[name] = "skipped (--flex-all)"
                        continue
                    try:
                        us, graphed = time_us(method_calls(name, inputs, prefix, t, tree_mask), args.repeats)
                        row[name] = us
                        row[name + ":graph"] = graphed
                    except Exception as error:  # one method failing must not stop the table
                        row[name] = f"n/a ({short_reason(error)})"
                if args.tune:
                    best = None
                    for config in TUNE_CONFIGS:
                        try:
                            us, _ = time_us(
                                method_calls("triton-tree", inputs, prefix, t, tree_mask, config),
                                args.repeats,
                            )
                        except Exception:
                            continue
                        if best is None or us < best[0]:
                            best = (us, config)
                    if best is not None:
                        row["tuned-tree"] = best[0]
                        row["tuned-config"] = best[1]
                results.append(row)
                print_row(row)
                sys.stdout.flush()
    return results


def ratio(a, b) -> str:
    return f"{a / b:.2f}" if isinstance(a, float) and isinstance(b, float) else "n/a"


def print_row(row: dict) -> None:
    cells = [row["model"], str(row["P"]), str(row["T"])]
    for name in METHODS:
        value = row[name]
        cells.append(
            f"{value:.1f}{'' if row.get(name + ':graph') else '*'}" if isinstance(value, float) else value
        )
    cells += [ratio(row["triton-tree"], row["sdpa-mask"]), ratio(row["triton-tree"], row["fa2-causal"])]
    print("| " + " | ".join(cells) + " |")
    if "tuned-tree" in row:
        print(f"|   tuned: {row['tuned-tree']:.1f} us with {row['tuned-config']} |")


def summarize(results: list[dict]) -> None:
    """The issue's two goals, at prefix 2048."""
    for row in results:
        if row["P"] != 2048:
            continue
        speedup = ratio(row["sdpa-mask"], row["triton-tree"])
        vs_fa2 = ratio(row["triton-tree"], row["fa2-causal"])
        print(
            f"goal check {row['model']} T={row['T']} P=2048: sdpa-mask/tree = {speedup} (goal >= 2), "
            f"tree/fa2-causal = {vs_fa2} (goal <= 1.3)"
        )


def cpu_smoke() -> int:
    """Tiny interpreter run: the kernel against the reference, no timings that mean anything."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    from specdec.kernels import reference_tree_attention, tree_attention, triton_available

    q, k, v, pl = make_inputs(4, 1, 100, 8, torch.float32, "cpu", 100 + 8 + 5)
    mask = tree_for(8).ancestor_mask
    ref = reference_tree_attention(q.double(), k.double(), v.double(), pl, mask)
    backends = ["sdpa", "eager"] + (["triton"] if triton_available("cpu") else [])
    for backend in backends:
        start = time.perf_counter()
        out = tree_attention(q, k, v, pl, mask, backend=backend)
        elapsed = 1e3 * (time.perf_counter() - start)
        print(f"cpu smoke {backend}: max err {(out.double() - ref).abs().max().item():.2e}, {elapsed:.1f} ms")
    if "triton" not in backends:
        print("cpu smoke: triton not available (install triton; TRITON_INTERPRET=1 must precede its import)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify the kernel on the GPU before timing")
    parser.add_argument("--check-only", action="store_true", help="verify, do not time")
    parser.add_argument("--tune", action="store_true", help="also sweep kernel block configs")
    parser.add_argument("--flex-all", action="store_true", help="time flex_attention at every prefix")
    parser.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of methods")
    parser.add_argument("--prefixes", default=",".join(map(str, PREFIXES)), help="comma-separated prefixes")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--cpu-smoke", action="store_true", help="no GPU: tiny interpreter run")
    args = parser.parse_args(argv)
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    if args.cpu_smoke:
        return cpu_smoke()
    import torch

    if not torch.cuda.is_available():
        print("bench_attention.py needs a CUDA GPU; nothing timed (try --cpu-smoke).")
        return 0
    ok = True
    if args.check or args.check_only:
        ok = check_on_gpu((torch.bfloat16, torch.float16))
        print(f"check: {'passed' if ok else 'FAILED'}")
    if not args.check_only:
        results = bench(args)
        summarize(results)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=1, default=str)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
