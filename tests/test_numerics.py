"""NaN / inf logits raise an error naming the model and the step; the next call is unaffected."""

import pytest
import torch

import specdec
from specdec import NonFiniteLogitsError
from tests.tiny_models import prompt, tiny_llama


def _poisoned(seed, **kwargs):
    model = tiny_llama(seed=seed, **kwargs)
    with torch.no_grad():
        model.lm_head.weight[7] = float("nan")
    return model


@pytest.mark.parametrize("strategy", ["chain", "tree"])  # greedy chains and trees read the flag apart
@pytest.mark.parametrize("runtime", ["specdec", "transformers"])
def test_nan_target_logits_name_the_target(runtime, strategy):
    draft = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1)
    spec = specdec.wrap(_poisoned(0), draft, strategy=strategy, runtime=runtime)
    with pytest.raises(
        NonFiniteLogitsError, match="the target model produced NaN or inf logits at step 0"
    ) as info:
        spec.generate(prompt(5, 0), max_new_tokens=5)
    assert info.value.model == "target" and info.value.step == 0


def test_nan_draft_logits_name_the_draft_and_the_model_recovers():
    target = tiny_llama(seed=0)
    spec = specdec.wrap(target, _poisoned(1, hidden=32, layers=1, heads=2, kv_heads=1), num_draft_tokens=3)
    with pytest.raises(NonFiniteLogitsError, match="the draft model produced NaN or inf logits at step 0"):
        spec.generate(prompt(5, 1), max_new_tokens=5)
    # the same SpeculativeModel, once its draft is repaired, generates exactly again
    with torch.no_grad():
        spec.draft.lm_head.weight[7] = 0.0
    ids = prompt(6, 2)
    assert torch.equal(
        spec.generate(ids, max_new_tokens=12), target.generate(ids, max_new_tokens=12, do_sample=False)
    )


@pytest.mark.parametrize(
    "sampling",
    [dict(top_k=1), dict(top_p=1e-6), dict(temperature=1e-4, top_k=0)],
    ids=["top_k=1", "top_p-single", "temperature-near-0"],
)
@pytest.mark.parametrize("strategy", ["chain", "tree", "auto"])
def test_degenerate_sampling_behaves_like_transformers(sampling, strategy):
    """Sampling settings that leave one token behave as transformers does: the greedy output."""
    target = tiny_llama(seed=0)
    draft = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1)
    spec = specdec.wrap(target, draft, strategy=strategy)
    ids = prompt(6, 4)
    greedy = target.generate(ids, max_new_tokens=15, do_sample=False)
    torch.manual_seed(0)
    theirs = target.generate(ids, max_new_tokens=15, do_sample=True, **sampling)
    ours = spec.generate(
        ids, max_new_tokens=15, do_sample=True, generator=torch.Generator().manual_seed(1), **sampling
    )
    assert torch.equal(theirs, greedy) and torch.equal(ours, greedy)
