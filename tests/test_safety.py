"""Loading safety and recovery: pickle needs an opt-in; an exception mid-generation leaves no state."""

import os

import pytest
import torch

import specdec
from tests.tiny_models import prompt, tiny_llama


def test_pickle_checkpoint_needs_explicit_opt_in(tmp_path):
    model = tiny_llama(seed=0)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), os.path.join(tmp_path, "pytorch_model.bin"))
    with pytest.raises(ValueError, match="allow_pickle=True"):
        specdec.wrap(str(tmp_path), None, strategy="prompt-lookup")
    spec = specdec.wrap(str(tmp_path), None, strategy="prompt-lookup", allow_pickle=True)
    ids = prompt(5, 0)
    assert torch.equal(
        spec.generate(ids, max_new_tokens=6), model.generate(ids, max_new_tokens=6, do_sample=False)
    )


def test_safetensors_folder_loads_without_opt_in(tmp_path):
    model = tiny_llama(seed=0)
    model.save_pretrained(tmp_path)
    assert specdec.wrap(str(tmp_path), None, strategy="prompt-lookup").target.config.vocab_size == 96


@pytest.mark.parametrize("error", [RuntimeError("streamer broke"), KeyboardInterrupt()])
@pytest.mark.parametrize("strategy", ["chain", "tree", "auto"])
def test_interrupted_generation_leaves_the_model_correct(strategy, error):
    target = tiny_llama(seed=0)
    draft = tiny_llama(hidden=32, layers=1, heads=2, kv_heads=1, seed=1)
    spec = specdec.wrap(target, draft, strategy=strategy)

    class Breaks:
        calls = 0

        def put(self, value):
            Breaks.calls += 1
            if Breaks.calls == 3:
                raise error

        def end(self):
            pass

    with pytest.raises(type(error)):
        spec.generate(prompt(6, 1), max_new_tokens=30, streamer=Breaks())
    for seed in range(2):
        ids = prompt(4 + seed, 10 + seed)
        expected = target.generate(ids, max_new_tokens=15, do_sample=False)
        assert torch.equal(spec.generate(ids, max_new_tokens=15), expected)


def test_many_calls_reuse_one_cache():
    """Repeated calls reuse the runner's preallocated cache instead of growing new ones."""
    target = tiny_llama(seed=0)
    spec = specdec.wrap(target, target, strategy="chain", num_draft_tokens=3)
    ids = prompt(5, 3)
    spec.generate(ids, max_new_tokens=10)
    keys = [k.data_ptr() for k in spec._target_runner._keys]
    for _ in range(20):
        spec.generate(ids, max_new_tokens=10)
    assert [k.data_ptr() for k in spec._target_runner._keys] == keys
