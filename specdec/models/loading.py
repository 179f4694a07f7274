"""Loading and checking target/draft models and their tokenizers (layer L3)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationMixin, PreTrainedModel

from specdec.models.runner import vocab_size
from specdec.vocab import VocabInfo, tokenizer_tokens


def load_causal_lm(
    model: PreTrainedModel | str,
    role: str,
    dtype: torch.dtype | str | None = None,
    device_map: Any = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    **from_pretrained_kwargs: Any,
) -> PreTrainedModel:
    """The model itself, or `AutoModelForCausalLM.from_pretrained(model, ...)` for a hub id / path.

    role: "target" or "draft", named in errors. dtype and device_map pass through (accelerate's
    big-model loading and offloading). Only safetensors weights are loaded unless allow_pickle=True
    (pickle checkpoints can run code when loaded); remote code only with trust_remote_code=True.
    """
    if isinstance(model, str):
        kwargs = dict(from_pretrained_kwargs)
        kwargs.setdefault("use_safetensors", None if allow_pickle else True)
        if dtype is not None:
            kwargs["dtype"] = dtype
        if device_map is not None:
            kwargs["device_map"] = device_map
        name = model
        try:
            model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=trust_remote_code, **kwargs)
        except OSError as error:
            if allow_pickle or "safetensors" not in str(error).lower():
                raise
            raise ValueError(
                f"the {role} at {name!r} has no safetensors weights; pickle checkpoints can run code when "
                "loaded, so specdec loads them only with wrap(..., allow_pickle=True)."
            ) from error
        model.eval()
    check_causal_lm(model, role)
    return model


def check_causal_lm(model: object, role: str) -> None:
    """Raise ValueError unless `model` is a decoder-only transformers model with an LM head."""
    if not isinstance(model, PreTrainedModel) or not isinstance(model, GenerationMixin):
        raise ValueError(
            f"the {role} must be a transformers causal language model (e.g. from "
            f"AutoModelForCausalLM.from_pretrained) or a hub id / local path, got {type(model).__name__}."
        )
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(
            f"the {role} ({type(model).__name__}) is an encoder-decoder model; speculative decoding here "
            "needs decoder-only causal LMs."
        )
    if model.get_output_embeddings() is None:
        raise ValueError(
            f"the {role} ({type(model).__name__}) has no language-model head; load it with "
            "AutoModelForCausalLM."
        )


def find_tokenizer(model: PreTrainedModel):
    """The tokenizer saved beside a model loaded from a local folder or the local hub cache, if any.

    Never touches the network (local_files_only); returns None when nothing is found.
    """
    source = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if not source:
        return None
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means "no tokenizer at hand"
        return None


def vocab_info(model: PreTrainedModel, tokenizer=None) -> VocabInfo:
    """Vocabulary facts of a model: logits width, tokenizer tokens if any, special ids."""
    config = model.config.get_text_config()
    generation = getattr(model, "generation_config", None)
    special = {}
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(generation, name, None) if generation is not None else None
        special[name] = value if value is not None else getattr(config, name, None)
    tokens = None
    if tokenizer is not None:
        try:
            tokens = tokenizer_tokens(tokenizer)
        except Exception as error:  # noqa: BLE001
            warnings.warn(
                f"could not read the tokenizer's vocabulary ({error}); ids not checked", stacklevel=2
            )
    return VocabInfo(size=vocab_size(model), tokens=tokens, special=special)
