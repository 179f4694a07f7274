"""Step latencies on a GPU against the memory-bandwidth floor, Llama-2-7B and TinyLlama-1.1B shapes.

Random bf16 weights in the published shapes (nothing is downloaded). The floor of a step is the model's
weight bytes divided by the read bandwidth measured here (a large bf16 reduction, bytes read only).
Each step is timed with CUDA events (median) for transformers' eager forward with a DynamicCache,
specdec's runner, and specdec's runner with CUDA graphs:

- target decode of 1 token (goal: within 1.3x of the floor),
- draft (TinyLlama shape) decode of 1 token (goal: within 2x of its floor),
- target verification of 64 tree nodes after a 2048-token prefix (goal: within 1.25x of a decode).

Then the chain speedup these step costs project for acceptance rates given with --alpha (Leviathan
et al.: E(k) = (1 - a^(k+1)) / (1 - a) tokens per step of k draft passes and one verification);
the acceptance figures are inputs, labelled as such, not measurements.

--project needs no GPU: a roofline step model (PROJECTED, not measured) for Llama-2-7B/13B/70B with a
TinyLlama draft on A100 80GB SXM, H100 SXM and H200: bytes moved and FLOPs of a decode step, a verify
step of T tree nodes and a draft step, their times at the roofline (max of bytes / bandwidth and
FLOPs / peak dense bf16), and the speedups those times imply at the acceptance measured on the
embedded pair (BENCHMARKS.md) and at assumed per-token acceptance rates. With --tp 1,2,4,8 it also
projects the Llama-2-70B target split by tensor parallelism over that many GPUs (issue 21): each GPU
reads 1/tp of the weights and K/V cache and does 1/tp of the FLOPs, and every pass adds two all-reduces
per layer (after attention's o_proj and the MLP's down_proj) of rows x hidden bf16 values and one
gather of the LM head's logits, each costed as an ASSUMED latency plus bytes over an ASSUMED bus
bandwidth (NVLINK_BUS, ALLREDUCE_LATENCY_S); the draft runs whole on every GPU.

    python benchmarks/bench_steps_gpu.py --prefix 2048 --alpha 0.6,0.7,0.8
    python benchmarks/bench_steps_gpu.py --project --prefix 2048
    python benchmarks/bench_steps_gpu.py --project --prefix 2048 --tp 1,2,4,8
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
import warnings
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # transformers and specdec load only for measuring: --project needs neither
    from transformers import LlamaForCausalLM

SHAPES = {
    # published configurations (hidden, intermediate, layers, heads, kv heads, vocab)
    "llama2-7b": (4096, 11008, 32, 32, 32, 32000),
    "llama2-13b": (5120, 13824, 40, 40, 40, 32000),
    "llama2-70b": (8192, 28672, 80, 64, 8, 32000),
    "tinyllama-1.1b": (2048, 5632, 22, 32, 4, 32000),
}
#: name: (memory bandwidth bytes/s, dense bf16 tensor-core FLOP/s), the vendors' datasheet figures
HARDWARE = {
    "A100 80GB SXM": (2.0e12, 312e12),
    "H100 SXM": (3.35e12, 989e12),
    "H200": (4.8e12, 989e12),
}
#: name: NVLink bytes/s per direction, ASSUMED to be an all-reduce's bus bandwidth (NCCL's busbw). The
#: vendors' datasheets give NVLink 600 GB/s (A100 SXM, NVLink 3) and 900 GB/s (H100 SXM and H200 SXM,
#: NVLink 4), both directions together; half of that each way.
NVLINK_BUS = {
    "A100 80GB SXM": 300e9,
    "H100 SXM": 450e9,
    "H200": 450e9,
}
#: GPU memory, GB (datasheets: A100 80GB, H100 SXM 80GB, H200 141GB)
MEMORY_GB = {"A100 80GB SXM": 80, "H100 SXM": 80, "H200": 141}
#: ASSUMED fixed cost of one collective within an NVLink node at these sizes (KB to a few MB), seconds
ALLREDUCE_LATENCY_S = 10e-6
#: the target split by tensor parallelism (--tp)
TP_TARGET = "llama2-70b"
#: Acceptance MEASURED on the embedded pair (BENCHMARKS.md, "Greedy decoding, default runtime",
#: session 4): the fraction of steps that drafted depth i + 1 whose accepted path reached it.
MEASURED_REACH = {
    "chain": (0.73, 0.62, 0.46, 0.45, 0.33, 0.24, 0.22, 0.19),
    "tree (4, 2, 2, 1)": (0.99, 0.80, 0.77, 0.66),
}
#: The static tree (4, 2, 2, 1): nodes drafted per depth (44 in all, one draft pass per depth).
TREE_WIDTHS = (4, 8, 16, 16)


#: --dry-run shapes (CPU, float32): a Llama-2-7B-like MHA target and a TinyLlama-like GQA draft, tiny
DRY_SHAPES = {
    "tiny-7b-like": (256, 688, 4, 8, 8, 1000),
    "tiny-tinyllama-like": (128, 352, 2, 8, 1, 1000),
}


def build(
    shape: str, context: int, device: str = "cuda", dtype: torch.dtype = torch.bfloat16
) -> LlamaForCausalLM:
    """A random-weight LlamaForCausalLM of a SHAPES / DRY_SHAPES shape (nothing is downloaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads, kv, vocab = {**SHAPES, **DRY_SHAPES}[shape]
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        max_position_embeddings=context,
        initializer_range=0.02,
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    return model


# ------------------------------------------------------------------------------ projected step model
def matmul_params(shape: str) -> int:
    """Weights every token multiplies by: q/k/v/o, gate/up/down and the LM head (the embedding is a
    gather of one row per token, so it is left out of both bytes and FLOPs)."""
    hidden, inter, layers, heads, kv_heads, vocab = SHAPES[shape]
    kv_dim = hidden // heads * kv_heads
    return layers * (2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * inter) + vocab * hidden


def step_cost(shape: str, tokens: int, prefix: int) -> tuple[float, float]:
    """(bytes, FLOPs) of one bf16 forward pass of `tokens` new rows after `prefix` cached ones: every
    weight read once, the K/V cache read once and the new rows' K/V written; FLOPs 2 per multiply-add
    in the matmuls and in attention (scores and weighted sum; new rows see about half of each other)."""
    hidden, _, layers, heads, kv_heads, _ = SHAPES[shape]
    kv_row = 2 * layers * (hidden // heads * kv_heads) * 2  # K and V bytes per position, all layers
    bytes_moved = 2 * matmul_params(shape) + kv_row * (prefix + tokens)
    attended = tokens * prefix + tokens * (tokens + 1) / 2  # (new row, visible key) pairs
    flops = 2 * matmul_params(shape) * tokens + 4 * layers * hidden * attended
    return bytes_moved, flops


def roofline_ms(cost: tuple[float, float], hardware: str) -> float:
    """Step time at the roofline: the larger of memory time and compute time, in ms."""
    bandwidth, peak = HARDWARE[hardware]
    return 1000 * max(cost[0] / bandwidth, cost[1] / peak)


def chain_speedup(reach: list[float], decode: float, draft: float, verify) -> tuple[float, int, float]:
    """(speedup, k, tokens per step) of the best fixed chain length k <= len(reach): k draft steps and
    one verification of k + 1 rows commit 1 + reach[0] + ... + reach[k - 1] tokens on average."""
    best = (0.0, 0, 0.0)
    for k in range(1, len(reach) + 1):
        tokens = 1 + sum(reach[:k])
        best = max(best, (tokens * decode / (k * draft + verify(k + 1)), k, tokens))
    return best


def compute_bound_rows(shape: str, prefix: int, hardware: str) -> int:
    """Smallest number of rows at which a pass's compute time reaches its memory time."""
    bandwidth, peak = HARDWARE[hardware]
    rows = 1
    while True:
        moved, flops = step_cost(shape, rows, prefix)
        if flops / peak >= moved / bandwidth:
            return rows
        rows += 1


def project(prefix: int, alphas: list[float], out=sys.stdout) -> None:
    """Print the projected step table and the speedups it implies (markdown)."""
    targets, draft_shape = ("llama2-7b", "llama2-13b", "llama2-70b"), "tinyllama-1.1b"
    tree_nodes = 1 + sum(TREE_WIDTHS)  # the pending token and the tree's nodes
    print(
        f"PROJECTED (roofline, not measured): bf16 weights and cache, prefix {prefix}, batch 1.\n", file=out
    )
    print(
        f"| GPU | model | GB moved per pass | GFLOP decode / verify {tree_nodes} / verify 64 | "
        f"ms decode | ms verify 16 / {tree_nodes} / 64 | compute-bound from rows |\n"
        "|---|---|---:|---:|---:|---:|---:|",
        file=out,
    )
    for hardware in HARDWARE:
        for shape in (*targets, draft_shape):
            costs = {rows: step_cost(shape, rows, prefix) for rows in (1, 16, tree_nodes, 64)}
            ms = {rows: roofline_ms(cost, hardware) for rows, cost in costs.items()}
            name = f"{shape} (draft)" if shape == draft_shape else shape
            print(
                f"| {hardware} | {name} | {costs[1][0] / 1e9:.1f} | "
                f"{costs[1][1] / 1e9:.0f} / {costs[tree_nodes][1] / 1e9:.0f} / {costs[64][1] / 1e9:.0f} | "
                f"{ms[1]:.2f} | {ms[16]:.2f} / {ms[tree_nodes]:.2f} / {ms[64]:.2f} | "
                f"{compute_bound_rows(shape, prefix, hardware)} |",
                file=out,
            )
    print(
        "\nProjected speedup over the target's own decoding at the same roofline (draft passes at "
        "TinyLlama's roofline, no time between passes; chain: k draft passes + a verify of k + 1 rows; "
        f"tree (4, 2, 2, 1): 4 draft passes of 1/4/8/16 rows + a verify of {tree_nodes} rows):\n",
        file=out,
    )
    header = "| GPU | target | MEASURED-acceptance chain (best k) | MEASURED-acceptance tree |"
    header += "".join(f" ASSUMED a={a:.1f} chain (best k) |" for a in alphas)
    print(header + "\n|---|---|---:|---:|" + "---:|" * len(alphas), file=out)
    for hardware in HARDWARE:
        draft = roofline_ms(step_cost(draft_shape, 1, prefix), hardware)
        for shape in targets:
            decode = roofline_ms(step_cost(shape, 1, prefix), hardware)
            verify = functools.partial(_verify_ms, shape, prefix, hardware)
            speedup, k, tokens = chain_speedup(list(MEASURED_REACH["chain"]), decode, draft, verify)
            cells = [f"{speedup:.2f}x (k={k}, {tokens:.2f} tokens)"]
            tree_tokens = 1 + sum(MEASURED_REACH["tree (4, 2, 2, 1)"])
            tree_draft = sum(roofline_ms(step_cost(draft_shape, w, prefix), hardware) for w in (1, 4, 8, 16))
            tree_speedup = tree_tokens * decode / (tree_draft + verify(tree_nodes))
            cells.append(f"{tree_speedup:.2f}x ({tree_tokens:.2f} tokens)")
            for alpha in alphas:
                speedup, k, tokens = chain_speedup([alpha**i for i in range(1, 9)], decode, draft, verify)
                cells.append(f"{speedup:.2f}x (k={k})")
            print(f"| {hardware} | {shape} | " + " | ".join(cells) + " |", file=out)


def _verify_ms(shape: str, prefix: int, hardware: str, rows: int) -> float:
    return roofline_ms(step_cost(shape, rows, prefix), hardware)


# ------------------------------------------------------------------- projected tensor parallelism (--tp)
def tp_weight_bytes(shape: str, tp: int) -> float:
    """bf16 matmul weight bytes each of `tp` GPUs reads per pass (q/k/v/o, MLP and LM head split tp ways)."""
    return 2 * matmul_params(shape) / tp


def collective_ms(payload: float, tp: int, hardware: str, ring_factor: float) -> float:
    """ms of one collective over `tp` GPUs moving `payload` bytes per GPU: the assumed latency plus
    ring_factor * (tp - 1) / tp * payload over the bus bandwidth (ring all-reduce: 2, all-gather: 1);
    0 for one GPU."""
    if tp == 1:
        return 0.0
    return 1000 * (ALLREDUCE_LATENCY_S + ring_factor * (tp - 1) / tp * payload / NVLINK_BUS[hardware])


def tp_comm_ms(shape: str, tokens: int, tp: int, hardware: str) -> float:
    """ms of a pass's collectives: 2 all-reduces per layer of [tokens, hidden] bf16 (after o_proj and
    down_proj) and one all-gather of the [tokens, vocab] bf16 logits."""
    hidden, _, layers, _, _, vocab = SHAPES[shape]
    all_reduces = 2 * layers * collective_ms(2 * tokens * hidden, tp, hardware, 2.0)
    return all_reduces + collective_ms(2 * tokens * vocab, tp, hardware, 1.0)


def tp_step_ms(shape: str, tokens: int, prefix: int, tp: int, hardware: str) -> float:
    """Projected ms of a pass split over `tp` GPUs: each GPU's roofline for 1/tp of the bytes and FLOPs,
    plus the collectives (which do not overlap the matmuls in this model)."""
    moved, flops = step_cost(shape, tokens, prefix)
    return roofline_ms((moved / tp, flops / tp), hardware) + tp_comm_ms(shape, tokens, tp, hardware)


def check_tp(degrees: list[int], shape: str = TP_TARGET) -> None:
    """ValueError unless every degree divides the model's attention and key/value heads."""
    _, _, _, heads, kv_heads, _ = SHAPES[shape]
    bad = [tp for tp in degrees if tp < 1 or heads % tp or kv_heads % tp]
    if bad:
        raise ValueError(
            f"{bad[0]} GPUs: the degree must divide {shape}'s {heads} heads and {kv_heads} key/value heads"
        )


def project_tensor_parallel(prefix: int, degrees: list[int], alphas: list[float], out=sys.stdout) -> None:
    """Print the projected 70B step times and chain speedups over `degrees` GPUs (markdown)."""
    shape, draft_shape = TP_TARGET, "tinyllama-1.1b"
    print(
        f"\nPROJECTED (roofline + collectives, not measured): {shape} split by tensor parallelism, bf16, "
        f"prefix {prefix}, batch 1; ASSUMED {ALLREDUCE_LATENCY_S * 1e6:.0f} us per collective and NVLink "
        "bus bandwidth per direction (GB/s): "
        + ", ".join(f"{hw} {bw / 1e9:.0f}" for hw, bw in NVLINK_BUS.items())
        + f"; the draft ({draft_shape}) whole on every GPU. Speedup: best chain over the split target's "
        "own decoding.\n",
        file=out,
    )
    header = (
        "| GPU | TP degree | weights GB per GPU (< GPU memory?) | ms decode (collectives) | ms verify 16 |"
    )
    header += " MEASURED-acceptance chain (best k) |"
    header += "".join(f" ASSUMED a={a:.1f} chain (best k) |" for a in alphas)
    print(header + "\n|---|---:|---:|---:|---:|---:|" + "---:|" * len(alphas), file=out)
    for hardware in HARDWARE:
        draft = roofline_ms(step_cost(draft_shape, 1, prefix), hardware)
        for tp in degrees:
            print(_tp_row(shape, prefix, tp, hardware, draft, alphas), file=out)


def _tp_row(shape: str, prefix: int, tp: int, hardware: str, draft: float, alphas: list[float]) -> str:
    gb = tp_weight_bytes(shape, tp) / 1e9
    fits = "yes" if gb < MEMORY_GB[hardware] else "no"
    decode = tp_step_ms(shape, 1, prefix, tp, hardware)
    verify = functools.partial(tp_step_ms, shape, prefix=prefix, tp=tp, hardware=hardware)
    cells = [
        f"{gb:.1f} ({fits})",
        f"{decode:.2f} ({tp_comm_ms(shape, 1, tp, hardware):.2f})",
        f"{verify(16):.2f}",
    ]
    reaches = [list(MEASURED_REACH["chain"])] + [[a**i for i in range(1, 9)] for a in alphas]
    for reach in reaches:
        speedup, k, _ = chain_speedup(reach, decode, draft, verify)
        cells.append(f"{speedup:.2f}x (k={k})")
    return f"| {hardware} | {tp} | " + " | ".join(cells) + " |"


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def median_ms(fn, repeats: int, device: str) -> float:
    """Median milliseconds of fn(): CUDA events on a GPU, the host clock on a CPU (after 2 warm-ups;
    the second call replays a captured graph)."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - begin))
    return statistics.median(times)


def read_bandwidth(device: str, gib: float = 4.0, repeats: int = 10) -> float:
    """Bytes per second of a reduction over `gib` GiB (bytes read only): bf16 on a GPU, float32 on a CPU."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    x = torch.ones(int(gib * 2**30) // dtype.itemsize, dtype=dtype, device=device)
    ms = median_ms(lambda: x.sum(), repeats, device)
    return x.numel() * dtype.itemsize / (ms / 1000)


def decode_ms(runner, prefix: int, repeats: int, device: str) -> float:
    runner.reset()
    runner.extend(torch.arange(prefix, device=device) % 1000 + 3, num_logits=1)
    token = torch.tensor([5], device=device)

    def step():
        runner.extend(token, num_logits=1)
        runner.truncate(prefix)

    return median_ms(step, repeats, device)


def verify_ms(runner, prefix: int, nodes: int, repeats: int, device: str) -> float:
    from specdec.core.tree import Tree

    tree = Tree.from_parents(Tree.from_branching((4, 4, 2, 2)).parents[:nodes])
    runner.reset()
    runner.extend(torch.arange(prefix, device=device) % 1000 + 3, num_logits=1)
    tokens = torch.arange(nodes, device=device) % 1000 + 3
    positions = (prefix - 1 + tree.depth_tensor()).to(device)
    mask = tree.ancestor_mask.to(device)

    def step():
        runner.extend(tokens, nodes, positions, mask)
        runner.truncate(prefix)

    return median_ms(step, repeats, device)


def runners(model: LlamaForCausalLM, device: str) -> dict:
    """transformers' forward, specdec's runner and (on CUDA) specdec's runner with CUDA graphs."""
    from specdec.runtime.llama_runner import LlamaRunner
    from specdec.runtime.runner import CausalRunner

    out = {"transformers eager": CausalRunner(model), "specdec runner": LlamaRunner(model)}
    if device != "cuda":
        print("skipped: specdec runner + CUDA graphs (no CUDA)")
        return out
    try:
        out["specdec runner + CUDA graphs"] = LlamaRunner(model, cuda_graphs=True)
    except ValueError as error:
        print(f"CUDA graphs unavailable: {error}")
    return out


def greedy_identity(target_shape: str, draft_shape: str, device: str, new_tokens: int = 24) -> bool:
    """specdec's greedy output (chain and tree) equals the target's own generate(), float32 weights
    (TF32 off) so that the two forwards differ only by rounding far below the logit gaps."""
    import specdec

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        target = build(target_shape, 512, device, torch.float32)
        draft = build(draft_shape, 512, device, torch.float32)
        ids = (torch.arange(12, device=device)[None] * 37) % 900 + 3  # [1, 12]
        expected = target.generate(ids, max_new_tokens=new_tokens, do_sample=False)
        same = True
        for strategy, options in (("chain", {"num_draft_tokens": 4}), ("tree", {"tree": (2, 2, 1)})):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # random models have no tokenizer to check
                spec = specdec.wrap(target, draft, strategy=strategy, **options)
                out = spec.generate(ids, max_new_tokens=new_tokens)
            equal = out.shape == expected.shape and torch.equal(out, expected)
            same &= equal
            print(
                f"greedy identity {target_shape} / {draft_shape} {strategy}: "
                f"{'identical' if equal else 'DIFFERENT'} ({new_tokens} new tokens, float32, {device})"
            )
        del target, draft
        return same
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="llama2-7b", choices=sorted(SHAPES))
    parser.add_argument("--draft", default="tinyllama-1.1b", choices=sorted(SHAPES))
    parser.add_argument("--prefix", type=int, default=2048)
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--alpha", default="0.6,0.7,0.8", help="acceptance rates to project with (inputs)")
    parser.add_argument("--project", action="store_true", help="print the roofline step model (no GPU)")
    parser.add_argument(
        "--tp",
        default=None,
        help="with --project: also project Llama-2-70B split over these GPU counts, e.g. 1,2,4,8",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU: tiny shapes, float32, every step but the CUDA ones"
    )
    parser.add_argument("--no-identity", action="store_true", help="skip the greedy identity check")
    args = parser.parse_args(argv)
    if args.project:
        alphas = [float(a) for a in args.alpha.split(",")]
        try:
            degrees = [int(t) for t in args.tp.split(",")] if args.tp else []
            check_tp(degrees)
        except ValueError as error:
            parser.error(f"--tp {args.tp}: {error}")
        project(args.prefix, alphas)
        if degrees:
            project_tensor_parallel(args.prefix, degrees, alphas)
        return 0
    if args.dry_run:
        device, dtype = "cpu", torch.float32
        target_shape, draft_shape = DRY_SHAPES
        # it checks that every step runs and prints, not speed: the smallest sizes that exercise each path
        args.prefix, args.nodes, args.repeats = min(args.prefix, 32), min(args.nodes, 8), 1
        gib = 1 / 16
        print("dry run on CPU: tiny shapes, float32; CUDA events, CUDA graphs and bf16 are skipped")
    elif not torch.cuda.is_available():
        print("bench_steps_gpu.py needs CUDA; nothing to do on this machine (try --dry-run or --project).")
        return 0
    else:
        device, dtype, target_shape, draft_shape, gib = "cuda", torch.bfloat16, args.target, args.draft, 4.0
        torch.backends.cuda.matmul.allow_tf32 = True
    bandwidth = read_bandwidth(device, gib)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"# {name}, torch {torch.__version__}, read bandwidth {bandwidth / 1e9:.0f} GB/s")
    context = args.prefix + 1024
    results: dict[str, dict[str, float]] = {}
    floors = {}
    for role, shape in (("target", target_shape), ("draft", draft_shape)):
        model = build(shape, context, device, dtype)
        floors[role] = weight_bytes(model) / bandwidth * 1000
        for runner_name, runner in runners(model, device).items():
            row = results.setdefault(runner_name, {})
            try:
                row[f"{role} decode"] = decode_ms(runner, args.prefix, args.repeats, device)
                if role == "target":
                    row[f"target verify {args.nodes}"] = verify_ms(
                        runner, args.prefix, args.nodes, args.repeats, device
                    )
            except Exception as error:  # one failing method must not stop the others
                print(f"{runner_name} {role}: n/a ({type(error).__name__}: {error})")
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    print(
        f"floors: target {floors['target']:.2f} ms, draft {floors['draft']:.2f} ms (weight bytes / bandwidth)"
    )
    print(
        "| runner | target decode (ms, x floor) | draft decode (ms, x floor) | "
        f"verify {args.nodes} @ {args.prefix} (ms, x decode) |"
    )
    print("|---|---:|---:|---:|")
    for runner_name, row in results.items():
        td, dd, tv = (row.get(k) for k in ("target decode", "draft decode", f"target verify {args.nodes}"))
        cells = [
            f"{td:.2f} ({td / floors['target']:.2f}x)" if td else "n/a",
            f"{dd:.2f} ({dd / floors['draft']:.2f}x)" if dd else "n/a",
            f"{tv:.2f} ({tv / td:.2f}x)" if tv and td else "n/a",
        ]
        print(f"| {runner_name} | " + " | ".join(cells) + " |")
    best = min(results.values(), key=lambda r: r.get("target decode", float("inf")))
    if all(k in best for k in ("target decode", "draft decode")):
        print("\nprojected chain speedup over the same runner's plain decoding (acceptance is an INPUT):")
        print("| alpha | best k | tokens per step | projected speedup |")
        print("|---:|---:|---:|---:|")
        for alpha in (float(a) for a in args.alpha.split(",")):
            options = []
            for k in range(1, 9):
                tokens = (1 - alpha ** (k + 1)) / (1 - alpha)
                # verification of k + 1 tokens costs about a decode at these sizes (measured above for 64)
                cost = k * best["draft decode"] + best["target decode"]
                options.append((tokens / cost * best["target decode"], k, tokens))
            speedup, k, tokens = max(options)
            print(f"| {alpha:.2f} | {k} | {tokens:.2f} | {speedup:.2f}x |")
    identical = True
    if not args.no_identity:
        identical = greedy_identity(target_shape, draft_shape, device)
    all_measured = all(len(row) == 3 for row in results.values())
    return 0 if identical and all_measured else 1


if __name__ == "__main__":
    sys.exit(main())
