"""Targets split by tensor parallelism over torch.distributed (layer L3 helper).

A target loaded with transformers' tensor parallelism (`tp_plan="auto"` under torchrun) holds DTensor
weights, and every forward pass is a collective: all ranks must run the same passes in the same order.
So every decision of a speculative step (acceptance, chain length, tree shape) must be the same on every
rank. Acceptance is: the logits are the same after the all-reduce, and so are the seeds. Decisions taken
from a rank's own clock are not, so a tensor-parallel generation plans with one cost profile measured on
rank 0 and sent to all (`broadcast_from_first`), and never refines it from its own step times. Only
torch.distributed's collectives are used.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
import torch.distributed as dist


def _is_dtensor(tensor: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support
        return False
    return isinstance(tensor, DTensor)


def local_rows(weight: torch.Tensor) -> int:
    """Rows of this rank's part of a weight: its local shard's for a DTensor, all of them otherwise."""
    return weight.to_local().shape[0] if _is_dtensor(weight) else weight.shape[0]


def shard_count(weight: torch.Tensor) -> int:
    """Over how many ranks a weight is split: its device mesh's size for a DTensor, else 1."""
    return weight.device_mesh.size() if _is_dtensor(weight) else 1


def is_tensor_parallel(model: torch.nn.Module) -> bool:
    """Whether `model` is split over ranks by tensor parallelism: a DTensor weight, or transformers'
    tensor-parallel size above 1 (`_tp_size`, set by `from_pretrained(..., tp_plan=...)`). A model's
    `_tp_plan` alone does not count: transformers sets it on every model whose config has a plan."""
    tp_size = getattr(model, "_tp_size", None)
    if isinstance(tp_size, int) and tp_size > 1:
        return True
    return any(_is_dtensor(p) for p in model.parameters())


def check_tensor_parallel_pair(target: torch.nn.Module, draft: torch.nn.Module | None) -> bool:
    """Whether the target is tensor-parallel; raises ValueError for a tensor-parallel target without an
    initialised process group, and for a draft that is itself split over ranks."""
    if draft is not None and is_tensor_parallel(draft):
        raise ValueError(
            "the draft must be a whole model on every rank (it is small; load it without tp_plan / "
            "device_mesh): specdec verifies with a tensor-parallel target but drafts with a replicated draft."
        )
    if not is_tensor_parallel(target):
        return False
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "the target has tensor-parallel (DTensor) weights but torch.distributed is not initialised in "
            "this process; run under torchrun (or call torch.distributed.init_process_group) on every rank "
            "before wrapping it."
        )
    _check_ranks_agree(target, draft)
    return True


def _fingerprint(model: torch.nn.Module | None) -> str | None:
    """A hash of the model's class and config (its load path and transformers version left out)."""
    if model is None:
        return None
    config = {
        k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")
    }
    text = json.dumps([type(model).__name__, config], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_ranks_agree(target: torch.nn.Module, draft: torch.nn.Module | None) -> None:
    """Every rank holds the same target and draft (class and config), else ValueError on every rank
    (one all_gather_object, so no rank is left waiting in a collective)."""
    mine = (_fingerprint(target), _fingerprint(draft))
    every: list[tuple[str | None, str | None] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    for role, index in (("target", 0), ("draft", 1)):
        differ = [rank for rank, prints in enumerate(every) if prints[index] != every[0][index]]
        if differ:
            raise ValueError(
                f"the ranks disagree on the {role} model: rank(s) {', '.join(map(str, differ))} hold another "
                f"class or config than rank 0; load the same target and draft on every rank."
            )


def broadcast_from_first(value: Any) -> Any:
    """Rank 0's `value` on every rank (one `broadcast_object_list`); `value` itself outside a process
    group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
