"""KV cache helpers over transformers' DynamicCache, stable across transformers 5.17-5.x (L1).

Between transformers 5.17 and 5.24 `DynamicCache.crop` changed: a positive argument meant "keep this
many" and now raises; a negative argument removes that many tokens in both. `crop(0)` emptied the
cache in the old meaning. Everything here therefore removes a positive count through `crop(-n)` and
never calls `crop(0)`.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


def new_cache() -> DynamicCache:
    """An empty dynamic cache; layers are created on the first forward."""
    return DynamicCache()


def cache_length(cache: DynamicCache) -> int:
    """Number of positions currently held."""
    return int(cache.get_seq_length())


def truncate_cache(cache: DynamicCache, length: int) -> None:
    """Keep the first `length` positions (rollback after a rejection); no recomputation."""
    held = cache_length(cache)
    if length < 0 or length > held:
        raise ValueError(f"cannot truncate a cache of {held} positions to {length}")
    if length < held:
        cache.crop(-(held - length))


def cache_tensors(cache: DynamicCache) -> list[torch.Tensor]:
    """Every key and value tensor of the cache, [B, H_kv, L, D] each, across cache layouts."""
    if hasattr(cache, "layers"):
        return [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return [*cache.key_cache, *cache.value_cache]


def compact_rows(tensors: list[torch.Tensor], start: int, rows: list[int], held: int) -> None:
    """In each [B, H, L, D] tensor, move positions `rows` (distinct, ascending, in [start, held);
    e.g. the accepted path of a token tree) to start, start + 1, ...; the caller then keeps
    start + len(rows) positions. No recomputation."""
    if any(r < start or r >= held for r in rows) or list(rows) != sorted(set(rows)):
        raise ValueError(f"rows {rows} must be distinct ascending positions in [{start}, {held})")
    if list(rows) == list(range(start, start + len(rows))):
        return
    for tensor in tensors:
        index = torch.tensor(rows, device=tensor.device)
        tensor[:, :, start : start + len(rows)] = tensor.index_select(2, index)


def compact_cache(cache: DynamicCache, start: int, rows: list[int]) -> None:
    """Keep positions [0, start) and then `rows`, moved to start, start + 1, ...; drop the rest."""
    compact_rows(cache_tensors(cache), start, rows, cache_length(cache))
    truncate_cache(cache, start + len(rows))
