"""Logits -> probabilities through the generation's logits processors; sampling; residuals (layer L1).

Every distribution that speculative decoding compares (target `p`, draft `q`) goes through the same
processors that transformers' own `generate()` would apply at that position, with that position's own
preceding tokens (a left-padded row's padding included, as transformers' processors see it), and is
compared in float32.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import TypeVar

import torch
from transformers import GenerationConfig, LogitsProcessorList
from transformers.generation.logits_process import (
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

_List = TypeVar("_List", bound=list)


def merge_like_transformers(defaults: _List, custom: Sequence | None) -> _List:
    """transformers' rule for user processors / stopping criteria (`_merge_criteria_processor_list`,
    5.x): a user entry of exactly the type of one built from the generation config takes that one's
    place; the other user entries follow the built ones, in the user's order."""
    if not custom:
        return defaults
    merged = type(defaults)()
    for default in defaults:
        replacement = next((c for c in custom if type(c) is type(default)), None)
        merged.append(default if replacement is None else replacement)
    for entry in custom:
        if entry not in merged:
            merged.append(entry)
    return merged


@functools.cache
def penalty_skips_padding() -> bool:
    """Whether this transformers' generate() leaves left padding out of the repetition penalty.

    transformers 5.24 passes every row's padding length to `RepetitionPenaltyLogitsProcessor`
    (`prompt_ignore_length`, a per-row tensor); 5.17 does not (padding tokens are penalized). The
    per-row form of the argument arrived with that change, so its presence tells them apart."""
    try:
        RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=torch.zeros(1, dtype=torch.long))
    except (TypeError, ValueError):
        return False
    return True


class LogitsPipeline:
    """Applies transformers' logits processors (and, when sampling, warpers) per position.

    The order follows transformers' `generate()`: processors (repetition penalty, n-gram ban, bad
    words, minimum length, minimum new tokens, suppressed tokens), the user's processors merged in by
    `merge_like_transformers` (one of a built type replaces the built one), then warpers
    (temperature, top-k, top-p, min-p, typical-p) only when sampling.

    prompt_length: the prompt's length as given, left padding included (`min_new_tokens` counts
    from it, as in transformers). prefix: [P] ids that precede every context passed to `scores`: a
    left-padded row's padding, which specdec's caches never hold but transformers' processors see
    (n-gram bans, lengths, the repetition penalty where this transformers counts padding).
    """

    def __init__(
        self,
        config: GenerationConfig,
        prompt_length: int,
        eos_token_ids: list[int],
        user_processors: LogitsProcessorList | None = None,
        device: torch.device | str = "cpu",
        prefix: torch.Tensor | None = None,
    ) -> None:
        self.do_sample = bool(config.do_sample)
        self.prefix = None if prefix is None or prefix.numel() == 0 else prefix.reshape(1, -1).to(device)
        processors = LogitsProcessorList()
        if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
            ignore = None
            if self.prefix is not None and penalty_skips_padding():
                ignore = torch.tensor([self.prefix.shape[1]], device=device)  # [1]: this row's padding
            processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty, ignore))
        if config.no_repeat_ngram_size is not None and config.no_repeat_ngram_size > 0:
            processors.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
        if config.bad_words_ids is not None:
            processors.append(NoBadWordsLogitsProcessor(config.bad_words_ids, eos_token_ids or None))
        if eos_token_ids and config.min_length is not None and config.min_length > 0:
            processors.append(MinLengthLogitsProcessor(config.min_length, eos_token_ids, device=device))
        if eos_token_ids and config.min_new_tokens is not None and config.min_new_tokens > 0:
            processors.append(
                MinNewTokensLengthLogitsProcessor(
                    prompt_length, config.min_new_tokens, eos_token_ids, device=device
                )
            )
        if config.suppress_tokens is not None:
            processors.append(SuppressTokensLogitsProcessor(config.suppress_tokens, device=device))
        processors = merge_like_transformers(processors, user_processors)
        if self.do_sample:
            if config.temperature is not None and config.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(config.temperature))
            if config.top_k is not None and config.top_k != 0:
                processors.append(TopKLogitsWarper(top_k=config.top_k))
            if config.top_p is not None and config.top_p < 1.0:
                processors.append(TopPLogitsWarper(top_p=config.top_p))
            if config.min_p is not None:
                processors.append(MinPLogitsWarper(min_p=config.min_p))
            if config.typical_p is not None and config.typical_p < 1.0:
                processors.append(TypicalLogitsWarper(mass=config.typical_p))
        self.processors = processors
        # LogitsProcessorList inspects every processor's signature on every call; a tree step calls
        # it once per node. Processors that take only (input_ids, scores) are called directly (the
        # same calls); one that wants more goes through the list, which raises its own error.
        self._direct = all(_takes_two_arguments(p) for p in processors)

    def scores(self, context: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Processed scores of one position.

        context: [1, n] the tokens before this position (after `prefix`); logits: [1, V] raw logits
        -> [1, V] float32.
        """
        scores = logits.float()
        if self.processors:
            if self.prefix is not None:
                context = torch.cat([self.prefix.to(context.device), context], dim=1)  # [1, P + n]
            if self._direct:
                for processor in self.processors:
                    scores = processor(context, scores)
            else:
                scores = self.processors(context, scores)
        return scores

    def scores_tree(
        self, context: torch.Tensor, tokens: torch.Tensor, tree, logits: torch.Tensor
    ) -> torch.Tensor:
        """Processed scores at the root and at every node of a token tree, each seeing its own path.

        context: [1, n] committed tokens; tokens: [T] node tokens; tree: specdec.core.tree.Tree;
        logits: [T + 1, V], row 0 after the context, row i + 1 after node i -> [T + 1, V] float32.
        """
        if not self.processors:
            return logits.float()
        rows = [self.scores(context, logits[0:1])]
        for node in range(len(tree)):
            path = tokens[tree.path_to(node)].view(1, -1).to(context.device)
            rows.append(self.scores(torch.cat([context, path], dim=1), logits[node + 1 : node + 2]))
        return torch.cat(rows, dim=0)


def _takes_two_arguments(processor) -> bool:
    """Whether `processor(input_ids, scores)` is how LogitsProcessorList would call it."""
    try:
        return len(inspect.signature(processor.__call__).parameters) <= 2
    except (TypeError, ValueError):  # no signature to read: let the list decide
        return False


def probabilities(scores: torch.Tensor) -> torch.Tensor:
    """Softmax in float32 over the last dim; -inf scores get probability 0."""
    return torch.softmax(scores.float(), dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row. probs: [..., V] -> [...] long."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def sample_without_replacement(
    log_q: torch.Tensor, count: int, generator: torch.Generator | None
) -> torch.Tensor:
    """`count` draws without replacement from softmax(log_q) per row (Gumbel-top-k), most likely
    first. log_q: [..., V] log-probabilities -> [..., count] long."""
    u = torch.rand(log_q.shape, generator=generator, device=log_q.device).clamp_min(1e-20)
    return torch.topk(log_q - torch.log(-torch.log(u)), count, dim=-1).indices


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(p - q, 0)) over the last dim.

    Where p == q up to rounding the residual has no mass; rejection then has probability zero, so
    any distribution is correct there and p is returned to keep the result well defined.
    """
    r = (p - q).clamp_min(0.0)
    mass = r.sum(dim=-1, keepdim=True)
    return torch.where(mass > 0, r / mass.clamp_min(torch.finfo(r.dtype).tiny), p)
