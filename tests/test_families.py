"""Exact on every causal LM family transformers serves: greedy identity for every strategy, with eager
attention and with SDPA, sliding windows shorter than the sequence, and trees really verified.

The matrix: GPT-2, OPT, GPT-NeoX, Qwen2 / Qwen3 (one windowed and one full layer), Mistral and Phi-3
(every layer windowed), Gemma, Gemma-2 / Gemma-3 (alternating windowed and full layers; Gemma-2 has no
SDPA path), a Llama with tied embeddings, linear rope scaling, biases and head_dim != hidden / heads
(on specdec's runner and on transformers' forward), Qwen2 and Qwen3 without windows on both runners.
Windows are 6 positions; prompt + new tokens 26.
"""

from __future__ import annotations

import pytest
import torch

import specdec
from specdec.planning.costs import CostProfile
from specdec.runtime.masks import MaskPlan, build_masks, plan_masks
from tests.families import EAGER_ONLY, FAMILIES, OWN_RUNNER, WINDOW, build, draft_for
from tests.test_generate_sampling import SAMPLE_KWARGS, V, chi_square_pvalue, exact_joint

CELLS = [
    (family, attention, "auto")
    for family in FAMILIES
    for attention in ("eager", "sdpa")
    if not (attention == "sdpa" and family in EAGER_ONLY)
] + [(family, attention, "transformers") for family in OWN_RUNNER for attention in ("eager", "sdpa")]

#: strategy -> wrap() options; tree strategies must show verified trees in their stats.
STRATEGIES = {
    "chain": dict(num_draft_tokens=3),
    "tree": dict(tree=(2, 2, 1)),
    "dynamic-tree": dict(tree_budget=8),
    "hybrid": dict(tree_budget=8),
    "auto": {},
    "prompt-lookup": {},
}
TREE_STRATEGIES = ("tree", "dynamic-tree", "hybrid", "auto")
NEW_TOKENS = 16


def _flat_costs() -> CostProfile:
    """Verification as cheap for 64 tokens as for 1 and drafting nearly free: auto plans trees."""
    return CostProfile(draft_level_seconds=1e-4, verify_seconds={1: 0.01, 65: 0.0101}, draft_measured=True)


def _prompt(seed: int) -> torch.Tensor:
    """[1, 10] ids: a 5-token motif twice, so n-gram drafts (prompt lookup, hybrid) find copies."""
    g = torch.Generator().manual_seed(seed)
    motif = torch.randint(3, 96, (5,), generator=g)
    return torch.cat([motif, motif])[None]


@pytest.mark.parametrize("family, attention, runtime", CELLS, ids=["-".join(c) for c in CELLS])
def test_every_strategy_greedy_identical(family, attention, runtime):
    target = build(family, attention)
    draft = draft_for(target)
    ids = _prompt(list(FAMILIES).index(family))
    expected = target.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    for strategy, options in STRATEGIES.items():
        spec = specdec.wrap(
            target,
            None if strategy == "prompt-lookup" else draft,
            strategy=strategy,
            runtime=runtime,
            **options,
        )
        if strategy == "auto":
            spec.cost_profile = _flat_costs()
        out = spec.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
        assert torch.equal(out, expected), (
            f"{strategy}: {out[0, 10:].tolist()} != {expected[0, 10:].tolist()}"
        )
        stats = spec.stats
        expected_runtime = "specdec" if family in OWN_RUNNER and runtime == "auto" else "transformers"
        assert stats.runtime == expected_runtime
        if strategy in TREE_STRATEGIES:
            assert stats.tree_passes > 0, f"{strategy} verified no tree ({stats.draft_lengths})"


@pytest.mark.parametrize("family", ["qwen2", "gpt_neox"])
def test_tree_sampling_follows_target_distribution(family):
    """Chi-square of the first two sampled tokens against the target's exact joint probabilities, with
    a static tree on eager attention (Qwen2: its windowed layer binds from the first new token)."""
    target = build(family, "eager", vocab=V)
    draft = draft_for(target, noise=0.5)
    spec = specdec.wrap(target, draft, strategy="tree", tree=(4, 2))
    ids = torch.randint(3, V, (1, WINDOW + 2), generator=torch.Generator().manual_seed(3))
    joint = exact_joint(target, ids, **SAMPLE_KWARGS)
    g = torch.Generator().manual_seed(11)
    counts = torch.zeros(V, V)
    tree_passes = 0
    for _ in range(500):
        out = spec.generate(ids, max_new_tokens=2, generator=g, **SAMPLE_KWARGS)
        counts[out[0, -2], out[0, -1]] += 1
        tree_passes += spec.stats.tree_passes
    assert chi_square_pvalue(counts, joint) > 1e-3
    assert tree_passes > 0


def test_additive_mask_for_eager_boolean_for_sdpa():
    eager = plan_masks(build("gemma2", "eager"))
    sdpa = plan_masks(build("qwen2", "sdpa"))
    assert isinstance(eager, MaskPlan) and eager.form == "additive" and eager.per_layer_type
    assert isinstance(sdpa, MaskPlan) and sdpa.form == "boolean"
    allowed = torch.ones(2, 10, dtype=torch.bool).tril(8)  # [n, L]: query 0 sees 9 slots, query 1 all
    query, keys = torch.tensor([8, 9]), torch.arange(10)
    masks = build_masks(eager, allowed, query, keys, torch.float32)
    window = masks["sliding_attention"][0, 0]
    assert window[1, 9] == 0 and window[1, 9 - WINDOW] == torch.finfo(torch.float32).min
    assert window[1, 9 - WINDOW + 1] == 0 and masks["full_attention"][0, 0, 1, 0] == 0
    assert masks["full_attention"][0, 0, 0, 9] == torch.finfo(torch.float32).min  # the tree's own mask
    boolean = build_masks(sdpa, allowed, query, keys, torch.float32)
    assert boolean["sliding_attention"].dtype == torch.bool and not boolean["sliding_attention"][0, 0, 1, 3]


def test_trees_fall_back_to_chains_where_no_tree_mask_exists():
    """An attention implementation that takes no custom mask (flash attention) gets a chain and a
    one-line warning, never a silently wrong tree; the output stays the target's."""
    target = build("qwen2", "sdpa")
    draft = draft_for(target)
    target.config._attn_implementation = "flash_attention_2"  # judged by name; chains never pass masks
    reason = plan_masks(target)
    assert isinstance(reason, str) and "flash_attention_2" in reason
    with pytest.warns(UserWarning, match='falls back to "chain": the target qwen2 runs'):
        spec = specdec.wrap(target, draft, strategy="tree", tree=(2, 2))
    assert spec.config.strategy == "chain"


def test_unknown_window_layout_falls_back():
    target = build("gpt_neox", "eager")
    target.config.sliding_window = 4  # a family specdec does not know to window every layer
    with pytest.warns(UserWarning, match="no layer_types"):
        spec = specdec.wrap(target, draft_for(target), strategy="dynamic-tree")
    assert spec.config.strategy == "chain"


def test_batches_refused_up_front_where_no_row_mask_exists():
    """Rows of different lengths need per-row masks: a model whose attention takes none (flash
    attention) refuses a batch before any pass, naming why; one prompt still runs (a chain)."""
    target = build("qwen2", "sdpa")
    draft = draft_for(target)
    target.config._attn_implementation = "flash_attention_2"
    spec = specdec.wrap(target, draft, strategy="chain")
    ids = torch.cat([_prompt(1), _prompt(2)])
    with pytest.raises(ValueError, match="batch size > 1 needs per-row attention masks.*flash_attention_2"):
        spec.generate(ids, max_new_tokens=4)
