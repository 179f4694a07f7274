"""Dense attention over a prefix + tree block: the float64 reference and the PyTorch SDPA backend.

Both build the dense [B, T, L] boolean mask from `prefix_lens` and the tree mask on the device, so
neither needs a host sync to build it. Cache slots past `prefix_lens[b] + T` may hold garbage (NaN/inf
from `torch.empty`): both zero them with `torch.where` (never `0 * garbage`) before any arithmetic, or
slice them off when the host knows the exact length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def dense_tree_mask(
    prefix_lens: torch.Tensor, tree_mask: torch.Tensor | None, num_new: int, cache_len: int
) -> torch.Tensor:
    """[B, T, L] bool: new row t of batch row b may attend to cache position c.

    c < prefix_lens[b] (the committed prefix) is always visible; c = prefix_lens[b] + j for j in [0, T)
    is visible when tree_mask[b, t, j] (or j <= t when tree_mask is None); everything else is not.
    """
    device = prefix_lens.device
    batch, t = prefix_lens.shape[0], num_new
    cols = torch.arange(cache_len, device=device)  # [L]
    prefix = prefix_lens.to(torch.long)[:, None]  # [B, 1]
    j = cols[None, :] - prefix  # [B, L] index into the new rows
    in_new = (j >= 0) & (j < t)  # [B, L]
    if tree_mask is None:
        rows = torch.arange(t, device=device)  # [T]
        allowed_new = j[:, None, :] <= rows[None, :, None]  # [B, T, L]
    else:
        tm = tree_mask.to(device=device, dtype=torch.bool).expand(batch, t, t)  # [B, T, T]
        index = j.clamp(0, max(t - 1, 0))[:, None, :].expand(batch, t, cache_len)  # [B, T, L]
        allowed_new = torch.gather(tm, 2, index)  # [B, T, L]
    in_prefix = cols[None, :] < prefix  # [B, L]
    return in_prefix[:, None, :] | (in_new[:, None, :] & allowed_new)  # [B, T, L]


def _valid_keys(prefix_lens: torch.Tensor, num_new: int, cache_len: int) -> torch.Tensor:
    """[B, L] bool: cache positions holding data (prefix or new rows); the rest may be garbage."""
    cols = torch.arange(cache_len, device=prefix_lens.device)  # [L]
    return cols[None, :] < (prefix_lens.to(torch.long)[:, None] + num_new)  # [B, L]


def _zero_garbage(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x [B, H, L, D] with rows where valid [B, L] is False replaced by exact zeros."""
    return torch.where(valid[:, None, :, None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def reference_tree_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    prefix_lens: torch.Tensor,
    tree_mask: torch.Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Float64 eager tree attention (materialises every score; for tests and as a ground truth).

    Same contract as `specdec.kernels.tree_attention`: q [B, Hq, T, D], k/v [B, Hkv, L, D],
    prefix_lens [B], tree_mask [B, T, T] / [T, T] / None (causal). Returns out [B, Hq, T, D] in q's
    dtype (rows that see no key are 0) and, with return_lse, lse [B, Hq, T] float32 (-inf for such rows).
    Inputs are not validated here; `tree_attention(..., backend="eager")` validates then calls this.
    """
    batch, hq, t, d = q.shape
    hkv, cache_len = k.shape[1], k.shape[2]
    group = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    valid = _valid_keys(prefix_lens, t, cache_len)  # [B, L]
    kf = _zero_garbage(k.to(torch.float64), valid)  # [B, Hkv, L, D]
    vf = _zero_garbage(v.to(torch.float64), valid)  # [B, Hkv, L, D]
    qf = q.to(torch.float64).reshape(batch, hkv, group, t, d)  # [B, Hkv, G, T, D]
    scores = torch.einsum("bhgtd,bhld->bhgtl", qf, kf) * scale  # [B, Hkv, G, T, L]
    mask = dense_tree_mask(prefix_lens, tree_mask, t, cache_len)  # [B, T, L]
    scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [B, Hkv, G, T]
    seen = torch.isfinite(lse)[..., None]  # rows that see at least one key
    probs = torch.where(seen, torch.exp(scores - torch.where(seen, lse[..., None], 0.0)), 0.0)
    out = torch.einsum("bhgtl,bhld->bhgtd", probs, vf).reshape(batch, hq, t, d).to(q.dtype)
    if return_lse:
        return out, lse.reshape(batch, hq, t).to(torch.float32)
    return out


def _dense_lse(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:  # [B, Hq, T] float32
    """Log-sum-exp of the masked scaled scores in float32 (SDPA does not return it)."""
    batch, hq, t, d = q.shape
    hkv = k.shape[1]
    qf = q.to(torch.float32).reshape(batch, hkv, hq // hkv, t, d)  # [B, Hkv, G, T, D]
    scores = torch.einsum("bhgtd,bhld->bhgtl", qf, k.to(torch.float32)) * scale  # [B, Hkv, G, T, L]
    scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    return torch.logsumexp(scores, dim=-1).reshape(batch, hq, t)


def sdpa_tree_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    prefix_lens: torch.Tensor,
    tree_mask: torch.Tensor | None,
    scale: float,
    return_lse: bool,
    prefix_bound: int | None,
    prefix_exact: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """PyTorch SDPA with a dense bool mask (GQA through `enable_gqa`, no repeated K/V).

    prefix_bound: a host-known upper bound on max(prefix_lens) (a caller's hint, or the max itself,
    free on CPU), or None: the cache is then sliced to bound + T columns. prefix_exact: the bound IS
    max(prefix_lens). With one batch row and an exact bound the slice holds no garbage and a chain
    (tree_mask None) runs SDPA's lower-right causal path (FlashAttention-2 on CUDA) instead of a
    dense mask. Otherwise the garbage slots are zeroed with `torch.where` (one copy of K and V: this
    is the fallback path; the Triton kernel never copies).
    """
    batch, _, t, _ = q.shape
    cache_len = k.shape[2]
    if prefix_bound is not None:
        cache_len = min(cache_len, prefix_bound + t)
        k, v = k[:, :, :cache_len], v[:, :, :cache_len]  # [B, Hkv, L', D]
    exact = batch == 1 and prefix_bound is not None and prefix_exact  # the slice is prefix + T: no garbage
    if not exact:
        valid = _valid_keys(prefix_lens, t, cache_len)  # [B, L']
        k, v = _zero_garbage(k, valid), _zero_garbage(v, valid)
    enable_gqa = q.shape[1] != k.shape[1]
    mask = None
    if exact and tree_mask is None:
        from torch.nn.attention.bias import causal_lower_right

        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=causal_lower_right(t, cache_len), scale=scale, enable_gqa=enable_gqa
        )
    else:
        mask = dense_tree_mask(prefix_lens, tree_mask, t, cache_len)  # [B, T, L']
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None], scale=scale, enable_gqa=enable_gqa
        )  # [B, Hq, T, D]
    if not return_lse:
        return out
    if mask is None:
        mask = dense_tree_mask(prefix_lens, tree_mask, t, cache_len)
    return out, _dense_lse(q, k, mask, scale)
