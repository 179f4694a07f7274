"""A target split by transformers' tensor parallelism (gloo, 2 CPU processes), the draft replicated.

Every rank runs the same speculative loop, on specdec's own runner (the default: each rank holds its
heads' share of the KV cache, transformers' sharded projections all-reduce) and on transformers' forward:
greedy output equals the tensor-parallel target's own generate() for chain, tree and auto, and a seeded
sampling run commits the same tokens on both ranks (plans come from rank 0's cost profile, not each
rank's clock).
"""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import specdec
from specdec.models.loading import tensor_parallel_kwargs
from specdec.runtime.distributed import is_tensor_parallel
from specdec.runtime.llama_runner import LlamaRunner
from specdec.runtime.runner import CausalRunner
from tests.tiny_models import prompt, tiny_llama

WORLD = 2
NEW_TOKENS = 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_tensor_parallel(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, **tensor_parallel_kwargs()).eval()


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        _checks(rank, folder)
    finally:
        dist.destroy_process_group()


def _checks(rank: int, folder: str) -> None:
    from transformers import AutoModelForCausalLM

    target = _load_tensor_parallel(f"{folder}/target")
    draft = AutoModelForCausalLM.from_pretrained(f"{folder}/draft").eval()
    assert is_tensor_parallel(target)
    assert not is_tensor_parallel(draft)
    ids = prompt(12, seed=3)
    with torch.inference_mode():
        expected = target.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    results: dict[str, list[int]] = {}
    runners = {"auto": LlamaRunner, "transformers": CausalRunner}
    for runtime, strategy in [("auto", s) for s in ("chain", "tree", "auto")] + [("transformers", "tree")]:
        spec = specdec.wrap(target, draft, strategy=strategy, runtime=runtime)
        runner = spec._target_runner
        assert type(runner) is runners[runtime], (runtime, strategy)
        out = spec.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        assert torch.equal(out, expected), (rank, runtime, strategy, out.tolist(), expected.tolist())
        assert spec.stats.runtime == ("specdec" if runtime == "auto" else "transformers")
        if runtime == "auto":  # this rank's key/value heads only: 2 of the target's 4 query / 2 kv heads
            assert runner._keys[0].shape[1] == 1 and runner._heads == 2, runner._keys[0].shape
        sampled = spec.generate(
            ids, max_new_tokens=NEW_TOKENS, do_sample=True, generator=torch.Generator().manual_seed(7)
        )
        results[f"{runtime}-{strategy}"] = sampled[0].tolist()
    # the same seeded run on either runner commits the same tokens (the logits agree to float32 rounding)
    assert results["auto-tree"] == results["transformers-tree"], results

    # specdec's runner: one all-reduce per block (after o_proj and after down_proj), none of its own
    runner = specdec.wrap(target, draft, strategy="chain")._target_runner
    calls = []
    reduce = dist.all_reduce

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return reduce(*args, **kwargs)

    dist.all_reduce = counted
    try:
        runner.reset(1)
        runner.extend_rows(ids, [ids.shape[1]], None, None, 1)
    finally:
        dist.all_reduce = reduce
    layers = target.config.num_hidden_layers
    assert len(calls) == 2 * layers and all(c == (1, ids.shape[1], 64) for c in calls), calls
    gathered: list[dict | None] = [None] * WORLD
    dist.all_gather_object(gathered, results)
    assert all(g == gathered[0] for g in gathered), gathered

    # max_time: every rank stops where rank 0's clock says; here rank 1's own limit has run out at once,
    # and stopping there alone would leave rank 0 waiting in its next pass's collective
    spec = specdec.wrap(target, draft, strategy="chain")
    limit = 60.0 if rank == 0 else 0.0
    assert torch.equal(
        spec.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, max_time=limit), expected
    )

    # ranks holding different drafts: the same error on every rank
    other = tiny_llama(hidden=32, layers=2 if rank == 1 else 1, heads=2, kv_heads=2, seed=1)
    with pytest.raises(ValueError, match=r"the ranks disagree on the draft model: rank\(s\) 1"):
        specdec.wrap(target, other, strategy="chain")

    # bad input: compiled passes, CUDA graphs, a split draft (on every rank, no collective left hanging)
    with pytest.raises(ValueError, match='runtime="compiled" does not take tensor-parallel targets'):
        specdec.wrap(target, draft, strategy="chain", runtime="compiled")
    with pytest.raises(ValueError, match="without CUDA graphs"):
        LlamaRunner(target, cuda_graphs=True)
    with pytest.raises(ValueError, match="the draft must be a whole model on every rank"):
        specdec.wrap(draft, target, strategy="chain")
    Path(folder, f"done{rank}.json").write_text(json.dumps(results))


def test_tensor_parallel_target_gloo(tmp_path):
    if not dist.is_available():
        pytest.skip("torch built without torch.distributed")
    tiny_llama(heads=4, kv_heads=2, seed=0).save_pretrained(tmp_path / "target")
    tiny_llama(hidden=32, layers=1, heads=2, kv_heads=2, seed=1).save_pretrained(tmp_path / "draft")
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    done = [json.loads((tmp_path / f"done{rank}.json").read_text()) for rank in range(WORLD)]
    assert done[0] == done[1]


def test_tensor_parallel_target_needs_a_process_group():
    """DTensor weights (here: transformers' tensor-parallel size) without torch.distributed initialised."""
    target, draft = tiny_llama(), tiny_llama(seed=1)
    target._tp_size = 2
    with pytest.raises(ValueError, match="torch.distributed is not initialised"):
        specdec.wrap(target, draft, strategy="chain")


def test_tensor_parallel_size_that_splits_heads_is_refused(monkeypatch):
    """A shard count that does not divide the heads (here 3 for 4 query / 2 key-value heads, the weights
    posing as split over 3 ranks) is refused before any cache is made, naming both head counts."""
    import specdec.runtime.llama_runner as llama_runner

    monkeypatch.setattr(llama_runner, "shard_count", lambda weight: 3)
    with pytest.raises(ValueError, match=r"size 3 must divide the attention heads \(4 query, 2"):
        LlamaRunner(tiny_llama(heads=4, kv_heads=2))
