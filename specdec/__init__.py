"""specdec: exact speculative decoding for Hugging Face causal LMs.

import specdec
spec = specdec.wrap(target, draft)            # models or hub ids / local paths
out = spec.generate(input_ids, max_new_tokens=128)
print(spec.stats.summary())
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from specdec.config import STRATEGIES, SpecConfig
from specdec.core.stats import GenerationStats
from specdec.embedded.pair import EmbeddedPairError, heldout_code_prompts, load_embedded_pair
from specdec.errors import NonFiniteLogitsError
from specdec.generate import SpeculativeModel
from specdec.models.loading import ModelSourceError, load_causal_lm
from specdec.models.vocab import VocabularyMismatchError

__version__ = "0.1.0"

__all__ = [
    "STRATEGIES",
    "EmbeddedPairError",
    "GenerationStats",
    "ModelSourceError",
    "NonFiniteLogitsError",
    "SpecConfig",
    "SpeculativeModel",
    "VocabularyMismatchError",
    "heldout_code_prompts",
    "load_embedded_pair",
    "wrap",
]


def wrap(
    target: PreTrainedModel | str,
    draft: PreTrainedModel | str | None = None,
    strategy: str | None = None,
    num_draft_tokens: int | None = None,
    *,
    tokenizer=None,
    draft_tokenizer=None,
    dtype: torch.dtype | str | None = None,
    device_map: Any = None,
    max_draft_tokens: int = 8,
    tree: object = None,
    tree_budget: int | None = None,
    tree_branch: int = SpecConfig.tree_branch,
    tree_depth: int = SpecConfig.tree_depth,
    prompt_lookup_max_ngram: int = SpecConfig.prompt_lookup_max_ngram,
    prompt_lookup_min_ngram: int = SpecConfig.prompt_lookup_min_ngram,
    runtime: str = "auto",
    cuda_graphs: bool = False,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> SpeculativeModel:
    """Wrap a target causal LM and a draft into a `SpeculativeModel`.

    target / draft: transformers causal-LM objects, or hub ids / local paths loaded with
    `AutoModelForCausalLM.from_pretrained(..., dtype=dtype, device_map=device_map)`.
    strategy: default "auto" with a draft model ("chain" when num_draft_tokens is given, "prompt-lookup"
    without a draft model); or "chain" (draft model, k tokens in a line), "tree" (static token tree, `tree=` a
    branching tuple such as (4, 2, 2, 1) or a list of rank paths), "dynamic-tree" (EAGLE-2 style,
    `tree_budget=` nodes per step, `tree_branch=` children per node, `tree_depth=` levels), "prompt-lookup"
    (n-gram matches, draft=None; `prompt_lookup_max_ngram` / `_min_ngram`), "hybrid" (n-gram copies and
    draft-model candidates merged into one tree), "auto" (chain or tree, shape and size planned every step
    from measured acceptance and costs) or "none" (no speculation: the runtime alone, a baseline).
    num_draft_tokens: fixed chain length k, or None to adapt k every step (up to max_draft_tokens).
    runtime: "auto" (specdec's own lean forward and preallocated KV cache for Llama-layout models,
    transformers' forward otherwise), "specdec" (require the lean forward), "compiled" (the lean
    forward through torch.compile: faster steps after slow first calls, which compile a few graphs
    per model) or "transformers".
    cuda_graphs: run the runtime's draft and verify passes as CUDA graphs captured once per shape
    (blocks padded to 1, 2, 4, ..., 128 tokens); needs each model whole on one CUDA device.
    trust_remote_code / allow_pickle: off unless passed (remote code; pickle checkpoints).
    A path-like target/draft that does not exist raises ModelSourceError before any hub call; an
    unknown or unreachable hub id raises ModelSourceError naming the cause.
    tokenizer / draft_tokenizer: used to check that both models map ids to the same tokens;
    found next to the models when they were loaded from a local folder.
    """
    for name, value in (
        ("cuda_graphs", cuda_graphs),
        ("trust_remote_code", trust_remote_code),
        ("allow_pickle", allow_pickle),
    ):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")
    if strategy is None:
        strategy = "prompt-lookup" if draft is None else ("chain" if num_draft_tokens is not None else "auto")
    config = SpecConfig(
        strategy=strategy,
        num_draft_tokens=num_draft_tokens,
        max_draft_tokens=max_draft_tokens,
        tree=tree,
        tree_budget=tree_budget,
        tree_branch=tree_branch,
        tree_depth=tree_depth,
        prompt_lookup_max_ngram=prompt_lookup_max_ngram,
        prompt_lookup_min_ngram=prompt_lookup_min_ngram,
    )
    target_model = load_causal_lm(target, "target", dtype, device_map, trust_remote_code, allow_pickle)
    draft_model = None
    if draft is not None:
        draft_model = load_causal_lm(draft, "draft", dtype, device_map, trust_remote_code, allow_pickle)
    return SpeculativeModel(
        target_model,
        draft_model,
        config,
        tokenizer=tokenizer,
        draft_tokenizer=draft_tokenizer,
        runtime=runtime,
        cuda_graphs=cuda_graphs,
    )
