"""Sampling through generate() follows the target's exact distribution (chi-square, fixed seeds)."""

import pytest
import torch
from scipy.stats import chisquare

import specdec
from specdec.core.sampling import LogitsPipeline
from tests.tiny_models import prompt, tiny_llama

V = 12
SAMPLE_KWARGS = dict(do_sample=True, temperature=0.9, top_k=6, eos_token_id=None)


@pytest.fixture(scope="module")
def target():
    return tiny_llama(vocab=V, seed=0, init=0.1)


def exact_joint(model, ids, **kwargs) -> torch.Tensor:
    """[V, V] probability of the first two generated tokens under the target's processors."""
    config, _ = model._prepare_generation_config(None, **kwargs)
    pipeline = LogitsPipeline(config, ids.shape[1], [])
    with torch.no_grad():
        first = torch.softmax(pipeline.scores(ids, model(ids).logits[:, -1]), -1)[0]  # [V]
        joint = torch.zeros(V, V, dtype=torch.float64)
        for t in range(V):
            if first[t] == 0:
                continue
            ctx = torch.cat([ids, torch.tensor([[t]])], dim=1)
            second = torch.softmax(pipeline.scores(ctx, model(ctx).logits[:, -1]), -1)[0]
            joint[t] = first[t].double() * second.double()
    return joint


def sample_pairs(spec, ids, draws, seed, **kwargs) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    counts = torch.zeros(V, V)
    for _ in range(draws):
        out = spec.generate(ids, max_new_tokens=3, generator=g, **kwargs)
        a, b = out[0, ids.shape[1] : ids.shape[1] + 2].tolist()
        counts[a, b] += 1
    return counts


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square goodness of fit, cells with expected count < 5 merged into one."""
    total = counts.sum()
    expected = probs.flatten() / probs.sum() * total
    observed = counts.flatten().double()
    assert observed[probs.flatten() == 0].sum() == 0, "a token of zero target probability was produced"
    big = expected >= 5
    obs = torch.cat([observed[big], observed[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(chisquare(obs.numpy(), exp.numpy()).pvalue)


@pytest.mark.parametrize("which", ["matching-draft", "mismatched-draft", "prompt-lookup"])
def test_first_two_tokens_follow_target_distribution(target, which):
    ids = prompt(5, 3, vocab=V)
    if which == "matching-draft":
        spec = specdec.wrap(target, target, num_draft_tokens=2)
    elif which == "mismatched-draft":
        spec = specdec.wrap(
            target, tiny_llama(vocab=V, hidden=32, layers=1, heads=2, kv_heads=1, seed=5), num_draft_tokens=2
        )
    else:
        ids = torch.cat([ids, ids, ids[:, :2]], dim=1)  # repeats give the n-gram drafter matches
        spec = specdec.wrap(target, None, strategy="prompt-lookup", num_draft_tokens=2)
    joint = exact_joint(target, ids, **SAMPLE_KWARGS)
    counts = sample_pairs(spec, ids, draws=1500, seed=7, **SAMPLE_KWARGS)
    assert spec.stats.drafted_tokens > 0
    assert chi_square_pvalue(counts, joint) > 1e-3
    if which == "mismatched-draft":
        # the test can fail: the draft's own distribution is rejected by the same statistic
        draft_joint = exact_joint(spec.draft, ids, **SAMPLE_KWARGS)
        wrong = 0.5 * joint + 0.5 * draft_joint
        assert chi_square_pvalue(counts, wrong) < 1e-6


def test_seeded_runs_are_reproducible(target):
    ids = prompt(5, 4, vocab=V)
    spec = specdec.wrap(target, tiny_llama(vocab=V, hidden=32, layers=1, heads=2, kv_heads=1, seed=6))
    a = spec.generate(ids, max_new_tokens=20, generator=torch.Generator().manual_seed(3), **SAMPLE_KWARGS)
    b = spec.generate(ids, max_new_tokens=20, generator=torch.Generator().manual_seed(3), **SAMPLE_KWARGS)
    torch.manual_seed(11)
    c = spec.generate(ids, max_new_tokens=20, **SAMPLE_KWARGS)
    torch.manual_seed(11)
    d = spec.generate(ids, max_new_tokens=20, **SAMPLE_KWARGS)
    assert torch.equal(a, b) and torch.equal(c, d)
    # the adaptive strategies plan with costs measured once, so their seeded runs repeat too
    auto = specdec.wrap(target, spec.draft, strategy="auto")
    runs = [
        auto.generate(ids, max_new_tokens=20, generator=torch.Generator().manual_seed(5), **SAMPLE_KWARGS)
        for _ in range(3)
    ]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[1], runs[2])
