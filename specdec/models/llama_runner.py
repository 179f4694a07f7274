"""A lean incremental forward for Llama-layout models over their own modules (layer L3).

Same contract as `CausalRunner` (extend / truncate / compact / reset), but the attention and the KV
cache are specdec's own: one preallocated cache per model indexed by position (rollback moves a length,
committing a tree path copies rows), no mask-building utilities, no cache objects. Norms, projections,
MLPs and rotary embeddings are the model's own modules, called in place (no weight copies; accelerate
hooks and device maps keep working).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from specdec.cache import compact_rows
from specdec.models.runner import (
    CausalRunner,
    check_extend,
    context_length,
    full_attention,
    model_device,
    vocab_size,
)
from specdec.tree import MAX_TREE_NODES

SUPPORTED_MODEL_TYPES = ("llama", "mistral")


def supports_llama_runner(model: PreTrainedModel) -> bool:
    """True for Llama-layout decoders this runner reproduces exactly (no sliding window)."""
    config = model.config
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(config, "sliding_window", None) is not None:
        return False
    inner = getattr(model, "model", None)
    return all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb"))


class LlamaRunner:
    """Incremental forward passes of a Llama-layout model over a preallocated KV cache."""

    def __init__(self, model: PreTrainedModel, max_length: int | None = None) -> None:
        if not supports_llama_runner(model):
            raise ValueError(f"{type(model).__name__} is not a Llama-layout model this runner supports")
        self.model = model
        self.device = model_device(model)
        self.vocab_size = vocab_size(model)
        self.context_length = context_length(model)
        config = model.config
        self._inner = model.model
        self._layers = list(model.model.layers)
        self._heads = config.num_attention_heads
        self._kv_heads = getattr(config, "num_key_value_heads", None) or self._heads
        self._head_dim = getattr(config, "head_dim", None) or config.hidden_size // self._heads
        # Positions never pass the context, but a verified tree briefly holds up to MAX_TREE_NODES rows
        # (+ the pending tokens) beyond the committed ones, so the cache has room for them.
        self._capacity = (max_length or self.context_length or 4096) + MAX_TREE_NODES + 8
        self._keys: list[torch.Tensor] = []  # per layer [1, H_kv, capacity, D]
        self._values: list[torch.Tensor] = []
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    def _allocate(self, dtype: torch.dtype) -> None:
        shape = (1, self._kv_heads, self._capacity, self._head_dim)
        for layer in self._layers:
            device = layer.self_attn.k_proj.weight.device
            device = self.device if device.type == "meta" else device
            self._keys.append(torch.empty(shape, dtype=dtype, device=device))
            self._values.append(torch.empty(shape, dtype=dtype, device=device))

    @torch.inference_mode()
    def extend(
        self,
        tokens: torch.Tensor,
        num_logits: int = 1,
        positions: torch.Tensor | None = None,
        attention: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Same contract as `CausalRunner.extend`: tokens [n] -> logits [num_logits, V]."""
        n = tokens.shape[0]
        check_extend(n, num_logits)
        start = self.length
        end = start + n
        if end > self._capacity:
            raise ValueError(f"the KV cache holds {self._capacity} positions; {end} were asked for")
        if positions is None:
            positions = torch.arange(start, end, device=self.device)
        mask = self._mask(n, start, attention)  # [1, 1, n, end] bool or None
        hidden = self._inner.embed_tokens(tokens.to(self.device)[None])  # [1, n, H]
        if not self._keys:
            self._allocate(hidden.dtype)
        cos, sin = self._inner.rotary_emb(hidden, positions.to(self.device)[None])  # [1, n, D] each
        for index, layer in enumerate(self._layers):
            hidden = hidden + self._attention(
                index, layer, layer.input_layernorm(hidden), cos, sin, start, mask
            )
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        self.length = end
        hidden = self._inner.norm(hidden[:, -num_logits:])  # [1, num_logits, H]
        return self.model.lm_head(hidden)[0]  # [num_logits, V]

    def _mask(self, n: int, start: int, attention: torch.Tensor | None) -> torch.Tensor | None:
        """Boolean [1, 1, n, start + n] mask, or None when every new token sees every position."""
        if attention is None:
            if n == 1:
                return None
            attention = torch.tril(torch.ones(n, n, dtype=torch.bool, device=self.device))
        return full_attention(attention, start, self.device)[None, None]

    def _attention(self, index, layer, x, cos, sin, start, mask) -> torch.Tensor:
        attn = layer.self_attn
        batch, n, _ = x.shape
        end = start + n
        q = attn.q_proj(x).view(batch, n, self._heads, self._head_dim).transpose(1, 2)  # [1, Hq, n, D]
        k = attn.k_proj(x).view(batch, n, self._kv_heads, self._head_dim).transpose(1, 2)  # [1, Hkv, n, D]
        v = attn.v_proj(x).view(batch, n, self._kv_heads, self._head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        keys, values = self._keys[index], self._values[index]
        keys[:, :, start:end] = k.to(keys.device)
        values[:, :, start:end] = v.to(values.device)
        out = F.scaled_dot_product_attention(
            q,
            keys[:, :, :end].to(q.device),
            values[:, :, :end].to(q.device),
            attn_mask=None if mask is None else mask.to(q.device),
            scale=attn.scaling,
            enable_gqa=self._kv_heads != self._heads,
        )  # [1, Hq, n, D]
        return attn.o_proj(out.transpose(1, 2).reshape(batch, n, self._heads * self._head_dim))

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.length = length

    @torch.inference_mode()
    def compact(self, start: int, rows: list[int]) -> None:
        """Keep positions [0, start) then `rows` moved to start, start + 1, ...; drop the rest."""
        compact_rows([*self._keys, *self._values], start, rows, self.length)
        self.length = start + len(rows)


RUNTIMES = ("auto", "specdec", "transformers")


def make_runner(model: PreTrainedModel, runtime: str = "auto") -> CausalRunner | LlamaRunner:
    """The runner for a model: specdec's own for Llama-layout models ("auto" or "specdec"),
    transformers' forward with a DynamicCache otherwise or when runtime="transformers"."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r} is not supported; choose one of {', '.join(RUNTIMES)}.")
    if runtime == "specdec" and not supports_llama_runner(model):
        raise ValueError(
            f'runtime="specdec" needs a Llama-layout model ({", ".join(SUPPORTED_MODEL_TYPES)}, no sliding '
            f'window); {type(model).__name__} is not one: use runtime="auto" or "transformers".'
        )
    if runtime != "transformers" and supports_llama_runner(model):
        return LlamaRunner(model)
    return CausalRunner(model)
