"""`specdec generate | bench` argument handling and the shipped prompt set (no pair needed)."""

import json
from pathlib import Path

import pytest

from specdec.cli.commands import CommandError, read_prompts
from specdec.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def test_prompt_file_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "a"}\n\nnot json\n')
    with pytest.raises(CommandError, match=r"p.jsonl, line 3: not valid JSON"):
        read_prompts(str(bad))
    bad.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(CommandError, match=r"line 2: expected"):
        read_prompts(str(bad))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(CommandError, match="holds no prompts"):
        read_prompts(str(tmp_path / "empty.jsonl"))
    with pytest.raises(CommandError, match="not found"):
        read_prompts(str(tmp_path / "missing.jsonl"))


def test_unknown_strategy_lists_the_valid_ones(capsys):
    assert main(["bench", "--strategies", "chain,beam"]) == 1
    assert "unknown strategy 'beam'; valid: chain, tree" in capsys.readouterr().err
    assert main(["bench", "--baselines", "target,hf-assisted-kx"]) == 1
    assert "unknown baseline 'hf-assisted-kx'" in capsys.readouterr().err


def test_shipped_chat_prompts_cover_six_categories():
    records = read_prompts(str(ROOT / "benchmarks" / "prompts" / "chat.jsonl"))
    counts = {}
    for record in records:
        counts[record["category"]] = counts.get(record["category"], 0) + 1
        if record["category"] == "multi-turn":
            assert record["turns"][-1]["role"] == "user"
    assert counts == {c: 10 for c in ("multi-turn", "translation", "summarization", "qa", "math", "rag")}
    assert len({r["id"] for r in records}) == 60
    json.dumps(records)  # plain JSON data


def test_quote_prompts_quote_a_heldout_snippet():
    from specdec.embedded.pair import heldout_code_prompts, heldout_quote_prompts, load_embedded_pair

    tokenizer = load_embedded_pair().tokenizer
    quotes = heldout_quote_prompts(tokenizer, num_prompts=3, quote_tokens=48)
    assert quotes == heldout_quote_prompts(tokenizer, num_prompts=3, quote_tokens=48)
    snippets = heldout_code_prompts(tokenizer, num_prompts=3, prompt_tokens=48, seed=1000)
    for quote, snippet in zip(quotes, snippets, strict=True):
        assert quote.startswith(snippet) and quote.endswith(snippet.split("\n", 1)[0] + "\n")


def test_generate_streams_text(capsys):
    code = main(
        [
            "generate",
            "--prompt",
            "def read(path):\n",
            "--max-new-tokens",
            "8",
            "--strategy",
            "chain",
            "--stats",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0 and "target passes" in captured.err and captured.out.strip()


def test_bench_writes_results_table_and_plot(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "--num-prompts", "2", "--prompt-tokens", "24", "--max-new-tokens", "8"]
    args += ["--strategies", "chain,auto", "--baselines", "target,specdec-no-speculation", "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    methods = {row["method"] for row in results["summary"]}
    assert methods == {"target", "specdec-no-speculation", "specdec-chain", "specdec-auto"}
    assert all(run["identical_to_target"] for run in results["runs"])
    assert (out / "table.md").read_text().startswith("| method |")
    assert (out / "speedup.png").read_bytes()[:4] == b"\x89PNG"


def test_runtime_option_reaches_wrap(monkeypatch, capsys):
    import specdec

    seen = []
    real_wrap = specdec.wrap

    def recording_wrap(*args, **kwargs):
        seen.append(kwargs.get("runtime"))
        return real_wrap(*args, **kwargs)

    monkeypatch.setattr(specdec, "wrap", recording_wrap)
    args = ["generate", "--prompt", "def f(x):\n", "--max-new-tokens", "4", "--strategy", "chain"]
    assert main(args + ["--runtime", "transformers"]) == 0
    assert seen == ["transformers"] and capsys.readouterr().out.strip()
    with pytest.raises(SystemExit):
        main(args + ["--runtime", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err
