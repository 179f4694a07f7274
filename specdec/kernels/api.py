"""`tree_attention`: validation at the Python boundary and backend selection.

Backends:
- "triton": the fused kernel in `triton_tree` (CUDA; on CPU only under TRITON_INTERPRET=1).
- "flash": flash-attn's `flash_attn_with_kvcache` for chains (UNTESTED: no wheel can be installed on
  our machines); a tree call under "flash" goes to the automatic tree backend.
- "sdpa": PyTorch scaled_dot_product_attention with a dense bool mask (lower-right causal for a
  single-row chain when the prefix length is known on the host).
- "eager": the float64 reference (materialises every score; for tests).

Automatic choice: on CUDA, flash for chains when flash-attn imports (fp16/bf16), else Triton when
triton imports and the call is one the kernel was checked for (fp16/bf16, a head dim in
TRITON_HEAD_DIMS, T <= MAX_NEW_ROWS), else SDPA (exact); on CPU, SDPA. A shape the kernel does not
take sends the call to SDPA with a one-time warning naming the shape. `SPECDEC_ATTENTION` or the
`backend` argument overrides the choice (read on every call); an explicit "triton" on a shape the
kernel does not take is refused (ValueError naming the supported set), never silently rerouted.
The name `resolve_backend` returns from an automatic choice may be passed back as `backend` (the
runner does, after choosing once per pass): it stays automatic, so each call's own shape decides.

Host syncs: none on the Triton path. The "cache long enough" check (max(prefix_lens) + T <= L) needs
the values of prefix_lens, so it runs only where that is free or the path syncs anyway: against the
`max_prefix_len` hint when the caller gives one, with `prefix_lens.max()` when prefix_lens is on the
CPU, and on the eager path. Without it, the Triton kernel, SDPA and flash still never read past L
(loads, masks and flash's cache_seqlens are bounded by L); they just cannot raise.
"""

from __future__ import annotations

import math
import os
import sys
import warnings

import torch

from specdec.kernels.reference import reference_tree_attention, sdpa_tree_attention

BACKENDS = ("triton", "flash", "sdpa", "eager")
#: Head dims the Triton kernel is compiled and register-checked for (benchmarks/kernel_aot.py, sm_80
#: and sm_90): other head dims go to SDPA.
TRITON_HEAD_DIMS = (64, 128)
#: Largest T (new rows per call) the Triton kernel takes: its tile offsets are 32-bit, and a tree
#: mask row offset t * T must stay below 2**31 (T**2 = 2**30 here). Block sizes stop changing long
#: before this, at 64 rows per kv head (benchmarks/kernel_aot.py checks that every T up to here
#: picks a configuration it compiled).
MAX_NEW_ROWS = 32768
#: dtypes the automatic choice sends to the kernel on CUDA (the ahead-of-time check covers these);
#: float32 runs only on request (CPU interpreter tests): its dots are IEEE float32, not tensor cores.
_FAST_DTYPES = (torch.float16, torch.bfloat16)
ENV_VAR = "SPECDEC_ATTENTION"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class AutoBackend(str):
    """A backend name chosen automatically (what `resolve_backend` returns when nothing was asked
    for). Passed back as `tree_attention(..., backend=name)` it counts as no request: the call's own
    shape is checked again, so a shape the kernel does not take goes to SDPA instead of being refused."""

    __slots__ = ()


def triton_available(device: torch.device | str = "cuda") -> bool:
    """Whether the Triton kernel can run on `device`: CUDA with triton importable, or CPU under
    TRITON_INTERPRET=1 (which must have been set before triton was first imported)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
    elif device.type != "cpu" or os.environ.get("TRITON_INTERPRET") != "1":
        return False
    kernel_module = sys.modules.get("specdec.kernels.triton_tree")
    if device.type == "cpu" and kernel_module is not None and not kernel_module.INTERPRETED:
        return False  # the kernels were already compiled for a GPU; they cannot take CPU tensors
    try:
        import triton
    except Exception:
        return False
    return device.type == "cuda" or interpreter_supported(triton.__version__)


#: The oldest triton whose CPU interpreter runs the kernel: 3.6's cannot take a loop bound loaded
#: from memory (the per-row prefix length), which compiled kernels take on every version.
MIN_INTERPRETER_TRITON = (3, 7)


def interpreter_supported(version: str) -> bool:
    """Whether triton `version`'s CPU interpreter (TRITON_INTERPRET=1) can run the tree kernel."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) >= MIN_INTERPRETER_TRITON


def available_backends(device: torch.device | str = "cpu") -> tuple[str, ...]:
    """Backends usable on `device`, in BACKENDS order."""
    from specdec.kernels.flash import flash_attn_available

    device = torch.device(device)
    names = []
    if triton_available(device):
        names.append("triton")
    if device.type == "cuda" and flash_attn_available():
        names.append("flash")
    names += ["sdpa", "eager"]
    return tuple(names)


def _requested_backend(backend: str | None) -> str | None:
    """The explicit argument, else the environment variable (None / "" / "auto" = automatic)."""
    name = backend if backend is not None else os.environ.get(ENV_VAR, "")
    name = name.strip().lower()
    if name in ("", "auto"):
        return None
    if name not in BACKENDS:
        source = "backend" if backend is not None else ENV_VAR
        raise ValueError(
            f"{source}={name!r} is not an attention backend; valid: {', '.join(BACKENDS)} or auto."
        )
    return name


def triton_shape_problem(q: torch.Tensor) -> str | None:
    """Why the Triton kernel does not take q [B, Hq, T, D] (dtype, head dim or T), naming the supported
    set; None when it does. A T of 0 (a probe tensor, or an empty call) counts as supported."""
    t, d = q.shape[-2], q.shape[-1]
    if q.dtype not in _FLOAT_DTYPES:
        return f"the triton backend takes float16, bfloat16 or float32, got {q.dtype}"
    if d not in TRITON_HEAD_DIMS:
        return (
            f"the triton backend takes head dims {', '.join(map(str, TRITON_HEAD_DIMS))} (the sizes compiled "
            f"and checked ahead of time), got D={d}"
        )
    if t > MAX_NEW_ROWS:
        return f"the triton backend takes T <= {MAX_NEW_ROWS} new rows per call, got T={t}"
    return None


#: (head dim, T over the limit) pairs already noted, so each unsupported shape warns once per process.
_NOTED_SHAPES: set[tuple[int, bool]] = set()


def _note_sdpa_fallback(q: torch.Tensor, problem: str) -> None:
    """One warning per unsupported shape (by head dim, and whether T was over the limit)."""
    key = (q.shape[-1], q.shape[-2] > MAX_NEW_ROWS)
    if key in _NOTED_SHAPES:
        return
    _NOTED_SHAPES.add(key)
    warnings.warn(
        f"tree attention for q of shape {tuple(q.shape)} ({q.dtype}) runs on SDPA (exact) instead of the "
        f"Triton kernel: {problem}. Noted once per shape.",
        stacklevel=4,
    )


def _auto_prefers_triton(q: torch.Tensor) -> bool:
    """Whether the automatic choice would run the Triton kernel for q's device and dtype (a seam for
    CPU tests, which have no CUDA)."""
    return q.device.type == "cuda" and q.dtype in _FAST_DTYPES and triton_available(q.device)


def _choose_backend(requested: str | None, q: torch.Tensor, chain: bool) -> str:
    from specdec.kernels.flash import flash_attn_available

    on_cuda = q.device.type == "cuda"
    flash_ok = on_cuda and q.dtype in (torch.float16, torch.bfloat16) and flash_attn_available()
    if requested == "flash":
        if not flash_ok:
            raise RuntimeError(
                "attention backend 'flash' needs the flash-attn package on CUDA with fp16/bf16 inputs "
                f"(device {q.device}, dtype {q.dtype}, flash-attn importable: {flash_attn_available()})."
            )
        if chain:
            return "flash"
        requested = None  # flash handles chains only; trees take the automatic path
    if requested == "triton":
        if not triton_available(q.device):
            raise RuntimeError(
                f"attention backend 'triton' cannot run on {q.device}: it needs CUDA and triton, or "
                "TRITON_INTERPRET=1 set before triton is imported and triton >= "
                f"{'.'.join(map(str, MIN_INTERPRETER_TRITON))} (CPU, slow; for tests)."
            )
        problem = triton_shape_problem(q)
        if problem is not None:
            raise ValueError(f"{problem}; use backend='sdpa' (exact) or the automatic choice for this shape.")
        return "triton"
    if requested is not None:
        return requested
    if on_cuda and chain and flash_ok:
        return AutoBackend("flash")
    if _auto_prefers_triton(q):
        problem = triton_shape_problem(q)
        if problem is None:
            return AutoBackend("triton")
        _note_sdpa_fallback(q, problem)
    return AutoBackend("sdpa")


def resolve_backend(
    q: torch.Tensor, tree_mask: torch.Tensor | None = None, backend: str | None = None
) -> str:
    """The backend `tree_attention(q, ..., tree_mask, backend=backend)` would run (reads SPECDEC_ATTENTION
    now); ValueError for an unknown name or a shape the requested triton backend does not take,
    RuntimeError for a named backend that cannot run here. An automatic choice comes back as an
    `AutoBackend` (a str), which stays automatic when passed back as `backend`."""
    if isinstance(backend, AutoBackend):
        backend = None
    return _choose_backend(_requested_backend(backend), q, chain=tree_mask is None)


def _validate(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    prefix_lens: torch.Tensor,
    tree_mask: torch.Tensor | None,
    max_prefix_len: int | None,
) -> None:
    """Shape, dtype and device checks from host metadata only (no tensor values are read)."""
    for name, x in (("q", q), ("k", k), ("v", v), ("prefix_lens", prefix_lens)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be 4-D: q [B, Hq, T, D], k/v [B, Hkv, L, D]; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}."
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have one shape, got k {tuple(k.shape)} and v {tuple(v.shape)}.")
    batch, hq, t, d = q.shape
    _, hkv, cache_len, dk = k.shape
    if k.shape[0] != batch:
        raise ValueError(f"batch mismatch: q has {batch} rows, k/v have {k.shape[0]}.")
    if dk != d:
        raise ValueError(f"head dim mismatch: q has D={d}, k/v have D={dk}.")
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv}).")
    if q.dtype not in _FLOAT_DTYPES + (torch.float64,):
        raise ValueError(f"q must be float16, bfloat16, float32 or float64, got {q.dtype}.")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}.")
    devices = {q.device, k.device, v.device, prefix_lens.device}
    if tree_mask is not None:
        devices.add(tree_mask.device)
    if len(devices) != 1:
        raise ValueError(
            f"q, k, v, prefix_lens and tree_mask must be on one device, got {sorted(map(str, devices))}."
        )
    if prefix_lens.shape != (batch,):
        raise ValueError(f"prefix_lens must have shape [B] = ({batch},), got {tuple(prefix_lens.shape)}.")
    if prefix_lens.dtype.is_floating_point or prefix_lens.dtype in (
        torch.bool,
        torch.complex64,
        torch.complex128,
    ):
        raise ValueError(f"prefix_lens must be an integer tensor, got {prefix_lens.dtype}.")
    if tree_mask is not None:
        if tree_mask.dtype != torch.bool:
            raise ValueError(f"tree_mask must be bool, got {tree_mask.dtype}.")
        if tree_mask.shape not in ((t, t), (batch, t, t)):
            raise ValueError(
                f"tree_mask must be [T, T] or [B, T, T] = ({t}, {t}) or ({batch}, {t}, {t}), "
                f"got {tuple(tree_mask.shape)}."
            )
    if cache_len < t:
        raise ValueError(f"the cache (L={cache_len}) is shorter than the T={t} new rows it must hold.")
    if max_prefix_len is not None and max_prefix_len + t > cache_len:
        raise ValueError(
            f"the cache (L={cache_len}) cannot hold max_prefix_len={max_prefix_len} + T={t} positions."
        )


def _check_cache_len(prefix_lens: torch.Tensor, t: int, cache_len: int) -> int:
    """max(prefix_lens) (a host sync on CUDA); ValueError when max + T > L or a length is negative."""
    low, high = (int(x) for x in torch.aminmax(prefix_lens.to(torch.long)))
    if low < 0:
        raise ValueError(f"prefix_lens must be >= 0, got a minimum of {low}.")
    if high + t > cache_len:
        raise ValueError(f"the cache (L={cache_len}) cannot hold max(prefix_lens)={high} + T={t} positions.")
    return high


def tree_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    prefix_lens: torch.Tensor,
    tree_mask: torch.Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str | None = None,
    *,
    max_prefix_len: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of T new rows over each batch row's committed prefix and over each other.

    q: [B, Hq, T, D] queries of the new rows (tree nodes, possibly after a few pending committed tokens).
    k, v: [B, Hkv, L, D] cache; row b holds its prefix at [0, prefix_lens[b]) and the new rows at
        [prefix_lens[b], prefix_lens[b] + T); later slots are never read into the result. Hq % Hkv == 0.
    prefix_lens: [B] integer tensor on q's device (rows may differ; 0 allowed).
    tree_mask: [B, T, T] or [T, T] bool (True: new row i may attend to new row j; an ancestor mask with
        the diagonal set) or None (causal among the new rows). Every new row sees its whole prefix.
    scale: softmax scale, default 1/sqrt(D).
    backend: None (automatic, or the SPECDEC_ATTENTION environment variable) or one of BACKENDS.
    max_prefix_len: optional host-known upper bound on max(prefix_lens) (the exact max is best):
        checked against L without a sync, sizes the Triton kernel's split-K (without it the kernel
        plans for L - T) and lets SDPA slice the cache. Pass it from the runner when it has it.
    Returns out [B, Hq, T, D] in q's dtype, and with return_lse also lse [B, Hq, T] float32
    (natural-log log-sum-exp of the scaled scores). A row that sees no key gets 0 and lse -inf.
    """
    _validate(q, k, v, prefix_lens, tree_mask, max_prefix_len)
    t, d = q.shape[2], q.shape[3]
    cache_len = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    name = resolve_backend(q, tree_mask, backend)
    bound, exact = max_prefix_len, False
    if prefix_lens.device.type == "cpu" or name == "eager":  # free on CPU; eager syncs anyway
        bound, exact = _check_cache_len(prefix_lens, t, cache_len), True
    if name == "triton":
        from specdec.kernels.triton_tree import triton_tree_attention

        return triton_tree_attention(q, k, v, prefix_lens, tree_mask, scale, return_lse, max_prefix_len=bound)
    if name == "flash":
        from specdec.kernels.flash import flash_chain_attention

        return flash_chain_attention(q, k, v, prefix_lens, scale, return_lse)
    if name == "sdpa":
        return sdpa_tree_attention(q, k, v, prefix_lens, tree_mask, scale, return_lse, bound, exact)
    return reference_tree_attention(q, k, v, prefix_lens, tree_mask, scale, return_lse)
