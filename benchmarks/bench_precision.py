"""How often do fp16/bf16 near-ties flip greedy tokens between speculative and plain decoding?

Verifying several tokens in one pass uses other matmul shapes than decoding one token, so in half
precision an argmax near-tie can resolve differently. For each prompt this compares the greedy output
of specdec with the same-dtype target's own `generate()` and reports the share of prompts that
diverge and where the first divergence happens. float32 is included as the control (0 expected).

    python benchmarks/bench_precision.py --prompts 16 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import sys

import torch

import specdec
from specdec.embedded.pair import heldout_code_prompts, load_embedded_pair


def first_divergence(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """Index of the first differing new token, None when equal."""
    length = min(a.shape[1], b.shape[1])
    diff = (a[0, :length] != b[0, :length]).nonzero()
    if diff.numel():
        return int(diff[0])
    return None if a.shape[1] == b.shape[1] else length


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--strategies", default="chain,tree,auto")
    args = parser.parse_args(argv)
    print("| dtype | strategy | prompts diverging | mean first divergence (new-token index) |")
    print("|---|---|---:|---:|")
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        target, draft, tokenizer = load_embedded_pair(dtype=dtype)
        texts = heldout_code_prompts(tokenizer, num_prompts=args.prompts, prompt_tokens=args.prompt_tokens)
        prompts = [tokenizer(t, return_tensors="pt").input_ids for t in texts]
        references = [
            target.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False) for ids in prompts
        ]
        for strategy in args.strategies.split(","):
            spec = specdec.wrap(target, draft, strategy=strategy)
            positions = []
            for ids, reference in zip(prompts, references, strict=True):
                out = spec.generate(ids, max_new_tokens=args.max_new_tokens)
                where = first_divergence(out, reference)
                if where is not None:
                    positions.append(where - ids.shape[1])
            mean = f"{sum(positions) / len(positions):.0f}" if positions else "-"
            print(f"| {dtype_name} | {strategy} | {len(positions)}/{len(prompts)} | {mean} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
