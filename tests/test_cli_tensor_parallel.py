"""`specdec generate --tensor-parallel` under torchrun (issue 21): 2 CPU processes (gloo), a tiny random
Llama target split over them, the draft whole on both; rank 0 alone prints, and prints what the
single-process command prints. Bad input (no torchrun, --device-map too) is one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from specdec.cli.main import main
from tests.test_safe_defaults_cli import llama_folder

PROMPT = "def f(x):"
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """(target, draft) folders: tiny random Llamas (4 heads, 2 KV heads: both split by 2) with a
    character tokenizer."""
    root = tmp_path_factory.mktemp("tp_cli")
    return llama_folder(root / "target", seed=0), llama_folder(root / "draft", seed=1)


def _generate_args(pair: tuple[Path, Path]) -> list[str]:
    target, draft = pair
    return [
        "generate",
        *("--target", str(target), "--draft", str(draft), "--prompt", PROMPT),
        *("--max-new-tokens", "8", "--strategy", "chain", "--temperature", "0"),
    ]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=root)


def test_tensor_parallel_generate_prints_once_what_one_process_prints(pair):
    single = _run([sys.executable, "-m", "specdec.cli.main", *_generate_args(pair)])
    assert single.returncode == 0, single.stderr
    completion = single.stdout.strip()
    assert completion.startswith(PROMPT) and len(completion) > len(PROMPT)

    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    split = _run([*launch, "-m", "specdec.cli.main", *_generate_args(pair), "--tensor-parallel"])
    assert split.returncode == 0, split.stderr
    assert split.stdout == single.stdout  # the completion, printed by rank 0 alone
    assert split.stdout.count(PROMPT) == 1


def test_embedded_pair_tensor_parallel_prints_once_what_one_process_prints():
    """The embedded pair (its target: 6 heads, 2 key/value heads) split over 2 ranks."""
    args = ["generate", "--prompt", "def parse(self, text):", "--max-new-tokens", "12", "--strategy", "tree"]
    single = _run([sys.executable, "-m", "specdec", *args])
    assert single.returncode == 0, single.stderr
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    split = _run([*launch, "-m", "specdec", *args, "--tensor-parallel"])
    assert split.returncode == 0, split.stderr
    assert split.stdout == single.stdout and split.stdout.count("def parse") == 1
    assert "no tokenizer" not in split.stderr  # the split target's tokenizer is found beside it


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_tensor_parallel_without_torchrun_says_how_to_launch(pair, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    line = _one_line_error(capsys, [*_generate_args(pair), "--tensor-parallel"])
    assert line.startswith("specdec generate: --tensor-parallel")
    assert "torchrun --nproc-per-node N" in line and "WORLD_SIZE" in line


def test_tensor_parallel_with_device_map_is_refused(pair, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = [*_generate_args(pair), "--tensor-parallel", "--device-map", "auto"]
    line = _one_line_error(capsys, argv)
    assert "--tensor-parallel and --device-map" in line and "use one of them" in line
    bench = ["bench", "--tensor-parallel", "--device-map", "auto", "--strategies", "chain"]
    assert "--tensor-parallel and --device-map" in _one_line_error(capsys, bench)
