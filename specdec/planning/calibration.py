"""Measuring a CostProfile with a few dummy forward passes of the target and the drafter (layer L5)."""

from __future__ import annotations

import functools
import time
import warnings
from pathlib import Path

import torch
from transformers import GenerationConfig

from specdec.core.sampling import LogitsPipeline
from specdec.core.tree import Tree
from specdec.drafters.base import Drafter
from specdec.planning.costs import CostProfile, split_draft_costs
from specdec.runtime.runner import Runner

#: CPU flags (Linux /proc/cpuinfo) that give a fast matmul per half-precision dtype.
FAST_HALF_FLAGS = {
    torch.bfloat16: ("amx_bf16", "avx512_bf16"),
    torch.float16: ("amx_fp16", "avx512_fp16"),
}


@functools.cache
def _cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags, or None where /proc/cpuinfo cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return None


def fast_half_matmul(dtype: torch.dtype) -> bool | None:
    """Whether this CPU multiplies `dtype` (bf16 / fp16) matrices in hardware (AMX or AVX512 half
    instructions); True for float32 and other dtypes, None where the flags cannot be read."""
    flags = FAST_HALF_FLAGS.get(dtype)
    if flags is None:
        return True
    cpu = _cpu_flags()
    return None if cpu is None else any(flag in cpu for flag in flags)


def warn_slow_half_precision(dtype: torch.dtype, device: torch.device, stacklevel: int = 2) -> bool:
    """Warn (one line, never raise) when `dtype` is bf16 / fp16 on a CPU without fast matmuls for it;
    returns whether it warned."""
    if device.type != "cpu" or fast_half_matmul(dtype) is not False:
        return False
    name = str(dtype).removeprefix("torch.")
    warnings.warn(
        f"{name} on a CPU without hardware {name} matmul (no {' / '.join(FAST_HALF_FLAGS[dtype])}): "
        "float32 may be faster",
        UserWarning,
        stacklevel=stacklevel,
    )
    return True


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


#: Verification sizes a profile measures (piecewise-linear in between).
VERIFY_SIZES = (1, 2, 3, 5, 9, 17, 33, 65, 129)


def _median_seconds(
    run, device: torch.device, repeats: int, pause: float = 0.0, before=None, after=None
) -> float:
    """Median wall time of `run()` over `repeats` timed calls after one warm-up call; `before()` and
    `after()` (untimed) set up and undo each call, and a `pause` precedes each timed call."""
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        if before is not None:
            before()
        _synchronize(device)
        time.sleep(pause)
        start = time.perf_counter()
        run()
        _synchronize(device)
        times.append(time.perf_counter() - start)
        if after is not None:
            after()
    return _median(times[1:])


def measure_costs(
    target: Runner,
    drafter: Drafter,
    max_verify_tokens: int,
    batch_size: int = 1,
    repeats: int = 3,
    prompt_tokens: int = 256,
    pause: float = 0.002,
) -> CostProfile:
    """Costs at `batch_size` rows: target verification of 1, 2, 3, 5, 9, ... tokens per row (up to
    max_verify_tokens, with an explicit attention mask as trees use) after a dummy prompt, and the
    draft model's proposals of a 1-token chain, a 4-token chain and a (4, 2, 2) tree in every row,
    split into a per-step, per-level and per-node cost (`split_draft_costs`). Leaves both caches
    empty (one row).

    Each timed pass follows a `pause` (seconds) as real steps follow the host's own work: on a CPU,
    back-to-back passes run warm (threads spinning, caches hot) and measured 20-30% faster than the
    same passes in a generation, and more so for 1 token than for 9, which skews the planner towards
    large drafts. The prompt is as long as a typical one (256 tokens, within the context)."""
    context = min(target.context_length or 4096, drafter.context_length or 4096)
    prompt_tokens = max(1, min(prompt_tokens, context // 2, context - max_verify_tokens - 1))
    vocab = target.vocab_size
    prompt = (torch.arange(prompt_tokens) * 5 % max(vocab - 3, 1) + 3).to(target.device)  # [P]
    prompts = prompt.expand(batch_size, -1)  # [B, P]
    sizes = [n for n in VERIFY_SIZES if n <= max(max_verify_tokens, 1)]
    profile = CostProfile()
    target.reset(batch_size)
    target.extend_rows(prompts, [prompt_tokens] * batch_size, None, None, 1)
    for n in sizes:
        tokens = (torch.arange(n) * 7 % max(vocab - 3, 1) + 3).to(target.device)  # [n]
        tokens = tokens.expand(batch_size, -1)  # [B, n]
        positions = torch.arange(prompt_tokens, prompt_tokens + n).expand(batch_size, -1)  # [B, n]
        mask = torch.tril(torch.ones(1, n, n, dtype=torch.bool))  # [1, n, n]
        profile.verify_seconds[n] = _median_seconds(
            lambda tokens=tokens, positions=positions, mask=mask, n=n: target.extend_rows(
                tokens, [n] * batch_size, positions, mask, n
            ),
            target.device,
            repeats,
            pause,
            after=lambda: target.compact_rows([prompt_tokens] * batch_size, [[]] * batch_size),
        )
    target.reset(1)

    model = getattr(drafter, "model", drafter)  # a hybrid drafter's draft model
    if model.uses_model:
        pipelines = [LogitsPipeline(GenerationConfig(do_sample=False), prompt_tokens, [])] * batch_size
        sequences = [prompt[None]] * batch_size  # [1, P] each
        model.begin(batch_size)
        wide = Tree.from_branching((4, 2, 2))  # 4 + 8 + 16 nodes; two wide levels fed

        def proposal_seconds(tree: Tree) -> float:
            return _median_seconds(
                lambda: model.propose(sequences, tree.depth, pipelines, None, tree=tree),
                target.device,
                repeats,
                pause,
                # the draft has seen all but the last prompt token of every row
                before=lambda: model.observe([prompt_tokens - 1] * batch_size, [()] * batch_size),
            )

        chain1, chain4 = proposal_seconds(Tree.chain(1)), proposal_seconds(Tree.chain(4))
        step, level, node = split_draft_costs(chain1, chain4, proposal_seconds(wide), wide.depth, len(wide))
        profile.draft_step_seconds, profile.draft_level_seconds, profile.draft_node_seconds = (
            step,
            level,
            node,
        )
        model.begin(1)
    return profile
