"""generate() semantics that match transformers 5's own generate() (issue 16, item 4).

Each case compares spec.generate with target.generate on tiny random Llama models (float32, CPU):
no length argument, max_new_tokens past the context, user processors / stopping criteria of a
built type, left-padded rows with length- and history-dependent processors, id dtypes and inputs.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from transformers import (
    EosTokenCriteria,
    GenerationConfig,
    LogitsProcessorList,
    MaxLengthCriteria,
    MaxTimeCriteria,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteriaList,
)

import specdec
from tests.tiny_models import prompt, tiny_llama

CONTEXT = 32


@functools.cache
def models():
    """target and an unrelated small draft, no EOS (generations run to their length limit)."""
    target = tiny_llama(seed=0, context=CONTEXT, eos=None)
    draft = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1, context=CONTEXT, eos=None)
    return target, draft


#: fixed shapes: no cost calibration, so each SpeculativeModel is quick to build and reused
SHAPES = {"chain": dict(num_draft_tokens=3), "tree": dict(tree=(2, 2, 1)), "prompt-lookup": {}}


@functools.cache
def wrap(strategy: str = "chain") -> specdec.SpeculativeModel:
    target, draft = models()
    draft = None if strategy == "prompt-lookup" else draft
    return specdec.wrap(target, draft, strategy=strategy, **SHAPES[strategy])


def target_generate(ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return models()[0].generate(ids, do_sample=False, **kwargs)


# ------------------------------------------------------------------- (a) no length argument at all
@pytest.mark.parametrize("length", [7, 25])
def test_no_length_argument_gives_the_configs_new_tokens(length):
    """transformers 5: max_length of the generation config (20) counts NEW tokens, capped at
    max_position_embeddings (a 25-token prompt in a 32-position context gets 7)."""
    ids = prompt(length, length)
    expected = target_generate(ids)
    assert expected.shape[1] == min(length + 20, CONTEXT)
    with pytest.warns(UserWarning, match="no max_new_tokens or max_length given"):
        out = wrap().generate(ids)
    assert torch.equal(out, expected)


def test_a_prompt_filling_the_default_length_is_refused_like_transformers():
    ids = prompt(CONTEXT, 3)
    with pytest.raises(ValueError):
        target_generate(ids)
    with pytest.raises(ValueError, match="leaves no room"):
        wrap().generate(ids)


def test_an_explicit_max_length_stays_absolute():
    ids = prompt(9, 4)
    config = GenerationConfig(max_length=30, do_sample=False)
    out = wrap().generate(ids, generation_config=config)
    assert out.shape[1] == 30 and torch.equal(out, target_generate(ids, generation_config=config))


# ---------------------------------------------------------- (b) max_new_tokens past the context
@pytest.mark.parametrize("strategy", ["chain", "tree", "prompt-lookup"])
def test_max_new_tokens_past_the_context_stops_there_with_a_warning(strategy):
    """Never refused up front: the target goes on past max_position_embeddings; specdec stops at the
    context with a warning naming it, and what it returns is the target's output up to there."""
    ids = prompt(24, 5)
    expected = target_generate(ids, max_new_tokens=12)  # [1, 36]: transformers goes past 32
    with pytest.warns(UserWarning, match=r"context length \(32 positions\) after 8 new tokens"):
        out = wrap(strategy).generate(ids, max_new_tokens=12)
    assert torch.equal(out, expected[:, :CONTEXT])


def test_a_prompt_as_long_as_the_context_returns_it_with_the_warning():
    ids = prompt(CONTEXT, 6)
    with pytest.warns(UserWarning, match="after 0 new tokens"):
        out = wrap().generate(ids, max_new_tokens=5)
    assert torch.equal(out, ids)


def test_batch_rows_stop_at_the_context_each_with_the_target_alone():
    """Row 0 (24 tokens) reaches the context after 8 tokens, row 1 (8 tokens, left-padded) gets its
    12; every row equals the target alone, finished rows are padded."""
    long, short = prompt(24, 7), prompt(8, 8)
    ids = torch.cat([long, torch.cat([torch.zeros(1, 16, dtype=torch.long), short], dim=1)])  # [2, 24]
    mask = torch.ones_like(ids)
    mask[1, :16] = 0
    with pytest.warns(UserWarning, match=r"\(row 0\) stopped at the target's context length"):
        out = wrap().generate(ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0)
    assert out.shape == (2, 36)
    row0 = target_generate(long, max_new_tokens=12)[:, :CONTEXT]
    assert torch.equal(out[0, :CONTEXT], row0[0]) and not out[0, CONTEXT:].any()
    assert torch.equal(out[1, 16:], target_generate(short, max_new_tokens=12)[0])


# ------------------------------------------------- (c) user processors / criteria of a built type
def test_a_user_processor_of_a_built_type_replaces_it():
    """The user's penalty 0.2 (repeats favoured) replaces the config's 5.0; applying both would
    cancel out (x / 5 / 0.2 = x)."""
    ids = prompt(12, 9)
    user = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(0.2)])
    kwargs = dict(max_new_tokens=16, repetition_penalty=5.0, logits_processor=user)
    expected = target_generate(ids, **kwargs)
    assert not torch.equal(expected, target_generate(ids, max_new_tokens=16))
    assert torch.equal(wrap().generate(ids, **kwargs), expected)
    assert torch.equal(wrap("tree").generate(ids, **kwargs), expected)


class _WantsMore:
    """A user processor that needs an argument generate() does not pass."""

    def __call__(self, input_ids, scores, step_weight):
        return scores * step_weight


def test_processors_are_called_as_transformers_calls_them():
    """Two-argument processors run directly (one call each, per tree node); one that wants more
    arguments fails as in transformers' generate(), with its ValueError."""
    ids = prompt(12, 11)
    kwargs = dict(max_new_tokens=12, repetition_penalty=1.3, min_new_tokens=12)
    expected = target_generate(ids, **kwargs)
    assert torch.equal(wrap("tree").generate(ids, **kwargs), expected)
    user = LogitsProcessorList([_WantsMore()])
    with pytest.raises(ValueError, match="required parameters") as theirs:
        target_generate(ids, max_new_tokens=4, logits_processor=user)
    with pytest.raises(ValueError, match="required parameters") as ours:
        wrap("tree").generate(ids, max_new_tokens=4, logits_processor=user)
    assert str(ours.value) == str(theirs.value)


def test_a_user_max_length_criterion_replaces_max_new_tokens():
    """transformers: the user's MaxLengthCriteria replaces the one built from max_new_tokens, so a
    longer user limit wins (10 new tokens, not 3)."""
    ids = prompt(8, 10)
    criteria = StoppingCriteriaList([MaxLengthCriteria(max_length=18)])
    expected = target_generate(ids, max_new_tokens=3, stopping_criteria=criteria)
    assert expected.shape[1] == 18
    assert torch.equal(wrap().generate(ids, max_new_tokens=3, stopping_criteria=criteria), expected)


def test_a_user_eos_criterion_replaces_the_configs_eos():
    ids = prompt(6, 80)
    free = target_generate(ids, max_new_tokens=16)[0, 6:].tolist()
    config_eos, user_eos = free[1], free[10]  # the user's EOS comes later in the free run
    assert user_eos not in free[:10]
    criteria = StoppingCriteriaList([EosTokenCriteria(eos_token_id=user_eos)])
    kwargs = dict(max_new_tokens=16, eos_token_id=config_eos, stopping_criteria=criteria, pad_token_id=0)
    expected = target_generate(ids, **kwargs)
    assert expected[0, -1] == user_eos
    assert torch.equal(wrap().generate(ids, **kwargs), expected)


@pytest.mark.parametrize("how", ["max_time", "criterion"])
def test_max_time_stops_after_the_step_that_ran_out(how):
    """max_time=0 (or a user MaxTimeCriteria replacing it) has run out after the first step: the
    output is the target's, cut after that step's tokens."""
    ids = prompt(6, 15)
    kwargs = dict(max_time=0.0) if how == "max_time" else {}
    if how == "criterion":
        kwargs["stopping_criteria"] = StoppingCriteriaList([MaxTimeCriteria(max_time=0.0)])
    out = wrap().generate(ids, max_new_tokens=20, **kwargs)
    assert 7 <= out.shape[1] <= 6 + 4  # one step: 1 to k + 1 = 4 tokens
    assert torch.equal(out, target_generate(ids, max_new_tokens=20)[:, : out.shape[1]])


# ------------------------------------------------------------ (d) left-padded rows and processors
PADDED_CASES = {
    # the model repeats 60 (seed 82): a padding of 60s already holds the bigram (60, 60)
    "no_repeat_ngram": (82, 60, dict(no_repeat_ngram_size=2)),
    # EOS = the second free token (46): allowed from the 2nd new token on by the padded length
    # (4 + 6 + 1 >= 11), not before the 6th by the length without padding
    "min_length": (80, 0, dict(min_length=11, eos_token_id=46)),
    # 5.17 penalizes padding tokens, 5.24 leaves them out; either way as this transformers does
    "repetition_penalty": (80, 65, dict(repetition_penalty=2.0)),
}


def padded(seed: int, pad: int, padding: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    ids = prompt(6, seed)
    row = torch.cat([torch.full((1, padding), pad), ids], dim=1)  # [1, padding + 6]
    mask = torch.cat([torch.zeros(1, padding, dtype=torch.long), torch.ones_like(ids)], dim=1)
    return row, mask


@pytest.mark.parametrize("case", sorted(PADDED_CASES))
@pytest.mark.parametrize("strategy", ["chain", "tree"])
def test_processors_see_a_left_padded_row_with_its_padding(case, strategy):
    seed, pad, options = PADDED_CASES[case]
    ids, mask = padded(seed, pad)
    kwargs = dict(attention_mask=mask, max_new_tokens=16, pad_token_id=pad, **options)
    expected = target_generate(ids, **kwargs)
    assert torch.equal(wrap(strategy).generate(ids, **kwargs), expected)


@pytest.mark.parametrize("case", ["no_repeat_ngram", "min_length"])
def test_batch_rows_see_their_padding(case):
    """Each row of a batch as transformers' processors see it: its own padding, the batch's length."""
    seed, pad, options = PADDED_CASES[case]
    row0, mask0 = padded(seed, pad)
    row1 = prompt(10, 90)
    ids, mask = torch.cat([row0, row1]), torch.cat([mask0, torch.ones_like(row1)])
    kwargs = dict(max_new_tokens=16, pad_token_id=pad, **options)
    out = wrap().generate(ids, attention_mask=mask, **kwargs)
    for b in range(2):
        alone = target_generate(ids[b : b + 1], attention_mask=mask[b : b + 1], **kwargs)[0]
        got = out[b, : alone.shape[0]]
        assert torch.equal(got, alone), f"row {b}"
        assert (out[b, alone.shape[0] :] == pad).all()


# ---------------------------------------------------------------------- (e) dtypes and inputs
def test_int32_ids_are_accepted_and_the_output_is_int64():
    ids = prompt(7, 11)
    expected = target_generate(ids.int(), max_new_tokens=6)
    assert expected.dtype == torch.int64
    out = wrap().generate(ids.int(), max_new_tokens=6)
    assert out.dtype == torch.int64 and torch.equal(out, expected)
    batch = torch.cat([ids, prompt(7, 12)]).int()
    assert wrap().generate(batch, max_new_tokens=4).dtype == torch.int64


def test_inputs_embeds_alone_is_refused_by_name():
    target, _ = models()
    embeds = target.get_input_embeddings()(prompt(5, 13))
    with pytest.raises(ValueError, match="inputs_embeds is not supported"):
        wrap().generate(inputs_embeds=embeds, max_new_tokens=3)


def test_synced_gpus_false_is_accepted_and_true_refused():
    ids = prompt(5, 14)
    out = wrap().generate(ids, max_new_tokens=4, synced_gpus=False)
    assert torch.equal(out, target_generate(ids, max_new_tokens=4))
    with pytest.raises(ValueError, match="synced_gpus=True is not supported"):
        wrap().generate(ids, max_new_tokens=4, synced_gpus=True)
