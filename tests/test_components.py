"""Units below the engine: runner rollback, prompt lookup matching, the draft-length controller."""

import torch

from specdec.drafters.prompt_lookup import find_continuation
from specdec.planning.chain import DraftLengthController, expected_tokens
from specdec.runtime.runner import CausalRunner
from tests.tiny_models import prompt, tiny_llama


def test_runner_rollback_gives_the_logits_of_a_fresh_forward():
    model = tiny_llama(seed=0)
    runner = CausalRunner(model)
    ids = prompt(12, 0)[0]
    runner.extend(ids[:8], num_logits=1)
    runner.extend(torch.tensor([5, 6, 7, 8]), num_logits=4)  # a rejected block
    runner.truncate(8)
    assert runner.length == 8
    got = runner.extend(ids[8:], num_logits=4)  # [4, V]
    with torch.no_grad():
        full = model(ids[None]).logits[0, -4:]
    assert torch.allclose(got, full, atol=1e-5)


def test_find_continuation_prefers_longest_then_latest_full_match():
    seq = torch.tensor([1, 2, 3, 9, 9, 5, 2, 3, 4, 4, 7, 1, 2, 3])
    # last 3 tokens [1, 2, 3] occur at 0 -> continuation [9, 9, 5]
    assert find_continuation(seq, 3, 3, 1).tolist() == [9, 9, 5]
    seq2 = torch.tensor([2, 3, 4, 8, 2, 3, 6, 1, 2, 3])
    # [1,2,3] does not occur earlier; [2,3] occurs at 0 and 4 -> latest with 2 tokens after it
    assert find_continuation(seq2, 2, 3, 1).tolist() == [6, 1]
    # a loop: the latest match has 1 token after it, an earlier one has k
    loop = torch.tensor([7, 5, 5, 5, 5, 5, 5])
    assert find_continuation(loop, 3, 1, 1).tolist() == [5, 5, 5]
    # no match with k tokens after it: the earliest match gives the longest continuation
    assert find_continuation(torch.tensor([4, 6, 8, 4, 6, 9, 4]), 5, 1, 1).tolist() == [6, 8, 4, 6, 9]
    assert find_continuation(torch.tensor([4, 5, 6]), 3, 3, 1).numel() == 0
    assert find_continuation(torch.tensor([4]), 3, 3, 1).numel() == 0


def test_expected_tokens_formula():
    assert expected_tokens(0.0, 5) == 1.0
    assert expected_tokens(1.0, 5) == 6.0
    assert abs(expected_tokens(0.5, 2) - 1.75) < 1e-12


def test_controller_drafts_long_when_acceptance_high_and_draft_cheap():
    c = DraftLengthController(max_k=8)
    assert c.choose() == 4  # before any measurement
    for _ in range(20):
        c.observe(num_drafted=4, num_accepted=4, draft_time=0.001, verify_time=0.02)
    assert c.choose() == 8
    low = DraftLengthController(max_k=8)
    for _ in range(20):
        low.observe(num_drafted=4, num_accepted=0, draft_time=0.005, verify_time=0.02)
    assert low.choose() == 1
    fixed = DraftLengthController(max_k=8, fixed_k=3)
    fixed.observe(4, 4, 0.001, 0.02)
    assert fixed.choose() == 3


def test_controller_weighs_the_cost_of_verifying_more_tokens():
    c = DraftLengthController(max_k=6)
    for k in range(1, 7):
        c.observe(num_drafted=k, num_accepted=k // 2, draft_time=0.0, verify_time=0.01 * (k + 1))
    # verification cost grows linearly with tokens: only short drafts pay at this acceptance
    assert c.choose() <= 2
