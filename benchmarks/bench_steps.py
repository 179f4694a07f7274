"""Per-step latencies: specdec's lean Llama runner against transformers' eager forward, same model.

Target decode of 1 token, target verification of T tree nodes, one draft step, and the engine's own
overhead per step (a full `generate()` step minus its draft and verify time), on the embedded pair.
The runner runs eagerly and compiled (runtime="compiled"; compiled during the warm-up calls).
Outputs are checked equal (float32, 1e-5) before timing.

    python benchmarks/bench_steps.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import specdec
from specdec.core.tree import Tree
from specdec.embedded.pair import heldout_code_prompts, load_embedded_pair
from specdec.runtime.llama_runner import LlamaRunner
from specdec.runtime.runner import CausalRunner


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def step_times(runner, prefix: torch.Tensor, repeats: int) -> dict[str, float]:
    runner.reset()
    runner.extend(prefix, num_logits=1)
    n = prefix.shape[0]
    results = {}

    def decode():
        runner.extend(prefix[-1:], num_logits=1)
        runner.truncate(n)

    results["decode 1 token"] = median_ms(decode, repeats)
    for size in (4, 16, 64):
        tree = Tree.from_branching((size,)) if size <= 4 else Tree.from_branching((4, size // 4 - 1 or 1))
        tree = Tree.from_parents(tree.parents[:size])
        tokens = prefix[: len(tree)]
        positions = n - 1 + tree.depth_tensor()

        def verify(tree=tree, tokens=tokens, positions=positions):
            runner.extend(tokens, len(tree), positions, tree.ancestor_mask)
            runner.truncate(n)

        results[f"verify {len(tree)} tree nodes"] = median_ms(verify, repeats)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--prefix-tokens", type=int, default=256)
    args = parser.parse_args(argv)
    target, draft, tokenizer = load_embedded_pair()
    text = heldout_code_prompts(tokenizer, num_prompts=1, prompt_tokens=args.prefix_tokens)[0]
    prefix = tokenizer(text, return_tensors="pt").input_ids[0]
    for model in (target, draft):  # same outputs first
        reference = CausalRunner(model).extend(prefix, 4)
        for runner in (LlamaRunner(model), LlamaRunner(model, compiled=True)):
            assert torch.allclose(runner.extend(prefix, 4), reference, atol=1e-5)
    print(
        "| model | step | transformers forward (ms) | specdec runner (ms) | ratio "
        "| runner, compiled (ms) | ratio |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, model in (("target 15.7M", target), ("draft 2.7M", draft)):
        eager = step_times(CausalRunner(model), prefix, args.repeats)
        lean = step_times(LlamaRunner(model), prefix, args.repeats)
        compiled = step_times(LlamaRunner(model, compiled=True), prefix, args.repeats)
        for step in eager:
            print(
                f"| {name} | {step} | {eager[step]:.2f} | {lean[step]:.2f} | {lean[step] / eager[step]:.2f} "
                f"| {compiled[step]:.2f} | {compiled[step] / eager[step]:.2f} |"
            )
    ids = prefix[None, :128]
    for strategy, runtime in (("chain", "auto"), ("auto", "auto"), ("auto", "compiled")):
        spec = specdec.wrap(target, draft, strategy=strategy, runtime=runtime)
        spec.generate(ids, max_new_tokens=16)
        spec.generate(ids, max_new_tokens=128)
        s = spec.stats
        print(
            f"engine overhead per step ({strategy}, runtime {runtime}): "
            f"{1000 * s.rest_time / s.target_passes:.2f} ms "
            f"of {1000 * s.total_time / s.target_passes:.2f} ms per step"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
