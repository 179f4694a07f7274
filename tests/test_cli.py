"""`specdec demo` on the embedded pair: runs, reports, and its greedy output equals the target's."""

import os
import subprocess
import sys

import pytest
import torch

from specdec.cli.main import main
from specdec.embedded.pair import heldout_code_prompts, load_embedded_pair

PAIR = os.environ.get("SPECDEC_EMBEDDED_PAIR")  # default: the shipped pair
PAIR_ARGS = ["--pair", PAIR] if PAIR else []


def test_demo_runs_and_matches_target(capsys):
    code = main(["demo", "--max-new-tokens", "24", "--repeats", "1", "--prompt-tokens", "48", *PAIR_ARGS])
    out = capsys.readouterr().out
    assert code == 0
    assert "output identical to the target's own generate(): yes" in out
    assert "tokens/s" in out and "acceptance per depth" in out


def test_demo_output_equals_target_generate_independently():
    """The same check outside the demo's own report: the streamed completion is the target's."""
    import specdec

    target, draft, tokenizer = load_embedded_pair(path=PAIR)
    prompt = heldout_code_prompts(tokenizer, num_prompts=2, prompt_tokens=48)[1]
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    expected = target.generate(ids, max_new_tokens=32, do_sample=False)
    for strategy in ("chain", "tree", "dynamic-tree"):
        out = specdec.wrap(target, draft, strategy=strategy).generate(ids, max_new_tokens=32)
        assert torch.equal(out, expected), strategy


def test_python_dash_m_and_unknown_option_prints_usage():
    result = subprocess.run(
        [sys.executable, "-m", "specdec", "demo", "--no-such-option"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "usage: specdec demo" in result.stderr


def test_missing_pair_says_how_to_rebuild(tmp_path, capsys):
    code = main(["demo", "--pair", str(tmp_path / "nowhere"), "--max-new-tokens", "4"])
    err = capsys.readouterr().err
    assert code == 1 and "python benchmarks/make_embedded_pair.py" in err


@pytest.mark.parametrize("bad", [["--max-new-tokens", "0"], ["--repeats", "0"]])
def test_bad_numbers_are_refused(bad, capsys):
    assert main(["demo", *bad, *PAIR_ARGS]) == 2
