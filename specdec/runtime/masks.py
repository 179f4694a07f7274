"""Attention masks handed to transformers' forward: a tree's structure combined with every layer's own
window, in the form each attention implementation takes (layer L3).

transformers passes a prepared 4D mask through unchanged to the attention function, and the functions
disagree on its meaning: eager and flex attention ADD it to the scores (a boolean "allowed" would add
+1/+0, never -inf), SDPA takes a boolean. Sliding-window layers build their window into the mask, so
a tree mask must carry the window too, per layer type (Gemma-2/3 and Qwen2/3 mix windowed and full
layers and accept one mask per layer type; Mistral and Phi-3 window every layer and take one mask).

Windows are judged on position ids, not cache slots: a tree node at depth d sits at position P + d
whatever its slot, and transformers' rule "key visible when q - k < window" on the positions a
sequential decode would have used is what makes the tree pass equal to that decode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

#: Attention implementations that add the mask to the scores (0 allowed, dtype minimum refused).
ADDITIVE = ("eager", "flex_attention")
#: Attention implementations that take a boolean mask (True: attend).
BOOLEAN = ("sdpa",)
#: Layer types whose mask this module builds exactly.
KNOWN_LAYER_TYPES = ("full_attention", "sliding_attention")
#: Families without `layer_types` that apply `config.sliding_window` to every layer.
WINDOW_ON_EVERY_LAYER = ("mistral", "mixtral", "phi3", "phimoe", "starcoder2")


@dataclass(frozen=True)
class MaskPlan:
    """How one model's masks are built: `form` "boolean" or "additive"; `windows` maps each layer
    type the model uses to its window (None: full attention); `per_layer_type`: one mask per type is
    passed as a dict (the model picks each layer's), else one mask serves every layer."""

    form: str
    windows: dict[str, int | None]
    per_layer_type: bool

    @property
    def windowed(self) -> bool:
        return any(w is not None for w in self.windows.values())


def attention_implementation(model: PreTrainedModel) -> str:
    """The attention implementation transformers runs for the model ("eager", "sdpa", ...)."""
    config = model.config.get_text_config()
    return str(
        getattr(config, "_attn_implementation", None) or getattr(model.config, "_attn_implementation", "")
    )


def plan_masks(model: PreTrainedModel) -> MaskPlan | str:
    """The model's MaskPlan, or a one-line reason why a tree cannot be verified exactly on it."""
    config = model.config.get_text_config()
    kind = model.config.model_type
    implementation = attention_implementation(model)
    if implementation in ADDITIVE:
        form = "additive"
    elif implementation in BOOLEAN:
        form = "boolean"
    else:
        return (
            f"{kind} runs attention_implementation={implementation!r}, which takes no custom tree mask "
            '(use "sdpa" or "eager" for trees)'
        )
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        unknown = sorted(set(layer_types) - set(KNOWN_LAYER_TYPES))
        if unknown:
            return f"{kind} has layer types {unknown} that specdec cannot combine with a tree mask"
        if "sliding_attention" in layer_types and not window:
            return f"{kind} has sliding-attention layers but no sliding_window in its config"
        windows = {t: (window if t == "sliding_attention" else None) for t in sorted(set(layer_types))}
        return MaskPlan(form, windows, per_layer_type=len(windows) > 1)
    if window is not None and kind not in WINDOW_ON_EVERY_LAYER:
        return (
            f"{kind} has sliding_window={window} and no layer_types; specdec does not know which layers "
            "it windows"
        )
    return MaskPlan(form, {"full_attention": window}, per_layer_type=False)


def build_masks(
    plan: MaskPlan,
    allowed: torch.Tensor,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The attention_mask argument for one pass over B rows.

    allowed: [B, n, L] bool, which of the L cache slots (cached, then the n new ones) each new token of
    each row may see (tree structure, valid slots). query_positions: [B, n] and key_positions: [B, L]
    position ids; key_positions may be None when no layer is windowed. One row may also come without
    its batch dimension ([n, L], [n], [L]). Returns [B, 1, n, L] (bool, or `dtype` with 0 / dtype
    minimum) or a dict of them keyed by layer type.
    """
    if allowed.dim() == 2:  # one row: [n, L]
        allowed, query_positions = allowed[None], query_positions[None]
        key_positions = None if key_positions is None else key_positions[None]
    masks: dict[str, torch.Tensor] = {}
    for layer_type, window in plan.windows.items():
        visible = allowed
        if window is not None:
            if key_positions is None:
                raise ValueError(f"{layer_type} layers have a window of {window}: key positions are needed")
            distance = query_positions[:, :, None] - key_positions[:, None, :]  # [B, n, L]
            visible = visible & (distance < window)
        if plan.form == "additive":
            additive = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
            mask = additive.masked_fill(~visible, torch.finfo(dtype).min)
        else:
            mask = visible
        masks[layer_type] = mask[:, None]  # [B, 1, n, L]
    if plan.per_layer_type:
        return masks
    return next(iter(masks.values()))
