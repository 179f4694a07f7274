"""Ahead-of-time check of the Triton kernels in specdec/kernels/ for A100 (sm_80) and H100/H200 (sm_90).

No GPU is needed. Every distinct launch the code can pick for the model shapes below is planned with
`specdec.kernels.triton_tree.plan_launches` on meta tensors laid out as the runner lays them out
(q a transposed [B, T, Hq, D] projection, k/v a [B, Hkv, L, D] cache), reduced to what triton's
launcher would compile (constexprs, argument types and alignment specialisations, warps, stages),
compiled with `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`, and then:

- the ptxas triton itself uses for that architecture (`get_ptxas(arch)` in the installed triton;
  same flags as its own cubin step, plus -v) reports registers, spill bytes and stack;
- `cuobjdump -res-usage` on triton's own cubin must agree on the register count;
- `cuobjdump -sass` must show tensor-core instructions (HMMA, or HGMMA for warp-group MMA on sm_90)
  in every kernel that has a tl.dot;
- the dynamic shared memory triton asks for must fit the architecture's per-block limit.

It prints one table row per distinct compiled binary (registers / spills / shared memory / occupancy)
and exits 1 if any binary spills, lacks tensor-core instructions, or exceeds the shared-memory limit,
unless that binary is listed in EXCEPTIONS with the reason.

Shapes: Llama-2-7B (32/32 heads, D 128), TinyLlama-1.1B (32/4, D 64), Llama-2-70B (64/8, D 128);
T = 1 .. MAX_TREE_NODES (every value: T = 1 and T % 16 == 0 are separate binaries, since triton
specialises integer arguments), tree mask and causal, prefix split-K off and on (split-K also launches
the merge kernel), fp16 and bf16. Configurations for T up to the kernel's MAX_NEW_ROWS are checked to
be the same set (block sizes stop changing at large T), so prefill-sized calls are covered too.

TRITON_INTERPRET=1 (the test suite's setting) makes ASTSource unusable: the script re-runs itself in
a subprocess without it.

    python benchmarks/kernel_aot.py                 # the whole sweep (about 10-20 min on 2 cores)
    python benchmarks/kernel_aot.py --subset ci     # a representative handful (CI)
    python benchmarks/kernel_aot.py --json out.json --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: name: (query heads, kv heads, head dim)
MODELS = {"llama2-7b": (32, 32, 128), "tinyllama": (32, 4, 64), "llama2-70b": (64, 8, 128)}
ARCHS = (80, 90)
DTYPES = ("float16", "bfloat16")
#: Per-block dynamic shared memory limit (bytes) and per-SM shared memory, registers are 64K on both.
SMEM_PER_BLOCK = {80: 163 * 1024, 90: 227 * 1024}
SMEM_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
#: Prefix and cache length of the planned calls (only their alignment class reaches the binary).
PREFIX, CACHE_LEN = 2048, 4096

#: Binaries allowed to fail a check, with the reason (key: Check.label). Empty: every binary is clean.
EXCEPTIONS: dict[str, str] = {}


@dataclass
class Check:
    """One distinct binary to compile: what triton's launcher would hand `triton.compile`."""

    kernel: str  # attribute of specdec.kernels.triton_tree
    arch: int
    signature: dict[str, str]
    constexprs: dict[str, object]
    attrs: dict[int, str]  # argument index -> triton's specialisation descriptor ("D": 16-aligned)
    num_warps: int
    num_stages: int
    # where it comes from, for the table: model, dtype, mask, split and the T values that pick it
    model: str = ""
    dtype: str = ""
    mask: str = ""
    split: bool = False
    t_values: list[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        """Identity of the compiled binary (two launches with one key run the same code)."""
        return json.dumps(
            [self.kernel, self.arch, self.signature, self.constexprs, sorted(self.attrs.items()),
             self.num_warps, self.num_stages],
            sort_keys=True, default=str,
        )  # fmt: skip

    @property
    def label(self) -> str:
        c = self.constexprs
        if self.kernel == "_merge_splits":
            return f"merge sm{self.arch} {self.dtype} D{c['HEAD_DIM']} lse{int(bool(c['STORE_LSE']))}"
        return (
            f"fwd sm{self.arch} {self.model} {self.dtype} {self.mask}{' split' if self.split else ''} "
            f"T{t_range(self.t_values)} BM{c['BLOCK_M']} BN{c['BLOCK_N']} "
            f"w{self.num_warps} s{self.num_stages}"
        )


@dataclass
class Result:
    """What the compile and the tools reported for one Check."""

    label: str
    ok: bool
    registers: int = -1
    spill_bytes: int = -1  # spill stores + spill loads
    stack_bytes: int = -1
    smem_bytes: int = -1
    occupancy: float = 0.0  # resident warps / 64, by registers, shared memory and warps
    tensor_cores: str = ""  # "HGMMA", "HMMA", "-" (no tl.dot) or "none"
    problems: list[str] = field(default_factory=list)
    exception: str = ""
    seconds: float = 0.0
    t_values: list[int] = field(default_factory=list)
    # the launch, for grouping: arch, kernel, model, dtype, mask, split, BLOCK_M, BLOCK_N, warps, stages
    launch: dict[str, object] = field(default_factory=dict)


def t_range(values: list[int]) -> str:
    """Compact T list: '1', '2-15', '16,32,48' or '17-512 (n=...)'."""
    if not values:
        return "-"
    values = sorted(values)
    if len(values) == 1:
        return str(values[0])
    if values[-1] - values[0] + 1 == len(values):
        return f"{values[0]}-{values[-1]}"
    if len(values) <= 4:
        return ",".join(map(str, values))
    return f"{values[0]}..{values[-1]}(n={len(values)})"


# ----------------------------------------------------------------------------------- planning
def _specialise(arg) -> tuple[str, object]:
    """(type, descriptor) of one runtime argument, by triton's own launcher rule."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    return native_specialize_impl(BaseBackend, arg, False, True, True)[:2]


def launch_checks(launch, arch: int) -> Check:
    """The Check for one planned Launch (kernel, grid, args, meta)."""
    fn = launch.kernel
    names = fn.arg_names
    signature: dict[str, str] = {}
    constexprs: dict[str, object] = {}
    attrs: dict[int, str] = {}
    meta = dict(launch.meta)
    num_warps, num_stages = meta.pop("num_warps"), meta.pop("num_stages", 3)
    positional = dict(zip(names, launch.args, strict=False))
    for index, name in enumerate(names):
        if name in meta:
            signature[name], constexprs[name] = "constexpr", meta[name]
            continue
        kind, desc = _specialise(positional[name])
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = desc
        elif isinstance(desc, str):
            attrs[index] = desc
    return Check(fn.__name__, arch, signature, constexprs, attrs, num_warps, num_stages)


def _meta_call(model: tuple[int, int, int], dtype, t: int, mask_kind: str):
    """(q, k, v, prefix_lens, tree_mask) meta tensors laid out as the runner's verification call."""
    import torch

    hq, hkv, d = model
    meta = torch.device("meta")
    q = torch.empty(1, t, hq, d, dtype=dtype, device=meta).transpose(1, 2)  # [B, Hq, T, D] view
    k = torch.empty(1, hkv, CACHE_LEN + t, d, dtype=dtype, device=meta)  # [B, Hkv, L, D]
    prefix_lens = torch.empty(1, dtype=torch.int64, device=meta)  # [B]
    tree = torch.empty(t, t, dtype=torch.bool, device=meta) if mask_kind == "tree" else None  # [T, T]
    return q, k, torch.empty_like(k), prefix_lens, tree


def plan(models: dict[str, tuple[int, int, int]], archs, dtypes, t_values) -> list[Check]:
    """Every distinct binary the launcher compiles for these shapes, T values, masks and splits."""
    import itertools

    import torch

    from specdec.kernels.triton_tree import plan_launches

    checks: dict[str, Check] = {}
    for model, dtype_name, arch, mask_kind, split, t in itertools.product(
        models, dtypes, archs, ("tree", "causal"), (False, True), t_values
    ):
        q, k, v, prefix_lens, tree = _meta_call(models[model], getattr(torch, dtype_name), t, mask_kind)
        _, _, launches = plan_launches(
            q, k, v, prefix_lens, tree, q.shape[-1] ** -0.5,
            max_prefix_len=PREFIX, split_size=256 if split else None, arch=arch,
        )  # fmt: skip
        assert (len(launches) == 2) == split, "split-K planned as asked"
        for launch in launches:
            check = launch_checks(launch, arch)
            check = checks.setdefault(check.key, check)
            if not check.model:
                check.model, check.dtype, check.mask, check.split = model, dtype_name, mask_kind, split
            if t not in check.t_values and (check.kernel != "_merge_splits" or not check.t_values):
                check.t_values.append(t)
    return list(checks.values())


def config_set(models, dtypes, archs, t_values) -> set[tuple]:
    """The default_config choices (block sizes, warps, stages) over these shapes and T values."""
    import torch

    from specdec.kernels.triton_tree import default_config

    found = set()
    for hq, hkv, d in models.values():
        for dtype_name in dtypes:
            for arch in archs:
                for t in t_values:
                    cfg = default_config(hq // hkv, t, d, getattr(torch, dtype_name), arch)
                    found.add((hq // hkv, d, dtype_name, arch, tuple(sorted(cfg.items()))))
    return found


# ---------------------------------------------------------------------------------- compiling
PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")
PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
PTXAS_STACK = re.compile(r"(\d+) bytes stack frame")
RES_USAGE_REGISTERS = re.compile(r"REG:(\d+)")


def parse_ptxas(log: str) -> dict[str, int]:
    """registers, spill_bytes (stores + loads) and stack_bytes from `ptxas -v` output (-1: not found)."""
    registers = PTXAS_REGISTERS.search(log)
    spills = PTXAS_SPILLS.search(log)
    stack = PTXAS_STACK.search(log)
    return {
        "registers": int(registers.group(1)) if registers else -1,
        "spill_bytes": int(spills.group(1)) + int(spills.group(2)) if spills else -1,
        "stack_bytes": int(stack.group(1)) if stack else -1,
    }


def tensor_core_ops(sass: str) -> str:
    """'HGMMA' (sm_90 warp-group MMA), 'HMMA' (mma.sync) or 'none', from `cuobjdump -sass` text."""
    if re.search(r"\bHGMMA\b", sass):
        return "HGMMA"
    if re.search(r"\bHMMA\b", sass):
        return "HMMA"
    return "none"


def occupancy(registers: int, smem: int, num_warps: int, arch: int) -> float:
    """Resident warps per SM / 64 (the sm_80 / sm_90 maximum), from registers, shared memory, warps."""
    regs_per_warp = ((max(registers, 1) * 32 + 255) // 256) * 256  # allocated per warp in 256s
    by_regs = 65536 // (regs_per_warp * num_warps)
    by_smem = SMEM_PER_SM[arch] // (smem + 1024) if smem > 0 else 32  # 1 KiB reserved per block
    by_warps = 64 // num_warps
    blocks = min(by_regs, by_smem, by_warps, 32)
    return blocks * num_warps / 64


def _ptxas_flags() -> list[str]:
    """The flags of the installed triton's own ptxas step (it adds --regAllocOptLevel=2 on some)."""
    import inspect

    from triton.backends.nvidia.compiler import CUDABackend

    source = inspect.getsource(CUDABackend.make_cubin)
    return ["-lineinfo", "-v"] + (["--regAllocOptLevel=2"] if "regAllocOptLevel=2" in source else [])


def run_check(check: Check) -> Result:
    """Compile one Check and read the tools' reports (runs in a worker process)."""
    # triton 3.9 warns once per process that its fp-fusion default will change in 3.10; the launcher
    # compiles with the same default, so the binaries checked here are the ones a launch would build
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    from triton.compiler import ASTSource, make_backend

    from specdec.kernels import triton_tree

    start = time.perf_counter()
    c = check.constexprs
    launch = {
        "arch": check.arch, "kernel": check.kernel, "model": check.model, "dtype": check.dtype,
        "mask": check.mask, "split": check.split, "head_dim": c.get("HEAD_DIM"),
        "block_m": c.get("BLOCK_M", c.get("BLOCK_R")), "block_n": c.get("BLOCK_N", "-"),
        "num_warps": check.num_warps, "num_stages": check.num_stages,
    }  # fmt: skip
    result = Result(check.label, ok=False, t_values=check.t_values, launch=launch)
    fn = getattr(triton_tree, check.kernel)
    backend = make_backend(GPUTarget("cuda", check.arch, 32))
    attrs = {(i,): backend.parse_attr(desc) for i, desc in check.attrs.items()}
    try:
        source = ASTSource(fn=fn, signature=check.signature, constexprs=check.constexprs, attrs=attrs)
        compiled = triton.compile(
            source,
            target=GPUTarget("cuda", check.arch, 32),
            options={"num_warps": check.num_warps, "num_stages": check.num_stages},
        )
    except Exception as error:  # a compile error is a finding, not a crash of the sweep
        result.problems.append(f"compile failed: {type(error).__name__}: {str(error)[:300]}")
        result.seconds = time.perf_counter() - start
        return result
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = Path(tmp, "k.ptx"), Path(tmp, "k.cubin")
        ptx.write_text(compiled.asm["ptx"])
        cubin.write_bytes(compiled.asm["cubin"])
        ptxas = get_ptxas(check.arch).path
        arch_name = sm_arch_from_capability(check.arch)
        log = subprocess.run(
            [ptxas, *_ptxas_flags(), f"--gpu-name={arch_name}", str(ptx), "-o", str(Path(tmp, "v.o"))],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        cuobjdump = knobs.nvidia.cuobjdump.path
        usage = subprocess.run(
            [cuobjdump, "-res-usage", str(cubin)], capture_output=True, text=True, check=False
        )
        sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=False)
    report = parse_ptxas(log.stdout + log.stderr)
    result.registers, result.spill_bytes, result.stack_bytes = (
        report["registers"], report["spill_bytes"], report["stack_bytes"]
    )  # fmt: skip
    result.smem_bytes = int(compiled.metadata.shared)
    has_dot = "tt.dot" in compiled.asm["ttir"]
    result.tensor_cores = tensor_core_ops(sass.stdout) if has_dot else "-"
    result.occupancy = occupancy(result.registers, result.smem_bytes, check.num_warps, check.arch)
    cubin_regs = RES_USAGE_REGISTERS.search(usage.stdout)
    if log.returncode != 0 or result.registers < 0:
        result.problems.append(f"ptxas -v failed: {(log.stderr or log.stdout)[-300:]}")
    elif cubin_regs and int(cubin_regs.group(1)) != result.registers:
        result.problems.append(
            f"registers: ptxas -v {result.registers}, triton's cubin {cubin_regs.group(1)}"
        )
    if result.spill_bytes != 0:
        result.problems.append(f"spills {result.spill_bytes} bytes")
    if has_dot and result.tensor_cores == "none":
        result.problems.append("no tensor-core instructions (HMMA/HGMMA) for tl.dot")
    if result.smem_bytes > SMEM_PER_BLOCK[check.arch]:
        result.problems.append(f"shared memory {result.smem_bytes} > {SMEM_PER_BLOCK[check.arch]}")
    result.exception = EXCEPTIONS.get(check.label, "")
    result.ok = not result.problems or bool(result.exception)
    result.seconds = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------------------- driver
def ci_subset(checks: list[Check]) -> list[Check]:
    """Five binaries that stand for the sweep: the two that use the most registers in the full run
    (TinyLlama's GQA tree tile on sm_80, head dim 64; Llama-2-70B's on sm_80, head dim 128), the
    70B tile on sm_90 (warp-group MMA), and a decode-sized 7B tile with split-K plus the merge kernel
    on sm_90."""

    def pick(t_in: int, **where) -> Check | None:
        for check in checks:
            if all(getattr(check, k) == v for k, v in where.items()) and (
                check.kernel == "_merge_splits" or t_in in check.t_values
            ):
                return check
        return None

    fwd = "_tree_attention_fwd"
    wanted = [
        pick(17, kernel=fwd, arch=80, model="tinyllama", dtype="bfloat16", mask="tree", split=False),
        pick(17, kernel=fwd, arch=80, model="llama2-70b", dtype="bfloat16", mask="tree", split=False),
        pick(17, kernel=fwd, arch=90, model="llama2-70b", dtype="bfloat16", mask="tree", split=False),
        pick(9, kernel=fwd, arch=90, model="llama2-7b", dtype="float16", mask="tree", split=True),
        pick(9, kernel="_merge_splits", arch=90, dtype="float16"),
    ]
    return [check for check in wanted if check is not None]


def canary_check() -> Check:
    """A deliberately oversized tile (BLOCK_M 256 x D 128 float32 accumulator on 4 warps): it must
    spill, so a run that reports 0 spills for it has a broken parser, not a clean kernel."""
    import torch

    from specdec.kernels.triton_tree import plan_launches

    meta = torch.device("meta")
    q = torch.empty(1, 32, 8, 128, dtype=torch.float16, device=meta)
    k = torch.empty(1, 1, 4096, 128, dtype=torch.float16, device=meta)
    _, _, launches = plan_launches(
        q, k, torch.empty_like(k), torch.empty(1, dtype=torch.int64, device=meta), None, 0.1,
        max_prefix_len=PREFIX, arch=80,
        config={"block_m": 256, "block_n": 128, "num_warps": 4, "num_stages": 2},
    )  # fmt: skip
    check = launch_checks(launches[0], 80)
    check.model, check.dtype, check.mask, check.t_values = "canary", "float16", "causal", [8]
    return check


def _status(r: Result) -> str:
    if not r.problems:
        return "ok"
    return "explained: " + r.exception if r.exception else "; ".join(r.problems)


def print_table(results: list[Result], out=sys.stdout) -> None:
    """Markdown table, one row per binary."""
    print("| binary | T | regs | spill B | smem KiB | occupancy | tensor cores | status |", file=out)
    print("|---|---|---:|---:|---:|---:|---|---|", file=out)
    for r in results:
        print(
            f"| {r.label} | {t_range(r.t_values)} | {r.registers} | {r.spill_bytes} | "
            f"{r.smem_bytes / 1024:.1f} | {r.occupancy:.2f} | {r.tensor_cores} | {_status(r)} |",
            file=out,
        )


def print_summary(results: list[Result], out=sys.stdout) -> None:
    """Markdown table, one row per (arch, kernel, model, block sizes, warps, stages): the worst case
    over its binaries (dtypes, masks, splits and T specialisations)."""
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        x = r.launch
        model = x["model"] if x["kernel"] == "_tree_attention_fwd" else f"D{x['head_dim']}"
        key = (x["arch"], x["kernel"].strip("_").split("_")[0], model, x["block_m"], x["block_n"],
               x["num_warps"], x["num_stages"])  # fmt: skip
        groups.setdefault(key, []).append(r)
    print(
        "| arch | kernel | shape | BLOCK_M x BLOCK_N | warps / stages | binaries | T | max regs | "
        "max spill B | max smem KiB | min occupancy | tensor cores | status |",
        file=out,
    )
    print("|---|---|---|---|---|---:|---|---:|---:|---:|---:|---|---|", file=out)
    for key in sorted(groups, key=str):
        rs = groups[key]
        arch, kernel, model, bm, bn, warps, stages = key
        t_all = sorted({t for r in rs for t in r.t_values})
        t_text = f"{t_all[0]}-{t_all[-1]}" if kernel == "tree" else "-"
        bad = [r for r in rs if r.problems]
        status = "ok" if not bad else f"{len(bad)} failing: {_status(bad[0])}"
        print(
            f"| sm_{arch} | {kernel} | {model} | {bm} x {bn} | {warps} / {stages} | {len(rs)} | {t_text} | "
            f"{max(r.registers for r in rs)} | {max(r.spill_bytes for r in rs)} | "
            f"{max(r.smem_bytes for r in rs) / 1024:.0f} | {min(r.occupancy for r in rs):.2f} | "
            f"{'/'.join(sorted({r.tensor_cores for r in rs}))} | {status} |",
            file=out,
        )


def max_tree_nodes() -> int:
    """The largest tree the library allows (specdec.core.tree.MAX_TREE_NODES, wherever the module lives)."""
    try:
        from specdec.core.tree import MAX_TREE_NODES
    except ImportError:  # the tree module may move into a subpackage
        from specdec.core.tree import MAX_TREE_NODES  # type: ignore[no-redef]
    return MAX_TREE_NODES


def _rerun_without_interpreter(argv: list[str]) -> int:
    """Under TRITON_INTERPRET=1 triton cannot compile: run this script again without the variable."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *argv], env=env, check=False
    ).returncode


def tools_missing() -> str | None:
    """Why the check cannot run here (None when triton, its ptxas and cuobjdump are present)."""
    try:
        from triton import knobs
        from triton.backends.nvidia.compiler import get_ptxas
    except Exception as error:
        return f"triton with its NVIDIA backend is not importable ({type(error).__name__}: {error})"
    for arch in ARCHS:
        try:
            path = get_ptxas(arch).path
        except Exception as error:
            return f"no ptxas for sm_{arch} in triton ({error})"
        if not path or not shutil.which(path):
            return f"no ptxas for sm_{arch} in triton ({path})"
    try:
        if not shutil.which(knobs.nvidia.cuobjdump.path):
            return "triton ships no cuobjdump"
    except Exception as error:
        return f"triton ships no cuobjdump ({error})"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", choices=["all", "ci"], default="all")
    parser.add_argument("--arch", default=",".join(map(str, ARCHS)), help="comma-separated, e.g. 80,90")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--t-max", type=int, default=None, help="largest T (default MAX_TREE_NODES)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--canary", action="store_true", help="also compile a tile that must spill")
    parser.add_argument("--per-binary", action="store_true", help="one table row per compiled binary")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return _rerun_without_interpreter(argv)
    sys.path.insert(0, str(ROOT))
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")  # see run_check
    reason = tools_missing()
    if reason:
        print(f"kernel_aot: cannot check: {reason}")
        return 2
    import triton

    from specdec.kernels.api import MAX_NEW_ROWS

    max_nodes = max_tree_nodes()
    archs = tuple(int(a) for a in args.arch.split(","))
    models = {name: MODELS[name] for name in args.models.split(",")}
    t_max = args.t_max or max_nodes
    started = time.perf_counter()
    # the CI subset plans only the T values its picks need (planning every T takes ~10 s)
    checks = plan(models, archs, DTYPES, (9, 17) if args.subset == "ci" else range(1, t_max + 1))
    if args.subset == "all" and t_max == max_nodes:
        # block sizes stop changing with T: larger T (prefill-sized calls) pick no configuration unseen here
        small = config_set(models, DTYPES, archs, range(1, t_max + 1))
        large = config_set(models, DTYPES, archs, range(t_max + 1, MAX_NEW_ROWS + 1))
        if not large <= small:
            print(
                "kernel_aot: T beyond MAX_TREE_NODES picks unchecked configurations:", sorted(large - small)
            )
            return 1
    if args.subset == "ci":
        checks = ci_subset(checks)
    canary = canary_check() if args.canary else None
    t_text = "9 and 17" if args.subset == "ci" else f"1..{t_max}"
    todo = checks + ([canary] if canary else [])
    print(
        f"kernel_aot: triton {triton.__version__}, {len(checks)} binaries ({args.subset}), archs {archs}, "
        f"T {t_text}, {args.jobs} jobs",
        flush=True,
    )
    results = []
    with ProcessPoolExecutor(max(1, min(args.jobs, len(todo)))) as pool:
        for done, result in enumerate(pool.map(run_check, todo), 1):
            results.append(result)
            if done % 25 == 0 or done == len(todo):
                print(f"  {done}/{len(todo)} compiled, {time.perf_counter() - started:.0f} s", flush=True)
    canary_result = results.pop() if canary else None
    order = sorted(range(len(results)), key=lambda i: (checks[i].kernel, checks[i].arch, checks[i].label))
    results = [results[i] for i in order]
    print_summary(results)
    if args.per_binary:
        print()
        print_table(results)
    elif any(r.problems for r in results):
        print("\nbinaries with problems:")
        print_table([r for r in results if r.problems])
    failed = [r for r in results if not r.ok]
    clean = sum(1 for r in results if not r.problems)
    explained = sum(1 for r in results if r.problems and r.exception)
    print(
        f"\n{clean} of {len(results)} binaries clean, {explained} explained exceptions, "
        f"{len(failed)} failing; "
        f"max registers {max((r.registers for r in results), default=0)}, "
        f"max spill {max((r.spill_bytes for r in results), default=0)} B, "
        f"{time.perf_counter() - started:.0f} s"
    )
    if canary_result is not None:
        print(
            f"canary (must spill): {canary_result.registers} registers, {canary_result.spill_bytes} B spilled"
            f" -> {'detected' if canary_result.spill_bytes > 0 else 'NOT DETECTED'}"
        )
    if args.json:
        payload = {
            "triton": triton.__version__,
            "subset": args.subset,
            "results": [asdict(r) for r in results],
            "canary": asdict(canary_result) if canary_result else None,
        }
        Path(args.json).write_text(json.dumps(payload, indent=1))
    if canary_result is not None and canary_result.spill_bytes <= 0:
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
