"""How fast could `auto` be? Measured speedups next to what its planning earns and what it could earn.

For each prompt the target's greedy `generate()` output is timed and kept; specdec `auto`, prompt
lookup and plain decoding on specdec's runner are timed in the same process (order reversed on every
other prompt). Then, all under one cost profile (auto's own measured one, its verification times
scaled down where a one-token pass measured slower than plain decoding runs, so bounds stay bounds),
plus the measured target prefill:

- bounds, with hindsight (`specdec.planning.bound`): the draft model teacher-forced over the output
  gives each true token's rank, the n-gram search each position's copy, and a dynamic program the
  fastest schedule of draft shapes. No planner choosing among those shapes (copies alone; draft chains
  alone; auto's family: best-first rank trees of every size and every chain, each merged with the copy
  cut at 0-8 tokens) commits the outputs faster under these costs;
- a rule "one shape per length of the n-gram matched at the step's start", fitted in hindsight: what a
  planner that learns from that one feature could reach;
- auto and prompt lookup re-run with that profile fixed and every step charged its modeled cost
  (`ModeledClock`): their planning compared without timing noise, and, against their measured times,
  what the cost model leaves out (host work, the draft model catching up on copied tokens).

    python benchmarks/bench_bound.py                           # embedded pair, float32, code + chat
    python benchmarks/bench_bound.py --num-prompts 2 --chat-prompts 1 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from unittest import mock

import torch

import specdec
import specdec.generate as generate_module
from specdec.drafters.prompt_lookup import find_continuations
from specdec.embedded.pair import heldout_code_prompts
from specdec.planning.bound import (
    accepted_lengths,
    best_class_policy,
    fastest_schedule,
    rank_acceptance,
    shape_family,
)
from specdec.planning.chain import DraftLengthController
from specdec.planning.trees import AutoShapeController

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_membound import chat_prompts, cpu_name, load_avg  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@torch.inference_mode()
def draft_ranks(draft, ids: torch.Tensor, reference: list[int]) -> list[int]:
    """Rank of each reference token among the draft's logits given the true prefix (teacher-forced)."""
    full = torch.cat([ids[0], torch.tensor(reference, dtype=ids.dtype)])[None]  # [1, P + N]
    logits = draft(full).logits[0, ids.shape[1] - 1 : -1].float()  # [N, V]
    true = logits.gather(1, torch.tensor(reference)[:, None])  # [N, 1]
    return (logits > true).sum(dim=1).tolist()


def copies_along(ids: torch.Tensor, reference: list[int], depth: int, max_ngram: int, min_ngram: int):
    """Per position of the reference: the n-gram copy auto would offer (its single candidate) and the
    length of the n-gram it follows (0: none matched)."""
    sequence = torch.cat([ids[0], torch.tensor(reference, dtype=ids.dtype)])  # [P + N]
    prompt = ids.shape[1]
    copies, ngrams = [], []
    for start in range(len(reference)):
        history = sequence[: prompt + start]
        copy, ngram = [], 0
        for n in range(max_ngram, min_ngram - 1, -1):
            found = find_continuations(history, depth, n, n, 1)
            if found:
                copy, ngram = found[0].tolist(), n
                break
        copies.append(copy)
        ngrams.append(ngram)
    return copies, ngrams


def timed(run) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def prefill_seconds(runner, ids: torch.Tensor, repeats: int = 3) -> float:
    """Median time of the target runner's pass over the prompt alone (the least any method pays)."""
    times = []
    for _ in range(repeats):
        runner.reset(1)
        start = time.perf_counter()
        runner.extend_rows(ids, [ids.shape[1]], None, None, 1)
        times.append(time.perf_counter() - start)
    runner.reset(1)
    return statistics.median(times)


@dataclass
class Case:
    """One prompt: the target's output, the draft's ranks and the copies along it, the prefill time."""

    reference: list[int]
    ranks: list[int]
    copies: list[list[int]]
    ngrams: list[int]  # the length of the n-gram each position's copy follows (0: none)
    prefill: float


def measure_set(methods: dict, draft, runner, tokenizer, texts: list[str], depth: int):
    """Time every method on every prompt (order reversed on odd prompts); per method the total seconds
    and the outputs identical to the target's, and the cases the bound is computed from."""
    totals: Counter = Counter()
    identical: Counter = Counter()
    cases = []
    for index, text in enumerate(texts):
        ids = tokenizer(text, return_tensors="pt").input_ids  # [1, P]
        outputs = {}
        for name in list(methods) if index % 2 == 0 else list(reversed(methods)):
            seconds, out = timed(lambda method=methods[name], ids=ids: method(ids))
            totals[name] += seconds
            outputs[name] = out[0, ids.shape[1] :].tolist()
        reference = outputs["target"]
        identical.update(name for name in methods if outputs[name] == reference)
        copies, ngrams = copies_along(ids, reference, depth, 3, 1)
        ranks = draft_ranks(draft, ids, reference)
        cases.append(Case(reference, ranks, copies, ngrams, prefill_seconds(runner, ids)))
    return totals, identical, cases


class ModeledClock:
    """Charges every verified step its cost under a fixed profile, and keeps planners from refining
    their costs with measured step times: a generation then plans and is charged deterministically, so
    two planners compare on one output without timing noise. The first step's verification rides on
    the prompt's pass and is left out (the prefill is measured apart), as in the bound."""

    def __init__(self, profile) -> None:
        self.profile = profile
        self.seconds = 0.0
        self.model_drafts = True  # False: the drafter runs no model (its draft costs nothing)
        self._first = True

    def start(self) -> None:
        self._first = True

    def charge(self, tree, planned) -> None:
        nodes, levels = len(tree), tree.depth
        if planned is not None:
            model = [d for d, is_model in zip(tree.depths, planned, strict=True) if is_model]
            nodes, levels = len(model), max(model, default=0)
        if self.model_drafts:
            self.seconds += self.profile.draft(levels, nodes)
        if not self._first:
            self.seconds += self.profile.verify(len(tree) + 1)
        self._first = False

    def wrap(self, planner_class) -> type:
        clock = self

        class Modeled(planner_class):
            def observe_step(self, tree, path, draft_time, verify_time, planned=None) -> None:
                clock.charge(tree, planned)
                super().observe_step(tree, path, None, None, planned)

        return Modeled


def modeled_seconds(spec, clock: ModeledClock, cases_ids: list[torch.Tensor], greedy: dict) -> float:
    """Total modeled seconds (prefills excluded) of `spec` over the prompts, planning with the clock's
    profile and never refining it."""
    measured, spec.cost_profile = spec.cost_profile, clock.profile
    with (
        mock.patch.object(generate_module, "AutoShapeController", clock.wrap(AutoShapeController)),
        mock.patch.object(generate_module, "DraftLengthController", clock.wrap(DraftLengthController)),
    ):
        clock.seconds, clock.model_drafts = 0.0, spec._drafter.uses_model
        for ids in cases_ids:
            clock.start()
            spec.generate(ids, **greedy)
    spec.cost_profile = measured
    return clock.seconds


def scaled_verify(profile, factor: float):
    """A copy of `profile` with every verification time multiplied by `factor`."""
    scaled = copy.deepcopy(profile)
    scaled.verify_seconds = {n: t * factor for n, t in profile.verify_seconds.items()}
    return scaled


def step_kind(shape) -> str:
    if shape.nodes == 0:
        return "copy" if shape.copy else "plain"
    return "model+copy" if shape.copy else "model"


def bound_seconds(cases: list[Case], shapes, profile) -> tuple[float, Counter]:
    """Total seconds of the fastest schedules over all cases, and how many steps of each kind they take.
    The first step's verification rides on the prompt's pass (counted in `prefill`)."""
    total, kinds = 0.0, Counter()
    for case in cases:
        seconds, steps = fastest_schedule(
            accepted_lengths(shapes, case.ranks, case.copies, case.reference),
            [s.cost(profile) for s in shapes],
            [s.draft_cost(profile) for s in shapes],
        )
        total += case.prefill + seconds
        kinds.update(step_kind(shapes[step]) for step in steps)
    return total, kinds


def rule_seconds(cases: list[Case], shapes, profile) -> tuple[float, list[str]]:
    """The best rule "shape per length of the n-gram matched at the step's start" fitted in hindsight
    (`best_class_policy`): total seconds, prefills included, and the shape it gives each length."""
    tables = [(accepted_lengths(shapes, c.ranks, c.copies, c.reference), c.ngrams) for c in cases]
    policy, seconds = best_class_policy(
        tables, [s.cost(profile) for s in shapes], 4, [s.draft_cost(profile) for s in shapes]
    )
    return seconds + sum(c.prefill for c in cases), [shapes[i].name for i in policy]


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
    target, draft, tokenizer = specdec.load_embedded_pair(DTYPES[args.dtype])
    specs = {
        "auto": specdec.wrap(target, draft, strategy="auto", tokenizer=tokenizer),
        "prompt-lookup": specdec.wrap(target, strategy="prompt-lookup", tokenizer=tokenizer),
        "none": specdec.wrap(target, strategy="none", tokenizer=tokenizer),
    }
    greedy = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    methods = {"target": lambda ids: target.generate(ids, **greedy)}
    methods.update(
        {name: lambda ids, spec=spec: spec.generate(ids, **greedy) for name, spec in specs.items()}
    )
    print(
        f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; embedded pair in {args.dtype}; {args.max_new_tokens} new tokens, greedy"
    )
    sets = []
    if args.num_prompts:
        sets.append(("code", heldout_code_prompts(tokenizer, args.num_prompts, args.prompt_tokens)))
    if args.chat_prompts:
        sets.append(("chat", [text for _, text in chat_prompts(args.chat_prompts)]))
    warm = tokenizer("def main():\n    return", return_tensors="pt").input_ids
    for method in methods.values():
        method(warm)
    auto = specs["auto"]
    measured_profile = auto.cost_profile
    depth = auto.config.max_draft_tokens
    for set_name, texts in sets:
        start_load = load_avg()
        totals, identical, cases = measure_set(methods, draft, auto._target_runner, tokenizer, texts, depth)
        # the profile's one-token pass against plain decoding's measured one: scaled down where it is
        # slower, so that the bounds stay upper bounds (never up: that would only lower them)
        prefills = sum(case.prefill for case in cases)
        plain_token = (totals["none"] - prefills) / sum(len(case.reference) - 1 for case in cases)
        scale = min(1.0, plain_token / measured_profile.verify(1))
        profile = scaled_verify(measured_profile, scale)
        p = rank_acceptance([rank for case in cases for rank in case.ranks])  # auto's trees follow it
        family = shape_family(p, AutoShapeController.SIZES[1:], depth, depth)
        families = {
            "copies only (prompt lookup's shapes)": [s for s in family if s.nodes == 0],
            "draft chains only": [s for s in family if s.copy == 0 and s.depth == s.nodes],
            "auto's shapes (rank trees and chains, each with a copy of 0-8)": family,
        }
        base = totals["target"]
        print(f"\n{set_name}: {len(cases)} prompts, load {start_load} -> {load_avg()}")
        print("| method | seconds | speedup over target generate() | identical / schedule |")
        print("|---|---:|---:|---|")
        for name in methods:
            seconds = totals[name]
            print(
                f"| {name} (measured) | {seconds:.2f} | {base / seconds:.2f}x "
                f"| {identical[name]}/{len(cases)} identical |"
            )
        for name, shapes in families.items():
            seconds, kinds = bound_seconds(cases, shapes, profile)
            steps = ", ".join(f"{k} {v}" for k, v in kinds.most_common())
            print(f"| bound: {name} | {seconds:.2f} | {base / seconds:.2f}x | steps: {steps} |")
        seconds, rule = rule_seconds(cases, family, profile)
        rule_text = ", ".join(f"n={n}: {name}" for n, name in enumerate(rule))
        print(
            f"| rule per matched n-gram length, fitted in hindsight | {seconds:.2f} "
            f"| {base / seconds:.2f}x | {rule_text} |"
        )
        ids_list = [tokenizer(text, return_tensors="pt").input_ids for text in texts]
        variants = {"auto": auto, "prompt-lookup": specs["prompt-lookup"]}
        for name, spec in variants.items():
            seconds = prefills + modeled_seconds(spec, ModeledClock(profile), ids_list, greedy)
            print(f"| modeled: {name} | {seconds:.2f} | {base / seconds:.2f}x | the profile below, fixed |")
        print(
            f"cost profile: one-token verification {1000 * measured_profile.verify(1):.2f} ms as measured, "
            f"{1000 * plain_token:.2f} ms per token of plain decoding: verification times x {scale:.3f}"
        )
        verify = ", ".join(f"{n}: {1000 * s:.2f}" for n, s in sorted(profile.verify_seconds.items()))
        print(
            f"cost profile (ms): verify {{{verify}}}; draft step {1000 * profile.draft_step_seconds:.2f} "
            f"level {1000 * profile.draft_level_seconds:.2f} node {1000 * profile.draft_node_seconds:.2f}"
        )
        print("rank acceptance p_r (teacher-forced): " + " ".join(f"{x:.2f}" for x in p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
