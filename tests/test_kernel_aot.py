"""benchmarks/kernel_aot.py: the Triton kernels compile ahead of time for sm_80 and sm_90 without
register spills, with tensor-core instructions, within shared memory (no GPU needed).

CI compiles a representative subset (five binaries, the heaviest of the full sweep among them) plus
a canary tile that must spill, so a parser that stopped seeing spills fails here instead of passing
silently. The full sweep is `python benchmarks/kernel_aot.py` (BENCHMARKS.md has its table).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "kernel_aot.py"


def load_aot():
    """benchmarks/kernel_aot.py as a module (registered first: its dataclasses look themselves up)."""
    if "kernel_aot" not in sys.modules:
        spec = importlib.util.spec_from_file_location("kernel_aot", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["kernel_aot"] = module
        spec.loader.exec_module(module)
    return sys.modules["kernel_aot"]


def _skip_reason() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'triton>=3.7'; a dev dependency)"
    reason = load_aot().tools_missing()
    if reason:
        return f"kernel_aot cannot run here: {reason}"
    return None


# ----------------------------------------------------------------------- the parsers (no compiler)
PTXAS_SPILLING = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_tree_attention_fwd' for 'sm_80'
ptxas info    : Function properties for _tree_attention_fwd
    152 bytes stack frame, 148 bytes spill stores, 140 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 152 bytes cumulative stack size, 484 bytes cmem[0]
"""
PTXAS_CLEAN = """ptxas info    : Compiling entry function '_merge_splits' for 'sm_90a'
ptxas info    : Function properties for _merge_splits
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 48 registers, used 0 barriers, 436 bytes cmem[0]
"""


def test_ptxas_report_is_read():
    aot = load_aot()
    assert aot.parse_ptxas(PTXAS_SPILLING) == {"registers": 255, "spill_bytes": 288, "stack_bytes": 152}
    assert aot.parse_ptxas(PTXAS_CLEAN) == {"registers": 48, "spill_bytes": 0, "stack_bytes": 0}
    assert aot.parse_ptxas("ptxas fatal   : Unresolved extern function")["registers"] == -1


def test_tensor_core_instructions_and_occupancy():
    aot = load_aot()
    assert aot.tensor_core_ops("  /*0a10*/  HGMMA.64x32x16.F32.BF16 gdesc[UR4], RZ ;") == "HGMMA"
    assert aot.tensor_core_ops("  /*0a10*/  HMMA.16816.F32.BF16 R24, R4, R8, R24 ;") == "HMMA"
    assert aot.tensor_core_ops("  /*0a10*/  FFMA R1, R2, R3, R4 ;") == "none"
    # 8 warps at 255 registers: 64K / (8 * 32 * 256) = 1 block of 8 warps -> 8 / 64 warps resident
    assert aot.occupancy(255, 50 * 1024, 8, 80) == 0.125
    # shared memory bound: 100 KiB blocks, 164 KiB per SM -> one block
    assert aot.occupancy(64, 100 * 1024, 4, 80) == 4 / 64


def test_large_t_picks_no_unchecked_configuration():
    """Prefill-sized calls (T up to MAX_NEW_ROWS) pick block sizes the T <= MAX_TREE_NODES sweep
    compiles: the sweep covers every configuration the launcher can choose for these shapes."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    from specdec.kernels import MAX_NEW_ROWS

    aot = load_aot()
    max_nodes = aot.max_tree_nodes()
    small = aot.config_set(aot.MODELS, aot.DTYPES, aot.ARCHS, range(1, max_nodes + 1))
    large = aot.config_set(
        aot.MODELS, aot.DTYPES, aot.ARCHS, [*range(max_nodes + 1, MAX_NEW_ROWS, 97), MAX_NEW_ROWS]
    )
    assert large <= small


# ------------------------------------------------------------------------- the compiled subset
def test_ci_subset_compiles_clean_and_the_canary_spills(tmp_path):
    """Five binaries for sm_80 / sm_90: 0 spill bytes, HMMA/HGMMA in the attention kernel, shared
    memory within the limit; the deliberately oversized canary tile reports spills."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    if importlib.metadata.version("transformers").startswith("5.17."):
        pytest.skip("the AOT check runs once in CI, in the main phase (this is the transformers 5.17 phase)")
    out = tmp_path / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script needs it unset
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--subset", "ci", "--canary", "--jobs", "2", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    results = report["results"]
    assert len(results) == 5
    assert {r["launch"]["arch"] for r in results} == {80, 90}
    for r in results:
        assert r["registers"] > 0 and r["spill_bytes"] == 0 and r["problems"] == [], r
        expected = "-" if r["launch"]["kernel"] == "_merge_splits" else ("HMMA", "HGMMA")
        assert r["tensor_cores"] in expected, r
    assert any(r["tensor_cores"] == "HGMMA" for r in results)  # sm_90's warp-group MMA at BLOCK_M 64
    canary = report["canary"]
    assert canary["spill_bytes"] > 0 and any("spills" in p for p in canary["problems"])
    assert "5 of 5 binaries clean" in run.stdout
