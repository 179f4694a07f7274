"""Calling a Llama layer's own modules, directly on their weights when nothing intercepts them (L3).

A module call goes through `nn.Module.__call__` (hooks, accelerate's device-map and offload hooks);
for a small draft model on a CPU that dispatch is a large part of a decode step. When no module of
the model carries an accelerate hook and no weight is on the meta device, the same computations run
as functional calls on the modules' own weight tensors (no copies): `F.linear` for projections and
the gated MLP, `F.rms_norm` for Llama's RMSNorm in float32 (8 against 13 us per call on this CPU,
torch 2.13), and rotary cos/sin read from a table the rotary module computed once, applied as
x * cos + swap_halves(x) * sin with the sign of rotate_half folded into the table's sin (one op
fewer than rotate_half; the same values). Otherwise every call goes through the module. Both give
the model's own results (float32: within 1e-6; the runner tests compare against transformers at
1e-5).

A tensor-parallel model (transformers' `tp_plan`: DTensor weights, each projection's `forward` replaced
by one that runs this rank's shard and, for row-parallel projections, all-reduces the partial sums)
calls its projections, MLPs and LM head through the modules, so that transformers' own sharded forwards
run them: column-parallel q/k/v/gate/up give this rank's heads and units, row-parallel o/down one
all-reduce each. Norms and rotary tables hold replicated plain tensors and stay direct.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

#: Rotary types whose inverse frequencies do not depend on the sequence length (a table is exact).
STATIC_ROPE_TYPES = ("default", "linear", "llama3")
#: Norm classes whose forward is weight * x / sqrt(mean(x^2) + variance_epsilon), as F.rms_norm's.
RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")


def can_call_directly(model: nn.Module) -> bool:
    """True when no module has an accelerate hook and every parameter is materialised."""
    if any(hasattr(module, "_hf_hook") for module in model.modules()):
        return False
    return all(p.device.type != "meta" for p in model.parameters())


class ModuleCalls:
    """Linear, MLP and rotary calls of one Llama-layout model."""

    def __init__(self, model: nn.Module, capacity: int, tensor_parallel: bool = False) -> None:
        self.direct = can_call_directly(model)
        self.direct_projections = self.direct and not tensor_parallel
        self.rotary = model.model.rotary_emb
        self.capacity = capacity
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None  # [capacity, D] cos, sin

    def linear(self, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, module.weight, module.bias) if self.direct_projections else module(x)

    def mlp(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """down(act(gate(x)) * up(x)) for a gated MLP; the module itself otherwise."""
        gated = all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj"))
        if not self.direct_projections or not gated:
            return module(x)
        gate = module.act_fn(self.linear(module.gate_proj, x))
        return self.linear(module.down_proj, gate * self.linear(module.up_proj, x))

    def norm(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """An RMSNorm of the model over x [..., H]."""
        if self.direct and x.dtype == torch.float32 and type(module).__name__ in RMS_NORMS:
            return F.rms_norm(x, module.weight.shape, module.weight, module.variance_epsilon)
        return module(x)

    def cos_sin(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary cos, sin [B, n, D] at positions [B, n] (hidden [B, n, H] gives dtype and device), in
        the form `rotate` takes. Positions stay below the runner's capacity (checked before)."""
        if not self.uses_table:
            return self.rotary(hidden, positions)
        self.prepare_table(hidden)
        cos, signed_sin = self._table
        return cos[positions], signed_sin[positions]

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary embedding of q [B, Hq, n, D] and k [B, Hkv, n, D] with `cos_sin`'s cos, sin."""
        if not self.uses_table:
            return apply_rotary_pos_emb(q, k, cos, sin)
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, n, D]
        # rotate_half(x) = cat(-x2, x1) = cat(x2, x1) * [-1.., +1..]; the sign sits in the table's sin
        # (a cat, not torch.roll: under torch.compile roll made tree verification 2x slower here)
        return q * cos + _swap_halves(q) * sin, k * cos + _swap_halves(k) * sin

    @property
    def uses_table(self) -> bool:
        return self.direct and getattr(self.rotary, "rope_type", None) in STATIC_ROPE_TYPES

    def prepare_table(self, hidden: torch.Tensor) -> None:
        """Compute the cos/sin table for hidden's dtype and device if it is not there yet."""
        if self._table is None or self._table[0].dtype != hidden.dtype:
            every = torch.arange(self.capacity, device=hidden.device)[None]  # [1, capacity]
            cos, sin = self.rotary(hidden, every)  # [1, capacity, D]
            half = sin.shape[-1] // 2
            signed_sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)  # [capacity, D]
            self._table = (cos[0], signed_sin)


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    """[..., D] -> the last dim's halves swapped."""
    half = x.shape[-1] // 2
    return torch.cat([x[..., half:], x[..., :half]], dim=-1)
