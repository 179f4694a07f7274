"""Hypothesis fuzz of the public API: any strategy and options, greedy output equals the target's own."""

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import specdec
from tests.tiny_models import prompt, tiny_llama


@functools.cache
def models():
    target = tiny_llama(seed=0, context=96)
    draft = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1, context=96)
    return target, draft


options = st.fixed_dictionaries(
    {
        "strategy": st.sampled_from(
            ["chain", "tree", "dynamic-tree", "prompt-lookup", "hybrid", "auto", "none"]
        ),
        "k": st.one_of(st.none(), st.integers(1, 6)),
        "tree": st.sampled_from([(2,), (3, 1), (2, 2, 1), [(0,), (1,), (0, 0)], (4, 2, 2, 1)]),
        "budget": st.integers(1, 24),
        "runtime": st.sampled_from(["specdec", "transformers"]),
        "prompt_length": st.integers(1, 40),
        "repeat_prompt": st.booleans(),
        "max_new_tokens": st.integers(1, 30),
        "eos": st.one_of(st.none(), st.integers(3, 95), st.lists(st.integers(3, 95), min_size=1, max_size=3)),
        "repetition_penalty": st.sampled_from([1.0, 1.0, 1.3]),
        "seed": st.integers(0, 10_000),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(options)
def test_greedy_output_equals_target_for_any_options(o):
    target, draft = models()
    ids = prompt(o["prompt_length"], o["seed"])
    if o["repeat_prompt"]:
        ids = torch.cat([ids, ids], dim=1)[:, :80]
    kwargs = {}
    if o["strategy"] == "chain":
        kwargs["num_draft_tokens"] = o["k"]
    if o["strategy"] == "tree":
        kwargs["tree"] = o["tree"]
    if o["strategy"] in ("dynamic-tree", "hybrid"):
        kwargs["tree_budget"] = o["budget"]
    uses_draft = o["strategy"] not in ("prompt-lookup", "none")
    spec = specdec.wrap(
        target, draft if uses_draft else None, strategy=o["strategy"], runtime=o["runtime"], **kwargs
    )
    gen = dict(
        max_new_tokens=o["max_new_tokens"], eos_token_id=o["eos"], repetition_penalty=o["repetition_penalty"]
    )
    expected = target.generate(ids, do_sample=False, pad_token_id=0, **gen)
    if expected.shape[1] > 96:  # past the context: specdec stops there with the documented warning
        with pytest.warns(UserWarning, match=r"context length \(96 positions\)"):
            assert torch.equal(spec.generate(ids, **gen), expected[:, :96])
        return
    assert torch.equal(spec.generate(ids, **gen), expected)
