"""How fast could `auto` be? Measured speedups next to the clairvoyant bound of its draft shapes.

For each prompt the target's greedy `generate()` output is timed and kept; specdec `auto`, prompt
lookup and plain decoding on specdec's runner are timed in the same process (order reversed on every
other prompt). Then, with hindsight (`specdec.planning.bound`): the draft model teacher-forced over the
output gives each true token's rank, the n-gram search each position's copy, and a dynamic program the
fastest schedule of draft shapes under auto's own measured cost profile, plus the measured target
prefill. target time / that time bounds the speedup of any planner choosing among those shapes
(copies alone; draft chains alone; auto's whole family: best-first rank trees of every size and every
chain, each merged with the copy cut at 0-8 tokens). Host work between steps is not counted, which only
raises the bound.

    python benchmarks/bench_bound.py                           # embedded pair, float32, code + chat
    python benchmarks/bench_bound.py --num-prompts 2 --chat-prompts 1 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections import Counter

import torch

import specdec
from specdec.drafters.prompt_lookup import find_continuations
from specdec.embedded.pair import heldout_code_prompts
from specdec.planning.bound import accepted_lengths, fastest_schedule, rank_acceptance, shape_family
from specdec.planning.trees import AutoShapeController

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_membound import chat_prompts, load_avg  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@torch.inference_mode()
def draft_ranks(draft, ids: torch.Tensor, reference: list[int]) -> list[int]:
    """Rank of each reference token among the draft's logits given the true prefix (teacher-forced)."""
    full = torch.cat([ids[0], torch.tensor(reference, dtype=ids.dtype)])[None]  # [1, P + N]
    logits = draft(full).logits[0, ids.shape[1] - 1 : -1].float()  # [N, V]
    true = logits.gather(1, torch.tensor(reference)[:, None])  # [N, 1]
    return (logits > true).sum(dim=1).tolist()


def copies_along(ids: torch.Tensor, reference: list[int], depth: int, max_ngram: int, min_ngram: int):
    """The n-gram copy (auto's single candidate) offered at each position of the reference."""
    sequence = torch.cat([ids[0], torch.tensor(reference, dtype=ids.dtype)])  # [P + N]
    prompt = ids.shape[1]
    copies = []
    for start in range(len(reference)):
        found = find_continuations(sequence[: prompt + start], depth, max_ngram, min_ngram, 1)
        copies.append(found[0].tolist() if found else [])
    return copies


def timed(run) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--num-prompts", type=int, default=8, help="held-out code prompts (0: none)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--chat-prompts", type=int, default=6, help="chat prompts (0: none)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    target, draft, tokenizer = specdec.load_embedded_pair(dtype)
    auto = specdec.wrap(target, draft, strategy="auto", tokenizer=tokenizer)
    lookup = specdec.wrap(target, strategy="prompt-lookup", tokenizer=tokenizer)
    plain = specdec.wrap(target, strategy="none", tokenizer=tokenizer)
    n_new = args.max_new_tokens
    methods = {
        "target": lambda ids: target.generate(ids, max_new_tokens=n_new, do_sample=False),
        "auto": lambda ids: auto.generate(ids, max_new_tokens=n_new, do_sample=False),
        "prompt-lookup": lambda ids: lookup.generate(
            ids, max_new_tokens=n_new, do_sample=False
        ),
        "none": lambda ids: plain.generate(ids, max_new_tokens=n_new, do_sample=False),
    }
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; embedded pair in {args.dtype}; {n_new} new tokens, greedy"
    )
    sets = []
    if args.num_prompts:
        sets.append(("code", heldout_code_prompts(tokenizer, args.num_prompts, args.prompt_tokens)))
    if args.chat_prompts:
        sets.append(("chat", [text for _, text in chat_prompts(args.chat_prompts)]))
    warm = tokenizer("def main():\n    return", return_tensors="pt").input_ids
    for method in methods.values():
        method(warm)
    profile = auto.cost_profile
    max_depth = auto.config.max_draft_tokens
    for set_name, texts in sets:
        start_load = load_avg()
        totals: Counter = Counter()
        identical = Counter()
        ranks_all: list[int] = []
        cases = []
        for index, text in enumerate(texts):
            ids = tokenizer(text, return_tensors="pt").input_ids  # [1, P]
            order = list(methods) if index % 2 == 0 else list(reversed(methods))
            outputs = {}
            for name in order:
                seconds, out = timed(lambda name=name: methods[name](ids))
                totals[name] += seconds
                outputs[name] = out[0, ids.shape[1] :].tolist()
            reference = outputs["target"]
            for name in methods:
                identical[name] += outputs[name] == reference
            ranks = draft_ranks(draft, ids, reference)
            ranks_all += ranks
            copies = copies_along(ids, reference, max_depth, 3, 1)
            runner = auto._target_runner
            prefill = []
            for _ in range(3):
                runner.reset(1)
                prefill.append(timed(lambda: runner.extend_rows(ids, [ids.shape[1]], None, None, 1))[0])
            runner.reset(1)
            cases.append((reference, ranks, copies, statistics.median(prefill)))
        # one rank model for the whole set (auto's best-first trees follow it)
        p = rank_acceptance(ranks_all)
        family = shape_family(p, AutoShapeController.SIZES[1:], max_depth, max_depth)
        families = {
            "copies only (prompt lookup's shapes)": [s for s in family if s.nodes == 0],
            "draft chains only": [s for s in family if s.copy == 0 and s.depth == s.nodes],
            "auto's shapes (rank trees and chains, each with a copy of 0-8)": family,
        }
        bound_seconds: Counter = Counter()
        kinds: dict[str, Counter] = {name: Counter() for name in families}
        for reference, ranks, copies, prefill in cases:
            for name, shapes in families.items():
                accepted = accepted_lengths(shapes, ranks, copies, reference)[1:]  # token 0: the prefill's
                seconds, steps = fastest_schedule(accepted, [s.cost(profile) for s in shapes])
                bound_seconds[name] += prefill + seconds
                for step in steps:
                    shape = shapes[step]
                    kind = "copy" if shape.nodes == 0 and shape.copy else ("plain" if shape.nodes == 0 else "")
                    kinds[name][kind or ("model+copy" if shape.copy else "model")] += 1
        base = totals["target"]
        print(f"\n{set_name}: {len(cases)} prompts, load {start_load} -> {load_avg()}")
        print("| method | seconds | speedup over target generate() | identical |")
        print("|---|---:|---:|---:|")
        for name in methods:
            print(f"| {name} (measured) | {totals[name]:.2f} | {base / totals[name]:.2f}x | {identical[name]}/{len(cases)} |")
        for name in families:
            steps = ", ".join(f"{k} {v}" for k, v in kinds[name].most_common())
            print(f"| bound: {name} | {bound_seconds[name]:.2f} | {base / bound_seconds[name]:.2f}x | steps: {steps} |")
        verify = ", ".join(f"{n}: {1000 * s:.2f}" for n, s in sorted(profile.verify_seconds.items()))
        print(
            f"cost profile (ms): verify {{{verify}}}; draft step {1000 * profile.draft_step_seconds:.2f} "
            f"level {1000 * profile.draft_level_seconds:.2f} node {1000 * profile.draft_node_seconds:.2f}"
        )
        print("rank acceptance p_r (teacher-forced): " + " ".join(f"{x:.2f}" for x in p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
