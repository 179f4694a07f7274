"""Batched generation: tokens/s at batch 1, 4, 16 for the target's own batched generate() and specdec.

Same prompts (held-out code, cut to different lengths and left-padded), same process, greedy. For each
batch size the prompts are run in consecutive batches of that size; tokens/s counts every new token of
every row. Each specdec row is also checked against the target's own greedy output of that prompt alone.

    python benchmarks/bench_batch.py --prompts 16 --max-new-tokens 64
    python benchmarks/bench_batch.py --widen 32512 --threads 1 --prompts 8 --batch-sizes 1,4   # bf16

--widen N runs the weight-bound configuration of `bench_membound.py` instead: the embedded target's MLPs
widened to N units (float32 logits unchanged; checked there), target and draft in bf16.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import specdec
from specdec.embedded.pair import heldout_code_prompts, load_embedded_pair


def left_pad(prompts: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and attention mask from 1-D prompts of different lengths."""
    width = max(p.shape[0] for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, width - p.shape[0] :], mask[b, width - p.shape[0] :] = p, 1
    return ids, mask


def until_eos(tokens: list[int], eos: int | None) -> list[int]:
    """New tokens up to and including the first EOS (the rest is padding)."""
    return tokens[: tokens.index(eos) + 1] if eos is not None and eos in tokens else tokens


def run(method, prompts: list[torch.Tensor], batch: int, pad: int, eos: int | None):
    """(seconds, new tokens, new-token lists per prompt, stats list) over all prompts."""
    seconds, tokens, outputs, stats = 0.0, 0, [], []
    for i in range(0, len(prompts), batch):
        group = prompts[i : i + batch]
        ids, mask = left_pad(group, pad)
        start = time.perf_counter()
        out, stat = method(ids, mask)
        seconds += time.perf_counter() - start
        for b in range(len(group)):
            new = until_eos(out[b, ids.shape[1] :].tolist(), eos)
            outputs.append(new)
            tokens += len(new)
        if stat is not None:
            stats.append(stat)
    return seconds, tokens, outputs, stats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument(
        "--methods",
        default="target,specdec-none,chain,chain-k4,tree,prompt-lookup,dynamic-tree,hybrid,auto",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--widen", type=int, default=None, help="widen the target's MLPs to this size, bf16 (bench_membound)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    target, draft, tokenizer = load_embedded_pair()
    dtype = torch.float32
    if args.widen:
        from bench_membound import widen_mlps  # this folder, beside this script

        dtype = torch.bfloat16
        target, draft = widen_mlps(target, args.widen).to(dtype), draft.to(dtype)
    texts = heldout_code_prompts(tokenizer, num_prompts=args.prompts, prompt_tokens=128)
    # different lengths: prompt i keeps 64 + 4 * i tokens (after <s>)
    prompts = [tokenizer(t, return_tensors="pt").input_ids[0] for t in texts]
    prompts = [p[: 65 + 4 * (i % 16)] for i, p in enumerate(prompts)]
    eos = target.generation_config.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    gen = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad)

    specs = {
        "specdec-none": specdec.wrap(target, None, strategy="none"),
        "chain": specdec.wrap(target, draft, strategy="chain"),
        "chain-k4": specdec.wrap(target, draft, strategy="chain", num_draft_tokens=4),
        "tree": specdec.wrap(target, draft, strategy="tree", tree=(2, 2, 1)),
        "prompt-lookup": specdec.wrap(target, None, strategy="prompt-lookup"),
        "dynamic-tree": specdec.wrap(target, draft, strategy="dynamic-tree"),
        "hybrid": specdec.wrap(target, draft, strategy="hybrid"),
        "auto": specdec.wrap(target, draft, strategy="auto"),
    }

    def method_for(name):
        if name == "target":
            return lambda ids, mask: (target.generate(ids, attention_mask=mask, **gen), None)
        spec = specs[name]
        return lambda ids, mask: (spec.generate(ids, attention_mask=mask, **gen), spec.stats)

    alone = [until_eos(target.generate(p[None], **gen)[0, p.shape[0] :].tolist(), eos) for p in prompts]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    methods = args.methods.split(",")
    print(
        f"# {len(prompts)} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, "
        f"{args.max_new_tokens} new tokens, greedy, {str(dtype).removeprefix('torch.')}"
        + (f" (target MLPs widened to {args.widen})" if args.widen else "")
        + f", torch threads {torch.get_num_threads()}"
    )
    print("| batch | method | tokens/s | speedup vs target batched | tau | rows identical to target alone |")
    print("|---:|---|---:|---:|---:|---:|")
    for batch in sizes:
        baseline = None
        for name in methods:
            method = method_for(name)
            run(method, prompts[:batch], batch, pad, eos)  # warm-up (and calibration)
            seconds, tokens, outputs, stats = run(method, prompts, batch, pad, eos)
            rate = tokens / seconds
            baseline = rate if name == "target" else baseline
            identical = sum(o == a for o, a in zip(outputs, alone, strict=True))
            tau = statistics.mean(s.tau for s in stats) if stats else float("nan")
            speedup = f"{rate / baseline:.2f}x" if baseline else "n/a"
            print(f"| {batch} | {name} | {rate:.1f} | {speedup} | {tau:.2f} | {identical}/{len(prompts)} |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
