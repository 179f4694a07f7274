"""Runner passes of fixed shape whose inputs are all device tensors: what a CUDA graph captures (L3).

A `StaticPass` owns input buffers for one shape (B rows, n new tokens per row): tokens and positions
[B, n], each row's cached length `starts` [B] and the attention among the block [B, n, n]. Its
forward reads nothing on the host: new keys and values go to the cache at starts[b] + i through an
indexed write, and attention runs through `specdec.kernels.tree_attention` over the whole preallocated
cache with `prefix_lens = starts` (the Triton kernel bounds each row's loop by its own length on the
device; SDPA masks the rest). So the same pass can be captured once as a CUDA graph and replayed every
step, and on a CPU it runs eagerly with the same arithmetic (the tests' twin of the captured pass).

`LlamaRunner` pads a block to the next size in BUCKETS (padding rows see only themselves and nobody
sees them), so a handful of shapes cover every chain and tree of a generation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Block sizes a pass is padded to (larger blocks, e.g. prompts, run unpadded and uncaptured).
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def bucket(n: int) -> int | None:
    """The smallest bucket holding n rows, None past the largest."""
    return next((size for size in BUCKETS if size >= n), None)


class StaticPass:
    """Input buffers of one (B, n) shape and the pass over them; captured as a CUDA graph when asked.

    forward(tokens [B, n], positions [B, n], starts [B], block [B, n, n]) -> logits [B, n, V] must
    read no host values and allocate the same tensors on every call (true of `LlamaRunner`'s static
    forward). With `capture`, the first run warms up on a side stream, the second is captured, and
    later runs replay the graph; the returned logits are copied out of the graph's output buffer.
    """

    def __init__(self, forward: Forward, batch: int, n: int, device: torch.device, capture: bool) -> None:
        self._forward = forward
        self.tokens = torch.zeros(batch, n, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch, n, dtype=torch.long, device=device)
        self.starts = torch.zeros(batch, dtype=torch.long, device=device)
        self.block = torch.eye(n, dtype=torch.bool, device=device).expand(batch, n, n).contiguous()
        self.capture = capture
        self.runs = 0
        self._graph = None
        self._output: torch.Tensor | None = None

    def run(
        self, tokens: torch.Tensor, positions: torch.Tensor, starts: torch.Tensor, block: torch.Tensor
    ) -> torch.Tensor:
        """Copy the inputs in, run (or replay) the pass, return [B, n, V] logits."""
        self.tokens.copy_(tokens)
        self.positions.copy_(positions)
        self.starts.copy_(starts)
        self.block.copy_(block)
        self.runs += 1
        if not self.capture:
            return self._forward(self.tokens, self.positions, self.starts, self.block)
        if self._graph is None:
            if self.runs == 1:  # warm-up: compile kernels, allocate workspaces, outside any graph
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    out = self._forward(self.tokens, self.positions, self.starts, self.block)
                torch.cuda.current_stream().wait_stream(stream)
                return out
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._output = self._forward(self.tokens, self.positions, self.starts, self.block)
        self._graph.replay()
        return self._output.clone()
