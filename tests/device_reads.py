"""Counting host reads of device values on a CPU-only machine (the CPU twin of CUDA's sync check).

On CUDA, reading a value computed on the GPU (`.tolist()`, `.item()`, `bool(t)`, `int(t)`, indexing
with a tensor, `nonzero`) makes the host wait for the GPU. On CPU nothing waits, so the reads are
found by taint: a tensor computed from model weights or buffers, from a random draw, or from another
tainted tensor is a device value, and every read of one is counted.
"""

from __future__ import annotations

import collections
import traceback

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

#: Tensor methods and functions that hand a device value to the host.
READS = frozenset(
    {"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy"}
)
#: Functions whose output is a device value although their inputs are not (random draws).
RANDOM = frozenset({"rand", "randn", "randint", "multinomial", "bernoulli", "rand_like", "randn_like"})
_TAG = "_specdec_device_value"


def mark_device_values(*modules: torch.nn.Module) -> None:
    """Taint the weights and buffers of `modules` (everything computed from them is a device value)."""
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            setattr(tensor, _TAG, True)


class DeviceReads(TorchFunctionMode):
    """Within the mode: `count` host reads of device values, `where` them by specdec call site."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.where: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        inputs = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
        tainted = name in RANDOM or any(getattr(x, _TAG, False) for x in inputs)
        if name in READS and tainted:
            self.count += 1
            self.where[_call_site()] += 1
        out = func(*args, **kwargs)
        if tainted:
            for x in tree_flatten(out)[0]:
                if isinstance(x, torch.Tensor):
                    try:
                        setattr(x, _TAG, True)
                    except (AttributeError, RuntimeError):
                        pass
        return out


def _call_site() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/specdec/" in frame.filename and "/tests/" not in frame.filename:
            return f"{frame.filename.split('/specdec/')[-1]}:{frame.lineno}"
    return "?"
