"""Long runs: generation to the last position of the context, 200 calls on one model, interrupts.

Tiny random Llama models (float32, CPU) with a 64-position context and no EOS, so every generation
runs to its max_new_tokens and the last one fills the context exactly.
"""

from __future__ import annotations

import functools
import gc

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

import specdec
from tests.tiny_models import prompt, tiny_llama

CONTEXT = 64


@functools.cache
def models():
    """target, the same weights as a draft (every draft accepted), an unrelated small draft, and the
    target's weights with a shorter context (drafting stops at position 48, the target goes on)."""
    target = tiny_llama(seed=0, context=CONTEXT, eos=None)
    same = tiny_llama(seed=0, context=CONTEXT, eos=None)
    unrelated = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1, context=CONTEXT, eos=None)
    short = tiny_llama(seed=0, context=48, eos=None)
    return target, {"same": same, "unrelated": unrelated, "short-context": short}


def wrap(strategy: str, draft_name: str | None, runtime: str = "auto", **options) -> specdec.SpeculativeModel:
    target, drafts = models()
    draft = None if strategy == "prompt-lookup" else drafts[draft_name]
    return specdec.wrap(target, draft, strategy=strategy, runtime=runtime, **options)


def repeating_prompt(length: int, seed: int) -> torch.Tensor:
    """[1, length]: a random block repeated, so prompt lookup finds n-gram matches."""
    block = prompt(max(length // 2, 1), seed)
    return torch.cat([block, block, block], dim=1)[:, :length]


def target_greedy(ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    target, _ = models()
    return target.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)


# --------------------------------------------------------------------------------- end of context
CONTEXT_CASES = [
    (strategy, draft)
    for strategy in ("chain", "tree", "auto")
    for draft in ("same", "unrelated", "short-context")
] + [("prompt-lookup", None)]


@pytest.mark.parametrize("runtime", ["specdec", "transformers"])
@pytest.mark.parametrize("strategy, draft", CONTEXT_CASES)
def test_generation_fills_the_context_exactly(strategy, draft, runtime):
    """prompt + max_new_tokens == context: the last token lands on the last position, output equals
    the target's own greedy generate(); one token more stops there with the documented warning."""
    spec = wrap(strategy, draft, runtime)
    for prompt_length in (20, 1):
        ids = repeating_prompt(prompt_length, prompt_length)  # [1, L]
        new = CONTEXT - prompt_length
        out = spec.generate(ids, max_new_tokens=new)  # [1, CONTEXT]
        assert out.shape == (1, CONTEXT)
        assert torch.equal(out, target_greedy(ids, new))
        if draft == "same" and strategy != "auto":
            # every draft accepted: steps commit several tokens up to the very end of the context
            assert spec.stats.tau > 1.5
        # one token more is not refused: generation stops at the context with a warning naming it
        warning = rf"context length \({CONTEXT} positions\) after {new} new tokens"
        with pytest.warns(UserWarning, match=warning):
            assert torch.equal(spec.generate(ids, max_new_tokens=new + 1), out)


# ------------------------------------------------------------------------------------ 200 calls
def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def cache_tensors(spec: specdec.SpeculativeModel) -> list[torch.Tensor]:
    """The lean runners' preallocated KV tensors, target then draft ([1, H_kv, capacity, D] each)."""
    runners = [spec._target_runner, spec._drafter.runner]
    return [t for runner in runners for t in (*runner._keys, *runner._values)]


# Measured on the 2-core CI machine (transformers 5.24, torch 2.13 CPU): after 20 warm-up calls RSS
# grows 2-3 MB over the next ~30 calls (allocator arenas settling) and is flat (< 0.5 MB) after
# that; Python's gc-tracked object count does not change at all. 20 MB is ~6x the measured growth,
# and well below what a leak of one call's state would add over 180 calls: one target KV cache of
# this model is ~0.3 MB (584 rows x 2 layers x 2 heads x 16 dims x 4 bytes, keys and values), so 180
# leaked caches are ~54 MB. A leak of even one Python object per call exceeds the object bound.
RSS_GROWTH_MB = 20.0
OBJECT_GROWTH = 50
WARM_UP, CALLS = 20, 200


@pytest.mark.parametrize("strategy", ["chain", "tree"])
def test_two_hundred_calls_leave_memory_flat_and_reuse_the_caches(strategy):
    options = {"num_draft_tokens": 3} if strategy == "chain" else {"tree": (2, 2, 1)}
    spec = wrap(strategy, "unrelated", runtime="specdec", **options)
    checks = [0, 57, 123, CALLS - 1]  # calls whose output is compared with the target's
    for call in range(CALLS):
        ids = prompt(6 + call % 5, call)  # [1, 6..10]
        new = 6 + call % 4
        out = spec.generate(ids, max_new_tokens=new)
        if call in checks:
            assert torch.equal(out, target_greedy(ids, new))
        if call == WARM_UP - 1:
            caches = cache_tensors(spec)
            identities = [(id(t), t.data_ptr()) for t in caches]
            gc.collect()
            rss_before, objects_before = rss_mb(), len(gc.get_objects())
    gc.collect()
    rss_growth = rss_mb() - rss_before
    object_growth = len(gc.get_objects()) - objects_before
    assert caches, "the lean runners should hold preallocated caches"
    assert [(id(t), t.data_ptr()) for t in cache_tensors(spec)] == identities, "caches were reallocated"
    assert rss_growth < RSS_GROWTH_MB, f"RSS grew {rss_growth:.1f} MB over {CALLS - WARM_UP} calls"
    assert object_growth < OBJECT_GROWTH, f"{object_growth} more Python objects after {CALLS - WARM_UP} calls"


# ----------------------------------------------------------------------------------- interrupts
class InterruptingProcessor(LogitsProcessor):
    """Leaves scores unchanged ([1, V] -> [1, V]); raises KeyboardInterrupt on call number `at`."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return scores


class InterruptingCriteria(StoppingCriteria):
    """Never stops; raises KeyboardInterrupt on call number `at`."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)  # [B]


@pytest.mark.parametrize("where", ["logits-processor", "stopping-criteria"])
@pytest.mark.parametrize(
    "strategy, draft, options",
    [
        ("chain", "same", {"num_draft_tokens": 3}),
        ("tree", "unrelated", {"tree": (2, 2, 1)}),
        ("prompt-lookup", None, {}),
        ("auto", "same", {}),
    ],
)
def test_keyboard_interrupt_mid_generation_leaves_the_model_correct(where, strategy, draft, options):
    spec = wrap(strategy, draft, **options)
    ids = repeating_prompt(12, 3)  # [1, 12]
    if where == "logits-processor":
        hook = InterruptingProcessor(at=9)
        kwargs = {"logits_processor": LogitsProcessorList([hook])}
    else:
        hook = InterruptingCriteria(at=9)
        kwargs = {"stopping_criteria": StoppingCriteriaList([hook])}
    with pytest.raises(KeyboardInterrupt):
        spec.generate(ids, max_new_tokens=30, **kwargs)
    assert hook.calls == 9  # it was interrupted mid-generation, not before or after
    for seed in range(2):
        ids = repeating_prompt(8 + seed, 20 + seed)
        assert torch.equal(spec.generate(ids, max_new_tokens=20), target_greedy(ids, 20))
    if strategy in ("chain", "tree"):
        # no random state or cache left behind: a seeded sampling run matches a fresh model's
        fresh = wrap(strategy, draft, **options)
        runs = [
            model.generate(ids, max_new_tokens=20, do_sample=True, generator=torch.Generator().manual_seed(5))
            for model in (spec, fresh)
        ]
        assert torch.equal(runs[0], runs[1])
