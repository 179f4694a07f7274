"""KV cache helpers over transformers' DynamicCache, stable across transformers 5.17-5.x (L1).

Between transformers 5.17 and 5.24 `DynamicCache.crop` changed: a positive argument meant "keep this
many" and now raises; a negative argument removes that many tokens in both. `crop(0)` emptied the
cache in the old meaning. Everything here therefore removes a positive count through `crop(-n)` and
never calls `crop(0)`.
"""

from __future__ import annotations

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
