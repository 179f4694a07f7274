"""Where a step's time goes, on the device's own timeline (layer L5 helper)."""

from __future__ import annotations

import time

import torch


class StepClock:
    """Marks points within one speculative step and reports the seconds between them.

    On CUDA each mark records an event on the device's current stream: the times are the GPU's, not
    the host's (which only enqueues work), and reading them after the step's host sync costs no
    further sync, as that sync already waited for every event. Elsewhere work runs as it is called
    and the host clock measures it.
    """

    def __init__(self, device: torch.device, points: int = 3) -> None:
        self.device = torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        self._host = [0.0] * points
        self._events = [torch.cuda.Event(enable_timing=True) for _ in range(points)] if self.on_cuda else []

    def mark(self, point: int) -> None:
        """Record point `point` (0-based) now, in stream order."""
        if self.on_cuda:
            self._events[point].record(torch.cuda.current_stream(self.device))
        else:
            self._host[point] = time.perf_counter()

    def seconds(self, start: int, end: int) -> float:
        """Seconds from mark `start` to mark `end`; on CUDA only after both events completed (after
        the step's host sync)."""
        if self.on_cuda:
            return self._events[start].elapsed_time(self._events[end]) / 1000.0
        return self._host[end] - self._host[start]
