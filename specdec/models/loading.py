"""Loading and checking target/draft models and their tokenizers (layer L3).

One loading policy for every entry point (``wrap()``, ``load_embedded_pair()``, the command line):
safetensors weights only unless pickle is opted into, no checkpoint code unless remote code is
trusted, never an interactive prompt (``trust_remote_code`` is always passed as a bool), a
path-like argument that does not exist refused before any hub call, and hub failures said as such.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationMixin, PreTrainedModel

from specdec.models.vocab import VocabInfo, tokenizer_tokens
from specdec.runtime.runner import vocab_size

TOKENIZER_FILES = (
    "tokenizer_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tekken.json",
)
"""Files whose presence means a tokenizer was saved with a model (``tokenizer.save_pretrained`` writes
``tokenizer_config.json``; the others hold vocabularies)."""

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


class ModelSourceError(OSError):
    """A model argument names nothing loadable: a local path that does not exist, a folder without the
    files needed, or a hub id that is unknown or cannot be reached."""


def looks_like_path(name: str) -> bool:
    """True for a local-path-looking argument: starts with /, ./, ../ or ~, or its parent folder exists."""
    if name.startswith(_PATH_PREFIXES) or os.path.isabs(name):
        return True
    parent = os.path.dirname(name)
    return bool(parent) and os.path.isdir(os.path.expanduser(parent))


def resolve_source(name: str, role: str) -> str:
    """The local folder `name` names (``~`` expanded), or `name` itself as a hub id.

    Raises ModelSourceError, without any hub call, when `name` looks like a path and does not exist,
    or names a file instead of a folder.
    """
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return expanded
    if os.path.exists(expanded):
        raise ModelSourceError(
            f"the {role} {name!r} is a file, not a model folder; pass the folder that holds config.json "
            "and the weights."
        )
    if looks_like_path(name):
        existing = _closest_existing_parent(expanded)
        where = f" ({existing} exists, the rest does not)" if existing else ""
        raise ModelSourceError(
            f"the {role} path {name!r} does not exist{where}; check the path (no download from the "
            "Hugging Face hub was tried for it)."
        )
    return name


def _closest_existing_parent(path: str) -> str | None:
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.isdir(parent):
        up = os.path.dirname(parent)
        if up == parent:
            return None
        parent = up
    return parent or None


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
    (pickle checkpoints can run code when loaded); checkpoint code only with trust_remote_code=True,
    and never an interactive question about it. Raises ModelSourceError for a missing path or an
    unknown / unreachable hub id, ValueError for a folder this policy refuses.
    """
    if isinstance(model, str):
        kwargs = dict(from_pretrained_kwargs)
        kwargs.setdefault("use_safetensors", None if allow_pickle else True)
        if dtype is not None:
            kwargs["dtype"] = dtype
        if device_map is not None:
            kwargs["device_map"] = device_map
        name = model
        source = resolve_source(name, role)
        folder = os.path.join(source, kwargs.get("subfolder") or "")
        if os.path.isdir(source) and not os.path.isfile(os.path.join(folder, "config.json")):
            raise ModelSourceError(
                f"the {role} folder {name!r} has no config.json, so it holds no saved model; pass the folder "
                "written by model.save_pretrained()."
            )
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source, trust_remote_code=bool(trust_remote_code), **kwargs
            )
        except OSError as error:
            raise _load_error(error, name, source, role, allow_pickle) from error
        except ValueError as error:
            if _is_remote_code_refusal(error):
                raise ValueError(remote_code_message(role, name)) from error
            raise
        model.eval()
    check_causal_lm(model, role)
    return model


def tensor_parallel_kwargs() -> dict[str, Any]:
    """`from_pretrained` keywords that split a model over the ranks of torch.distributed by transformers'
    tensor parallelism: `distributed_config=DistributedConfig(tp_plan="auto")`, or `tp_plan="auto"` on a
    transformers without DistributedConfig."""
    try:
        from transformers import DistributedConfig
    except ImportError:  # older transformers: tp_plan= directly
        return {"tp_plan": "auto"}
    return {"distributed_config": DistributedConfig(tp_plan="auto")}


def remote_code_message(role: str, name: str) -> str:
    """Why a checkpoint with its own modeling code was refused, and how to opt in."""
    return (
        f"the {role} at {name!r} needs custom code from its checkpoint (auto_map in its config), and "
        "specdec runs checkpoint code only when asked: wrap(..., trust_remote_code=True), or "
        "--trust-remote-code on the command line (read that code first)."
    )


def pickle_message(role: str, name: str) -> str:
    """Why a checkpoint without safetensors weights was refused, and how to opt in."""
    return (
        f"the {role} at {name!r} has no safetensors weights; pickle checkpoints can run code when loaded, "
        "so specdec loads them only with wrap(..., allow_pickle=True), or --allow-pickle on the command "
        "line."
    )


def _is_remote_code_refusal(error: BaseException) -> bool:
    text = str(error)
    return "trust_remote_code" in text and "custom code" in text


def _cause_names(error: BaseException) -> set[str]:
    """Class names of an exception and of everything it was raised from."""
    names, seen = set(), 0
    current: BaseException | None = error
    while current is not None and seen < 20:
        names.update(cls.__name__ for cls in type(current).__mro__)
        current = current.__cause__ or current.__context__
        seen += 1
    return names


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except (ImportError, AttributeError):
        return bool(os.environ.get("HF_HUB_OFFLINE"))


def _load_error(error: OSError, name: str, source: str, role: str, allow_pickle: bool) -> Exception:
    """A clear error for a failed from_pretrained: offline, unknown id, pickle-only, no weights."""
    causes = _cause_names(error)
    if os.path.isdir(source):
        if not allow_pickle and "safetensors" in str(error).lower():
            files = os.listdir(source)
            if any(f.endswith(_PICKLE_SUFFIXES) for f in files):
                return ValueError(pickle_message(role, name))
            return ModelSourceError(
                f"the {role} folder {name!r} holds no model weights (no model.safetensors); pass the folder "
                "written by model.save_pretrained()."
            )
        return error
    if causes & {"OfflineModeIsEnabled", "LocalEntryNotFoundError"}:
        why = (
            "offline mode is on (HF_HUB_OFFLINE)"
            if _hub_offline()
            else "the Hugging Face hub could not be reached (offline)"
        )
        return ModelSourceError(
            f"the {role} {name!r} is not a local folder, {why}, and it is not in the local hub cache; "
            "connect to download it once, or pass a local folder."
        )
    if causes & {"RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"}:
        return ModelSourceError(
            f"the {role} {name!r} is not a local folder and was not found on the Hugging Face hub (or is "
            "private or gated: log in with `hf auth login`); check the id or the path."
        )
    if "HFValidationError" in causes:
        return ModelSourceError(
            f"the {role} {name!r} is neither an existing local folder nor a valid hub id (owner/name); "
            "check the path or the id."
        )
    if not allow_pickle and "safetensors" in str(error).lower():
        return ValueError(pickle_message(role, name))
    return error


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


def has_tokenizer_files(source: str) -> bool:
    """Whether a local folder, or a hub id in the local cache, holds tokenizer files.

    Never touches the network. AutoTokenizer builds a default tokenizer for some configs (GPT-2:
    one token) where no tokenizer was saved; such a tokenizer must not be compared with anything.
    """
    if os.path.isdir(source):
        return any(os.path.isfile(os.path.join(source, name)) for name in TOKENIZER_FILES)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    for name in TOKENIZER_FILES:
        try:
            if isinstance(try_to_load_from_cache(source, name), str):
                return True
        except Exception:  # noqa: BLE001 - not a valid repo id, unreadable cache: no tokenizer at hand
            return False
    return False


def load_tokenizer(source: str, role: str, trust_remote_code: bool = False, **kwargs: Any):
    """The tokenizer saved with a model (hub id or local folder), under the loading policy above.

    Raises ModelSourceError when the folder (or hub repository) holds no tokenizer files rather than
    return a default tokenizer transformers would build from the config.
    """
    resolved = resolve_source(source, role)
    if os.path.isdir(resolved) and not has_tokenizer_files(resolved):
        raise ModelSourceError(_no_tokenizer_message(role, source))
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            resolved, trust_remote_code=bool(trust_remote_code), **kwargs
        )
    except OSError as error:
        raise _load_error(error, source, resolved, role, allow_pickle=True) from error
    except ValueError as error:
        if _is_remote_code_refusal(error):
            raise ValueError(remote_code_message(f"{role} tokenizer", source)) from error
        raise
    if not has_tokenizer_files(resolved):
        raise ModelSourceError(_no_tokenizer_message(role, source))
    return tokenizer


def _no_tokenizer_message(role: str, source: str) -> str:
    return (
        f"the {role} {source!r} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); save the "
        "tokenizer beside the model with tokenizer.save_pretrained(folder)."
    )


def find_tokenizer(model: PreTrainedModel, trust_remote_code: bool = False):
    """The tokenizer saved beside a model loaded from a local folder or the local hub cache, if any.

    Only a folder (or cached repository) that holds tokenizer files counts: None otherwise, so a model
    saved without its tokenizer is checked against nothing rather than against a default tokenizer.
    Never touches the network (local_files_only) and never runs checkpoint code unless asked.
    """
    source = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if not source or not has_tokenizer_files(str(source)):
        return None
    try:
        return AutoTokenizer.from_pretrained(
            source, local_files_only=True, trust_remote_code=bool(trust_remote_code)
        )
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
