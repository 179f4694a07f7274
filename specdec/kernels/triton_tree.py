"""Tree attention in Triton: FlashAttention-2-style forward over a committed prefix and T new rows.

Importing this module imports triton; `specdec.kernels` imports it lazily, on the first call that
picks the Triton backend (so `TRITON_INTERPRET=1` can still be set after `import specdec`).

Work split. One program per (block of BLOCK_M query rows, batch row b and kv head, key split).
The query rows of a program are the G = Hq / Hkv query heads that share one kv head, flattened
t-major (row r is new row t = r // G of query head kvh * G + r % G): K/V tiles are loaded once for
the whole group (grouped-query attention without repeating K/V), a decode-sized T still fills a
tensor-core tile when G > 1, and a row block covers a contiguous range of t, so tree tiles right of
the block's last row (the upper triangle) are skipped.

Keys. The prefix [0, prefix_lens[b]) is walked in BLOCK_N tiles under a key mask (for the last one);
the T new rows at [prefix_lens[b], prefix_lens[b] + T) are walked under the tree mask (or causally
when there is none). Slots past prefix_lens[b] + T are never loaded (masked loads, `other=0`), so
garbage there cannot reach the result. Softmax is online in float32 (base-2 exponentials).

Tree mask format: the bool [B, T, T] (or a stride-0 expanded [T, T]) tensor is read directly as
uint8, one [BLOCK_M, BLOCK_N] tile per tree tile. Packing it into bit words would cost an extra
kernel on every call (every layer of every step) while saving only T*T bytes of L2-resident reads
(4 KiB at T = 64), and the bool layout is what `Tree.ancestor_mask` already gives.

Split-K. When B * Hkv * row blocks is too small to fill the GPU, the prefix is cut into chunks
(multiples of BLOCK_N) handled by separate programs; split 0 also takes the new rows. Each split
writes a normalised partial output and its log-sum-exp (float32); `_merge_splits` combines them.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

try:  # triton >= 3.4 reads its settings through knobs
    from triton import knobs

    _interpret = bool(knobs.runtime.interpret)
except ImportError:  # older triton reads the variable when a kernel is decorated
    _interpret = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")
#: Whether the kernels below were built for the CPU interpreter (TRITON_INTERPRET=1 at import time).
INTERPRETED = _interpret

_LOG2E = 1.4426950408889634
#: Smallest prefix chunk per split (keys); below this the merge costs more than it saves.
MIN_SPLIT_SIZE = 256
#: Rows per program of the split merge (a [16, D] float32 tile per program).
MERGE_BLOCK_R = 16


@triton.jit
def _online_softmax_step(
    acc, m_i, l_i, q, kt, v, allowed, scale_log2, HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr
):
    """One key tile: acc [BM, D], m_i/l_i [BM] (log2 units) updated by kt [D, BN] (K loaded transposed)
    and v [BN, D] under allowed [BM, BN]. Loading K as [D, BN] (not tl.trans of a [BN, D] tile) lets
    the dot read it from shared memory step by step: a register transpose held the whole tile."""
    s = tl.dot(q, kt, input_precision=DOT_PRECISION) * scale_log2  # [BM, BN]
    if HAS_MASK:
        s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))  # [BM]
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw nothing yet stay at 0
    alpha = tl.exp2(m_i - m_safe)  # [BM]
    p = tl.exp2(s - m_safe[:, None])  # [BM, BN]; masked entries are exactly 0
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _tree_attention_fwd(
    Q,  # [B, Hq, T, D]
    K,  # [B, Hkv, L, D]
    V,  # [B, Hkv, L, D]
    PREFIX,  # [B] int
    MASK,  # [B, T, T] uint8 (stride 0 over B when shared); unused when CAUSAL
    OUT,  # [S, B, Hq, T, D]: the output (S = 1, q's dtype) or split partials (float32)
    LSE,  # [S, B, Hq, T] float32; unused unless STORE_LSE
    scale_log2,
    T,
    L,
    CHUNK,  # prefix keys per split (a multiple of BLOCK_N), >= L when unsplit
    HKV,
    s_qb, s_qh, s_qt, s_qd,
    s_kb, s_kh, s_kl, s_kd,
    s_vb, s_vh, s_vl, s_vd,
    s_mb, s_mi, s_mj,
    s_os, s_ob, s_oh, s_ot, s_od,
    s_ls, s_lb, s_lh, s_lt,
    G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    STORE_LSE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = (pid_bh // HKV).to(tl.int64)
    kvh = (pid_bh % HKV).to(tl.int64)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] flattened (t, head-in-group), t-major
    t = rows // G  # [BM] new-row index
    head = kvh * G + rows % G  # [BM] query head
    row_ok = t < T
    d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + b * s_qb + head[:, None] * s_qh + t[:, None] * s_qt + d[None, :] * s_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)  # [BM, D]

    prefix = tl.load(PREFIX + b).to(tl.int32)
    prefix = tl.minimum(tl.maximum(prefix, 0), L)  # bad input can never read outside the cache
    k_base = K + b * s_kb + kvh * s_kh
    v_base = V + b * s_vb + kvh * s_vh
    n = tl.arange(0, BLOCK_N)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    # 1. this split's chunk of the committed prefix, BLOCK_N keys a tile. One loop, every tile under
    # the key mask (a [BN] compare and a select per score): a separate unmasked tail tile outside the
    # loop is not software-pipelined, so triton held its whole K^T operand in registers and spilled.
    start = pid_s * CHUNK
    stop = tl.minimum(start + CHUNK, prefix)
    for n0 in range(start, stop, BLOCK_N):
        cols = n0 + n  # [BN] cache positions
        key_ok = cols < stop  # [BN]
        kt = tl.load(k_base + d[:, None] * s_kd + cols[None, :] * s_kl, mask=key_ok[None, :], other=0.0)
        v = tl.load(v_base + cols[:, None] * s_vl + d[None, :] * s_vd, mask=key_ok[:, None], other=0.0)
        acc, m_i, l_i = _online_softmax_step(
            acc, m_i, l_i, q, kt, v, key_ok[None, :], scale_log2, True, DOT_PRECISION
        )

    # 2. the new rows (split 0 only), under the tree mask; tiles right of the block's last row skipped
    if pid_s == 0:
        last_t = (tl.minimum((pid_m + 1) * BLOCK_M, T * G) - 1) // G
        tree_stop = last_t + 1
        for j0 in range(0, tree_stop, BLOCK_N):
            j = j0 + n  # [BN] new-row index of the key
            key_ok = (j < tree_stop) & (prefix + j < L)
            cols = prefix + j
            kt = tl.load(k_base + d[:, None] * s_kd + cols[None, :] * s_kl, mask=key_ok[None, :], other=0.0)
            v = tl.load(v_base + cols[:, None] * s_vl + d[None, :] * s_vd, mask=key_ok[:, None], other=0.0)
            if CAUSAL:
                allowed = j[None, :] <= t[:, None]
            else:
                m_ptrs = MASK + b * s_mb + t[:, None] * s_mi + j[None, :] * s_mj
                allowed = tl.load(m_ptrs, mask=row_ok[:, None] & key_ok[None, :], other=0) != 0
            allowed = allowed & key_ok[None, :]  # [BM, BN]
            acc, m_i, l_i = _online_softmax_step(
                acc, m_i, l_i, q, kt, v, allowed, scale_log2, True, DOT_PRECISION
            )

    # 3. normalise; rows that saw no key give 0 and lse -inf
    seen = l_i > 0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]  # [BM, D]
    o_ptrs = OUT + pid_s * s_os + b * s_ob + head[:, None] * s_oh + t[:, None] * s_ot + d[None, :] * s_od
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=row_ok[:, None])
    if STORE_LSE:
        lse = tl.where(seen, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))  # natural log
        tl.store(LSE + pid_s * s_ls + b * s_lb + head * s_lh + t * s_lt, lse, mask=row_ok)


@triton.jit
def _merge_splits(
    PART_O,  # [S, R, D] float32 normalised partial outputs
    PART_LSE,  # [S, R] float32 partial log-sum-exps (natural log)
    OUT,  # [R, D] contiguous, the output dtype
    LSE,  # [R] float32; unused unless STORE_LSE
    R,
    S,
    HEAD_DIM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    STORE_LSE: tl.constexpr,
):
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)  # [BR] flat (b, h, t) rows
    ok = r < R
    d = tl.arange(0, HEAD_DIM)
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    w_sum = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], tl.float32)
    lse_ptrs = PART_LSE + r  # [BR], advanced by one split (R rows) per iteration
    o_ptrs = PART_O + r[:, None] * HEAD_DIM + d[None, :]  # [BR, D]
    for _ in range(0, S):
        lse_s = tl.load(lse_ptrs, mask=ok, other=float("-inf"))  # [BR]
        o_s = tl.load(o_ptrs, mask=ok[:, None], other=0.0)  # [BR, D]
        lse_ptrs += R
        o_ptrs += R * HEAD_DIM
        m_new = tl.maximum(m, lse_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        w = tl.exp(lse_s - m_safe)  # 0 for an empty split
        acc = acc * alpha[:, None] + w[:, None] * o_s
        w_sum = w_sum * alpha + w
        m = m_new
    seen = w_sum > 0
    w_safe = tl.where(seen, w_sum, 1.0)
    out = acc / w_safe[:, None]
    tl.store(OUT + r[:, None] * HEAD_DIM + d[None, :], out.to(OUT.dtype.element_ty), mask=ok[:, None])
    if STORE_LSE:
        tl.store(LSE + r, tl.where(seen, m + tl.log(w_safe), float("-inf")), mask=ok)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def device_arch(device: torch.device) -> int | None:
    """Compute capability as an int (80 = sm_80, 90 = sm_90) of a CUDA device; None elsewhere."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor


def _workspace(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Float32 buffers for split partials and lse (a seam for tests, which poison them)."""
    return torch.empty(shape, dtype=torch.float32, device=device)


def default_config(
    group: int, num_new: int, head_dim: int, dtype: torch.dtype, arch: int | None = None
) -> dict[str, int]:
    """Block sizes and launch options for one call shape: rows = group * num_new query rows per kv head.

    Chosen so that no configuration spills registers on sm_80 or sm_90 (benchmarks/kernel_aot.py
    compiles every one the shapes of Llama-2-7B/70B and TinyLlama can pick, T = 1..MAX_TREE_NODES,
    and reads ptxas's report; BENCHMARKS.md has the table). Not yet timed on a GPU: the speed-ups of
    one tile over another are open, the absence of spills is measured. Measured on triton 3.9, bf16:

    - BLOCK_M follows the rows (16 / 32 / 64): the rows of one kv head are all the work that shares
      its K/V tiles, and a decode-sized T would waste most of a bigger tile.
    - BLOCK_N 64 only with BLOCK_M 16. The tree loop holds a [BLOCK_M, BLOCK_N] score tile, its
      probabilities and the tree-mask tile at once; at BLOCK_M >= 32 a 64-key tile took 251-255
      registers at head dim 128 (spilling up to 144 bytes), 32 keys take 128-171.
    - 8 warps at BLOCK_M 64: with 4 warps the tile used 232-255 registers and spilled up to 256 bytes
      (head dim 128, sm_80 and sm_90); 8 warps halve each thread's share of the [64, D] accumulator
      (at most 205 registers, TinyLlama's tree tile on sm_80). BLOCK_M 128 spilled on sm_80 at head
      dim 128 under a tree mask in every variant tried (BLOCK_N 32/64, 2/3 stages).
    - 3 stages: K/V tiles for the memory-bound prefix walk in flight through cp.async (sm_80) or the
      sm_90 pipeline; at most 70 KiB of shared memory, inside both architectures' limits.
    The same choices are clean on both architectures, so `arch` does not change them yet; it is in
    the signature so that a table tuned on a GPU can differ per architecture without changing callers.

    float32 (CPU interpreter tests, explicit requests) keeps 4 warps, 2 stages and 32-key tiles at
    head dim 128: its dots run in IEEE float32 without tensor cores and are not on the fast path.
    """
    rows = group * num_new
    block_m = 16 if rows <= 16 else 32 if rows <= 32 else 64
    if dtype == torch.float32:
        block_n = 32 if head_dim >= 128 else 64
        return {"block_m": block_m, "block_n": block_n, "num_warps": 4, "num_stages": 2}
    block_n = 64 if block_m == 16 else 32
    num_warps = 8 if block_m == 64 else 4
    return {"block_m": block_m, "block_n": block_n, "num_warps": num_warps, "num_stages": 3}


def _plan_splits(
    programs: int, prefix_bound: int, block_n: int, device: torch.device, split_size: int | None
) -> tuple[int, int]:
    """(num_splits, chunk): cut the prefix when `programs` alone cannot fill the GPU's SMs."""
    if split_size is None:
        if device.type != "cuda" or prefix_bound < 2 * MIN_SPLIT_SIZE:
            return 1, 0
        sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device())
        if programs >= sms:
            return 1, 0
        wanted = min(2 * math.ceil(sms / programs), prefix_bound // MIN_SPLIT_SIZE)
        if wanted <= 1:
            return 1, 0
        split_size = math.ceil(prefix_bound / wanted)
    chunk = max(block_n, math.ceil(max(split_size, 1) / block_n) * block_n)
    splits = max(1, math.ceil(prefix_bound / chunk))
    return (splits, chunk) if splits > 1 else (1, 0)


@dataclass(frozen=True)
class Launch:
    """One kernel launch, `kernel[grid](*args, **meta)`: meta holds the constexprs and launch options.

    `plan_launches` builds these for a call; `triton_tree_attention` runs them, and
    benchmarks/kernel_aot.py compiles them ahead of time from meta tensors (no GPU needed)."""

    kernel: Any
    grid: tuple[int, int, int]
    args: tuple[Any, ...]
    meta: dict[str, Any]


def plan_launches(
    q: torch.Tensor,  # [B, Hq, T, D]
    k: torch.Tensor,  # [B, Hkv, L, D]
    v: torch.Tensor,  # [B, Hkv, L, D]
    prefix_lens: torch.Tensor,  # [B]
    tree_mask: torch.Tensor | None,  # [B, T, T] / [T, T] bool, None = causal
    scale: float,
    return_lse: bool = False,
    *,
    max_prefix_len: int | None = None,
    split_size: int | None = None,
    out: torch.Tensor | None = None,
    config: dict[str, int] | None = None,
    arch: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, list[Launch]]:
    """(out [B, Hq, T, D], lse [B, Hq, T] or None, the launches that fill them), nothing launched.

    Arguments as `triton_tree_attention`'s; arch: compute capability for `default_config` (None:
    the device's own). Works on meta tensors, which is how the ahead-of-time check plans a call.
    """
    batch, hq, t, head_dim = q.shape
    hkv, cache_len = k.shape[1], k.shape[2]
    group = hq // hkv
    if arch is None:
        arch = device_arch(q.device)
    cfg = {**default_config(group, t, head_dim, q.dtype, arch), **(config or {})}
    block_m, block_n = cfg["block_m"], cfg["block_n"]
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)  # [B, Hq, T, D]
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {tuple(q.shape)} {q.dtype} tensor on {q.device}.")
    lse = _workspace((batch, hq, t), q.device) if return_lse else None  # [B, Hq, T]
    if t == 0 or batch == 0:
        return out, lse, []

    if tree_mask is None:
        mask, mask_strides, causal = q, (0, 0, 0), True  # placeholder pointer, never read
    else:
        mask = tree_mask.expand(batch, t, t).view(torch.uint8)  # [B, T, T], stride 0 over B if shared
        mask_strides, causal = mask.stride(), False
    row_blocks = triton.cdiv(group * t, block_m)
    programs = batch * hkv * row_blocks
    prefix_bound = max(0, cache_len - t) if max_prefix_len is None else max_prefix_len
    splits, chunk = _plan_splits(programs, prefix_bound, block_n, q.device, split_size)
    meta = dict(
        G=group,
        HEAD_DIM=head_dim,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        CAUSAL=causal,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else None,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    scale_log2 = scale * _LOG2E
    grid = (row_blocks, batch * hkv, splits)
    if splits == 1:
        lse_arg = lse if lse is not None else out
        lse_strides = (0, *lse.stride()) if lse is not None else (0, 0, 0, 0)
        args = (
            q, k, v, prefix_lens, mask, out, lse_arg,
            scale_log2, t, cache_len, max(cache_len, 1), hkv,
            *q.stride(), *k.stride(), *v.stride(), *mask_strides,
            0, *out.stride(), *lse_strides,
        )  # fmt: skip
        return out, lse, [Launch(_tree_attention_fwd, grid, args, {**meta, "STORE_LSE": lse is not None})]

    part_o = _workspace((splits, batch, hq, t, head_dim), q.device)  # [S, B, Hq, T, D]
    part_lse = _workspace((splits, batch, hq, t), q.device)  # [S, B, Hq, T]
    args = (
        q, k, v, prefix_lens, mask, part_o, part_lse,
        scale_log2, t, cache_len, chunk, hkv,
        *q.stride(), *k.stride(), *v.stride(), *mask_strides,
        *part_o.stride(), *part_lse.stride(),
    )  # fmt: skip
    rows = batch * hq * t
    merge_args = (part_o, part_lse, out, lse if lse is not None else part_lse, rows, splits)
    merge_meta = dict(HEAD_DIM=head_dim, BLOCK_R=MERGE_BLOCK_R, STORE_LSE=lse is not None, num_warps=4)
    return (
        out,
        lse,
        [
            Launch(_tree_attention_fwd, grid, args, {**meta, "STORE_LSE": True}),
            Launch(_merge_splits, (triton.cdiv(rows, MERGE_BLOCK_R), 1, 1), merge_args, merge_meta),
        ],
    )


def triton_tree_attention(
    q: torch.Tensor,  # [B, Hq, T, D]
    k: torch.Tensor,  # [B, Hkv, L, D]
    v: torch.Tensor,  # [B, Hkv, L, D]
    prefix_lens: torch.Tensor,  # [B]
    tree_mask: torch.Tensor | None,  # [B, T, T] / [T, T] bool, None = causal
    scale: float,
    return_lse: bool = False,
    *,
    max_prefix_len: int | None = None,
    split_size: int | None = None,
    out: torch.Tensor | None = None,
    config: dict[str, int] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel on already validated inputs (use `specdec.kernels.tree_attention`).

    max_prefix_len: host-known bound on prefix_lens (sizes split-K; defaults to L - T).
    split_size: force split-K with chunks of about this many prefix keys (rounded up to BLOCK_N).
    out: a contiguous [B, Hq, T, D] buffer of q's dtype to write into. config: `default_config` keys.
    Returns out [B, Hq, T, D] (and lse [B, Hq, T] float32).
    """
    out, lse, launches = plan_launches(
        q, k, v, prefix_lens, tree_mask, scale, return_lse,
        max_prefix_len=max_prefix_len, split_size=split_size, out=out, config=config,
    )  # fmt: skip
    for launch in launches:
        launch.kernel[launch.grid](*launch.args, **launch.meta)
    return (out, lse) if return_lse else out
