"""specdec.kernels: the Triton tree-attention kernel, SDPA and eager backends against a float64 reference.

On a CPU-only machine the Triton kernel runs under the interpreter: TRITON_INTERPRET=1 is set below,
before anything imports the kernel module (specdec.kernels imports triton lazily). On a CUDA machine
the variable is left alone and the same sweep runs the compiled kernel on the GPU, plus bf16.
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
import warnings

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from specdec.core.tree import Tree  # noqa: E402
from specdec.kernels import (  # noqa: E402
    BACKENDS,
    available_backends,
    dense_tree_mask,
    reference_tree_attention,
    resolve_backend,
    tree_attention,
    triton_available,
)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
# triton installed and able to run the kernel here (on CPU: an interpreter that takes its loops, >= 3.7)
HAS_TRITON = importlib.util.find_spec("triton") is not None and triton_available(DEVICE)
needs_triton = pytest.mark.skipif(
    not HAS_TRITON, reason="the Triton kernel cannot run here (pip install 'triton>=3.7')"
)
needs_cuda = pytest.mark.skipif(not (CUDA and HAS_TRITON), reason="needs a CUDA GPU and triton")

#: Absolute error floors (about one unit of rounding at |out| ~ 1) for cases where torch is exact,
#: e.g. one visible key; seen errors otherwise are ~1e-6 (fp32) and ~1e-3 (fp16, the output's rounding).
FLOOR = {torch.float32: 1e-7, torch.float16: 1e-4, torch.bfloat16: 1e-3}


# ---------------------------------------------------------------------------------------------- cases
def random_tree(rng: random.Random, t: int) -> Tree:
    """A tree of t nodes with random parents (topological order)."""
    return Tree.from_parents([rng.randint(-1, i - 1) for i in range(t)])


def make_mask(kind: str, rng: random.Random, batch: int, t: int) -> torch.Tensor | None:
    """None (causal), a shared [T, T] mask or per-row [B, T, T] masks, from the project's tree builder."""
    if kind == "causal":
        return None
    if kind == "branching":  # a full branching tree cut to t nodes (still ancestor-closed)
        tree = Tree.from_branching((4, 3, 2, 2, 1, 1, 1))
        return Tree.from_parents(tree.parents[:t]).ancestor_mask
    if kind == "parents":
        return random_tree(rng, t).ancestor_mask
    if kind == "pending":  # a few pending committed tokens, then tree nodes
        pending = min(3, t - 1)
        return random_tree(rng, t - pending).block_attention(pending) if t > pending else None
    if kind == "per_row":
        return torch.stack([random_tree(rng, t).ancestor_mask for _ in range(batch)])
    raise ValueError(kind)


def make_case(
    seed: int,
    batch: int,
    hq: int,
    hkv: int,
    t: int,
    d: int,
    prefixes: tuple[int, ...],
    dtype: torch.dtype,
    mask_kind: str,
    device: str = DEVICE,
    spare: int = 19,
):
    """Inputs with NaN/inf garbage in every cache slot past prefix_lens[b] + T."""
    assert len(prefixes) == batch
    gen = torch.Generator().manual_seed(seed)
    cache_len = max(prefixes) + t + spare
    q = torch.randn(batch, hq, t, d, generator=gen).to(dtype)  # [B, Hq, T, D]
    k = torch.randn(batch, hkv, cache_len, d, generator=gen).to(dtype)  # [B, Hkv, L, D]
    v = torch.randn(batch, hkv, cache_len, d, generator=gen).to(dtype)  # [B, Hkv, L, D]
    for b, p in enumerate(prefixes):
        k[b, :, p + t :] = float("nan")
        v[b, :, p + t :: 2] = float("inf")
        v[b, :, p + t + 1 :: 2] = float("nan")
    prefix_lens = torch.tensor(prefixes, dtype=torch.int32)
    mask = make_mask(mask_kind, random.Random(seed), batch, t)
    to = dict(device=device)
    return (
        q.to(**to),
        k.to(**to),
        v.to(**to),
        prefix_lens.to(**to),
        None if mask is None else mask.to(**to),
    )


def float64_reference(q, k, v, prefix_lens, mask):
    """(out [B, Hq, T, D] float64, lse [B, Hq, T] float32) from the inputs' exact values."""
    return reference_tree_attention(q.double(), k.double(), v.double(), prefix_lens, mask, return_lse=True)


def max_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(x).any(), "NaN in the output (unwritten element or leaked garbage)"
    return (x.double() - ref).abs().max().item()


def check_lse(lse: torch.Tensor, ref_lse: torch.Tensor) -> None:
    """Same -inf entries (rows that see nothing); finite ones within 1e-4 relative."""
    assert lse.dtype == torch.float32 and lse.shape == ref_lse.shape
    assert not torch.isnan(lse).any()
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))
    finite = torch.isfinite(ref_lse)
    err = (lse[finite].double() - ref_lse[finite].double()).abs()
    assert err.max().item() < 1e-4 * (1 + ref_lse[finite].abs().max().item()) if finite.any() else True


# (batch, Hq, Hkv, T, D, prefixes, dtype, mask kind): prefixes 0..300 off the block grid, T 1..80,
# GQA 1/4/8, D 64/128, per-row prefix lengths, every mask kind, fp32 and fp16.
F32, F16 = torch.float32, torch.float16
SWEEP = [
    (1, 1, 1, 1, 64, (0,), F32, "causal"),
    (1, 2, 2, 1, 128, (1,), F16, "causal"),
    (1, 4, 1, 2, 64, (300,), F16, "causal"),
    (1, 4, 1, 7, 64, (63,), F32, "branching"),
    (1, 8, 1, 5, 128, (65,), F16, "parents"),
    (2, 4, 4, 16, 64, (64, 65), F16, "per_row"),
    (2, 2, 2, 9, 128, (0, 129), F32, "parents"),
    (3, 8, 1, 30, 128, (300, 0, 129), F32, "per_row"),
    (3, 4, 1, 13, 64, (31, 7, 200), F16, "branching"),
    (1, 8, 1, 80, 64, (257,), F16, "parents"),
    (1, 1, 1, 80, 128, (3,), F32, "per_row"),
    (2, 8, 2, 80, 128, (5, 300), F32, "causal"),
    (2, 4, 1, 64, 64, (127, 0), F16, "causal"),
    (3, 2, 2, 33, 64, (17, 255, 1), F16, "pending"),
    (1, 8, 8, 17, 64, (191,), F32, "pending"),
    (2, 16, 2, 11, 64, (99, 100), F16, "branching"),
    (1, 4, 4, 48, 128, (0,), F16, "per_row"),
    (2, 8, 1, 3, 64, (1, 299), F32, "parents"),
    (1, 2, 1, 31, 64, (160,), F32, "causal"),
    (3, 1, 1, 24, 128, (0, 0, 0), F16, "parents"),
    (2, 4, 1, 57, 64, (221, 14), F32, "per_row"),
    (1, 16, 2, 6, 128, (250,), F16, "pending"),
]


def case_id(case) -> str:
    b, hq, hkv, t, d, prefixes, dtype, kind = case
    return f"B{b}-H{hq}/{hkv}-T{t}-D{d}-P{'_'.join(map(str, prefixes))}-{str(dtype)[6:]}-{kind}"


@pytest.fixture
def poisoned_workspace(monkeypatch):
    """Split partials and lse come back NaN-filled from the kernel's allocator, so unwritten ones fail."""
    from specdec.kernels import triton_tree

    def nan_workspace(shape, device):
        return torch.full(shape, float("nan"), dtype=torch.float32, device=device)

    monkeypatch.setattr(triton_tree, "_workspace", nan_workspace)


def run_triton(q, k, v, prefix_lens, mask, split_size=None, config=None):
    """The kernel writing into a NaN-poisoned output buffer; returns (out, lse)."""
    from specdec.kernels import triton_available
    from specdec.kernels.triton_tree import triton_tree_attention

    assert triton_available(q.device), "the kernels were built for a GPU before TRITON_INTERPRET=1 was set"
    out = torch.full(q.shape, float("nan"), dtype=q.dtype, device=q.device)
    scale = 1.0 / math.sqrt(q.shape[-1])
    result, lse = triton_tree_attention(
        q, k, v, prefix_lens, mask, scale, True, split_size=split_size, out=out, config=config
    )
    assert result.data_ptr() == out.data_ptr()
    return out, lse


def check_against_reference(q, k, v, prefix_lens, mask, out, lse):
    """Kernel error within 2x the same-dtype SDPA error (plus a floor); lse close to float64's."""
    ref, ref_lse = float64_reference(q, k, v, prefix_lens, mask)
    torch_out = tree_attention(q, k, v, prefix_lens, mask, backend="sdpa")
    err, torch_err = max_err(out, ref), max_err(torch_out, ref)
    assert err <= 2 * torch_err + FLOOR[q.dtype], f"kernel error {err:.3g} vs torch {torch_err:.3g}"
    check_lse(lse, ref_lse)
    return err, torch_err


# ------------------------------------------------------------------------------ Triton vs reference
@needs_triton
@pytest.mark.parametrize("case", SWEEP, ids=case_id)
def test_triton_matches_reference(case, poisoned_workspace):
    q, k, v, prefix_lens, mask = make_case(7, *case)
    out, lse = run_triton(q, k, v, prefix_lens, mask)
    check_against_reference(q, k, v, prefix_lens, mask, out, lse)


@needs_triton
@pytest.mark.parametrize(
    "case, split_size",
    [
        ((3, 8, 1, 30, 128, (300, 0, 129), F32, "per_row"), 64),  # an empty row, chunks of one tile
        ((2, 4, 4, 16, 64, (64, 65), F16, "per_row"), 1),  # rounded up to one tile
        ((2, 8, 2, 20, 64, (299, 3), F16, "causal"), 100),  # chunks off the tile grid, rounded up
        ((1, 4, 1, 70, 128, (256,), F32, "parents"), 128),
    ],
    ids=lambda x: case_id(x) if isinstance(x, tuple) else f"split{x}",
)
def test_triton_split_k_matches_reference(case, split_size, poisoned_workspace):
    q, k, v, prefix_lens, mask = make_case(11, *case)
    out, lse = run_triton(q, k, v, prefix_lens, mask, split_size=split_size)
    check_against_reference(q, k, v, prefix_lens, mask, out, lse)


@needs_triton
def test_triton_split_k_is_planned():
    """Forcing split_size gives several splits (so the tests above exercise the merge kernel)."""
    from specdec.kernels.triton_tree import _plan_splits

    assert _plan_splits(1, 300, 64, torch.device("cpu"), 64) == (5, 64)
    assert _plan_splits(1, 300, 64, torch.device("cpu"), 100) == (3, 128)
    assert _plan_splits(1, 300, 64, torch.device("cpu"), None) == (1, 0)  # never automatic on CPU
    assert _plan_splits(1, 0, 64, torch.device("cpu"), 64) == (1, 0)


@needs_triton
@pytest.mark.parametrize("block", [(16, 16), (32, 64), (64, 32)])
def test_triton_other_block_sizes(block, poisoned_workspace):
    """The tile walk is right for any block shape, not just the default one."""
    q, k, v, prefix_lens, mask = make_case(5, 2, 4, 1, 21, 64, (37, 90), F32, "per_row")
    config = {"block_m": block[0], "block_n": block[1]}
    out, lse = run_triton(q, k, v, prefix_lens, mask, split_size=40, config=config)
    check_against_reference(q, k, v, prefix_lens, mask, out, lse)


@needs_triton
def test_triton_random_shapes(poisoned_workspace):
    """Random shapes, trees and prefix lengths (seeded, so CI is deterministic)."""
    rng = random.Random(2024)
    for trial in range(8):
        hkv = rng.choice([1, 2])
        group = rng.choice([1, 4, 8])
        batch = rng.randint(1, 3)
        t = rng.randint(1, 80)
        case = (
            batch,
            hkv * group,
            hkv,
            t,
            rng.choice([64, 128]),
            tuple(rng.randint(0, 300) for _ in range(batch)),
            rng.choice([F32, F16]),
            rng.choice(["causal", "parents", "per_row", "pending", "branching"]),
        )
        split = rng.choice([None, 64, 150])
        q, k, v, prefix_lens, mask = make_case(100 + trial, *case)
        out, lse = run_triton(q, k, v, prefix_lens, mask, split_size=split)
        check_against_reference(q, k, v, prefix_lens, mask, out, lse)


@needs_triton
def test_triton_strided_inputs(poisoned_workspace):
    """q from a [B, T, Hq, D] projection and k/v from a [B, L, Hkv, D] cache, as transposed views."""
    q, k, v, prefix_lens, mask = make_case(3, 2, 8, 2, 12, 64, (45, 130), F16, "per_row")
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)
    k_t = k.transpose(1, 2).contiguous().transpose(1, 2)
    v_t = v.transpose(1, 2).contiguous().transpose(1, 2)
    assert not q_t.is_contiguous() and not k_t.is_contiguous()
    out, lse = run_triton(q_t, k_t, v_t, prefix_lens, mask)
    check_against_reference(q, k, v, prefix_lens, mask, out, lse)


@needs_triton
def test_triton_row_seeing_nothing_gives_zero(poisoned_workspace):
    """A row with no prefix and no visible node gets 0 and lse -inf (as the reference and SDPA do)."""
    q, k, v, prefix_lens, _ = make_case(1, 2, 2, 2, 4, 64, (0, 5), F32, "causal")
    mask = Tree.chain(4).ancestor_mask.clone()
    mask[2, 2] = False  # node 2 sees nodes 0, 1: fine; node 3 with nothing below
    mask[3] = False
    out, lse = run_triton(q, k, v, prefix_lens, mask)
    assert torch.all(out[0, :, 3] == 0) and torch.all(torch.isneginf(lse[0, :, 3]))
    assert torch.isfinite(lse[1]).all()  # row 1 still sees its prefix
    check_against_reference(q, k, v, prefix_lens, mask, out, lse)


# ---------------------------------------------------------------------------- public API, backends
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("case", SWEEP, ids=case_id)
def test_torch_backends_match_reference(case, backend):
    q, k, v, prefix_lens, mask = make_case(13, *case)
    out, lse = tree_attention(q, k, v, prefix_lens, mask, return_lse=True, backend=backend)
    ref, ref_lse = float64_reference(q, k, v, prefix_lens, mask)
    tol = {torch.float32: 1e-5, torch.float16: 4e-3}[q.dtype]
    assert out.dtype == q.dtype and out.shape == q.shape
    assert max_err(out, ref) < tol
    check_lse(lse, ref_lse)


def naive_attention(q, k, v, prefix_lens, mask):
    """Row by row over explicit index lists (checks the dense mask the other paths share)."""
    batch, hq, t, d = q.shape
    group = hq // k.shape[1]
    out = torch.zeros(batch, hq, t, d, dtype=torch.float64)
    for b in range(batch):
        p = int(prefix_lens[b])
        for i in range(t):
            if mask is None:
                nodes = range(i + 1)
            else:
                row = mask[b, i] if mask.dim() == 3 else mask[i]
                nodes = [j for j in range(t) if row[j]]
            keys = list(range(p)) + [p + j for j in nodes]
            for h in range(hq):
                kk = k[b, h // group, keys].double()  # [n, D]
                vv = v[b, h // group, keys].double()  # [n, D]
                weights = torch.softmax(kk @ q[b, h, i].double() / math.sqrt(d), dim=0)
                out[b, h, i] = weights @ vv
    return out


@pytest.mark.parametrize(
    "case",
    [
        (2, 4, 2, 6, 64, (3, 0), F32, "per_row"),
        (1, 2, 1, 5, 64, (9,), F32, "causal"),
        (3, 2, 2, 7, 64, (2, 4, 0), F32, "pending"),
    ],
    ids=case_id,
)
def test_reference_matches_naive_loop(case):
    q, k, v, prefix_lens, mask = make_case(17, *case, device="cpu")
    expected = naive_attention(q, k, v, prefix_lens, mask)
    got = reference_tree_attention(q.double(), k.double(), v.double(), prefix_lens, mask)
    assert torch.allclose(got, expected, atol=1e-12)


def test_dense_mask_layout():
    """Prefix visible, tree block under the mask, everything past prefix + T hidden."""
    mask = Tree.from_parents([-1, -1, 0]).ancestor_mask  # [3, 3]
    dense = dense_tree_mask(torch.tensor([2, 0]), mask, 3, 6)  # [2, 3, 6]
    expected_row0 = torch.tensor(
        [[1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0], [1, 1, 1, 0, 1, 0]], dtype=torch.bool
    )
    assert torch.equal(dense[0], expected_row0)
    assert torch.equal(dense[1, :, :3], mask) and not dense[1, :, 3:].any()


def test_chain_fast_path_matches_dense_mask():
    """The SDPA lower-right causal path (single row, known length) equals the dense-mask path."""
    q, k, v, prefix_lens, _ = make_case(19, 1, 8, 2, 9, 64, (77,), F32, "causal", device="cpu")
    chain = tree_attention(q, k, v, prefix_lens, None, backend="sdpa")
    dense = tree_attention(q, k, v, prefix_lens, Tree.chain(9).ancestor_mask, backend="sdpa")
    assert torch.allclose(chain, dense, atol=1e-6)
    ref, _ = float64_reference(q, k, v, prefix_lens, None)
    assert max_err(chain, ref) < 1e-5


@pytest.mark.parametrize("bound", [None, 0, 40], ids=["no-bound", "exact-bound", "loose-bound"])
@pytest.mark.parametrize("kind", ["causal", "per_row"])
def test_sdpa_paths_without_an_exact_length(bound, kind):
    """The SDPA paths a CUDA caller takes (no host-known exact length): garbage is zeroed, not read."""
    from specdec.kernels.reference import sdpa_tree_attention

    for batch, prefixes in ((1, (30,)), (2, (30, 3))):
        q, k, v, prefix_lens, mask = make_case(53, batch, 4, 2, 6, 64, prefixes, F32, kind, device="cpu")
        limit = None if bound is None else max(prefixes) + bound
        out, lse = sdpa_tree_attention(q, k, v, prefix_lens, mask, 0.125, True, limit, False)
        ref, ref_lse = float64_reference(q, k, v, prefix_lens, mask)
        assert max_err(out, ref) < 1e-5
        check_lse(lse, ref_lse)


def test_flash_wrapper_layout_with_a_stand_in(monkeypatch):
    """flash-attn cannot be installed here: a stand-in that follows its documented contract
    ([B, T, H, D] layouts, int32 cache_seqlens, bottom-right causal, lse [B, Hq, T]) checks our
    transposes and arguments. flash-attn itself stays untested."""
    import sys
    import types

    from specdec.kernels.flash import flash_chain_attention

    def flash_attn_with_kvcache(
        q, k_cache, v_cache, cache_seqlens=None, softmax_scale=None, causal=False, return_softmax_lse=False
    ):
        assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1 and q.stride(-1) == 1
        assert cache_seqlens.dtype == torch.int32 and causal
        t = q.shape[1]
        out, lse = reference_tree_attention(
            q.transpose(1, 2),
            k_cache.transpose(1, 2),
            v_cache.transpose(1, 2),
            cache_seqlens - t,
            None,
            softmax_scale,
            return_lse=True,
        )
        out = out.transpose(1, 2)  # [B, T, Hq, D]
        return (out, lse) if return_softmax_lse else out

    monkeypatch.setitem(
        sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_with_kvcache=flash_attn_with_kvcache)
    )
    q, k, v, prefix_lens, _ = make_case(59, 2, 8, 2, 5, 64, (12, 40), F32, "causal", device="cpu")
    out, lse = flash_chain_attention(q, k, v, prefix_lens, 0.125, True)
    ref, ref_lse = reference_tree_attention(
        q.double(), k.double(), v.double(), prefix_lens, None, 0.125, True
    )
    assert out.shape == q.shape and max_err(out, ref) < 1e-5
    check_lse(lse, ref_lse)
    assert max_err(flash_chain_attention(q, k, v, prefix_lens, 0.125, False), ref) < 1e-5


def test_scale_argument():
    q, k, v, prefix_lens, mask = make_case(23, 2, 4, 2, 5, 64, (10, 20), F32, "per_row", device="cpu")
    out = tree_attention(q, k, v, prefix_lens, mask, scale=0.3, backend="sdpa")
    ref = reference_tree_attention(q.double(), k.double(), v.double(), prefix_lens, mask, scale=0.3)
    assert max_err(out, ref) < 1e-5
    assert max_err(tree_attention(q, k, v, prefix_lens, mask, backend="sdpa"), ref) > 1e-3


def test_auto_backend_on_cpu_is_sdpa(monkeypatch):
    monkeypatch.delenv("SPECDEC_ATTENTION", raising=False)
    q = torch.zeros(1, 2, 3, 64)
    assert resolve_backend(q) == "sdpa"
    assert resolve_backend(q, torch.ones(3, 3, dtype=torch.bool)) == "sdpa"
    assert available_backends("cpu")[-2:] == ("sdpa", "eager")
    assert set(available_backends("cpu")) <= set(BACKENDS)


def test_env_var_overrides_at_call_time(monkeypatch):
    q, k, v, prefix_lens, mask = make_case(29, 1, 2, 2, 4, 64, (6,), F32, "parents", device="cpu")
    reference = reference_tree_attention(q, k, v, prefix_lens, mask)
    monkeypatch.setenv("SPECDEC_ATTENTION", "eager")
    assert resolve_backend(q, mask) == "eager"
    assert torch.equal(tree_attention(q, k, v, prefix_lens, mask), reference)  # the reference, bit for bit
    monkeypatch.setenv("SPECDEC_ATTENTION", "SDPA")
    assert resolve_backend(q, mask) == "sdpa"
    assert resolve_backend(q, mask, backend="eager") == "eager"  # the argument wins over the variable
    monkeypatch.setenv("SPECDEC_ATTENTION", "auto")
    assert resolve_backend(q, mask) == "sdpa"
    monkeypatch.setenv("SPECDEC_ATTENTION", "fastest")
    with pytest.raises(ValueError, match="valid: triton, flash, sdpa, eager"):
        tree_attention(q, k, v, prefix_lens, mask)
    with pytest.raises(ValueError, match="not an attention backend"):
        tree_attention(q, k, v, prefix_lens, mask, backend="cuda")


def test_env_var_flash_without_flash_attn(monkeypatch):
    """flash-attn cannot be installed here: asking for it says why instead of silently falling back."""
    from specdec.kernels.flash import flash_attn_available

    if flash_attn_available() and CUDA:
        pytest.skip("flash-attn is installed")
    q, k, v, prefix_lens, _ = make_case(31, 1, 2, 2, 4, 64, (6,), F16, "causal", device="cpu")
    monkeypatch.setenv("SPECDEC_ATTENTION", "flash")
    with pytest.raises(RuntimeError, match="flash-attn"):
        tree_attention(q, k, v, prefix_lens)


@needs_triton
def test_env_var_triton_on_cpu_uses_interpreter(monkeypatch, poisoned_workspace):
    if DEVICE != "cpu":
        pytest.skip("GPU machine: the compiled kernel is tested by the other Triton tests")
    q, k, v, prefix_lens, mask = make_case(37, 2, 4, 1, 6, 64, (70, 2), F32, "per_row", device="cpu")
    monkeypatch.setenv("SPECDEC_ATTENTION", "triton")
    assert resolve_backend(q, mask) == "triton"
    out, lse = tree_attention(q, k, v, prefix_lens, mask, return_lse=True)
    check_against_reference(q, k, v, prefix_lens, mask, out, lse)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        tree_attention(q, k, v, prefix_lens, mask)


# --------------------------------------------------------------------------------------- bad input
def _good():
    q, k, v, prefix_lens, mask = make_case(41, 2, 4, 2, 5, 64, (3, 8), F32, "per_row", device="cpu", spare=0)
    return dict(q=q, k=k, v=v, prefix_lens=prefix_lens, tree_mask=mask)


BAD_INPUTS = [
    ("q 3-D", lambda a: a.update(q=a["q"][0]), "must be 4-D"),
    ("k/v shapes", lambda a: a.update(v=a["v"][:, :1]), "one shape"),
    ("batch", lambda a: a.update(q=a["q"][:1]), "batch mismatch"),
    ("head dim", lambda a: a.update(q=a["q"][..., :32]), "head dim mismatch"),
    ("heads", lambda a: a.update(q=a["q"][:, :3]), "multiple of key/value heads"),
    ("dtype", lambda a: a.update(k=a["k"].half()), "share a dtype"),
    ("int q", lambda a: a.update(q=a["q"].int()), "float16, bfloat16"),
    ("prefix shape", lambda a: a.update(prefix_lens=a["prefix_lens"][:1]), r"shape \[B\]"),
    ("prefix dtype", lambda a: a.update(prefix_lens=a["prefix_lens"].float()), "integer tensor"),
    ("mask dtype", lambda a: a.update(tree_mask=a["tree_mask"].int()), "must be bool"),
    ("mask shape", lambda a: a.update(tree_mask=a["tree_mask"][:, :4, :4]), r"\[T, T\] or \[B, T, T\]"),
    ("cache short", lambda a: a.update(prefix_lens=a["prefix_lens"] + 1), "cannot hold max"),
    ("prefix negative", lambda a: a.update(prefix_lens=a["prefix_lens"] - 4), ">= 0"),
    ("not a tensor", lambda a: a.update(prefix_lens=[3, 8]), "torch.Tensor"),
]


@pytest.mark.parametrize("name, mutate, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
@pytest.mark.parametrize(
    "backend", ["sdpa", "eager"] + (["triton"] if HAS_TRITON and DEVICE == "cpu" else [])
)
def test_bad_input_raises_before_launch(name, mutate, message, backend):
    args = _good()
    assert tree_attention(**args, backend=backend).shape == args["q"].shape  # the unmutated call works
    mutate(args)
    with pytest.raises(ValueError, match=message):
        tree_attention(**args, backend=backend)


@needs_triton
def test_triton_rejects_what_it_cannot_take(monkeypatch):
    """float64 and odd head dims: ValueError for an explicit triton request, SDPA when automatic."""
    monkeypatch.delenv("SPECDEC_ATTENTION", raising=False)
    for dtype, d in ((torch.float64, 64), (torch.float32, 48), (torch.float32, 8)):
        q, k, v, prefix_lens, mask = make_case(47, 1, 2, 2, 3, d, (4,), dtype, "parents", device=DEVICE)
        with pytest.raises(ValueError, match="triton backend takes"):
            tree_attention(q, k, v, prefix_lens, mask, backend="triton")
        assert resolve_backend(q, mask) == "sdpa"
        ref = reference_tree_attention(q.double(), k.double(), v.double(), prefix_lens, mask)
        assert max_err(tree_attention(q, k, v, prefix_lens, mask), ref) < 1e-5


@pytest.fixture
def auto_prefers_triton(monkeypatch):
    """The automatic choice as on a GPU (Triton for a shape it takes), here with the interpreter, and
    a fresh record of noted shapes; returns the api module."""
    from specdec.kernels import api

    if not HAS_TRITON:
        pytest.skip("the Triton kernel cannot run here")
    monkeypatch.delenv("SPECDEC_ATTENTION", raising=False)
    monkeypatch.setattr(api, "_auto_prefers_triton", lambda q: True)
    monkeypatch.setattr(api, "_NOTED_SHAPES", set())
    return api


@pytest.mark.parametrize("d", [32, 256, 96], ids=["D32", "D256", "D96"])
def test_unsupported_head_dim_goes_to_sdpa_with_one_note(auto_prefers_triton, d):
    """A head dim outside TRITON_HEAD_DIMS: exact SDPA result, and one warning naming the shape."""
    q, k, v, prefix_lens, mask = make_case(61, 1, 4, 2, 5, d, (9,), F32, "parents", device=DEVICE)
    with pytest.warns(UserWarning, match=rf"shape \(1, 4, 5, {d}\).*head dims 64, 128") as seen:
        out = tree_attention(q, k, v, prefix_lens, mask)
    assert len([w for w in seen if "runs on SDPA" in str(w.message)]) == 1
    ref = reference_tree_attention(q.double(), k.double(), v.double(), prefix_lens, mask)
    assert max_err(out, ref) < 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # noted once: the second call is silent
        assert torch.equal(tree_attention(q, k, v, prefix_lens, mask), out)
    # a supported head dim still takes the kernel under the same automatic choice
    q2, k2, v2, p2, m2 = make_case(61, 1, 4, 2, 5, 64, (9,), F32, "parents", device=DEVICE)
    assert resolve_backend(q2, m2) == "triton"


def test_unsupported_head_dim_refused_when_triton_is_asked_for(monkeypatch):
    """SPECDEC_ATTENTION=triton or backend="triton" on a head dim the kernel was not checked for:
    ValueError naming the supported set, before any launch (no interpreter needed to refuse)."""
    from specdec.kernels import api

    monkeypatch.setattr(api, "triton_available", lambda device="cuda": True)
    for d in (32, 256):
        q, k, v, prefix_lens, mask = make_case(67, 1, 2, 1, 4, d, (3,), F16, "parents", device="cpu")
        with pytest.raises(ValueError, match=f"head dims 64, 128.*got D={d}"):
            tree_attention(q, k, v, prefix_lens, mask, backend="triton")
        monkeypatch.setenv("SPECDEC_ATTENTION", "triton")
        with pytest.raises(ValueError, match=f"head dims 64, 128.*got D={d}"):
            tree_attention(q, k, v, prefix_lens, mask)
        with pytest.raises(ValueError, match="head dims 64, 128"):
            resolve_backend(q, mask)
        monkeypatch.delenv("SPECDEC_ATTENTION")


def test_too_many_new_rows_refused_or_rerouted(monkeypatch):
    """T beyond MAX_NEW_ROWS: refused when triton is asked for, SDPA (with a note) when automatic,
    also when the automatic name from resolve_backend is passed back (as the runner does)."""
    from specdec.kernels import MAX_NEW_ROWS, api

    monkeypatch.delenv("SPECDEC_ATTENTION", raising=False)
    monkeypatch.setattr(api, "triton_available", lambda device="cuda": True)
    monkeypatch.setattr(api, "_auto_prefers_triton", lambda q: True)
    monkeypatch.setattr(api, "_NOTED_SHAPES", set())
    # the real limit, on an empty-valued probe (no attention computed)
    big = torch.empty(1, 1, MAX_NEW_ROWS + 1, 64)
    with pytest.raises(ValueError, match=f"T <= {MAX_NEW_ROWS}.*got T={MAX_NEW_ROWS + 1}"):
        resolve_backend(big, None, backend="triton")
    with pytest.warns(UserWarning, match=f"T <= {MAX_NEW_ROWS}"):
        assert resolve_backend(big) == "sdpa"
    assert resolve_backend(big[:, :, :MAX_NEW_ROWS]) == "triton"
    # end to end with a lowered limit: the automatic name chosen on a probe stays automatic
    monkeypatch.setattr(api, "MAX_NEW_ROWS", 8)
    monkeypatch.setattr(api, "_NOTED_SHAPES", set())
    chosen = resolve_backend(torch.empty(0, 0, 0, 64, dtype=F16), None)
    assert chosen == "triton"
    q, k, v, prefix_lens, mask = make_case(71, 1, 2, 1, 9, 64, (5,), F16, "parents", device="cpu")
    with pytest.raises(ValueError, match="T <= 8 new rows per call, got T=9"):
        tree_attention(q, k, v, prefix_lens, mask, backend="triton")
    with pytest.warns(UserWarning, match=r"shape \(1, 2, 9, 64\)"):
        out = tree_attention(q, k, v, prefix_lens, mask, backend=chosen)
    ref = reference_tree_attention(q.double(), k.double(), v.double(), prefix_lens, mask)
    assert max_err(out, ref) < 4e-3


def test_bad_input_devices_and_hint():
    args = _good()
    with pytest.raises(ValueError, match="cannot hold max_prefix_len"):
        tree_attention(**args, max_prefix_len=9)
    if CUDA:
        args["q"] = args["q"].cuda()
        with pytest.raises(ValueError, match="one device"):
            tree_attention(**args)


# ------------------------------------------------------------------------------------- CUDA only
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "shape",
    [
        (1, 32, 32, 16, 128, (2048,), "per_row"),  # Llama-2-7B heads
        (2, 64, 8, 64, 128, (4096, 513), "parents"),  # Llama-2-70B heads, auto split-K
        (3, 32, 4, 80, 64, (300, 0, 77), "causal"),  # TinyLlama-like GQA
    ],
    ids=["7b", "70b", "gqa8-d64"],
)
def test_cuda_triton_bf16_fp16(dtype, shape):
    """The compiled kernel in bf16/fp16 on a GPU (CPU twin: test_triton_matches_reference)."""
    b, hq, hkv, t, d, prefixes, kind = shape
    q, k, v, prefix_lens, mask = make_case(43, b, hq, hkv, t, d, prefixes, dtype, kind, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # the Triton path must not sync with the host
    try:
        out, lse = tree_attention(q, k, v, prefix_lens, mask, return_lse=True, backend="triton")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    check_against_reference(q, k, v, prefix_lens, mask, out, lse)
    assert resolve_backend(q, mask) in ("triton",)


def test_interpreter_versions_that_cannot_run_the_kernel_are_refused():
    """triton 3.6's interpreter fails inside the kernel (a loop bound loaded from memory); the
    backend check refuses it up front instead."""
    from specdec.kernels.api import interpreter_supported

    assert not interpreter_supported("3.6.0") and not interpreter_supported("2.3.1")
    assert (
        interpreter_supported("3.7.0")
        and interpreter_supported("3.9.0+git1a2b")
        and interpreter_supported("4.0")
    )
