"""Bad input gets a clear error naming what is wrong; nothing partial is returned."""

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

import specdec
from specdec.models.vocab import VocabInfo, VocabularyMismatchError, check_vocabularies
from tests.tiny_models import prompt, tiny_llama


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0, context=64)


@pytest.fixture(scope="module")
def spec(target):
    return specdec.wrap(target, tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1))


def test_prompt_plus_new_tokens_past_the_context(spec):
    """Not refused up front: generation stops at the context with a warning naming it."""
    with pytest.warns(UserWarning, match=r"context length \(64 positions\) after 4 new tokens"):
        out = spec.generate(prompt(60, 0), max_new_tokens=5)
    assert out.shape[1] == 64
    out = spec.generate(prompt(60, 0), max_new_tokens=4)  # exactly fits
    assert out.shape[1] == 64
    with pytest.raises(ValueError, match="longer than the target's context of 64"):
        spec.generate(prompt(65, 0), max_new_tokens=1)


@pytest.mark.parametrize("bad", [0, -3])
def test_max_new_tokens_must_be_positive(spec, bad):
    with pytest.raises(ValueError, match="max_new_tokens"):
        spec.generate(prompt(4, 0), max_new_tokens=bad)


@pytest.mark.parametrize("bad", [0, -1])
def test_num_draft_tokens_must_be_at_least_one(target, bad):
    with pytest.raises(ValueError, match="num_draft_tokens must be an integer >= 1"):
        specdec.wrap(target, target, num_draft_tokens=bad)


def test_unknown_strategy(target):
    with pytest.raises(ValueError, match="strategy='beam' is not supported"):
        specdec.wrap(target, target, strategy="beam")


def test_not_a_causal_lm(target):
    bert = BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    )
    with pytest.raises(ValueError, match="the draft must be a transformers causal language model"):
        specdec.wrap(target, bert)
    with pytest.raises(ValueError, match="the target must be a transformers causal language model"):
        specdec.wrap(torch.nn.Linear(2, 2), target)


def test_strategy_and_draft_must_agree(target):
    with pytest.raises(ValueError, match="needs a draft model"):
        specdec.wrap(target, None, strategy="chain")
    with pytest.raises(ValueError, match="uses no draft model"):
        specdec.wrap(target, target, strategy="prompt-lookup")


@pytest.mark.parametrize(
    "option",
    [dict(num_beams=2), dict(num_return_sequences=2), dict(output_attentions=True), dict(stop_strings="x")],
)
def test_unsupported_generate_options_are_named(spec, option):
    name = next(iter(option))
    with pytest.raises(ValueError, match=name):
        spec.generate(prompt(4, 0), max_new_tokens=4, **option)


def test_unknown_generate_keyword_is_named(spec):
    with pytest.raises(ValueError, match="does not support: frobnicate"):
        spec.generate(prompt(4, 0), max_new_tokens=4, frobnicate=True)


def test_attention_mask_problems(spec):
    ids = prompt(5, 0)
    with pytest.raises(ValueError, match="does not match input_ids"):
        spec.generate(ids, attention_mask=torch.ones(1, 4, dtype=torch.long), max_new_tokens=3)
    with pytest.raises(ValueError, match="right padding"):
        spec.generate(ids, attention_mask=torch.tensor([[1, 1, 1, 0, 0]]), max_new_tokens=3)
    with pytest.raises(ValueError, match="masks every prompt token"):
        spec.generate(ids, attention_mask=torch.zeros(1, 5, dtype=torch.long), max_new_tokens=3)


def test_input_ids_shape(spec):
    with pytest.raises(ValueError, match="2-D tensor"):
        spec.generate(torch.tensor([3, 4, 5]), max_new_tokens=3)
    with pytest.raises(ValueError, match="needs input_ids"):
        spec.generate(max_new_tokens=3)


def _tokenizer(words):
    vocab = {w: i for i, w in enumerate(words)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token=words[0])))


def test_vocabulary_mismatch_names_the_first_differing_id():
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(93)]
    other = list(words)
    other[17] = "zzz"
    target = tiny_llama(seed=0)
    draft = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1)
    with pytest.raises(VocabularyMismatchError, match="differ at id 17"):
        specdec.wrap(target, draft, tokenizer=_tokenizer(words), draft_tokenizer=_tokenizer(other))
    # identical tokenizers pass, without the unchecked-ids warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        specdec.wrap(target, draft, tokenizer=_tokenizer(words), draft_tokenizer=_tokenizer(words))


def test_draft_with_extra_ids_past_the_target_is_accepted_and_masked():
    """TinyLlama-Chat-v0.1 (32001 ids) with Llama-2 (32000): the extra id is never proposed."""
    target = tiny_llama(seed=0)
    draft = tiny_llama(vocab=97, hidden=32, layers=1, heads=2, kv_heads=1, seed=1)
    bias = torch.zeros(97)
    bias[96] = 100.0  # the extra id is the draft's favourite everywhere
    draft.lm_head.bias = torch.nn.Parameter(bias)
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(93)]
    spec = specdec.wrap(
        target,
        draft,
        strategy="chain",
        tokenizer=_tokenizer(words),
        draft_tokenizer=_tokenizer(words + ["<pad>"]),
    )
    ids = prompt(5, 0)
    assert int(draft(ids).logits[0, -1].argmax()) == 96
    out = spec.generate(ids, max_new_tokens=15)
    assert torch.equal(out, target.generate(ids, max_new_tokens=15, do_sample=False))
    from specdec.core.sampling import LogitsPipeline

    config, _ = target._prepare_generation_config(None)
    spec._drafter.begin(1)
    (proposal,) = spec._drafter.propose([ids], 4, [LogitsPipeline(config, 5, [])], None)
    assert len(proposal) == 4 and int(proposal.tokens.max()) < 96


def test_vocab_rules_without_tokenizers():
    special = {"bos_token_id": 1, "eos_token_id": 2}
    with pytest.warns(UserWarning, match="token ids were not checked"):
        check_vocabularies(VocabInfo(100, None, special), VocabInfo(101, None, special))
    with pytest.raises(VocabularyMismatchError, match="first differing id: 90"):
        check_vocabularies(VocabInfo(100, None, special), VocabInfo(90, None, special))
    with pytest.raises(VocabularyMismatchError, match="eos_token_id"), pytest.warns(UserWarning):
        check_vocabularies(VocabInfo(100, None, special), VocabInfo(100, None, {"eos_token_id": 3}))
