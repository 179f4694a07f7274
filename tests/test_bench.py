"""The benchmark harness on tiny models: every method runs, outputs are compared, rows add up."""

import torch

from specdec.cli.bench import (
    baseline_methods,
    distinct_ngram_ratio,
    markdown_table,
    run_benchmark,
    strategy_methods,
    summarize,
)
from tests.tiny_models import prompt, tiny_llama


def test_distinct_ngram_ratio():
    assert distinct_ngram_ratio([1, 2, 3, 4, 5]) == 1.0
    assert distinct_ngram_ratio([7] * 10) == 1 / 7
    assert distinct_ngram_ratio([1, 2]) == 1.0


def test_harness_runs_every_method_and_checks_identity():
    target = tiny_llama(seed=0)
    draft = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1)
    gen = dict(max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    methods = baseline_methods(target, draft, ["target", "hf-assisted-k3", "specdec-no-speculation"], gen)
    methods |= strategy_methods(target, draft, ["chain", "tree", "prompt-lookup"], gen)
    prompts = [prompt(6, 1), prompt(9, 2)]
    seen = []
    results = run_benchmark(methods, prompts, progress=lambda done, total, text: seen.append((done, total)))
    assert len(results) == len(methods) * 2 == len(seen)
    assert seen == [(i + 1, len(results)) for i in range(len(results))]
    assert all(r.identical_to_target for r in results)
    assert all(r.new_tokens == 12 for r in results)
    rows = summarize(results)
    by_name = {row["method"]: row for row in rows}
    assert by_name["target"]["speedup"] == 1.0
    assert by_name["specdec-chain"]["tau"] is not None and by_name["target"]["tau"] is None
    table = markdown_table(rows)
    assert table.count("\n") == len(rows) + 1 and "specdec-tree" in table
    assert draft.generation_config.num_assistant_tokens != 3  # restored after the constant-k baseline
    assert torch.is_tensor(prompts[0])


def test_plot_writes_a_png(tmp_path):
    from specdec.cli.bench import RunResult, plot

    results = [
        RunResult("target", 0, 10, 1.0),
        RunResult("specdec-chain", 0, 10, 0.5, tau=2.0),
        RunResult("target", 1, 10, 1.0),
        RunResult("specdec-chain", 1, 10, 0.8, tau=1.5),
    ]
    rows = summarize(results)
    path = tmp_path / "plot.png"
    assert plot(results, rows, ["code", "chat"], str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
