"""Chains through the flash-attn package's `flash_attn_with_kvcache` (UNTESTED).

Written against flash-attn 2.x's documented API; no wheel of flash-attn can be installed on this
project's machines, so this path has never run here. It is only chosen for chains (tree_mask None) on
CUDA in fp16/bf16 when `import flash_attn` succeeds, and is never the only path: the Triton kernel and
SDPA handle every case it handles.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def flash_attn_available() -> bool:
    """Whether `flash_attn.flash_attn_with_kvcache` imports (cached: the answer cannot change in-process)."""
    try:
        from flash_attn import flash_attn_with_kvcache  # noqa: F401
    except Exception:  # ImportError, or a wheel built against another torch/CUDA
        return False
    return True


def flash_chain_attention(
    q: torch.Tensor,  # [B, Hq, T, D]
    k: torch.Tensor,  # [B, Hkv, L, D]
    v: torch.Tensor,  # [B, Hkv, L, D]
    prefix_lens: torch.Tensor,  # [B]
    scale: float,
    return_lse: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal block of T new rows at the end of each row's prefix (UNTESTED, see the module docstring).

    flash-attn takes [B, seq, heads, D] layouts: the transposed views below keep the last dimension
    contiguous, which is all `flash_attn_with_kvcache` asks of the cache. `cache_seqlens` =
    prefix_lens + T is each row's used length, so garbage slots past it are never read, and `causal`
    is aligned to the bottom-right corner when seqlen_q != seqlen_k (flash-attn >= 2.1), which is
    exactly "each new row sees the prefix and the new rows up to itself". GQA is native.
    """
    from flash_attn import flash_attn_with_kvcache

    t = q.shape[2]
    result = flash_attn_with_kvcache(
        q.transpose(1, 2),  # [B, T, Hq, D]
        k.transpose(1, 2),  # [B, L, Hkv, D]
        v.transpose(1, 2),  # [B, L, Hkv, D]
        cache_seqlens=(prefix_lens + t).clamp(max=k.shape[2]).to(torch.int32),  # [B], never past L
        softmax_scale=scale,
        causal=True,
        return_softmax_lse=return_lse,
    )
    if return_lse:
        out, lse = result  # [B, T, Hq, D], [B, Hq, T]
        return out.transpose(1, 2), lse.to(torch.float32)
    return result.transpose(1, 2)  # [B, Hq, T, D]
