"""Greedy speculative output is token-identical to the target's own greedy generate() (float32)."""

import pytest
import torch

import specdec
from tests.tiny_models import prompt, tiny_llama


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def unrelated_draft():
    return tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1)


@pytest.fixture(scope="module")
def other_shape_draft():
    # different depth, width and GQA ratio (8 query heads over 2 KV heads)
    return tiny_llama(hidden=48, layers=3, heads=8, kv_heads=2, seed=2)


def reference(model, ids, **kwargs):
    return model.generate(ids, do_sample=False, **kwargs)


@pytest.mark.parametrize("k", [None, 1, 3, 6])
@pytest.mark.parametrize("seed", range(3))
def test_unrelated_draft_matches_target(target, unrelated_draft, k, seed):
    ids = prompt(3 + 5 * seed, seed)
    max_new = [17, 32, 9][seed]
    expected = reference(target, ids, max_new_tokens=max_new)
    spec = specdec.wrap(target, unrelated_draft, num_draft_tokens=k)
    out = spec.generate(ids, max_new_tokens=max_new)
    assert torch.equal(out, expected)
    assert spec.stats.new_tokens == expected.shape[1] - ids.shape[1]


def test_draft_equal_to_target_accepts_everything(target):
    ids = prompt(6, 11)
    expected = reference(target, ids, max_new_tokens=40, eos_token_id=None)
    spec = specdec.wrap(target, target, num_draft_tokens=4)
    out = spec.generate(ids, max_new_tokens=40, eos_token_id=None)
    assert torch.equal(out, expected)
    stats = spec.stats
    assert stats.accepted_tokens == stats.drafted_tokens > 0
    assert stats.tau == pytest.approx(40 / stats.target_passes)
    assert stats.target_passes == 8  # 40 tokens, 5 per pass
    assert stats.acceptance_per_position == [1.0] * 4


def test_unrelated_draft_is_mostly_rejected(target, unrelated_draft):
    ids = prompt(5, 12)
    spec = specdec.wrap(target, unrelated_draft, num_draft_tokens=3)
    spec.generate(ids, max_new_tokens=40, eos_token_id=None)
    assert spec.stats.acceptance_rate < 0.3


@pytest.mark.parametrize("k", [None, 2, 5])
def test_draft_with_other_shape_and_gqa_matches_target(target, other_shape_draft, k):
    for seed in range(3):
        ids = prompt(4 + seed, 20 + seed)
        expected = reference(target, ids, max_new_tokens=25)
        out = specdec.wrap(target, other_shape_draft, num_draft_tokens=k).generate(ids, max_new_tokens=25)
        assert torch.equal(out, expected)


@pytest.mark.parametrize("k", [None, 4])
def test_prompt_lookup_matches_target(target, k):
    # a repetitive prompt so that n-gram matches exist
    base = prompt(6, 30)
    ids = torch.cat([base, base, base[:, :3]], dim=1)
    expected = reference(target, ids, max_new_tokens=30)
    spec = specdec.wrap(target, None, strategy="prompt-lookup", num_draft_tokens=k)
    out = spec.generate(ids, max_new_tokens=30)
    assert torch.equal(out, expected)
    assert spec.stats.drafted_tokens > 0


def test_eos_inside_an_accepted_block_ends_output_where_target_stops(target):
    ids = prompt(5, 40)
    free = reference(target, ids, max_new_tokens=30, eos_token_id=None)
    new = free[0, ids.shape[1] :].tolist()
    eos = new[9]  # a token the target emits at step 10 (maybe earlier too)
    expected = reference(target, ids, max_new_tokens=30, eos_token_id=eos)
    assert expected.shape[1] < free.shape[1]
    spec = specdec.wrap(target, target, num_draft_tokens=6)  # all accepted: EOS lands inside a block
    out = spec.generate(ids, max_new_tokens=30, eos_token_id=eos)
    assert torch.equal(out, expected)
    # a list of EOS ids works too
    out = spec.generate(ids, max_new_tokens=30, eos_token_id=[95, eos])
    assert torch.equal(out, reference(target, ids, max_new_tokens=30, eos_token_id=[95, eos]))


@pytest.mark.parametrize("max_new", [1, 2, 7, 13])
def test_max_new_tokens_is_met_exactly(target, max_new):
    ids = prompt(4, 50)
    spec = specdec.wrap(target, target, num_draft_tokens=5)
    out = spec.generate(ids, max_new_tokens=max_new, eos_token_id=None)
    assert out.shape[1] == ids.shape[1] + max_new
    assert torch.equal(out, reference(target, ids, max_new_tokens=max_new, eos_token_id=None))


def test_max_length_counts_the_prompt(target, unrelated_draft):
    ids = prompt(6, 51)
    expected = reference(target, ids, max_length=20, eos_token_id=None)
    out = specdec.wrap(target, unrelated_draft).generate(ids, max_length=20, eos_token_id=None)
    assert out.shape[1] == 20 and torch.equal(out, expected)


def test_processors_see_each_positions_own_context(target, unrelated_draft):
    """Repetition penalty and min_new_tokens change the argmax per position."""
    ids = prompt(5, 60)
    kwargs = dict(max_new_tokens=30, repetition_penalty=1.8, no_repeat_ngram_size=2)
    expected = reference(target, ids, **kwargs)
    assert torch.equal(specdec.wrap(target, target, num_draft_tokens=4).generate(ids, **kwargs), expected)
    assert torch.equal(specdec.wrap(target, unrelated_draft).generate(ids, **kwargs), expected)
    # min_new_tokens: EOS suppressed until the minimum length
    free = reference(target, ids, max_new_tokens=30, eos_token_id=None)
    eos = free[0, ids.shape[1] + 2].item()
    kwargs = dict(max_new_tokens=30, eos_token_id=eos, min_new_tokens=12)
    expected = reference(target, ids, **kwargs)
    assert torch.equal(specdec.wrap(target, target, num_draft_tokens=5).generate(ids, **kwargs), expected)


def test_left_padding_and_scores_like_transformers(target):
    ids = prompt(6, 70)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], dim=1)
    expected = reference(target, padded, attention_mask=mask, max_new_tokens=12, pad_token_id=0)
    spec = specdec.wrap(target, target, num_draft_tokens=3)
    out = spec.generate(padded, attention_mask=mask, max_new_tokens=12, pad_token_id=0)
    assert torch.equal(out, expected)

    kwargs = dict(max_new_tokens=10, return_dict_in_generate=True, output_scores=True, output_logits=True)
    ref = target.generate(ids, do_sample=False, **kwargs)
    got = spec.generate(ids, **kwargs)
    assert torch.equal(got.sequences, ref.sequences)
    assert len(got.scores) == len(ref.scores) == 10
    for mine, theirs in zip(got.scores, ref.scores, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-4)
    for mine, theirs in zip(got.logits, ref.logits, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-4)


def test_streamer_receives_prompt_then_every_new_token(target):
    class Collect:
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, value):
            self.chunks.append(value.flatten().tolist())

        def end(self):
            self.ended = True

    ids = prompt(4, 80)
    streamer = Collect()
    out = specdec.wrap(target, target, num_draft_tokens=3).generate(ids, max_new_tokens=11, streamer=streamer)
    assert streamer.ended and streamer.chunks[0] == ids[0].tolist()
    assert sum(streamer.chunks[1:], []) == out[0, ids.shape[1] :].tolist()


def test_generation_config_object_and_stopping_criteria(target):
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    class StopAfter(StoppingCriteria):
        def __init__(self, length):
            self.length = length

        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)

    ids = prompt(4, 90)
    config = GenerationConfig(max_new_tokens=20, do_sample=False, eos_token_id=None)
    criteria = StoppingCriteriaList([StopAfter(ids.shape[1] + 7)])
    expected = target.generate(ids, generation_config=config, stopping_criteria=criteria)
    out = specdec.wrap(target, target, num_draft_tokens=5).generate(
        ids, generation_config=config, stopping_criteria=criteria
    )
    assert torch.equal(out, expected) and out.shape[1] == ids.shape[1] + 7


def test_draft_in_another_dtype_still_exact(target):
    draft = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=3).to(torch.bfloat16)
    ids = prompt(5, 91)
    expected = reference(target, ids, max_new_tokens=20)
    out = specdec.wrap(target, draft, num_draft_tokens=3).generate(ids, max_new_tokens=20)
    assert torch.equal(out, expected)


def test_consecutive_calls_reuse_the_model_correctly(target, unrelated_draft):
    spec = specdec.wrap(target, unrelated_draft)
    for seed in range(4):
        ids = prompt(3 + seed, 100 + seed)
        assert torch.equal(spec.generate(ids, max_new_tokens=12), reference(target, ids, max_new_tokens=12))


def test_no_speculation_baseline_matches_target(target):
    ids = prompt(5, 110)
    spec = specdec.wrap(target, None, strategy="none")
    out = spec.generate(ids, max_new_tokens=15, eos_token_id=None)
    assert torch.equal(out, reference(target, ids, max_new_tokens=15, eos_token_id=None))
    assert spec.stats.drafted_tokens == 0 and spec.stats.target_passes == 15
