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

    python benchmarks/bench_steps_gpu.py --prefix 2048 --alpha 0.6,0.7,0.8
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from specdec.models.llama_runner import LlamaRunner
from specdec.models.runner import CausalRunner
from specdec.tree import Tree

SHAPES = {
    # published configurations (hidden, intermediate, layers, heads, kv heads, vocab)
    "llama2-7b": (4096, 11008, 32, 32, 32, 32000),
    "llama2-13b": (5120, 13824, 40, 40, 40, 32000),
    "tinyllama-1.1b": (2048, 5632, 22, 32, 4, 32000),
}


def build(shape: str, context: int) -> LlamaForCausalLM:
    hidden, inter, layers, heads, kv, vocab = SHAPES[shape]
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
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    return model


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def cuda_median_ms(fn, repeats: int) -> float:
    fn()
    fn()  # warm-up (the second call replays a captured graph)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def read_bandwidth(gib: float = 4.0, repeats: int = 10) -> float:
    """Bytes per second of a bf16 reduction over `gib` GiB (bytes read only)."""
    x = torch.ones(int(gib * 2**30) // 2, dtype=torch.bfloat16, device="cuda")
    ms = cuda_median_ms(lambda: x.sum(), repeats)
    return x.numel() * 2 / (ms / 1000)


def decode_ms(runner, prefix: int, repeats: int) -> float:
    runner.reset()
    runner.extend(torch.arange(prefix, device="cuda") % 1000 + 3, num_logits=1)
    token = torch.tensor([5], device="cuda")

    def step():
        runner.extend(token, num_logits=1)
        runner.truncate(prefix)

    return cuda_median_ms(step, repeats)


def verify_ms(runner, prefix: int, nodes: int, repeats: int) -> float:
    tree = Tree.from_parents(Tree.from_branching((4, 4, 2, 2)).parents[:nodes])
    runner.reset()
    runner.extend(torch.arange(prefix, device="cuda") % 1000 + 3, num_logits=1)
    tokens = torch.arange(nodes, device="cuda") % 1000 + 3
    positions = (prefix - 1 + tree.depth_tensor()).cuda()
    mask = tree.ancestor_mask.cuda()

    def step():
        runner.extend(tokens, nodes, positions, mask)
        runner.truncate(prefix)

    return cuda_median_ms(step, repeats)


def runners(model: LlamaForCausalLM) -> dict:
    out = {"transformers eager": CausalRunner(model), "specdec runner": LlamaRunner(model)}
    try:
        out["specdec runner + CUDA graphs"] = LlamaRunner(model, cuda_graphs=True)
    except ValueError as error:
        print(f"CUDA graphs unavailable: {error}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="llama2-7b", choices=sorted(SHAPES))
    parser.add_argument("--draft", default="tinyllama-1.1b", choices=sorted(SHAPES))
    parser.add_argument("--prefix", type=int, default=2048)
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--alpha", default="0.6,0.7,0.8", help="acceptance rates to project with (inputs)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_steps_gpu.py needs CUDA; nothing to do on this machine.")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = True
    bandwidth = read_bandwidth()
    print(
        f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"read bandwidth {bandwidth / 1e9:.0f} GB/s"
    )
    context = args.prefix + 1024
    results: dict[str, dict[str, float]] = {}
    floors = {}
    for role, shape in (("target", args.target), ("draft", args.draft)):
        model = build(shape, context)
        floors[role] = weight_bytes(model) / bandwidth * 1000
        for name, runner in runners(model).items():
            row = results.setdefault(name, {})
            try:
                row[f"{role} decode"] = decode_ms(runner, args.prefix, args.repeats)
                if role == "target":
                    row[f"target verify {args.nodes}"] = verify_ms(
                        runner, args.prefix, args.nodes, args.repeats
                    )
            except Exception as error:  # one failing method must not stop the others
                print(f"{name} {role}: n/a ({type(error).__name__}: {error})")
        del model
        torch.cuda.empty_cache()
    print(
        f"floors: target {floors['target']:.2f} ms, draft {floors['draft']:.2f} ms (weight bytes / bandwidth)"
    )
    print(
        "| runner | target decode (ms, x floor) | draft decode (ms, x floor) | "
        f"verify {args.nodes} @ {args.prefix} (ms, x decode) |"
    )
    print("|---|---:|---:|---:|")
    for name, row in results.items():
        td, dd, tv = (row.get(k) for k in ("target decode", "draft decode", f"target verify {args.nodes}"))
        cells = [
            f"{td:.2f} ({td / floors['target']:.2f}x)" if td else "n/a",
            f"{dd:.2f} ({dd / floors['draft']:.2f}x)" if dd else "n/a",
            f"{tv:.2f} ({tv / td:.2f}x)" if tv and td else "n/a",
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
