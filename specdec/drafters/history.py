"""The committed sequence's token ids on the host, for drafters that search it (n-gram lookup)."""

from __future__ import annotations

import torch


class HostHistory:
    """Token ids of the committed sequence in a host buffer, kept in step with the engine.

    The engine hands over each step's committed ids (`extend`), which it has already read in its one
    host sync; `view` reads from the device only ids it has not been given (the prompt, once per
    generation). A history that ran ahead of the sequence (a new generation) starts over. Drafts
    only ever change speed, never output (the target verifies every token), so a stale history
    could cost acceptance but not exactness.
    """

    def __init__(self) -> None:
        self._ids = torch.empty(256, dtype=torch.long)  # [capacity] host buffer
        self._length = 0

    def reset(self) -> None:
        self._length = 0

    def extend(self, ids: list[int]) -> None:
        """Append committed ids (host ints)."""
        end = self._length + len(ids)
        if end > self._ids.shape[0]:
            grown = torch.empty(max(end, 2 * self._ids.shape[0]), dtype=torch.long)
            grown[: self._length] = self._ids[: self._length]
            self._ids = grown
        self._ids[self._length : end] = torch.tensor(ids, dtype=torch.long)
        self._length = end

    def view(self, sequence: torch.Tensor) -> torch.Tensor:
        """[N] host ids of `sequence` ([1, N] on any device)."""
        n = sequence.shape[1]
        if self._length > n:
            self.reset()
        if self._length < n:
            self.extend(sequence[0, self._length :].tolist())
        return self._ids[:n]
