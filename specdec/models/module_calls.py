"""Calling a Llama layer's own modules, directly on their weights when nothing intercepts them (L3).

A module call goes through `nn.Module.__call__` (hooks, accelerate's device-map and offload hooks);
for a small draft model on a CPU that dispatch is a large part of a decode step. When no module of
the model carries an accelerate hook and no weight is on the meta device, the same computations run
as functional calls on the modules' own weight tensors (no copies): `F.linear` for projections and
the gated MLP, and rotary cos/sin read from a table the rotary module computed once. (RMSNorm stays a
module call: on this CPU `F.rms_norm` measured slower than Llama's own five small ops.)
Otherwise every call goes through the module. Both give the model's own results (float32: within
1e-6; the runner tests compare against transformers at 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Rotary types whose inverse frequencies do not depend on the sequence length (a table is exact).
STATIC_ROPE_TYPES = ("default", "linear", "llama3")


def can_call_directly(model: nn.Module) -> bool:
    """True when no module has an accelerate hook and every parameter is materialised."""
    if any(hasattr(module, "_hf_hook") for module in model.modules()):
        return False
    return all(p.device.type != "meta" for p in model.parameters())


class ModuleCalls:
    """Linear, MLP and rotary calls of one Llama-layout model."""

    def __init__(self, model: nn.Module, capacity: int) -> None:
        self.direct = can_call_directly(model)
        self.rotary = model.model.rotary_emb
        self.capacity = capacity
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None  # [capacity, D] cos, sin

    def linear(self, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, module.weight, module.bias) if self.direct else module(x)

    def mlp(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """down(act(gate(x)) * up(x)) for a gated MLP; the module itself otherwise."""
        if not self.direct or not all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj")):
            return module(x)
        gate = module.act_fn(self.linear(module.gate_proj, x))
        return self.linear(module.down_proj, gate * self.linear(module.up_proj, x))

    def cos_sin(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary cos, sin [B, n, D] at positions [B, n] (hidden [B, n, H] gives dtype and device).
        Positions stay below the runner's capacity (the cache bound is checked before)."""
        if not self.uses_table:
            return self.rotary(hidden, positions)
        self.prepare_table(hidden)
        cos, sin = self._table
        return cos[positions], sin[positions]

    @property
    def uses_table(self) -> bool:
        return self.direct and getattr(self.rotary, "rope_type", None) in STATIC_ROPE_TYPES

    def prepare_table(self, hidden: torch.Tensor) -> None:
        """Compute the cos/sin table for hidden's dtype and device if it is not there yet."""
        if self._table is None or self._table[0].dtype != hidden.dtype:
            every = torch.arange(self.capacity, device=hidden.device)[None]  # [1, capacity]
            cos, sin = self.rotary(hidden, every)  # [1, capacity, D]
            self._table = (cos[0], sin[0])
