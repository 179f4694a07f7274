"""`generate()`'s loop (layer L6): where a row stops, prompts without their padding, and the steps.

`StopRules` decides where a row stops: transformers' stopping criteria, built from the generation
config and merged with the user's as transformers merges them, plus the target's context length.

`generate_rows` runs the engine over B rows (B = 1: one prompt) until each stops: each row is
generated as if alone (its own prompt without padding in the caches, its own logits processors, which
see the row with its padding as transformers' do, its own stop); finished rows leave the batch. The
output is padded like transformers': prompt as given (left padding kept), new tokens, then
`pad_token_id` after a row stops.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, StoppingCriteriaList
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, MaxTimeCriteria

from specdec.core.engine import Row, SpeculativeEngine
from specdec.core.sampling import merge_like_transformers
from specdec.runtime.distributed import broadcast_from_first


@dataclass
class StopRules:
    """Where a row stops: transformers' stopping criteria, read where they can be read on the host.

    max_new_tokens: tokens a row may add (the merged `MaxLengthCriteria`, at least 1: transformers
    always generates one token); eos_ids: the merged `EosTokenCriteria` ids; timers: the merged
    `MaxTimeCriteria` (checked once per step); others: every other criterion, called on the padded
    row after each token; context: the target's context length (None: unknown), where a row stops with
    a warning (specdec's caches end there; transformers would go on).
    """

    max_new_tokens: int
    eos_ids: list[int]
    timers: list[MaxTimeCriteria] = field(default_factory=list)
    others: StoppingCriteriaList = field(default_factory=StoppingCriteriaList)
    context: int | None = None
    #: Ranks of a tensor-parallel target: every rank stops where rank 0's clock says (each rank's own
    #: clock would stop them at different steps, and the next collective would hang).
    lockstep: bool = False

    def budget(self, length: int, generated: int) -> int:
        """Tokens a row of `length` committed tokens (no padding) that has `generated` new ones may
        still add; 0 when it stands at the context's end."""
        budget = self.max_new_tokens - generated
        if self.context is not None:
            budget = min(budget, self.context - length)
        return max(budget, 0)

    def cut(
        self, prefix: torch.Tensor, sequence: torch.Tensor, tokens: torch.Tensor, token_ids: list[int]
    ) -> tuple[torch.Tensor, bool]:
        """Tokens up to and including the first that stops the row (EOS, another criterion); whether
        it stopped. prefix: [P] the row's padding; sequence: [N] committed tokens; tokens: [m] new
        ones (token_ids: the same on the host)."""
        for i, token in enumerate(token_ids):
            if token in self.eos_ids:
                return tokens[: i + 1], True
            if len(self.others):
                row = torch.cat([prefix.to(sequence.device), sequence, tokens[: i + 1]])[None]  # [1, n]
                if bool(self.others(row, None).any()):
                    return tokens[: i + 1], True
        return tokens, False

    def timed_out(self) -> bool:
        """Whether a `MaxTimeCriteria` (max_time=) has run out (read as its __call__ reads it; rank 0's
        reading on every rank when `lockstep`)."""
        if not self.timers:
            return False
        out = any(time.time() - timer.initial_timestamp > timer.max_time for timer in self.timers)
        return bool(broadcast_from_first(out)) if self.lockstep else out

    def warn_context(self, generated: list[int], rows: list[int] | None = None, stacklevel: int = 2) -> None:
        """The one warning of a generation in which rows stopped at the target's context.

        generated: new tokens of each such row; rows: their indices in the batch (None: one prompt);
        stacklevel: as warnings.warn's, counted from the caller of this method."""
        which = "" if rows is None else f" (row{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows))})"
        counts = ", ".join(map(str, generated))
        warnings.warn(
            f"generation{which} stopped at the target's context length ({self.context} positions) after "
            f"{counts} new tokens, short of the {self.max_new_tokens} allowed: specdec's caches end "
            "there (transformers' own generate() would go on past the model's max_position_embeddings). "
            "Shorten the prompt or lower max_new_tokens to stay inside the context.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


def stop_rules(
    gen_config: GenerationConfig,
    max_length: int,
    input_length: int,
    eos_ids: list[int],
    user: StoppingCriteriaList | None,
    max_position_embeddings: int | None,
    context: int | None,
) -> StopRules:
    """The criteria transformers' generate() would stop with, merged with the user's the same way
    (a user `MaxLengthCriteria` / `EosTokenCriteria` / `MaxTimeCriteria` replaces the built one).

    max_length: the absolute length limit (prompt as given, padding included, + new tokens);
    input_length: the prompt's length as given."""
    defaults = StoppingCriteriaList([MaxLengthCriteria(max_length, max_position_embeddings)])
    if gen_config.max_time is not None:
        defaults.append(MaxTimeCriteria(gen_config.max_time))
    if eos_ids:
        defaults.append(EosTokenCriteria(eos_ids))
    merged = merge_like_transformers(defaults, user)
    lengths = [c.max_length for c in merged if type(c) is MaxLengthCriteria]
    eos: list[int] = []
    for criterion in merged:
        if type(criterion) is EosTokenCriteria:
            eos += [int(t) for t in torch.as_tensor(criterion.eos_token_id).flatten().tolist()]
    others = StoppingCriteriaList(
        c for c in merged if type(c) not in (MaxLengthCriteria, EosTokenCriteria, MaxTimeCriteria)
    )
    return StopRules(
        max_new_tokens=max(1, min(lengths) - input_length),
        eos_ids=eos,
        timers=[c for c in merged if type(c) is MaxTimeCriteria],
        others=others,
        context=context,
    )


def batch_prompts(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each row's prompt without its left padding ([L_b] each) and that padding ([P_b] each). Right
    padding, holes and rows of padding only are refused."""
    if attention_mask is None:
        return list(input_ids), [row[:0] for row in input_ids]
    prompts, prefixes = [], []
    one = input_ids.shape[0] == 1
    for b, (ids, mask) in enumerate(zip(input_ids, attention_mask.bool(), strict=True)):
        if not mask.any():
            if one:
                raise ValueError("attention_mask masks every prompt token; nothing to condition on.")
            raise ValueError(f"attention_mask row {b} masks every token; give each row at least one token.")
        first = int(mask.nonzero()[0])
        if not mask[first:].all():
            which = "attention_mask" if one else f"attention_mask row {b}"
            raise ValueError(
                f"{which} has padding after its first real token (right padding or holes); use left "
                "padding (tokenizer.padding_side = 'left')."
            )
        prompts.append(ids[first:])
        prefixes.append(ids[:first])
    return prompts, prefixes


def check_batch_options(gen_config: GenerationConfig, streamer) -> None:
    """Refuse what a batch of more than one row cannot do, naming the option."""
    if streamer is not None:
        raise ValueError("a streamer needs batch size 1; call generate() once per prompt to stream.")
    if gen_config.output_scores or gen_config.output_logits:
        raise ValueError(
            "output_scores / output_logits are supported for batch size 1 only (rows commit different "
            "numbers of tokens per step); call generate() once per prompt for them."
        )


def pad_id(gen_config: GenerationConfig, eos_ids: list[int]) -> int | None:
    """The id after a finished row: pad_token_id, else the first EOS id (as transformers does)."""
    if gen_config.pad_token_id is not None:
        return int(gen_config.pad_token_id)
    return eos_ids[0] if eos_ids else None


@dataclass
class Generated:
    """What `generate_rows` made: per row its new tokens ([m_b]), and (when asked) the processed
    scores and raw logits of each new token ([1, V] each); rows that stopped at the context."""

    tokens: list[torch.Tensor]
    scores: list[list[torch.Tensor]]
    logits: list[list[torch.Tensor]]
    at_context: list[int]


def generate_rows(
    engine: SpeculativeEngine,
    rows: list[Row],
    prefixes: list[torch.Tensor],
    rules: StopRules,
    streamer=None,
    want_scores: bool = False,
    want_logits: bool = False,
) -> Generated:
    """New tokens of every row, each row as the target alone would generate it.

    rows: each row's prompt (no padding) and pipeline; prefixes: each row's padding ([P_b]), which
    stopping criteria see; streamer: gets each step's tokens (one row only)."""
    batch = len(rows)
    generated: list[list[torch.Tensor]] = [[] for _ in rows]
    scores: list[list[torch.Tensor]] = [[] for _ in rows]
    logits: list[list[torch.Tensor]] = [[] for _ in rows]
    counts = [0] * batch
    at_context: list[int] = []
    engine.begin(batch)
    try:
        active = list(range(batch))  # the original index of each engine row
        room = [p for p, i in enumerate(active) if rules.budget(rows[i].sequence.shape[1], 0) > 0]
        at_context += [i for i in active if rules.budget(rows[i].sequence.shape[1], 0) == 0]
        if len(room) < len(active):
            active = [active[p] for p in room]
            if active:
                engine.keep(room)
        while active:
            budgets = [rules.budget(rows[i].sequence.shape[1], counts[i]) for i in active]
            results = engine.step([rows[i] for i in active], budgets)
            keep = []
            for position, (i, result) in enumerate(zip(active, results, strict=True)):
                budget = budgets[position]
                row = rows[i]
                tokens, finished = rules.cut(
                    prefixes[i], row.sequence[0], result.tokens[:budget], result.token_ids[:budget]
                )
                row.sequence = torch.cat([row.sequence, tokens[None]], dim=1)
                generated[i].append(tokens)
                counts[i] += tokens.shape[0]
                if want_scores:
                    scores[i].extend(result.scores[: tokens.shape[0]].split(1))
                if want_logits:
                    logits[i].extend(result.logits[: tokens.shape[0]].split(1))
                if streamer is not None:
                    streamer.put(tokens.cpu())
                if finished or counts[i] >= rules.max_new_tokens:
                    continue
                if rules.budget(row.sequence.shape[1], counts[i]) == 0:
                    at_context.append(i)
                    continue
                keep.append(position)
            if rules.timed_out():
                break
            if len(keep) < len(active):
                active = [active[p] for p in keep]
                if active:
                    engine.keep(keep)
    finally:
        engine.begin(1)  # leave no half-used cache behind, whether the loop ended or raised
    new_tokens = [
        torch.cat(parts) if parts else rows[i].sequence.new_empty(0) for i, parts in enumerate(generated)
    ]
    return Generated(new_tokens, scores, logits, sorted(at_context))


def pad_outputs(input_ids: torch.Tensor, new_tokens: list[torch.Tensor], pad: int | None) -> torch.Tensor:
    """[B, L + max new] ids: each row's input as given, its new tokens, then `pad`."""
    longest = max(t.shape[0] for t in new_tokens)
    if pad is None and any(t.shape[0] != longest for t in new_tokens):
        raise ValueError("rows stopped at different lengths and there is no pad_token_id or EOS to pad with.")
    out = input_ids.new_full((input_ids.shape[0], longest), 0 if pad is None else pad)
    for b, tokens in enumerate(new_tokens):
        out[b, : tokens.shape[0]] = tokens.to(out.device)
    return torch.cat([input_ids, out], dim=1)
