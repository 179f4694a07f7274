"""The pair builder runs end to end offline and is deterministic (its --smoke plan, seconds)."""

import json
import subprocess
import sys
from pathlib import Path

from specdec.embedded.pair import load_embedded_pair

ROOT = Path(__file__).resolve().parents[1]


def build(out: Path) -> dict:
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "make_embedded_pair.py"), "--smoke", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return json.loads((out / "MANIFEST.json").read_text())


def test_smoke_build_is_deterministic_and_loads(tmp_path):
    first = build(tmp_path / "a")
    second = build(tmp_path / "b")
    assert first["files"] == second["files"]  # same bytes, file by file
    target, draft, tokenizer = load_embedded_pair(path=tmp_path / "a")
    ids = tokenizer("import os\n", return_tensors="pt").input_ids
    assert target(ids).logits.shape[-1] == draft(ids).logits.shape[-1] == len(tokenizer)
