"""Tiny random causal LMs of many transformers families for the fidelity matrix (nothing downloaded).

Every builder returns a float32 model in eval mode with vocabulary `VOCAB`, EOS id 2 and a context of
`CONTEXT`; windowed families get a window of `WINDOW` positions, far shorter than a test's prompt plus
its new tokens, so the window binds. `draft_for(model)` is a perturbed copy: same vocabulary, partial
acceptance (a draft equal to the target would accept every token and test little).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB = 96
CONTEXT = 128
WINDOW = 6
HIDDEN = 32


def _common() -> dict:
    return dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _decoder(**extra) -> dict:
    """Llama-like sizes shared by most families: 2 layers, 4 query heads, 2 KV heads."""
    return dict(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        **_common(),
        **extra,
    )


def _untied() -> dict:
    """Gemma ties its head to the sqrt(hidden)-scaled embedding, which makes each token predict the
    next almost alone (a window then never changes an argmax); an untied head lets attention matter."""
    return dict(tie_word_embeddings=False)


def _windowed_types() -> list[str]:
    return ["sliding_attention", "full_attention"]


FAMILIES: dict[str, Callable[[], tuple[type, object]]] = {
    "gpt2": lambda: (
        GPT2LMHeadModel,
        GPT2Config(n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=CONTEXT, **_common()),
    ),
    "opt": lambda: (
        OPTForCausalLM,
        OPTConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            ffn_dim=2 * HIDDEN,
            num_attention_heads=4,
            max_position_embeddings=CONTEXT,
            word_embed_proj_dim=HIDDEN,
            **_common(),
        ),
    ),
    "gpt_neox": lambda: (
        GPTNeoXForCausalLM,
        GPTNeoXConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=2 * HIDDEN,
            max_position_embeddings=CONTEXT,
            rotary_pct=0.5,
            **_common(),
        ),
    ),
    "qwen2": lambda: (
        Qwen2ForCausalLM,
        Qwen2Config(**_decoder(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)),
    ),
    "qwen3": lambda: (
        Qwen3ForCausalLM,
        Qwen3Config(
            **_decoder(head_dim=16, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)
        ),
    ),
    "qwen2-full": lambda: (Qwen2ForCausalLM, Qwen2Config(**_decoder())),
    "qwen3-full": lambda: (Qwen3ForCausalLM, Qwen3Config(**_decoder(head_dim=16))),
    "mistral": lambda: (MistralForCausalLM, MistralConfig(**_decoder(sliding_window=WINDOW))),
    "gemma": lambda: (GemmaForCausalLM, GemmaConfig(**_decoder(head_dim=16, tie_word_embeddings=False))),
    "gemma2": lambda: (
        Gemma2ForCausalLM,
        Gemma2Config(
            **_decoder(head_dim=16, sliding_window=WINDOW, layer_types=_windowed_types(), **_untied())
        ),
    ),
    "gemma3": lambda: (
        Gemma3ForCausalLM,
        Gemma3TextConfig(
            **_decoder(head_dim=16, sliding_window=WINDOW, layer_types=_windowed_types(), **_untied())
        ),
    ),
    "phi3": lambda: (Phi3ForCausalLM, Phi3Config(**_decoder(sliding_window=WINDOW))),
    "llama-variants": lambda: (
        LlamaForCausalLM,
        LlamaConfig(
            **_decoder(
                head_dim=32,  # != hidden / heads
                tie_word_embeddings=True,
                attention_bias=True,
                mlp_bias=True,
                rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
            )
        ),
    ),
}

#: Families specdec's own runner serves under runtime="auto" (Llama layout, no window).
OWN_RUNNER = ("qwen2-full", "qwen3-full", "llama-variants")
#: Families whose modeling code has no SDPA path (transformers refuses attn_implementation="sdpa").
EAGER_ONLY = ("gemma2",)


def build(family: str, attention: str = "eager", seed: int = 0, vocab: int = VOCAB) -> PreTrainedModel:
    """A random float32 model of `family` running transformers' `attention` implementation."""
    cls, config = FAMILIES[family]()
    config.vocab_size = vocab
    config._attn_implementation = attention
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # spread logits out so greedy argmax never sits on a float near-tie
        for name, param in model.named_parameters():
            if param.dim() == 2 and "norm" not in name:
                param.normal_(0.0, 0.3 if param.shape[0] != vocab else 0.6)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    return model


def draft_for(model: PreTrainedModel, noise: float = 0.15, seed: int = 1) -> PreTrainedModel:
    """A copy of `model` with noise on every matrix: the same family and vocabulary, partial acceptance."""
    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in draft.parameters():
            if param.dim() == 2:
                param.add_(noise * param.std() * torch.randn(param.shape, generator=generator))
    return draft
