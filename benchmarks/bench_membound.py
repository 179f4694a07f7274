"""The memory-bound regime on a CPU: a bf16 target whose weights, not its ops, set the step time.

The embedded target's MLPs are widened (issue 19): every layer's intermediate size grows to
`--intermediate-size` with random new gate/up rows and ZERO new down_proj columns, so the new units add
exactly 0 to every output while their weights are read and multiplied on every pass. The model behaves
like the embedded target (float32 logits checked equal) but streams ~0.6 GB of bf16 weights per pass.
Built here at run time, never shipped.

Why 32512 units by default, not more: oneDNN (torch 2.13's bf16 matmul on CPU) runs the down projection
of 2-32 rows on its AVX512-BF16 kernel instead of AMX once its reduction length reaches 32768
(`ONEDNN_VERBOSE=1`: brg_matmul:avx512_core_bf16 for 16x32768 and 16x36864, avx10_1_512_amx for 16x32000,
for 1 and 33 rows of 36864, and for every Llama-2 7B/13B/70B down projection at 8-32 rows; the project's
Xeon with AMX, 1 thread). With 36864 units one layer's down projection of 32 rows took 13.1 ms against
4.1 ms for 33 rows, and a whole 32-token verification 225 ms against 164 ms for 33: a cliff no real
Llama-2 shape meets (their longest reduction is 70B's 28672), so the default stays below it (0.61 GB).

Prints: the 1/4/16/64-row cost of one widened layer's MLP in bf16 (the regime), then every specdec
strategy and transformers' methods in one process, bf16, on the held-out code prompts and the chat set
(plain text: the embedded tokenizer has no chat template): tokens/s, speedup against the target's own
`generate()`, tau, draft/verify time split, outputs identical to `target.generate`. Method order is
reversed on every other prompt (shared machines drift).

    python benchmarks/bench_membound.py                       # 8 code prompts x 128 tokens, 6 chat
    python benchmarks/bench_membound.py --num-prompts 2 --max-new-tokens 32 --chat-prompts 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from datetime import date
from pathlib import Path

import torch
from torch import nn

import specdec
from specdec.cli.bench import (
    RunResult,
    baseline_methods,
    distinct_ngram_ratio,
    markdown_table,
    strategy_methods,
)
from specdec.cli.bench import summarize as summarize_results
from specdec.embedded.pair import heldout_code_prompts
from specdec.planning.calibration import fast_half_matmul, warn_slow_half_precision

ROOT = Path(__file__).resolve().parent.parent
CHAT_FILE = ROOT / "benchmarks" / "prompts" / "chat.jsonl"
STRATEGIES = ("chain", "tree", "dynamic-tree", "hybrid", "auto", "prompt-lookup")
BASELINES = ("target", "hf-assisted", "hf-prompt-lookup")


STEP_FIELDS = ("target_passes", "tree_passes", "drafted_tokens", "draft_time", "verify_time", "total_time")


def step_table(steps: dict[str, dict[str, float]]) -> str:
    """Per specdec method: draft nodes per target pass, share of passes that verified a branching tree,
    and milliseconds per pass drafting, verifying and in the rest of the engine."""
    lines = [
        "| method | nodes / pass | tree passes | draft ms / pass | verify ms / pass | rest ms / pass |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, t in steps.items():
        passes = max(t["target_passes"], 1)
        rest = t["total_time"] - t["draft_time"] - t["verify_time"]
        lines.append(
            f"| {name} | {t['drafted_tokens'] / passes:.1f} | {100 * t['tree_passes'] / passes:.0f}% "
            f"| {1000 * t['draft_time'] / passes:.1f} | {1000 * t['verify_time'] / passes:.1f} "
            f"| {1000 * rest / passes:.1f} |"
        )
    return "\n".join(lines)


class WideningTooLarge(MemoryError):
    """The widened model would not fit in this machine's available memory."""


def added_parameters(config, intermediate_size: int, widths: tuple[int, int, int] | None = None) -> int:
    """Parameters the widening adds: every MLP to `intermediate_size` (gate, up and down of every layer)
    and, with widths = (hidden, heads, kv_heads), the residual stream and heads as `widen_hidden` does."""
    hidden, heads, kv_heads = widths or (
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
    )
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def count(width: int, query: int, key_value: int, units: int) -> int:
        attention = width * head_dim * (2 * query + 2 * key_value)  # q, o and k, v projections
        mlp = 3 * width * units
        norms = (2 * config.num_hidden_layers + 1) * width
        head = (1 if config.tie_word_embeddings else 2) * config.vocab_size * width
        return config.num_hidden_layers * (attention + mlp) + norms + head

    before = count(
        config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.intermediate_size
    )
    return max(count(hidden, heads, kv_heads, max(intermediate_size, config.intermediate_size)) - before, 0)


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(
    model: nn.Module, intermediate_size: int, margin: float = 1.5, widths: tuple[int, int, int] | None = None
) -> int:
    """Bytes the widening needs (float32 widened model for the logits check plus its bf16 copy, times
    `margin`); raises WideningTooLarge before anything is allocated when they exceed MemAvailable."""
    base = sum(p.numel() for p in model.parameters())
    extra = added_parameters(model.config, intermediate_size, widths)
    needed = int((base + extra) * (4 + 2) * margin)
    free = available_bytes()
    if free is not None and needed > free:
        raise WideningTooLarge(
            f"widening the MLPs to {intermediate_size} needs about {needed / 2**30:.1f} GiB "
            f"({(base + extra) / 1e6:.0f}M parameters, float32 check + bf16 copy, x{margin} margin) but "
            f"only {free / 2**30:.1f} GiB is available; pass a smaller --intermediate-size"
        )
    return needed


@torch.no_grad()
def widen_mlps(model: nn.Module, intermediate_size: int, seed: int = 0) -> nn.Module:
    """Widen every Llama MLP in place to `intermediate_size`: new gate/up rows random (N(0, 0.02)), new
    down_proj columns zero, so every output is unchanged. Returns the model."""
    generator = torch.Generator().manual_seed(seed)
    for layer in model.model.layers:
        mlp = layer.mlp
        old = mlp.gate_proj.out_features
        if intermediate_size < old:
            raise ValueError(f"--intermediate-size {intermediate_size} is below the model's own {old}")
        for name in ("gate_proj", "up_proj"):
            linear = getattr(mlp, name)
            weight = linear.weight  # [old, hidden]
            fresh = torch.randn(intermediate_size - old, weight.shape[1], generator=generator) * 0.02
            wide = nn.Linear(weight.shape[1], intermediate_size, bias=False, dtype=weight.dtype)
            wide.weight.copy_(torch.cat([weight, fresh.to(weight.dtype)]))  # [I', hidden]
            setattr(mlp, name, wide)
        down = mlp.down_proj.weight  # [hidden, old]
        wide = nn.Linear(intermediate_size, down.shape[0], bias=False, dtype=down.dtype)
        wide.weight.zero_()
        wide.weight[:, :old] = down  # [hidden, I'], new columns 0
        mlp.down_proj = wide
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = intermediate_size
    model.config.intermediate_size = intermediate_size
    return model.eval()


@torch.no_grad()
def widen_hidden(model: nn.Module, hidden: int, heads: int, kv_heads: int) -> nn.Module:
    """A copy of Llama `model` whose residual stream is `hidden` wide, with `heads` query and `kv_heads`
    key/value heads of the same size, computing the same function: every old weight sits in the top-left
    block of its wider matrix and every new entry is 0, so the new residual dimensions stay 0 and the new
    heads (zero q, k, v; each maps to a new key/value head, as the query/key-value ratio is kept) add 0.
    RMSNorm divides by the mean square over all `hidden` dimensions, so its epsilon is scaled by
    old / hidden and its weights by sqrt(old / hidden), which gives the same normalisation in exact
    arithmetic (float32 sums then differ by rounding: checked by `max_logit_difference`)."""
    from transformers import LlamaForCausalLM

    config = model.config
    old, old_heads, old_kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or old // old_heads
    if hidden < old or heads < old_heads or heads * old_kv != kv_heads * old_heads or heads % kv_heads:
        raise ValueError(
            f"widening {old} / {old_heads} / {old_kv} (hidden / heads / kv heads) to {hidden} / {heads} / "
            f"{kv_heads} needs each at least as large and the same {old_heads // old_kv} query heads per "
            "key/value head"
        )
    wide_config = config.__class__.from_dict(config.to_dict())
    wide_config.hidden_size, wide_config.head_dim = hidden, head_dim
    wide_config.num_attention_heads, wide_config.num_key_value_heads = heads, kv_heads
    wide_config.rms_norm_eps = config.rms_norm_eps * old / hidden
    wide = LlamaForCausalLM(wide_config).to(next(model.parameters()).dtype)
    norm_scale = (old / hidden) ** 0.5
    mine = dict(model.named_parameters())
    for name, parameter in wide.named_parameters():
        source = mine[name]
        parameter.zero_()
        block = tuple(slice(0, n) for n in source.shape)  # the old matrix's top-left block
        scale = norm_scale if name.endswith("layernorm.weight") or name == "model.norm.weight" else 1.0
        parameter[block] = source * scale
    return wide.eval()


@torch.no_grad()
def max_logit_difference(a: nn.Module, b: nn.Module, ids: torch.Tensor, threads: int | None = None) -> float:
    """Largest |logit difference| of two models over every position of `ids` ([1, L]), on `threads`
    torch threads (default: as set). With 2 threads the 32512-long down_proj reduction is split across
    threads differently from the 1024-long one (measured: 1.1e-5 in float32); on 1 thread the added
    zeros leave the float32 sums bit-identical."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or saved)
    try:
        return (a(ids).logits - b(ids).logits).abs().max().item()  # [1, L, vocab]
    finally:
        torch.set_num_threads(saved)


@torch.no_grad()
def mlp_row_costs(mlp: nn.Module, hidden: int, rows=(1, 4, 16, 64), repeats: int = 15) -> dict[int, float]:
    """Median seconds of one MLP forward on [1, rows, hidden] bf16 inputs (rows alternated per round)."""
    times: dict[int, list[float]] = {n: [] for n in rows}
    inputs = {n: torch.randn(1, n, hidden, dtype=torch.bfloat16) for n in rows}
    for n in rows:
        mlp(inputs[n])  # warm-up
    for round_index in range(repeats):
        order = rows if round_index % 2 == 0 else tuple(reversed(rows))
        for n in order:
            start = time.perf_counter()
            mlp(inputs[n])
            times[n].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else the platform's machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_avg() -> str:
    """The 1-minute load average (other work on the shared cores)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def chat_prompts(count: int) -> list[tuple[str, str]]:
    """(category, text) of `count` chat prompts taken round-robin over the categories of chat.jsonl."""
    records = [json.loads(line) for line in CHAT_FILE.read_text().splitlines() if line.strip()]
    by_category: dict[str, list[dict]] = {}
    for record in records:
        by_category.setdefault(record["category"], []).append(record)
    chosen: list[tuple[str, str]] = []
    index = 0
    while len(chosen) < min(count, len(records)):
        for category, items in by_category.items():
            if index < len(items) and len(chosen) < count:
                chosen.append((category, items[index]["prompt"]))
        index += 1
    return chosen


def run_alternating(
    methods: dict,
    prompts: list[torch.Tensor],
    repeats: int,
    steps: dict[str, dict[str, float]],
    outputs: dict[tuple[str, int], torch.Tensor] | None = None,
) -> list[RunResult]:
    """Every method on every prompt, the order reversed on odd prompts; warm-up on a short prompt excluded.
    Outputs compared with the "target" method's (and kept in `outputs[(method, prompt)]` when given).
    `steps[method]` collects specdec's per-pass totals (passes, tree passes, drafted nodes, draft /
    verify / total seconds) of the timed runs."""
    for method in methods.values():
        method(prompts[0][:, :16])
    results: list[RunResult] = []
    outputs = {} if outputs is None else outputs
    names = list(methods)
    for p_index, ids in enumerate(prompts):
        order = names if p_index % 2 == 0 else names[::-1]
        for name in order:
            times, stats, out = [], None, None
            for _ in range(repeats):
                start = time.perf_counter()
                out, stats = methods[name](ids)
                times.append(time.perf_counter() - start)
            new = out[0, ids.shape[1] :].tolist()
            outputs[(name, p_index)] = out
            result = RunResult(name, p_index, len(new), statistics.median(times))
            result.distinct_4gram_ratio = distinct_ngram_ratio(new)
            if stats is not None:
                result.record_stats(stats)
                totals = steps.setdefault(name, dict.fromkeys(STEP_FIELDS, 0.0))
                for key in STEP_FIELDS:
                    totals[key] += getattr(stats, key)
            results.append(result)
            print(
                f"  prompt {p_index} {name}: {result.tokens_per_second:.1f} tok/s (load {load_avg()})",
                file=sys.stderr,
                flush=True,
            )
    if "target" in methods:
        for result in results:
            reference = outputs[("target", result.prompt)]
            result.identical_to_target = bool(torch.equal(outputs[(result.method, result.prompt)], reference))
    return results


@torch.inference_mode()
def divergences(
    model, prompts: list[torch.Tensor], outputs: dict[tuple[str, int], torch.Tensor]
) -> list[dict]:
    """Every output that differs from the target's: where it first differs (new-token index), the two
    tokens, and the target's own logit gap between them there (one forward of `model` over the prompt
    and the common prefix): a gap of a few bf16 rounding steps is a near-tie that matmul shapes decide."""
    found = []
    for (name, index), out in sorted(outputs.items()):
        reference = outputs[("target", index)]
        if name == "target" or torch.equal(out, reference):
            continue
        width = min(out.shape[1], reference.shape[1])
        differ = (out[0, :width] != reference[0, :width]).nonzero()
        at = int(differ[0]) if differ.numel() else width  # one may only be longer (an EOS)
        if at >= width:
            found.append({"method": name, "prompt": index, "position": at - prompts[index].shape[1]})
            continue
        logits = model(reference[:, :at]).logits[0, -1].float()  # [V]
        mine, theirs = int(out[0, at]), int(reference[0, at])
        found.append(
            {
                "method": name,
                "prompt": index,
                "position": at - prompts[index].shape[1],
                "target_token": theirs,
                "method_token": mine,
                "gap": float(logits[theirs] - logits[mine]),
                "top_logit": float(logits.max()),
            }
        )
    return found


def divergence_table(found: list[dict]) -> str:
    lines = [
        "| method | prompt | first differing new token | target's logit gap (its token - the other) "
        "| largest logit |",
        "|---|---:|---:|---:|---:|",
    ]
    for d in found:
        gap = f"{d['gap']:.4f}" if "gap" in d else "(one output ends first)"
        top = f"{d['top_logit']:.2f}" if "top_logit" in d else ""
        lines.append(f"| {d['method']} | {d['prompt']} | {d['position']} | {gap} | {top} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--intermediate-size",
        type=int,
        default=32512,
        help="widened MLP size (default 32512: below 32768, where oneDNN leaves AMX for 2-32 rows)",
    )
    parser.add_argument(
        "--hidden",
        default=None,
        help="also widen the residual stream and the heads, HIDDEN,HEADS,KV_HEADS (e.g. 2048,30,10: "
        "Llama-2-like projection shapes; the float32 logits then match to rounding, not exactly)",
    )
    parser.add_argument("--num-prompts", type=int, default=8, help="held-out code prompts (0: none)")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="code prompt length in tokens")
    parser.add_argument(
        "--chat-prompts", type=int, default=6, help="chat prompts (round-robin over categories)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats per (method, prompt), median")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--baselines", default=",".join(BASELINES))
    parser.add_argument("--out", default=None, help="folder for results.json (optional)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's). On cores shared with other work use 1: measured at load 8 "
        "on 2 cores, 2 threads made every pass 3-8x slower than 1 (OpenMP barriers wait for a descheduled "
        "thread)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
        f"fast bf16 matmul: {fast_half_matmul(torch.bfloat16)}; load {load_avg()}"
    )
    warn_slow_half_precision(torch.bfloat16, torch.device("cpu"))
    pair = specdec.load_embedded_pair(dtype=torch.float32)
    reference, draft, tokenizer = pair.target, pair.draft, pair.tokenizer
    widths = tuple(int(v) for v in args.hidden.split(",")) if args.hidden else None
    try:
        needed = check_fits(reference, args.intermediate_size, widths=widths)
    except WideningTooLarge as exc:
        print(f"bench_membound: {exc}", file=sys.stderr)
        return 2
    wide = specdec.load_embedded_pair(dtype=torch.float32).target
    if widths:
        wide = widen_hidden(wide, *widths)
    widen_mlps(wide, args.intermediate_size)
    text = "def widen(model, size):\n    for layer in model.layers:\n"
    probe = tokenizer(text, return_tensors="pt").input_ids  # [1, L]
    difference = max_logit_difference(reference, wide, probe, threads=1)
    threaded = max_logit_difference(reference, wide, probe)
    parameters = sum(p.numel() for p in wide.parameters())
    print(
        f"widened target: intermediate size {args.intermediate_size}, {parameters / 1e6:.0f}M parameters, "
        f"{parameters * 2 / 1e9:.2f} GB in bf16 (checked to fit: {needed / 2**30:.1f} GiB needed); float32 "
        f"logits vs the embedded target on {probe.shape[1]} tokens, 1 thread: max |difference| "
        f"{difference:.3g} ({'identical' if difference == 0 else 'DIFFERENT'}); "
        f"{torch.get_num_threads()} threads: {threaded:.3g} (the longer reduction is split otherwise)"
    )
    del reference
    wide = wide.to(torch.bfloat16).eval()
    draft = draft.to(torch.bfloat16).eval()
    costs = mlp_row_costs(wide.model.layers[0].mlp, wide.config.hidden_size)
    print(
        "one widened layer's MLP in bf16 (median ms): "
        + ", ".join(f"{n} rows {1000 * s:.2f}" for n, s in costs.items())
        + f"; 64 rows / 1 row = {costs[64] / costs[1]:.2f}x; load {load_avg()}"
    )

    gen_kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
    strategies = [s for s in args.strategies.split(",") if s]
    baselines = [b for b in args.baselines.split(",") if b]
    sets: list[tuple[str, list[str]]] = []
    if args.num_prompts:
        sets.append(("code", heldout_code_prompts(tokenizer, args.num_prompts, args.prompt_tokens)))
    if args.chat_prompts:
        sets.append(("chat", [text for _, text in chat_prompts(args.chat_prompts)]))
    report: dict = {
        "date": date.today().isoformat(),
        "machine": cpu_name(),
        "threads": torch.get_num_threads(),
        "command": "python benchmarks/bench_membound.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "parameters": parameters,
        "logit_difference": {"1 thread": difference, "threads": threaded},
        "mlp_row_ms": {n: 1000 * s for n, s in costs.items()},
        "sets": {},
    }
    for set_name, texts in sets:
        prompts = [tokenizer(t, return_tensors="pt").input_ids for t in texts]
        methods = baseline_methods(wide, draft, baselines, gen_kwargs)
        methods |= strategy_methods(wide, draft, strategies, gen_kwargs)
        start_load = load_avg()
        start = time.perf_counter()
        steps: dict[str, dict[str, float]] = {}
        outputs: dict[tuple[str, int], torch.Tensor] = {}
        results = run_alternating(methods, prompts, args.repeats, steps, outputs)
        rows = summarize_results(results)
        print(
            f"\n{set_name}: {len(prompts)} prompts ({', '.join(str(p.shape[1]) for p in prompts)} tokens), "
            f"{args.max_new_tokens} new tokens, greedy, bf16; {time.perf_counter() - start:.0f} s; "
            f"load {start_load} -> {load_avg()}"
        )
        print(markdown_table(rows))
        print()
        print(step_table(steps))
        for name, method in methods.items():
            spec = getattr(method, "__defaults__", None)
            profile = getattr(spec[0], "cost_profile", None) if spec else None
            if profile is not None and profile.verify_seconds:
                verify = ", ".join(f"{n}: {1000 * s:.1f}" for n, s in sorted(profile.verify_seconds.items()))
                print(
                    f"{name} cost profile: verify ms per tokens {{{verify}}}; draft ms step "
                    f"{1000 * profile.draft_step_seconds:.2f} level {1000 * profile.draft_level_seconds:.2f}"
                    f" node {1000 * profile.draft_node_seconds:.2f}"
                )
        found = divergences(wide, prompts, outputs) if "target" in methods else []
        if found:
            print(
                "\nOutputs that differ from the target's generate(), and the target's logits where they part:"
            )
            print(divergence_table(found))
        report["sets"][set_name] = {
            "summary": rows,
            "steps": steps,
            "runs": [vars(r) for r in results],
            "divergences": found,
        }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        sys.exit(main())
