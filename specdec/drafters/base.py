"""The drafter protocol: propose(sequence, k) -> Draft; observe(kept positions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from specdec.sampling import LogitsPipeline


@dataclass(frozen=True)
class Draft:
    """Candidate tokens for one step.

    tokens: [k] long, on the target's device. q: [k, V] float32 draft probabilities each token was
    sampled from, or None when the source is deterministic (q is one-hot on each token) or the step
    is greedy (q is not needed).
    """

    tokens: torch.Tensor
    q: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


class Drafter(Protocol):
    """A source of draft tokens. Implementations may keep state (a KV cache) between steps."""

    name: str
    #: True when proposing costs model forward passes (its time is worth measuring per token).
    uses_model: bool

    def begin(self) -> None:
        """Start a new generation (drop any state from a previous one)."""

    def propose(
        self,
        sequence: torch.Tensor,
        k: int,
        pipeline: LogitsPipeline,
        generator: torch.Generator | None,
    ) -> Draft:
        """Up to k candidate tokens following `sequence` ([1, N] committed tokens)."""

    def observe(self, valid_length: int) -> None:
        """After commit: the first `valid_length` positions of the committed sequence equal what the
        drafter saw; anything it holds past that is stale."""
