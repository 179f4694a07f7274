"""Tiny random Llama models for CPU tests (float32, nothing downloaded)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 96


def tiny_llama(
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = VOCAB,
    context: int = 256,
    seed: int = 0,
    init: float = 0.2,
    eos: int | None = 2,
) -> LlamaForCausalLM:
    """A random LlamaForCausalLM in eval mode.

    init: weight init std; larger than Llama's 0.02 so logits are spread out and greedy argmax
    ties (which float rounding could flip) are practically absent.
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=context,
        initializer_range=init,
        bos_token_id=1,
        eos_token_id=eos,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = eos
    return model


def prompt(length: int, seed: int, vocab: int = VOCAB) -> torch.Tensor:
    """[1, length] random ids avoiding the special ids 0-2."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (1, length), generator=g)
