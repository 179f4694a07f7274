"""Hybrid trees: n-gram and draft-model candidates merged, greedy identity, exact sampling, stats."""

import pytest
import torch

import specdec
import specdec.planning.costs
from specdec.drafters.prompt_lookup import find_continuations
from tests.test_generate_sampling import SAMPLE_KWARGS, V, chi_square_pvalue, exact_joint, sample_pairs
from tests.tiny_models import prompt, tiny_llama


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0)


def repetitive_prompt(seed):
    base = prompt(7, seed)
    return torch.cat([base, prompt(3, seed + 50), base, base[:, :4]], dim=1)


def test_find_continuations_distinct_longest_first():
    seq = torch.tensor([1, 2, 3, 4, 9, 2, 3, 5, 6, 1, 2, 3])
    found = find_continuations(seq, 3, 3, 1, max_candidates=3)
    assert [c.tolist() for c in found] == [[4, 9, 2], [5, 6, 1]]


@pytest.mark.parametrize("draft_kind", ["same", "unrelated"])
def test_hybrid_greedy_identical_and_counts_sources(target, draft_kind):
    draft = target if draft_kind == "same" else tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1)
    spec = specdec.wrap(target, draft, strategy="hybrid")
    for seed in range(3):
        ids = repetitive_prompt(seed)
        expected = target.generate(ids, max_new_tokens=30, do_sample=False)
        assert torch.equal(spec.generate(ids, max_new_tokens=30), expected)
    sources = spec.stats.per_source
    assert set(sources) <= {"draft-model", "prompt-lookup"} and sources
    assert sum(s["accepted"] for s in sources.values()) >= spec.stats.accepted_tokens
    assert all(s["accepted"] <= s["proposed"] for s in sources.values())


def test_hybrid_with_repetition_penalty(target):
    ids = repetitive_prompt(9)
    kwargs = dict(max_new_tokens=25, repetition_penalty=1.5)
    out = specdec.wrap(target, target, strategy="hybrid").generate(ids, **kwargs)
    assert torch.equal(out, target.generate(ids, do_sample=False, **kwargs))


def test_hybrid_sampling_follows_target_distribution():
    small_target = tiny_llama(vocab=V, seed=0, init=0.1)
    draft = tiny_llama(vocab=V, hidden=32, layers=1, heads=2, kv_heads=1, seed=5)
    spec = specdec.wrap(small_target, draft, strategy="hybrid")
    ids = prompt(5, 3, vocab=V)
    ids = torch.cat([ids, ids, ids[:, :2]], dim=1)  # n-gram matches exist
    joint = exact_joint(small_target, ids, **SAMPLE_KWARGS)
    counts = sample_pairs(spec, ids, draws=1200, seed=13, **SAMPLE_KWARGS)
    assert chi_square_pvalue(counts, joint) > 1e-3
    assert "prompt-lookup" in spec.stats.per_source


def test_hybrid_without_draft_degrades_to_prompt_lookup(target):
    with pytest.warns(UserWarning, match="using prompt lookup"):
        spec = specdec.wrap(target, None, strategy="hybrid")
    assert spec.config.strategy == "prompt-lookup"
    ids = repetitive_prompt(3)
    assert torch.equal(
        spec.generate(ids, max_new_tokens=10), target.generate(ids, max_new_tokens=10, do_sample=False)
    )


def test_ngram_settings_out_of_range():
    from specdec.config import SpecConfig

    with pytest.raises(ValueError, match="prompt_lookup_min_ngram"):
        SpecConfig(strategy="hybrid", prompt_lookup_min_ngram=0)


def test_auto_merges_ngram_candidates_when_greedy(target):
    spec = specdec.wrap(target, target, strategy="auto")
    spec.cost_profile = specdec.planning.costs.CostProfile(
        draft_level_seconds=1e-4, verify_seconds={1: 0.01, 65: 0.012}
    )
    ids = repetitive_prompt(4)
    out = spec.generate(ids, max_new_tokens=30)
    assert torch.equal(out, target.generate(ids, max_new_tokens=30, do_sample=False))
    assert "prompt-lookup" in spec.stats.per_source


def test_auto_sampling_is_unaffected_by_an_earlier_greedy_call(target):
    """Greedy steps merge chosen tokens; they must not leave the draft model choosing when sampling."""
    draft = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1)
    profile = specdec.planning.costs.CostProfile(
        draft_level_seconds=1e-4, verify_seconds={1: 0.01, 65: 0.012}
    )
    ids = repetitive_prompt(5)
    kwargs = dict(max_new_tokens=20, do_sample=True, temperature=0.9, top_k=6)
    fresh = specdec.wrap(target, draft, strategy="auto")
    fresh.cost_profile = profile
    expected = fresh.generate(ids, generator=torch.Generator().manual_seed(2), **kwargs)
    used = specdec.wrap(target, draft, strategy="auto")
    used.cost_profile = profile
    used.generate(ids, max_new_tokens=20)  # greedy first
    assert torch.equal(used.generate(ids, generator=torch.Generator().manual_seed(2), **kwargs), expected)


def test_copy_reach_follows_the_measured_copy_acceptance(target):
    """free_candidates: reach alpha^(j+1) per copy position, alpha = accepted / judged copied tokens
    (decayed): copies followed to the end raise it, copies rejected at once lower it."""
    spec = specdec.wrap(target, target, strategy="hybrid")
    hybrid = spec._drafter
    hybrid.begin()
    ids = repetitive_prompt(6)  # its last tokens repeat an earlier stretch: a copy exists
    (prior,) = hybrid.free_candidates([ids], do_sample=False)
    assert len(prior) >= 2 and prior == pytest.approx([0.5 ** (j + 1) for j in range(len(prior))])

    def observe(run: int) -> None:
        """One verified step that offered a 4-token copy and followed it for `run` tokens."""
        row = hybrid._rows[0]
        row.sources = [("prompt-lookup",)] * 4
        row.model_nodes = [None] * 4
        row.copy_length = 4
        hybrid._model_ran = False
        hybrid.observe([ids.shape[1]], [tuple(range(run))])

    for _ in range(5):
        observe(4)
    (high,) = hybrid.free_candidates([ids], do_sample=False)
    alpha = high[0]
    assert alpha > 0.8 and high == pytest.approx([alpha ** (j + 1) for j in range(len(high))])
    for _ in range(20):
        observe(0)
    (low,) = hybrid.free_candidates([ids], do_sample=False)
    assert low[0] < 0.5 < alpha
    assert hybrid.free_candidates([ids], do_sample=True) == [low]  # hybrid merges when sampling too
