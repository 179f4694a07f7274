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


def move_positions(
    tensors: list[torch.Tensor], batch_rows: list[int], sources: list[list[int]], targets: list[list[int]]
) -> None:
    """In each [B, H, L, D] tensor and for each batch row batch_rows[i], copy positions sources[i] onto
    targets[i] (lists of one length, in [0, L); a target may repeat only with the same source). Every
    source is read before any target is written, so ranges may overlap. No recomputation."""
    if not tensors or not batch_rows:
        return
    if len(batch_rows) == 1 and targets[0] == list(range(targets[0][0], targets[0][0] + len(targets[0]))):
        # one row onto consecutive positions (a one-row compaction): a gather and a slice write
        b, start, width = batch_rows[0], targets[0][0], len(targets[0])
        index: dict[torch.device, torch.Tensor] = {}
        for tensor in tensors:
            if tensor.device not in index:
                index[tensor.device] = torch.tensor(sources[0], device=tensor.device)
            row = tensor if tensor.shape[0] == 1 else tensor[b : b + 1]  # [1, H, L, D]
            row[:, :, start : start + width] = row.index_select(2, index[tensor.device])
        return
    indices: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for tensor in tensors:
        if tensor.device not in indices:
            device = tensor.device
            indices[device] = (
                torch.tensor(batch_rows, device=device)[:, None],  # [M, 1]
                torch.tensor(sources, device=device),  # [M, w]
                torch.tensor(targets, device=device),  # [M, w]
            )
        rows, source, target = indices[tensor.device]
        tensor[rows, :, target] = tensor[rows, :, source]  # [M, w, H, D]


def select_batch(cache: DynamicCache, indices: list[int]) -> None:
    """Keep only the batch rows `indices` of every layer (the cache must hold at least one position:
    an empty cache is replaced, not selected)."""
    cache.batch_select_indices(torch.tensor(indices, dtype=torch.long))


def compact_cache(cache: DynamicCache, start: int, rows: list[int]) -> None:
    """Keep positions [0, start) and then `rows`, moved to start, start + 1, ...; drop the rest."""
    compact_rows(cache_tensors(cache), start, rows, cache_length(cache))
    truncate_cache(cache, start + len(rows))
