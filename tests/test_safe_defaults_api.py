"""Safe defaults of the Python API (issue 17, items 2 and 5).

One SpeculativeModel shared by threads gives every thread the target's exact output; bad ids, wrong
types and non-integral lengths are refused at wrap() / SpecConfig / generate() with a message naming
the argument and the value, before any forward pass.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import pytest
import torch

import specdec
from specdec import SpecConfig
from tests.tiny_models import VOCAB, prompt, tiny_llama


@functools.cache
def models():
    target = tiny_llama(seed=0, context=64, eos=None)
    draft = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1, context=64, eos=None)
    return target, draft


@functools.cache
def spec() -> specdec.SpeculativeModel:
    target, draft = models()
    return specdec.wrap(target, draft, num_draft_tokens=3)


def target_greedy(ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    return models()[0].generate(ids, max_new_tokens=max_new_tokens, do_sample=False)


# ----------------------------------------------------------------------- one spec, several threads
THREADS, CALLS = 4, 10


def test_one_spec_shared_by_four_threads_gives_every_thread_the_exact_output():
    """4 threads x 10 greedy calls of different prompt lengths on one SpeculativeModel; every output
    equals target.generate, and each thread's spec.stats is its own last call's."""
    calls = [(prompt(3 + 2 * c, 100 + c), 4 + c % 5) for c in range(CALLS)]  # prompts of 3..21 tokens
    wanted = [target_greedy(ids, new) for ids, new in calls]
    # every thread makes the 10 calls, each thread starting at another one (other lengths at once)
    jobs = [[calls[(t * 3 + c) % CALLS] for c in range(CALLS)] for t in range(THREADS)]
    expected = [[wanted[(t * 3 + c) % CALLS] for c in range(CALLS)] for t in range(THREADS)]
    shared = spec()
    results: list[list] = [[None] * CALLS for _ in range(THREADS)]
    start = threading.Barrier(THREADS)

    def run(t: int) -> None:
        start.wait()
        for c, (ids, new) in enumerate(jobs[t]):
            try:
                out = shared.generate(ids, max_new_tokens=new)
                results[t][c] = (out, shared.stats.new_tokens)
            except Exception as error:  # noqa: BLE001 - reported below with the call it came from
                results[t][c] = error

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = [(t, c, r) for t in range(THREADS) for c, r in enumerate(results[t]) if isinstance(r, Exception)]
    assert not errors, f"{len(errors)} calls raised, first: {errors[0]!r}"
    wrong = [
        (t, c)
        for t in range(THREADS)
        for c in range(CALLS)
        if not torch.equal(results[t][c][0], expected[t][c])
    ]
    assert not wrong, f"{len(wrong)} of {THREADS * CALLS} outputs differ from the target's"
    stats = [results[t][c][1] == jobs[t][c][1] for t in range(THREADS) for c in range(CALLS)]
    assert all(stats), "a thread read another call's stats"


def test_generate_from_inside_generate_is_refused():
    """A streamer that calls generate() on the same object gets a clear error, not a deadlock."""

    class Reentrant:
        def __init__(self) -> None:
            self.error: Exception | None = None

        def put(self, value) -> None:
            if self.error is None:
                try:
                    spec().generate(prompt(3, 1), max_new_tokens=2)
                except RuntimeError as error:
                    self.error = error

        def end(self) -> None:
            pass

    streamer = Reentrant()
    spec().generate(prompt(4, 2), max_new_tokens=3, streamer=streamer)
    assert streamer.error is not None and "from inside a generate() call" in str(streamer.error)


# --------------------------------------------------------------- bad input named, before any pass
@pytest.fixture
def forward_calls():
    """Counts forward calls of every module of the target and the draft while a test runs."""
    calls = []
    hooks = [
        module.register_forward_pre_hook(lambda *_: calls.append(1))
        for model in models()
        for module in model.modules()
    ]
    yield calls
    for hook in hooks:
        hook.remove()


@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 1000, -1])
def test_ids_out_of_range_are_named(forward_calls, bad):
    ids = prompt(5, 3)
    ids[0, 2] = bad
    with pytest.raises(
        ValueError, match=rf"input_ids holds token id {bad} at \[0, 2\], outside the target's"
    ):
        spec().generate(ids, max_new_tokens=3)
    batch = torch.cat([prompt(5, 4), ids])
    with pytest.raises(ValueError, match=rf"token id {bad} at \[1, 2\]"):
        spec().generate(batch, max_new_tokens=3)
    assert not forward_calls


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(max_new_tokens=2.5), r"max_new_tokens must be an integer, got 2\.5"),
        (dict(max_new_tokens=True), r"max_new_tokens must be an integer, got True"),
        (dict(max_length=12.0), r"max_length must be an integer, got 12\.0"),
        (dict(max_new_tokens=4, min_new_tokens=1.5), r"min_new_tokens must be an integer, got 1\.5"),
        (
            dict(max_new_tokens=4, attention_mask=[[1, 1, 1, 1, 1]]),
            r"attention_mask must be a torch\.Tensor.*list",
        ),
        (
            dict(max_new_tokens=4, attention_mask=torch.full((1, 5), 2)),
            r"attention_mask must hold 1 .* got 2",
        ),
    ],
)
def test_wrong_generate_arguments_are_named(forward_calls, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        spec().generate(prompt(5, 5), **kwargs)
    assert not forward_calls


def test_float_ids_are_named(forward_calls):
    with pytest.raises(ValueError, match=r"input_ids must hold integer token ids, got dtype torch\.float32"):
        spec().generate(prompt(5, 6).float(), max_new_tokens=3)
    with pytest.raises(ValueError, match=r"input_ids must be a 2-D tensor \[batch, length\], got list"):
        spec().generate([[5, 6, 7]], max_new_tokens=3)
    assert not forward_calls


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_integer_ids_of_any_dtype_are_accepted(dtype):
    ids = prompt(6, 7)
    out = spec().generate(ids.to(dtype), max_new_tokens=4)
    assert out.dtype == torch.int64 and torch.equal(out, target_greedy(ids, 4))


@pytest.mark.parametrize(
    "options, pattern",
    [
        (dict(num_draft_tokens=True), r"num_draft_tokens must be an integer >= 1 .*got True"),
        (dict(num_draft_tokens=2.0), r"num_draft_tokens must be an integer >= 1 .*got 2\.0"),
        (dict(max_draft_tokens=False), r"max_draft_tokens must be an integer >= 1, got False"),
        (dict(strategy="tree", tree=(2, 1), max_draft_tokens="4"), r"max_draft_tokens .* got '4'"),
        (dict(strategy="prompt-lookup", prompt_lookup_max_ngram=2.5), r"prompt_lookup_max_ngram .* got 2\.5"),
        (dict(strategy="dynamic-tree", tree_budget=True), r"tree_budget must be an integer .* got True"),
        (dict(strategy=None), r"strategy=None is not supported"),
    ],
)
def test_wrong_spec_config_types_are_named(options, pattern):
    with pytest.raises(ValueError, match=pattern):
        SpecConfig(**options)


def test_numpy_integers_are_plain_ints_in_the_config():
    config = SpecConfig(num_draft_tokens=np.int64(3), max_draft_tokens=np.int32(5))
    assert type(config.num_draft_tokens) is int and type(config.max_draft_tokens) is int


def test_wrap_names_wrong_types_before_loading_anything(forward_calls):
    target, draft = models()
    with pytest.raises(ValueError, match=r"num_draft_tokens must be an integer >= 1 .*got True"):
        specdec.wrap(target, draft, num_draft_tokens=True)
    with pytest.raises(ValueError, match=r"allow_pickle must be True or False, got 'no'"):
        specdec.wrap("/nonexistent/target", None, strategy="prompt-lookup", allow_pickle="no")
    assert not forward_calls
