"""Prompt lookup: copy the continuation of the latest earlier match of the last n tokens."""

from __future__ import annotations

import torch

from specdec.core.sampling import LogitsPipeline
from specdec.core.tree import Tree
from specdec.drafters.base import Draft
from specdec.drafters.history import HostHistory


def find_continuations(
    sequence: torch.Tensor, k: int, max_ngram: int, min_ngram: int, max_candidates: int
) -> list[torch.Tensor]:
    """Up to `max_candidates` distinct continuations (each [<= k]), from the longest matching n-gram
    down: per n, the most recent match with k tokens after it, then the earliest match."""
    found: list[torch.Tensor] = []
    length = sequence.shape[0]
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        pattern = sequence[-n:]  # [n]
        windows = sequence[:-1].unfold(0, n, 1)  # [N - n, n]
        hits = (windows == pattern).all(dim=1).nonzero().flatten()  # [h]
        if not hits.numel():
            continue
        full = hits[hits + n + k <= length]
        starts = ([int(full[-1])] if full.numel() else []) + [int(hits[0])]
        for start in starts:
            candidate = sequence[start + n : start + n + k]
            if candidate.numel() and not any(torch.equal(candidate, c) for c in found):
                found.append(candidate)
            if len(found) >= max_candidates:
                return found
    return found


def find_continuation(sequence: torch.Tensor, k: int, max_ngram: int, min_ngram: int) -> torch.Tensor:
    """Tokens that followed an earlier occurrence of the sequence's last n tokens: the first of
    `find_continuations` ([<= k]; empty when nothing matches). Tries n = max_ngram down to min_ngram;
    among the matches of the longest n that matches, takes the most recent one that still has k tokens
    after it (recent text is the likeliest to repeat), else the earliest (the longest continuation)."""
    found = find_continuations(sequence, k, max_ngram, min_ngram, max_candidates=1)
    return found[0] if found else sequence.new_empty(0)


class PromptLookupDrafter:
    """Deterministic drafts from n-gram matches in the prompt and generated text (no draft model).

    Its q is one-hot on each proposed token; the exact sampling rule then accepts a token x with
    probability p(x) and, after a rejection, draws from p with x removed and renormalised.
    """

    name = "prompt-lookup"
    uses_model = False
    context_length = None

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.histories = [HostHistory()]  # per row: the search runs on host ids, no device read

    def begin(self, batch_size: int = 1) -> None:
        self.histories = [HostHistory() for _ in range(batch_size)]

    def keep(self, rows: list[int]) -> None:
        self.histories = [self.histories[b] for b in rows]

    def free_candidates(self, sequences: list[torch.Tensor], do_sample: bool) -> list[list[float]]:
        """Its copies are the draft itself, not free extras beside a model's draft."""
        return [[] for _ in sequences]

    def propose(
        self,
        sequences: list[torch.Tensor],
        max_depth: int,
        pipelines: list[LogitsPipeline],
        generator: torch.Generator | None,
        tree: Tree | None = None,
    ) -> list[Draft]:
        """Per row the longest n-gram copy (a chain; `tree` is not used: a copy has one
        continuation)."""
        drafts = []
        for history, sequence in zip(self.histories, sequences, strict=True):
            ids = history.view(sequence)  # [N] host
            copy = find_continuation(ids, max_depth, self.max_ngram, self.min_ngram)  # [<= max_depth]
            drafts.append(Draft(copy.to(sequence.device), None))
        return drafts

    def committed(self, token_ids: list[list[int]]) -> None:
        """The tokens the step committed in each row (host ids, from the engine's sync)."""
        for history, ids in zip(self.histories, token_ids, strict=True):
            history.extend(ids)

    def observe(self, committed_lengths: list[int], paths: list[tuple[int, ...]]) -> None:
        """Nothing to keep: the committed tokens arrive through `committed`."""


class NoDrafter:
    """Proposes nothing: every step is a plain target decode through specdec's runner (a baseline)."""

    name = "none"
    uses_model = False
    context_length = None

    def begin(self, batch_size: int = 1) -> None:
        """Stateless."""

    def keep(self, rows: list[int]) -> None:
        """Stateless."""

    def free_candidates(self, sequences: list[torch.Tensor], do_sample: bool) -> list[list[float]]:
        return [[] for _ in sequences]

    def propose(self, sequences, max_depth, pipelines, generator, tree=None) -> list[Draft]:
        return [Draft(s.new_empty(0)) for s in sequences]

    def observe(self, committed_lengths: list[int], paths: list[tuple[int, ...]]) -> None:
        """Stateless."""

    def committed(self, token_ids: list[list[int]]) -> None:
        """Stateless."""
