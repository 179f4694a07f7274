"""`--tensor-parallel` for `specdec generate` and `specdec bench` (layer L7).

Under `torchrun --nproc-per-node N specdec ...` every rank runs the same command: the target is loaded
split over the ranks by transformers' tensor parallelism, the draft whole on every rank, and every rank
runs the same speculative loop (see `specdec.runtime.distributed`). Only rank 0 writes output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

LAUNCH = "torchrun --nproc-per-node N specdec ..."


def add_tensor_parallel_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tensor-parallel",
        action="store_true",
        help="split the target over the ranks of a torchrun launch (transformers' tp_plan='auto'; "
        f"launch as `{LAUNCH}`), the draft whole on every rank; with --device cuda each rank uses "
        "cuda:LOCAL_RANK; only rank 0 prints",
    )


def rank() -> int:
    """This process's rank in a torchrun launch (RANK), 0 outside one."""
    return int(os.environ.get("RANK", "0") or 0)


def check_args(args: argparse.Namespace) -> None:
    """CommandError for --tensor-parallel outside torchrun or together with --device-map."""
    from specdec.cli.commands import CommandError

    if not getattr(args, "tensor_parallel", False):
        return
    if args.device_map is not None:
        raise CommandError(
            "--tensor-parallel and --device-map both place the target; use one of them (--tensor-parallel "
            "splits it over the ranks of a torchrun launch, --device-map over this process's devices)"
        )
    if not os.environ.get("WORLD_SIZE"):
        raise CommandError(
            f"--tensor-parallel needs one process per device: launch under `{LAUNCH}` "
            "(or python -m torch.distributed.run); WORLD_SIZE is not set in this process"
        )


def _is_cuda(args: argparse.Namespace) -> bool:
    return torch.device(args.device or "cpu").type == "cuda"


def _init_process_group(args: argparse.Namespace) -> bool:
    """Initialise torch.distributed from torchrun's environment unless it already is; whether it was
    initialised here (nccl with --device cuda, on cuda:LOCAL_RANK; gloo otherwise)."""
    if dist.is_initialized():
        return False
    if _is_cuda(args):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if _is_cuda(args) else "gloo")
    return True


@contextmanager
def _silenced() -> Iterator[None]:
    """stdout and stderr (file descriptors 1 and 2, so also C-level and progress output) to /dev/null
    for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


@contextmanager
def tensor_parallel_session(args: argparse.Namespace) -> Iterator[None]:
    """Around a command: checks the flags (CommandError), and with --tensor-parallel initialises the
    process group (destroyed at the end if initialised here) and silences every rank but rank 0 (an
    error still propagates, and the command line prints it tagged with the rank)."""
    check_args(args)
    if not getattr(args, "tensor_parallel", False):
        yield
        return
    created = _init_process_group(args)
    try:
        if rank() == 0:
            yield
        else:
            with _silenced():
                yield
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def load_tensor_parallel_models(args: argparse.Namespace, dtype: torch.dtype | None, policy: dict):
    """(target split over the ranks, draft whole or None, tokenizer); the embedded pair without --target."""
    from specdec.models.loading import load_causal_lm, load_tokenizer, tensor_parallel_kwargs

    split = tensor_parallel_kwargs()
    if args.target is None:
        target, draft, tokenizer = _embedded_tensor_parallel(dtype or torch.float32, split)
    else:
        target = load_causal_lm(args.target, "target", dtype, None, **policy, **split)
        tokenizer = load_tokenizer(args.target, "target", trust_remote_code=args.trust_remote_code)
        draft = None
    if args.draft is not None:
        draft = load_causal_lm(args.draft, "draft", dtype, None, **policy)
    return target, None if draft is None else draft.to(target.device), tokenizer


def _embedded_tensor_parallel(dtype: torch.dtype, split: dict):
    """The embedded pair with its target reloaded split over the ranks, from a copy of the hash-checked
    private folder `load_embedded_pair` loaded it from (that folder goes with the whole target; the copy
    stays while the split target lives, so its tokenizer is still found beside it)."""
    from specdec.embedded.pair import load_embedded_pair
    from specdec.models.loading import load_causal_lm

    whole, draft, tokenizer = load_embedded_pair(dtype=dtype, device="cpu")
    folder = tempfile.mkdtemp(prefix="specdec-pair-target-tp-")
    shutil.copytree(whole.name_or_path, folder, dirs_exist_ok=True)
    del whole
    try:
        target = load_causal_lm(folder, "target", dtype, None, local_files_only=True, **split)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(target, shutil.rmtree, folder, ignore_errors=True)
    return target, draft, tokenizer
