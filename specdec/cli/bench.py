"""Speed benchmarks: every method on the same prompts in one process (layer L7).

Each method is a function `ids -> (output ids, GenerationStats | None)`. Baselines are transformers'
own `generate()` (target alone, assisted generation, prompt lookup); the rest are specdec strategies.
Warm-up runs are excluded; each (method, prompt) is timed `repeats` times and the median kept.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

import specdec
from specdec.config import strategy_needs_draft
from specdec.core.stats import GenerationStats

Method = Callable[[torch.Tensor], tuple[torch.Tensor, GenerationStats | None]]

BASELINES = ("target", "hf-assisted", "hf-prompt-lookup", "specdec-no-speculation")


@dataclass
class RunResult:
    """One method on one prompt (median of repeats)."""

    method: str
    prompt: int
    new_tokens: int
    seconds: float
    tau: float | None = None
    runtime: str | None = None  # the runner that ran the target (stats.runtime), for specdec methods
    acceptance_per_depth: list[float] = field(default_factory=list)
    draft_seconds: float | None = None
    verify_seconds: float | None = None
    identical_to_target: bool | None = None
    distinct_4gram_ratio: float | None = None

    def record_stats(self, stats) -> None:
        """Copy a specdec method's GenerationStats into this result."""
        self.tau = stats.tau
        self.runtime = stats.runtime
        self.acceptance_per_depth = stats.acceptance_per_position
        self.draft_seconds = stats.draft_time
        self.verify_seconds = stats.verify_time

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def distinct_ngram_ratio(tokens: Sequence[int], n: int = 4) -> float:
    """Distinct n-grams / all n-grams of the generated tokens (1.0: no repetition)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def baseline_methods(
    target, draft, names: Sequence[str], gen_kwargs: dict, runtime: str = "auto"
) -> dict[str, Method]:
    """transformers' own decoding methods (and specdec's runner with speculation off, on `runtime`).

    Raises ValueError for an unknown name, and for an assisted-generation baseline without a draft
    (transformers would run the target alone under that name).
    """
    methods: dict[str, Method] = {}
    for name in names:
        if name.startswith("hf-assisted") and draft is None:
            raise ValueError(
                f"baseline {name!r} needs a draft model: assisted generation without one is the target "
                "alone. Pass a draft, or leave the baseline out."
            )
        if name == "target":
            methods[name] = lambda ids: (target.generate(ids, **gen_kwargs), None)
        elif name == "hf-assisted":
            methods[name] = lambda ids: (target.generate(ids, assistant_model=draft, **gen_kwargs), None)
        elif name.startswith("hf-assisted-k") and name.removeprefix("hf-assisted-k").isdigit():
            k = int(name.removeprefix("hf-assisted-k"))

            def assisted(ids, k=k):
                config = draft.generation_config
                saved = (config.num_assistant_tokens, config.num_assistant_tokens_schedule)
                config.num_assistant_tokens, config.num_assistant_tokens_schedule = k, "constant"
                try:
                    return target.generate(ids, assistant_model=draft, **gen_kwargs), None
                finally:
                    config.num_assistant_tokens, config.num_assistant_tokens_schedule = saved

            methods[name] = assisted
        elif name == "hf-prompt-lookup":
            methods[name] = lambda ids: (
                target.generate(ids, prompt_lookup_num_tokens=10, **gen_kwargs),
                None,
            )
        elif name == "specdec-no-speculation":
            spec = specdec.wrap(target, None, strategy="none", runtime=runtime)

            def plain(ids, spec=spec):
                return spec.generate(ids, **gen_kwargs), spec.stats

            methods[name] = plain
        else:
            raise ValueError(
                f"unknown baseline {name!r}; choose from {', '.join(BASELINES)} or hf-assisted-kN."
            )
    return methods


def strategy_methods(
    target, draft, strategies: Sequence[str], gen_kwargs: dict, runtime: str = "auto"
) -> dict[str, Method]:
    """specdec strategies, one SpeculativeModel each (caches and cost profiles reused across calls)."""
    methods: dict[str, Method] = {}
    for strategy in strategies:
        uses_draft = strategy_needs_draft(strategy)
        spec = specdec.wrap(target, draft if uses_draft else None, strategy=strategy, runtime=runtime)

        def run(ids, spec=spec):
            return spec.generate(ids, **gen_kwargs), spec.stats

        methods[f"specdec-{strategy}"] = run
    return methods


def run_benchmark(
    methods: dict[str, Method],
    prompts: Sequence[torch.Tensor],
    repeats: int = 1,
    reference: str | None = "target",
    progress: Callable[[int, int, str], None] | None = None,
) -> list[RunResult]:
    """Time every method on every prompt ([1, L] ids each); warm-up on the first prompt excluded.

    progress(done, total, message) is called after every (method, prompt) run.
    reference: the method whose outputs the others are compared with (greedy: identical expected).
    """
    for method in methods.values():  # warm-up: first-call allocations, cost calibration
        method(prompts[0][:, : min(prompts[0].shape[1], 16)])
    results: list[RunResult] = []
    outputs: dict[tuple[str, int], torch.Tensor] = {}
    total = len(methods) * len(prompts)
    done = 0
    for p_index, ids in enumerate(prompts):
        for name, method in methods.items():
            times, stats, out = [], None, None
            for _ in range(repeats):
                start = time.perf_counter()
                out, stats = method(ids)
                times.append(time.perf_counter() - start)
            new = out[0, ids.shape[1] :].tolist()
            outputs[(name, p_index)] = out
            result = RunResult(
                method=name,
                prompt=p_index,
                new_tokens=len(new),
                seconds=statistics.median(times),
                distinct_4gram_ratio=distinct_ngram_ratio(new),
            )
            if stats is not None:
                result.record_stats(stats)
            results.append(result)
            done += 1
            if progress is not None:
                progress(done, total, f"prompt {p_index} {name}: {result.tokens_per_second:.1f} tok/s")
    if reference is not None and reference in methods:
        for result in results:
            ref = outputs[(reference, result.prompt)]
            result.identical_to_target = bool(torch.equal(outputs[(result.method, result.prompt)], ref))
    return results


def summarize(results: Sequence[RunResult], reference: str = "target") -> list[dict]:
    """Per method: total tokens / total seconds over prompts, speedup vs reference, mean tau."""
    by_method: dict[str, list[RunResult]] = {}
    for result in results:
        by_method.setdefault(result.method, []).append(result)
    base = by_method.get(reference)
    base_rate = sum(r.new_tokens for r in base) / sum(r.seconds for r in base) if base else None
    rows = []
    for name, runs in by_method.items():
        rate = sum(r.new_tokens for r in runs) / sum(r.seconds for r in runs)
        taus = [r.tau for r in runs if r.tau is not None]
        identical = [r.identical_to_target for r in runs if r.identical_to_target is not None]
        depth = max((len(r.acceptance_per_depth) for r in runs), default=0)
        per_depth = []
        for d in range(depth):
            values = [r.acceptance_per_depth[d] for r in runs if len(r.acceptance_per_depth) > d]
            per_depth.append(sum(values) / len(values))
        draft = [r.draft_seconds for r in runs if r.draft_seconds is not None]
        verify = [r.verify_seconds for r in runs if r.verify_seconds is not None]
        total_seconds = sum(r.seconds for r in runs)
        runtimes = sorted({r.runtime for r in runs if r.runtime})
        rows.append(
            {
                "method": name,
                "runtime": "/".join(runtimes),
                "tokens_per_second": rate,
                "speedup": rate / base_rate if base_rate else None,
                "tau": sum(taus) / len(taus) if taus else None,
                "acceptance_per_depth": per_depth,
                "draft_share": sum(draft) / total_seconds if draft else None,
                "verify_share": sum(verify) / total_seconds if verify else None,
                "identical": f"{sum(identical)}/{len(identical)}" if identical else "",
                "distinct_4gram": _mean([r.distinct_4gram_ratio for r in runs]),
            }
        )
    return rows


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def markdown_table(rows: Sequence[dict]) -> str:
    lines = [
        "| method | runtime | tokens/s | speedup | tau | accept. per depth | draft / verify time | identical "
        "| distinct 4-grams |",
        "|---|---|---:|---:|---:|---|---|---:|---:|",
    ]
    for row in rows:
        speedup = f"{row['speedup']:.2f}x" if row["speedup"] is not None else ""
        tau = f"{row['tau']:.2f}" if row["tau"] is not None else ""
        depth = " ".join(f"{a:.2f}" for a in row["acceptance_per_depth"][:8])
        split = ""
        if row["draft_share"] is not None:
            split = f"{100 * row['draft_share']:.0f}% / {100 * row['verify_share']:.0f}%"
        lines.append(
            f"| {row['method']} | {row.get('runtime', '')} | {row['tokens_per_second']:.1f} | {speedup} "
            f"| {tau} | {depth} | {split} | "
            f"{row['identical']} | {_fmt(row['distinct_4gram'])} |"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def results_json(results: Sequence[RunResult], rows: Sequence[dict], meta: dict) -> dict:
    runs = [asdict(r) | {"tokens_per_second": r.tokens_per_second} for r in results]
    return {"meta": meta, "summary": list(rows), "runs": runs}


def plot(results: Sequence[RunResult], rows: Sequence[dict], categories: Sequence[str], path: str) -> bool:
    """PNG: speedup per method and prompt category (left) and the tau histogram per strategy (right).

    categories[i] is the category of prompt i. Needs matplotlib (the `plot` extra); returns False
    without it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    base = {r.prompt: r.seconds for r in results if r.method == "target"}
    methods = [row["method"] for row in rows if row["method"] != "target"]
    cats = sorted(set(categories))
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / max(len(cats), 1)
    for c_index, category in enumerate(cats):
        speedups = []
        for method in methods:
            runs = [r for r in results if r.method == method and categories[r.prompt] == category]
            ratios = [base[r.prompt] / r.seconds for r in runs if r.prompt in base and r.seconds > 0]
            speedups.append(sum(ratios) / len(ratios) if ratios else 0.0)
        left.bar([i + c_index * width for i in range(len(methods))], speedups, width, label=category)
    left.axhline(1.0, color="black", linewidth=0.8)
    left.set_xticks([i + 0.4 - width / 2 for i in range(len(methods))], methods, rotation=35, ha="right")
    left.set_ylabel("speedup over target generate()")
    left.legend(fontsize=8)
    for method in methods:
        taus = [r.tau for r in results if r.method == method and r.tau is not None]
        if taus and any(t != 1.0 for t in taus):
            right.hist(taus, bins=12, alpha=0.5, label=method)
    right.set_xlabel("tau (tokens per target pass), per prompt")
    right.set_ylabel("prompts")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
