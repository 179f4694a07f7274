"""One host sync per step: how often generate() reads values computed on the device.

On CUDA every such read stalls the host until the GPU catches up, so the engine gathers everything
the host needs from a step into one read. On this CPU machine the reads are found by taint
(tests/device_reads.py): the models' weights are marked, and any read of a value computed from
them (or from a random draw) is counted.
"""

import pytest
import torch

import specdec
from specdec.core import acceptance
from specdec.planning.costs import CostProfile
from tests.device_reads import DeviceReads, mark_device_values
from tests.tiny_models import prompt, tiny_llama


@pytest.fixture(scope="module")
def pair():
    target, draft = tiny_llama(seed=0), tiny_llama(hidden=32, layers=1, seed=1)
    mark_device_values(target, draft)
    return target, draft


def _prompts(batch: int) -> dict:
    """generate()'s prompt arguments: one prompt, or `batch` left-padded prompts of 12, 9, 6, ... ids."""
    if batch == 1:
        return {"inputs": prompt(12, 0)}
    ids = torch.zeros(batch, 12, dtype=torch.long)
    mask = torch.zeros(batch, 12, dtype=torch.long)
    for b in range(batch):
        n = 12 - 3 * b
        ids[b, 12 - n :], mask[b, 12 - n :] = prompt(n, b)[0], 1
    return {"inputs": ids, "attention_mask": mask}


def _reads_and_steps(
    model: specdec.SpeculativeModel, do_sample: bool, batch: int = 1
) -> tuple[DeviceReads, int]:
    """Reads during a generation of `batch` rows, and its steps (target passes, whatever B)."""
    options = {"do_sample": do_sample, **({"temperature": 0.8} if do_sample else {}), "eos_token_id": None}
    model.generate(**_prompts(batch), max_new_tokens=4, **options)  # first call: cost calibration
    with DeviceReads() as reads:
        model.generate(**_prompts(batch), max_new_tokens=24, **options)
    return reads, model.stats.batched_passes


def test_the_counter_sees_reads_of_device_values_only(pair):
    target, _ = pair
    with DeviceReads() as reads:
        logits = target(prompt(5, 0)).logits  # [1, 5, V] computed from the weights
        host = torch.arange(4)
        int(host[1]), host.tolist(), bool(host.any())  # host values: not counted
        int(logits.argmax()), logits[0, 0].tolist()  # two reads of device values
        picked = torch.multinomial(torch.ones(4), 1)  # a random draw is a device value
        [0, 1, 2, 3][picked]  # indexing with it reads it
    assert reads.count == 3, reads.where


@pytest.mark.parametrize("batch", [1, 4], ids=["B1", "B4"])
@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampling"])
@pytest.mark.parametrize(
    "strategy, options",
    [("chain", {"num_draft_tokens": 4}), ("chain", {}), ("prompt-lookup", {})],
    ids=["chain-k4", "chain-adaptive", "prompt-lookup"],
)
def test_chains_and_prompt_lookup_read_the_device_once_per_step(pair, strategy, options, do_sample, batch):
    target, draft = pair
    model = specdec.wrap(target, None if strategy == "prompt-lookup" else draft, strategy, **options)
    reads, steps = _reads_and_steps(model, do_sample, batch)
    # one per step, plus one per generation: generate() checks the prompt's ids against the vocabulary
    # before any forward pass; prompt lookup also reads each row's prompt ids once per generation
    allowed = steps + 1 + (batch if strategy == "prompt-lookup" else 0)
    assert steps >= 3 and reads.count <= allowed, (steps, reads.where)  # >= 3: at most 9 tokens a step


@pytest.mark.parametrize("batch", [1, 4], ids=["B1", "B4"])
@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampling"])
@pytest.mark.parametrize(
    "strategy, options", [("tree", {"tree": (2, 2, 1)}), ("dynamic-tree", {})], ids=["static", "dynamic"]
)
def test_model_trees_read_the_device_once_per_draft_depth_and_once_per_step(
    pair, strategy, options, do_sample, batch, monkeypatch
):
    monkeypatch.setattr(acceptance, "WALK_ON_CPU", False)  # the rule's device form, as on a GPU
    target, draft = pair
    model = specdec.wrap(target, draft, strategy, **options)
    if batch > 1:  # batched static trees cut their depth by measured costs: keep the whole tree
        model.cost_profiles[batch] = CostProfile(
            draft_level_seconds=1e-4, verify_seconds={1: 0.01, 65: 0.0101}
        )
    reads, steps = _reads_and_steps(model, do_sample, batch)
    # the tree's shape below a depth depends on the tokens chosen above it: one read per depth
    depth = model.config.max_depth  # levels the draft explores (a dynamic tree then prunes)
    # + 1: generate() checks the prompt's ids against the vocabulary once per generation
    assert steps >= 3 and reads.count <= steps * (depth + 1) + 1, (steps, depth, reads.where)
