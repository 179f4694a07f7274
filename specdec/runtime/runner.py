"""Runs a transformers causal LM incrementally over its own KV cache (layer L3).

The runner owns one cache per model. `extend(tokens)` appends tokens at the next positions and returns
logits for the last positions; `truncate(n)` rolls the cache back to n positions. The model's own
weights and modeling code are used unchanged (no fork), so accelerate device maps keep working.
The cache may hold B rows of different lengths (`reset(batch_size)`, `extend_rows`, `compact_rows`,
`keep_rows`), the same contract as `specdec.runtime.llama_runner.LlamaRunner`.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch
from transformers import PreTrainedModel

from specdec.runtime.cache import cache_tensors, move_positions, new_cache, select_batch, truncate_cache
from specdec.runtime.masks import MaskPlan, build_masks, plan_masks


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


def check_block(
    batch_size: int,
    tokens: torch.Tensor,
    counts: list[int],
    positions: torch.Tensor | None,
    attention: torch.Tensor | None,
    logit_rows: torch.Tensor | int,
) -> None:
    """The shared argument check of `extend_rows` (host-side shapes only) for a runner holding
    `batch_size` rows: ValueError naming what is wrong."""
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [B, n], got {tuple(tokens.shape)}")
    batch, n = tokens.shape
    if batch != batch_size or len(counts) != batch:
        raise ValueError(
            f"the runner holds {batch_size} rows; got tokens for {batch} and {len(counts)} counts"
        )
    if n == 0 or any(not 0 <= c <= n for c in counts):
        raise ValueError(f"counts must be in [0, {n}] for a block of n >= 1 tokens, got {counts}")
    if positions is not None and tuple(positions.shape) != (batch, n):
        raise ValueError(f"positions must be [{batch}, {n}], got {tuple(positions.shape)}")
    if attention is not None and (
        attention.dim() != 3 or attention.shape[0] not in (1, batch) or attention.shape[1] != n
    ):
        raise ValueError(f"attention must be [{batch} or 1, {n}, n or W], got {tuple(attention.shape)}")
    if isinstance(logit_rows, int):
        if not 1 <= logit_rows <= n:
            raise ValueError(f"logit_rows must be in [1, {n}], got {logit_rows}")
    elif logit_rows.dim() != 2 or logit_rows.shape[0] != batch:
        raise ValueError(f"logit_rows must be [{batch}, r] block indices, got {tuple(logit_rows.shape)}")


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


class OneRowMethods:
    """The one-row interface (`length`, `extend`, `compact`) of a runner, over its rows interface
    (`extend_rows`, `compact_rows`): the batch size 1 case, refused while the runner holds more rows."""

    batch_size: int
    lengths: list[int]

    @property
    def length(self) -> int:
        """Positions held by the single row (batch size 1)."""
        self._require_one_row()
        return self.lengths[0]

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
        Returns [num_logits, V] logits (model dtype and device) for the last num_logits tokens.
        """
        self._require_one_row()
        n = tokens.shape[0]
        check_extend(n, num_logits)
        if attention is not None and attention.shape not in ((n, n), (n, self.lengths[0] + n)):
            raise ValueError(
                f"attention must be [{n}, {n}] or [{n}, {self.lengths[0] + n}], got {tuple(attention.shape)}"
            )
        logits = self.extend_rows(
            tokens[None],
            [n],
            None if positions is None else positions[None],
            None if attention is None else attention[None],
            num_logits,
        )
        return logits[0]  # [num_logits, V]

    def compact(self, start: int, rows: list[int]) -> None:
        """Keep positions [0, start) then `rows` moved to start, start + 1, ...; drop the rest."""
        self._require_one_row()
        self.compact_rows([start], [rows])

    def _require_one_row(self) -> None:
        if self.batch_size != 1:
            raise ValueError(f"this call is for one row; the runner holds {self.batch_size}")


class CausalRunner(OneRowMethods):
    """Incremental forward passes of one causal LM over its KV cache, through transformers' forward.

    Masks for trees (and for passes where transformers' own mask would be wrong) are built here in the
    form the model's attention implementation takes, with each layer type's window
    (`specdec.runtime.masks`). `tree_support` is None when trees verify exactly on this model, else
    the reason they cannot.

    Rows of different lengths: a DynamicCache appends every pass at one offset for all rows, so the
    runner keeps LlamaRunner's layout on it. Cache slot i of row b holds the row's logical position i
    for i < lengths[b]; the cache holds max(lengths) slots, and a shorter row's slots past its length
    are stale (masked). A pass writes the block at the shared offset; afterwards each row whose block
    did not land at its own length, or that carried padding, has its real tokens moved down to
    lengths[b], ... (n slots per row, not the whole row) and the cache is cropped to the new
    max(lengths). So physical slots are logical positions, and `compact_rows` / absolute attention
    columns need no map. On windowed models the position id of every slot is kept ([B, S] on the
    device), since a tree's slots and positions differ, and a host-side count of the leading slots
    known to hold their own position ids says when transformers' own windowed mask is right.
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
        # position ids of cache slots are needed only where a window judges them
        self._windowed = self._mask_plan is not None and self._mask_plan.windowed
        self.reset()

    # ------------------------------------------------------------------ one-row interface
    def reset(self, batch_size: int = 1) -> None:
        """Forget every row; the next passes run `batch_size` rows."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.cache = new_cache()
        self.batch_size = batch_size
        self.lengths: list[int] = [0] * batch_size
        # windowed models only: [B, S] position id of every cache slot; per row the number of leading
        # slots known to hold their own position id; the last block's real position ids on the host
        # (None: consecutive; absent row list: unknown, they were on the device)
        self._positions = torch.zeros(batch_size, 0, dtype=torch.long, device=self.device)
        self._in_place = [0] * batch_size
        self._block: _BlockRecord | None = None

    def truncate(self, length: int) -> None:
        """Roll back to the first `length` positions."""
        self._require_one_row()
        truncate_cache(self.cache, length)  # checks 0 <= length <= held
        self.lengths = [length]
        if self._windowed:
            self._positions = self._positions[:, :length]
            self._in_place = [min(self._in_place[0], length)]

    # ------------------------------------------------------------------ batched interface
    @torch.inference_mode()
    def extend_rows(
        self,
        tokens: torch.Tensor,
        counts: list[int],
        positions: torch.Tensor | None,
        attention: torch.Tensor | None,
        logit_rows: torch.Tensor | int,
    ) -> torch.Tensor:
        """Append a block of new tokens to every row; return logits of chosen block rows.

        tokens: [B, n]; row b's first counts[b] tokens are real and go to positions lengths[b], ...;
        the rest is padding (never attended by real tokens, and not kept in the row). positions:
        [B, n] position ids (default consecutive after each row's length). attention: [B or 1, n, n]
        bool among the block (every cached position of the row visible), or [B or 1, n, W] over the
        row's absolute cache columns [0, W) including the block at [lengths[b], lengths[b] + n);
        None = causal. logit_rows: [B, r] block indices, or an int r for the last r rows of the block.
        Returns [B, r, V] logits. Afterwards lengths[b] += counts[b].
        """
        check_block(self.batch_size, tokens, counts, positions, attention, logit_rows)
        return self._pass(tokens, list(counts), positions, attention, logit_rows)

    def _pass(
        self,
        tokens: torch.Tensor,
        counts: list[int],
        positions: torch.Tensor | None,
        attention: torch.Tensor | None,
        logit_rows: torch.Tensor | int,
    ) -> torch.Tensor:
        """One forward of a checked block: tokens [B, n] -> logits [B, r, V]; updates the rows."""
        batch, n = tokens.shape
        device = self.device
        starts = self.lengths
        held = max(starts)  # the cache's length
        ragged = batch > 1 and min(starts) != held
        padded = counts != [n] * batch
        lengths = [s + c for s, c in zip(starts, counts, strict=True)]
        in_place, record = (None, None)
        if self._windowed:
            in_place, record = self._note_block(starts, counts, positions)
        if positions is not None:
            positions = positions.to(device)
        elif not ragged and not padded:
            positions = torch.arange(held, held + n, device=device).expand(batch, n)
        else:  # consecutive after each row; padding repeats the row's last position (stays in range)
            last = torch.tensor([max(s + c - 1, 0) for s, c in zip(starts, counts, strict=True)])
            start = torch.tensor(starts)[:, None]
            positions = torch.minimum(start + torch.arange(n), last[:, None]).to(device)  # [B, n]
        mask = None
        in_order = not self._windowed or all(p == length for p, length in zip(in_place, lengths, strict=True))
        if attention is not None or ragged or not in_order:
            keys = torch.cat([self._positions, positions], dim=1) if self._windowed else None  # [B, S + n]
            mask = self._mask(starts, counts, held, n, attention, positions, keys)
        kwargs = {self._cache_kw: self.cache}
        if mask is not None:
            kwargs["attention_mask"] = mask
        keep = self._logits_to_keep(n, logit_rows)
        if self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = keep
        out = self.model(input_ids=tokens.to(device), position_ids=positions, use_cache=True, **kwargs)
        logits = out.logits  # [B, k, V]: the last k block rows
        if self._windowed:
            self._positions = keys if mask is not None else torch.cat([self._positions, positions], dim=1)
            self._in_place, self._block = in_place, record
        if ragged or padded:
            self._pack(starts, counts, held, n, lengths)
        self.lengths = lengths
        if isinstance(logit_rows, int):
            return logits[:, logits.shape[1] - logit_rows :]  # [B, r, V]
        index = logit_rows.to(logits.device) - (n - logits.shape[1])  # [B, r]
        return logits.gather(1, index[:, :, None].expand(-1, -1, logits.shape[-1]))  # [B, r, V]

    @staticmethod
    def _logits_to_keep(n: int, logit_rows: torch.Tensor | int) -> int:
        """How many last block rows need logits (0: all), read on the host only when it is there."""
        if isinstance(logit_rows, int):
            return logit_rows
        if logit_rows.device.type == "cpu" and logit_rows.numel():
            return n - int(logit_rows.min())
        return 0

    def _mask(
        self,
        starts: list[int],
        counts: list[int],
        held: int,
        n: int,
        attention: torch.Tensor | None,
        positions: torch.Tensor,
        keys: torch.Tensor | None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """The attention_mask argument over the cache's held + n slots, per row: tree or causal
        structure, the row's valid slots, padding seen by nobody but itself, and every window."""
        plan = self._mask_plan
        if plan is None:
            what = "verify a token tree" if attention is not None else "run rows of different lengths"
            raise ValueError(f"cannot {what} on this model: {self.tree_support}; use a chain strategy.")
        allowed = self._allowed(starts, counts, held, n, attention)  # [B, n, held + n]
        return build_masks(plan, allowed, positions, keys, self.model.dtype)

    def _allowed(
        self, starts: list[int], counts: list[int], held: int, n: int, attention: torch.Tensor | None
    ) -> torch.Tensor:
        """[B, n, held + n] bool: which cache slots each new token of each row may see."""
        device = self.device
        batch, width = len(starts), held + n
        ragged = min(starts) != held
        if attention is None:
            attention = torch.ones(n, n, dtype=torch.bool, device=device).tril()[None]  # [1, n, n]
        attention = attention.to(device)
        if attention.shape[-1] == n:  # among the block; every cached position of the row visible
            if ragged:
                length = torch.tensor(starts, device=device)[:, None]  # [B, 1]
                cached = (torch.arange(held, device=device) < length)[:, None]  # [B, 1, held]
                allowed = torch.cat([cached.expand(batch, n, held), attention.expand(batch, n, n)], dim=2)
            else:  # one mask serves every row
                cached = torch.ones(attention.shape[0], n, held, dtype=torch.bool, device=device)
                allowed = torch.cat([cached, attention], dim=2).expand(batch, n, width)
        else:  # absolute columns [0, W) of each row
            columns = attention.shape[-1]
            if columns > width:
                raise ValueError(f"attention has {columns} columns; at most {width} exist")
            full = torch.zeros(attention.shape[0], n, width, dtype=torch.bool, device=device)
            full[..., :columns] = attention
            full = full.expand(batch, n, width)
            if not ragged:  # every row's block sits at its own length: columns are slots
                allowed = full
            else:  # slot c < held is column c (valid below the row's length); slot held + j is lengths + j
                length = torch.tensor(starts, device=device)[:, None]  # [B, 1]
                slots = torch.arange(width, device=device)[None]  # [1, width]
                column = torch.where(slots < held, slots, length + slots - held)  # [B, width]
                valid = (slots >= held) | (slots < length)  # [B, width]
                allowed = full.gather(2, column[:, None].expand(batch, n, width)) & valid[:, None]
        if any(c != n for c in counts):  # padding: seen by no real token, sees (at least) itself
            real = torch.arange(n) < torch.tensor(counts)[:, None]  # [B, n]
            real = real.to(device)
            eye = torch.eye(n, dtype=torch.bool, device=device)
            block = (allowed[:, :, held:] & real[:, None, :]) | (eye & ~real[:, :, None])  # [B, n, n]
            allowed = torch.cat([allowed[:, :, :held], block], dim=2)
        return allowed

    def _note_block(
        self, starts: list[int], counts: list[int], positions: torch.Tensor | None
    ) -> tuple[list[int], _BlockRecord]:
        """Windowed models: per row the leading slots holding their own position ids once this block's
        real tokens sit at lengths[b], ..., and the host record of the block's position ids (read
        only when the caller gave them on the host; on a device they count as unknown)."""
        if positions is None:
            known: list[list[int]] | None = None  # consecutive: slot s + j holds s + j
        elif positions.device.type == "cpu":
            known = positions.tolist()
        else:
            known = []
        in_place = list(self._in_place)
        for b, start in enumerate(starts):
            if in_place[b] == start:
                end = start + counts[b]
                if known is None:
                    in_place[b] = end
                elif known:
                    row, placed = known[b], start
                    while placed < end and row[placed - start] == placed:
                        placed += 1
                    in_place[b] = placed
        return in_place, (starts, counts, known)

    def _position_of(self, b: int, slot: int) -> int | None:
        """The position id of row b's cache slot when known on the host (windowed models)."""
        if slot < self._in_place[b]:
            return slot
        if self._block is None:
            return None
        starts, counts, known = self._block
        if not starts[b] <= slot < starts[b] + counts[b]:
            return None
        if known is None:
            return slot
        return known[b][slot - starts[b]] if known else None

    def _pack(self, starts: list[int], counts: list[int], held: int, n: int, lengths: list[int]) -> None:
        """After a pass: move each row's real block tokens from slots held, ... to lengths[b], ...
        (the row's own positions) and crop the cache to max(lengths); padding slots are dropped."""
        moves = [(b, s, c) for b, (s, c) in enumerate(zip(starts, counts, strict=True)) if c and s != held]
        if moves:
            width = max(c for _, _, c in moves)
            # short rows repeat their last move (same source, same target)
            sources = [[held + min(j, c - 1) for j in range(width)] for _, _, c in moves]
            targets = [[s + min(j, c - 1) for j in range(width)] for _, s, c in moves]
            self._move([b for b, _, _ in moves], sources, targets)
        self._crop(held + n, max(lengths, default=0))

    def _move(self, batch_rows: list[int], sources: list[list[int]], targets: list[list[int]]) -> None:
        """Copy cache slots (keys, values and, windowed, position ids) within rows."""
        move_positions(cache_tensors(self.cache), batch_rows, sources, targets)
        if self._windowed:
            move_positions([self._positions[:, None, :, None]], batch_rows, sources, targets)  # [B, 1, S, 1]

    def _crop(self, held: int, keep: int) -> None:
        """Keep the first `keep` of the `held` cache slots."""
        if keep < held:
            truncate_cache(self.cache, keep)
            if self._windowed:
                self._positions = self._positions[:, :keep]

    @torch.inference_mode()
    def compact_rows(self, starts: list[int], rows: list[list[int]]) -> None:
        """Per row b: keep positions [0, starts[b]) then rows[b] moved to starts[b], starts[b] + 1, ...
        (rows[b] distinct, ascending, in [starts[b], lengths[b])); drop the rest."""
        if len(starts) != self.batch_size or len(rows) != self.batch_size:
            raise ValueError(
                f"the runner holds {self.batch_size} rows; got {len(starts)} starts and {len(rows)} rows"
            )
        for b, (start, kept) in enumerate(zip(starts, rows, strict=True)):
            held = self.lengths[b]
            if not 0 <= start <= held:
                raise ValueError(f"row {b}: start {start} is outside [0, {held}]")
            if any(r < start or r >= held for r in kept) or list(kept) != sorted(set(kept)):
                raise ValueError(
                    f"row {b}: rows {kept} must be distinct ascending positions in [{start}, {held})"
                )
        moves = [
            (b, s, list(kept))
            for b, (s, kept) in enumerate(zip(starts, rows, strict=True))
            if kept and list(kept) != list(range(s, s + len(kept)))
        ]
        if self._windowed:
            self._note_compaction(starts, rows)
        if moves:
            width = max(len(kept) for _, _, kept in moves)
            # short rows repeat their last move (same source, same target)
            sources = [[kept[min(j, len(kept) - 1)] for j in range(width)] for _, _, kept in moves]
            targets = [[s + min(j, len(kept) - 1) for j in range(width)] for _, s, kept in moves]
            self._move([b for b, _, _ in moves], sources, targets)
        lengths = [s + len(kept) for s, kept in zip(starts, rows, strict=True)]
        self._crop(max(self.lengths), max(lengths))
        self.lengths = lengths

    def _note_compaction(self, starts: list[int], rows: list[list[int]]) -> None:
        """Windowed models: which leading slots hold their own position ids after `compact_rows`."""
        in_place = []
        for b, (start, kept) in enumerate(zip(starts, rows, strict=True)):
            placed = min(self._in_place[b], start)
            if placed == start:
                for i, slot in enumerate(kept):
                    if self._position_of(b, slot) != start + i:
                        break
                    placed += 1
            in_place.append(placed)
        self._in_place = in_place
        self._block = None  # its slots moved

    @torch.inference_mode()
    def keep_rows(self, indices: list[int]) -> None:
        """Keep only the batch rows `indices` (ascending), e.g. dropping finished rows."""
        if list(indices) != sorted(set(indices)) or any(not 0 <= i < self.batch_size for i in indices):
            raise ValueError(f"indices {indices} must be distinct ascending rows of {self.batch_size}")
        if list(indices) == list(range(self.batch_size)):
            return
        lengths = [self.lengths[i] for i in indices]
        keep = max(lengths, default=0)
        if keep == 0:
            self.cache = new_cache()  # an empty cache keeps no batch size to select
        else:
            select_batch(self.cache, list(indices))
        if self._windowed:
            self._positions = self._positions[torch.tensor(indices, dtype=torch.long, device=self.device)]
            self._in_place = [self._in_place[i] for i in indices]
            if self._block is not None:
                starts, counts, known = self._block
                self._block = (
                    [starts[i] for i in indices],
                    [counts[i] for i in indices],
                    known if not known else [known[i] for i in indices],
                )
        self._crop(max(self.lengths), keep)
        self.batch_size = len(indices)
        self.lengths = lengths


#: The last pass's block on the host (windowed models): each row's length before it, its real token
#: count, and the block's position ids per row (None: consecutive; []: unknown, they were on a device).
_BlockRecord = tuple[list[int], list[int], list[list[int]] | None]
