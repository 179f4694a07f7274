"""Which runner runs a model: specdec's own Llama-layout runner or transformers' forward (layer L3)."""

from __future__ import annotations

from transformers import PreTrainedModel

from specdec.runtime.distributed import is_tensor_parallel
from specdec.runtime.llama_runner import SUPPORTED_MODEL_TYPES, LlamaRunner, supports_llama_runner
from specdec.runtime.masks import MaskPlan, plan_masks
from specdec.runtime.runner import CausalRunner

RUNTIMES = ("auto", "specdec", "compiled", "transformers")


def runs_on_llama_runner(model: PreTrainedModel, runtime: str) -> bool:
    """Whether `make_runner(model, runtime)` builds specdec's own runner (else transformers' forward)."""
    return runtime != "transformers" and supports_llama_runner(model)


def make_runner(
    model: PreTrainedModel, runtime: str = "auto", cuda_graphs: bool = False
) -> CausalRunner | LlamaRunner:
    """The runner for a model: specdec's own for Llama-layout models ("auto" or "specdec"; "compiled"
    also runs its passes through torch.compile), transformers' forward with a DynamicCache otherwise
    or when runtime="transformers". A tensor-parallel target (DTensor weights) runs on specdec's runner
    too, each rank over its own heads' cache (not "compiled"). cuda_graphs:
    fixed-shape passes captured as CUDA graphs (specdec's runner only)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r} is not supported; choose one of {', '.join(RUNTIMES)}.")
    if runtime == "compiled" and is_tensor_parallel(model):
        raise ValueError(
            'runtime="compiled" does not take tensor-parallel targets (DTensor weights; their passes are '
            'collectives): use runtime="auto" or "specdec" (specdec\'s runner) or "transformers".'
        )
    if runtime in ("specdec", "compiled") and not supports_llama_runner(model):
        raise ValueError(
            f'runtime="{runtime}" needs a Llama-layout model ({", ".join(SUPPORTED_MODEL_TYPES)}, no '
            f'sliding window); {type(model).__name__} is not one: use runtime="auto" or "transformers".'
        )
    if runs_on_llama_runner(model, runtime):
        return LlamaRunner(model, cuda_graphs=cuda_graphs, compiled=runtime == "compiled")
    if cuda_graphs:
        raise ValueError(
            f"cuda_graphs=True needs specdec's runtime (a Llama-layout model, runtime auto or specdec); "
            f"{type(model).__name__} with runtime={runtime!r} runs without graphs: pass cuda_graphs=False."
        )
    return CausalRunner(model)


def tree_support(model: PreTrainedModel, runtime: str = "auto") -> str | None:
    """None when token trees verify exactly on the runner `make_runner(model, runtime)` builds, else a
    one-line reason (an attention implementation that takes no tree mask, an unknown layer type)."""
    if runs_on_llama_runner(model, runtime):
        return None
    plan = plan_masks(model)
    return None if isinstance(plan, MaskPlan) else plan
