"""Runs a transformers causal LM incrementally over its own KV cache (layer L3).

The runner owns one cache per model. `extend(tokens)` appends tokens at the next positions and returns
logits for the last positions; `truncate(n)` rolls the cache back to n positions. The model's own
weights and modeling code are used unchanged (no fork), so accelerate device maps keep working.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch
from transformers import PreTrainedModel

from specdec.cache import cache_length, compact_cache, new_cache, truncate_cache
from specdec.models.masks import MaskPlan, build_masks, plan_masks


def _cache_keyword(model: PreTrainedModel) -> str:
    """`cache` in transformers >= 5.2x, `past_key_values` before (deprecated after)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def model_device(model: PreTrainedModel) -> torch.device:
    """Device where the model's inputs go (the embedding's device under an accelerate device map)."""
    embeddings = model.get_input_embeddings()
    weight = getattr(embeddings, "weight", None)
    if weight is not None and weight.device.type != "meta":
        return weight.device
    return model.device


def vocab_size(model: PreTrainedModel) -> int:
    """Width of the model's logits."""
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def context_length(model: PreTrainedModel) -> int | None:
    """Largest number of positions the model supports, when its config says."""
    config = model.config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_extend(n: int, num_logits: int) -> None:
    """The shared argument check of `extend`."""
    if n == 0 or not 1 <= num_logits <= n:
        raise ValueError(f"extend needs 1 <= num_logits <= len(tokens), got {num_logits} and {n}")


def full_attention(attention: torch.Tensor, cached: int, device: torch.device) -> torch.Tensor:
    """[n, n] attention among new tokens (all cached positions visible) or [n, cached + n] as given
    -> [n, cached + n] bool on device."""
    n = attention.shape[0]
    mask = attention.to(device)
    if mask.shape[1] == n:
        mask = torch.cat([torch.ones(n, cached, dtype=torch.bool, device=device), mask], dim=1)
    if mask.shape != (n, cached + n):
        raise ValueError(f"attention must be [{n}, {n}] or [{n}, {cached + n}], got {tuple(attention.shape)}")
    return mask


class Runner(Protocol):
    """What the engine needs of a model: incremental forward passes over a KV cache it owns."""

    name: str
    device: torch.device
    vocab_size: int
    context_length: int | None
    length: int
    batch_size: int
    lengths: list[int]

    def reset(self, batch_size: int = 1) -> None: ...

    def extend(
        self,
        tokens: torch.Tensor,
        num_logits: int = 1,
        positions: torch.Tensor | None = None,
        attention: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def truncate(self, length: int) -> None: ...

    def compact(self, start: int, rows: list[int]) -> None: ...

    def extend_rows(
        self,
        tokens: torch.Tensor,
        counts: list[int],
        positions: torch.Tensor | None,
        attention: torch.Tensor | None,
        logit_rows: torch.Tensor | int,
    ) -> torch.Tensor: ...

    def compact_rows(self, starts: list[int], rows: list[list[int]]) -> None: ...

    def keep_rows(self, indices: list[int]) -> None: ...


class CausalRunner:
    """Incremental forward passes of one causal LM over its KV cache, through transformers' forward.

    Masks for trees (and for any pass on a windowed model) are built here in the form the model's
    attention implementation takes, with each layer type's window (`specdec.models.masks`); the
    position id of every cached slot is kept, since a tree's slots and positions differ.
    `tree_support` is None when trees verify exactly on this model, else the reason they cannot.
    """

    name = "transformers"

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.device = model_device(model)
        self.vocab_size = vocab_size(model)
        self.context_length = context_length(model)
        self._cache_kw = _cache_keyword(model)
        self._takes_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        plan = plan_masks(model)
        self._mask_plan: MaskPlan | None = plan if isinstance(plan, MaskPlan) else None
        self.tree_support: str | None = None if isinstance(plan, MaskPlan) else plan
        self.cache = new_cache()
        self._positions = torch.empty(0, dtype=torch.long, device=self.device)  # [length] position ids
        self.batch_size = 1

    @property
    def length(self) -> int:
        """Positions held in the cache."""
        self._require_one_row()
        return cache_length(self.cache)

    @property
    def lengths(self) -> list[int]:
        """Positions held by each row."""
        return [cache_length(self.cache)]

    def reset(self, batch_size: int = 1) -> None:
        if batch_size != 1:
            raise NotImplementedError("CausalRunner runs one row for now")
        self.cache = new_cache()
        self._positions = self._positions[:0]

    def _require_one_row(self) -> None:
        if self.batch_size != 1:
            raise ValueError(f"this call is for one row; the runner holds {self.batch_size}")

    def extend_rows(
        self,
        tokens: torch.Tensor,
        counts: list[int],
        positions: torch.Tensor | None,
        attention: torch.Tensor | None,
        logit_rows: torch.Tensor | int,
    ) -> torch.Tensor:
        """Batched form of `extend` (one row for now): tokens [1, n] -> logits [1, r, V]."""
        batch, n = tokens.shape
        if batch != self.batch_size or len(counts) != batch:
            raise ValueError(f"the runner holds {self.batch_size} rows; got tokens for {batch}")
        if counts[0] != n:
            raise NotImplementedError("padding in CausalRunner.extend_rows")
        rows = logit_rows if isinstance(logit_rows, int) else None
        logits = self.extend(
            tokens[0],
            rows if rows is not None else n,
            None if positions is None else positions[0],
            None if attention is None else attention[0],
        )
        if rows is not None:
            return logits[None]
        return logits[logit_rows[0].to(logits.device)][None]

    def compact_rows(self, starts: list[int], rows: list[list[int]]) -> None:
        self.compact(starts[0], rows[0])

    def keep_rows(self, indices: list[int]) -> None:
        if list(indices) != [0]:
            raise NotImplementedError("CausalRunner runs one row for now")

    @torch.inference_mode()
    def extend(
        self,
        tokens: torch.Tensor,
        num_logits: int = 1,
        positions: torch.Tensor | None = None,
        attention: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Append tokens after the cached positions; return logits of the last `num_logits` of them.

        tokens: [n] long. positions: [n] position ids (default: consecutive after the cache).
        attention: [n, n] bool, which new tokens each new token attends to, every cached position
        being visible; or [n, cached + n] bool over cached and new positions (default: causal).
        Returns [num_logits, V] logits (model dtype and device)
        for the last num_logits tokens.
        """
        n = tokens.shape[0]
        check_extend(n, num_logits)
        start = self.length
        if positions is None:
            positions = torch.arange(start, start + n, device=self.device)
        positions = positions.to(self.device)  # [n]
        kwargs = {self._cache_kw: self.cache}
        mask = self._attention_mask(attention, positions, start)
        if mask is not None:
            kwargs["attention_mask"] = mask
        if self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = num_logits
        out = self.model(
            input_ids=tokens.to(self.device)[None],
            position_ids=positions[None],
            use_cache=True,
            **kwargs,
        )
        self._positions = torch.cat([self._positions, positions])
        return out.logits[0, -num_logits:]  # [num_logits, V]

    def _attention_mask(
        self, attention: torch.Tensor | None, positions: torch.Tensor, start: int
    ) -> torch.Tensor | dict[str, torch.Tensor] | None:
        """The attention_mask argument: None lets the model build its own causal (and windowed) mask,
        right when the block is causal and every cached slot holds its own position."""
        plan = self._mask_plan
        if attention is None:
            if plan is None or not plan.windowed or self._slots_are_positions(positions, start):
                return None
            n = positions.shape[0]
            attention = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
        if plan is None:
            raise ValueError(
                f"cannot verify a token tree on this model: {self.tree_support}; use a chain strategy."
            )
        allowed = full_attention(attention, start, self.device)  # [n, start + n]
        keys = torch.cat([self._positions, positions])  # [start + n]
        return build_masks(plan, allowed, positions, keys, self.model.dtype)

    def _slots_are_positions(self, positions: torch.Tensor, start: int) -> bool:
        """True when cached and new slot i holds position i (a plain sequential decode)."""
        n = positions.shape[0]
        expected = torch.arange(start + n, device=self.device)
        return bool(torch.equal(torch.cat([self._positions, positions]), expected))

    def truncate(self, length: int) -> None:
        """Roll back to the first `length` positions."""
        truncate_cache(self.cache, length)
        self._positions = self._positions[:length]

    @torch.inference_mode()
    def compact(self, start: int, rows: list[int]) -> None:
        """Keep positions [0, start) then `rows` moved to start, start + 1, ...; drop the rest."""
        compact_cache(self.cache, start, rows)
        kept = torch.tensor(rows, dtype=torch.long, device=self.device)
        self._positions = torch.cat([self._positions[:start], self._positions[kept]])
