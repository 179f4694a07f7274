#!/usr/bin/env python
"""Build specdec's embedded default model pair, offline and deterministically, on CPU.

What it makes (in ``specdec/embedded/pair_files/`` unless ``--out`` says otherwise):

* a SentencePiece BPE tokenizer, Llama-style (byte fallback, split digits, ``<unk>``=0, ``<s>``=1,
  ``</s>``=2), trained on the pinned CPython standard-library training files with whitespace preserved
  (identity normalization, no extra-whitespace removal, no dummy prefix, whitespace-only pieces allowed,
  so indentation and newlines round-trip exactly);
* ``target/``: a ``LlamaForCausalLM`` (~16M parameters) trained with next-token cross-entropy;
* ``draft/``: a ``LlamaForCausalLM`` (~2.7M parameters, tied embeddings) distilled from the target with
  KL(p || q) on the target's distribution p;
* both folders in transformers format: config, generation_config (greedy), fp16 safetensors, and the same
  tokenizer (``tokenizer.json``, ``tokenizer_config.json`` and the sentencepiece ``tokenizer.model``);
* ``MANIFEST.json``: sha256 of every file, parameter counts, training times, held-out losses, the
  draft's agreement with the target, versions, and the report of skipped corpus files.

Tokenizer invariant: the transformers tokenizer is saved first, loaded back from its folder, checked to give
exactly sentencepiece's ids on every corpus file and to round-trip the held-out files; the models are then
trained on the ids of that loaded-back tokenizer, so the saved tokenizer reproduces the training ids by
construction (a fingerprint of those ids is kept in the manifest).

Determinism: fixed seeds, pinned file order, a seeded sampler, ``torch.use_deterministic_algorithms``,
step counts fixed in this file (not time-based). Training runs under bfloat16 autocast (fp32 master weights),
which is ~2.5x faster on this CPU; results are reproducible on the same machine and library versions.

Budget: the full build takes about 60-70 minutes with one torch thread on the 2-core development CPU.
Nothing is written to the output folder until the end; a finished pair replaces the old one in one rename.

Usage::

    python benchmarks/make_embedded_pair.py                     # full build into the package
    python benchmarks/make_embedded_pair.py --smoke --out /tmp/pair   # seconds: tiny pipeline check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn.functional as F
import transformers
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from specdec.embedded.corpus import (  # noqa: E402
    HELDOUT_FILES,
    PINNED_PYTHON,
    CorpusFile,
    load_pinned,
    training_files,
)
from specdec.embedded.pair import (  # noqa: E402
    EMBEDDED_PAIR_DIR,
    MANIFEST_NAME,
    heldout_code_prompts,
    sha256_file,
)

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
MAX_POSITIONS = 1024
SEED = 1234
MAX_TOTAL_BYTES = 40_000_000


# --------------------------------------------------------------------------------------------------
# The plan: every size and step count of the build, fixed here.
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """Llama architecture knobs of one model (the rest are LlamaConfig defaults)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    tie_embeddings: bool


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation of one model: AdamW, linear warmup then cosine decay to ``final_lr_frac * peak_lr``."""

    steps: int
    batch_size: int
    seq_len: int  # tokens per row, BOS included
    peak_lr: float
    warmup_steps: int
    final_lr_frac: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0


@dataclass(frozen=True)
class BuildPlan:
    """Everything that decides the result of a build."""

    name: str
    vocab_size: int
    target: ModelSpec
    draft: ModelSpec
    target_train: TrainSpec
    draft_train: TrainSpec
    train_file_stride: int  # 1: every training file; n: every n-th (smoke)
    eval_windows: int  # held-out windows for the final losses / agreement
    progress_eval_windows: int  # held-out windows for the periodic log line
    agreement_prompts: int  # held-out prompts continued greedily by the target
    agreement_new_tokens: int
    log_every: int
    eval_every: int


# Measured on the 2-core dev CPU (other core busy), 1 thread, bf16 autocast: target ~2.5 s/step, distillation
# ~1.25 s/step, setup ~15 s, final evaluation ~25 s: about 62 minutes in all.
FULL = BuildPlan(
    name="full",
    vocab_size=4096,
    target=ModelSpec(
        hidden_size=384,
        intermediate_size=1024,
        num_layers=8,
        num_heads=6,
        num_kv_heads=2,
        tie_embeddings=False,
    ),
    draft=ModelSpec(
        hidden_size=256, intermediate_size=704, num_layers=2, num_heads=4, num_kv_heads=4, tie_embeddings=True
    ),
    target_train=TrainSpec(steps=1100, batch_size=8, seq_len=512, peak_lr=2e-3, warmup_steps=60),
    draft_train=TrainSpec(steps=700, batch_size=8, seq_len=512, peak_lr=3e-3, warmup_steps=30),
    train_file_stride=1,
    eval_windows=64,
    progress_eval_windows=8,
    agreement_prompts=8,
    agreement_new_tokens=96,
    log_every=10,
    eval_every=100,
)

SMOKE = BuildPlan(
    name="smoke",
    vocab_size=1024,
    target=ModelSpec(
        hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1, tie_embeddings=False
    ),
    draft=ModelSpec(
        hidden_size=32, intermediate_size=64, num_layers=1, num_heads=1, num_kv_heads=1, tie_embeddings=True
    ),
    target_train=TrainSpec(steps=6, batch_size=2, seq_len=128, peak_lr=3e-3, warmup_steps=2),
    draft_train=TrainSpec(steps=6, batch_size=2, seq_len=128, peak_lr=3e-3, warmup_steps=2),
    train_file_stride=8,
    eval_windows=4,
    progress_eval_windows=2,
    agreement_prompts=2,
    agreement_new_tokens=16,
    log_every=2,
    eval_every=3,
)


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------
class Log:
    """Timestamped progress lines on stdout (flushed: the full build runs under nohup)."""

    def __init__(self) -> None:
        self.start = time.time()

    def elapsed(self) -> float:
        return time.time() - self.start

    def __call__(self, msg: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {msg}", flush=True)


def count_params(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def lr_at(step: int, spec: TrainSpec) -> float:
    """Linear warmup to ``peak_lr`` then cosine decay to ``final_lr_frac * peak_lr`` at the last step."""
    if step < spec.warmup_steps:
        return spec.peak_lr * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    floor = spec.final_lr_frac
    return spec.peak_lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------
def train_sentencepiece(files: Sequence[CorpusFile], vocab_size: int) -> bytes:
    """Train the BPE model on the non-blank lines of ``files`` (in order); returns the serialized model."""
    lines = [line for f in files for line in f.text.split("\n") if line.strip()]
    model = _BytesSink()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=0.9999,
        byte_fallback=True,
        split_digits=True,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=-1,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_by_whitespace=True,
        max_sentence_length=16384,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


class _BytesSink:
    """Minimal writable for ``SentencePieceTrainer.train(model_writer=...)``."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._chunks.append(data)

    def getvalue(self) -> bytes:
        return b"".join(self._chunks)


def build_hf_tokenizer(sp_model: bytes, folder: Path) -> None:
    """Write the transformers tokenizer (tokenizer.json + config) and ``tokenizer.model`` into ``folder``.

    transformers converts ``tokenizer.model`` into a tokenizers BPE (vocab + merges, byte fallback,
    Metaspace with no prefix space). ``split_special_tokens=True`` makes literal "<s>" / "</s>" in code
    ordinary text, as in sentencepiece (otherwise the converted tokenizer maps them to the special ids).
    """
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        (src / "tokenizer.model").write_bytes(sp_model)
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": True,
            "add_eos_token": False,
            "add_prefix_space": False,
            "legacy": False,
            "split_special_tokens": True,
            "clean_up_tokenization_spaces": False,
            "model_max_length": MAX_POSITIONS,
        }
        (src / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        tokenizer = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
        folder.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(folder))
    (folder / "tokenizer.model").write_bytes(sp_model)


def verify_tokenizer(
    tokenizer, sp: spm.SentencePieceProcessor, train: Sequence[CorpusFile], heldout: Sequence[CorpusFile]
) -> dict[str, object]:
    """Check the loaded-back transformers tokenizer against sentencepiece; raise on any difference.

    Every file: identical ids. Every held-out file: ``decode(encode(text)) == text``. Plus specials.
    """
    mismatched = [
        f.name
        for f in [*train, *heldout]
        if tokenizer.encode(f.text, add_special_tokens=False) != sp.encode(f.text)
    ]
    not_round_trip = [
        f.name
        for f in heldout
        if tokenizer.decode(tokenizer.encode(f.text, add_special_tokens=False)) != f.text
    ]
    specials = (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    if (
        mismatched
        or not_round_trip
        or specials != (UNK_ID, BOS_ID, EOS_ID)
        or len(tokenizer) != sp.get_piece_size()
    ):
        raise RuntimeError(
            f"saved tokenizer disagrees with sentencepiece: ids differ on {mismatched[:5]} "
            f"({len(mismatched)} files), no round trip on {not_round_trip[:5]}, specials {specials}, "
            f"size {len(tokenizer)} vs {sp.get_piece_size()}"
        )
    probe = "<s>x</s>\tdef f():\n    return 'é€😀' # 12345\n\n"
    if tokenizer.encode(probe, add_special_tokens=True) != [BOS_ID, *sp.encode(probe)]:
        raise RuntimeError(
            "saved tokenizer: BOS handling or special-token splitting differs from sentencepiece"
        )
    return {"files_checked_ids": len(train) + len(heldout), "files_checked_round_trip": len(heldout)}


def encode_stream(tokenizer, files: Sequence[CorpusFile]) -> torch.Tensor:
    """Concatenate ``ids(file) + [EOS]`` over files in order: the token stream models train on. [N] int64."""
    ids: list[int] = []
    for f in files:
        ids.extend(tokenizer.encode(f.text, add_special_tokens=False))
        ids.append(EOS_ID)
    return torch.tensor(ids, dtype=torch.int64)


def stream_fingerprint(stream: torch.Tensor) -> str:
    """sha256 of the stream as little-endian int32 (recomputed by the tests from the saved tokenizer)."""
    return hashlib.sha256(stream.to(torch.int32).numpy().astype("<i4").tobytes()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Data: seeded windows over the stream, each row = [BOS] + seq_len-1 stream tokens
# --------------------------------------------------------------------------------------------------
class WindowSampler:
    """Epochs of non-overlapping windows (random phase, random order per epoch) from a seeded generator."""

    def __init__(self, stream: torch.Tensor, seq_len: int, seed: int) -> None:
        self.stream = stream  # [N]
        self.body = seq_len - 1
        if stream.numel() <= self.body:
            raise ValueError(f"stream of {stream.numel()} tokens is shorter than one window")
        self.generator = torch.Generator().manual_seed(seed)
        self.pending: list[int] = []
        self.epochs = 0

    def _new_epoch(self) -> None:
        phase = int(torch.randint(0, self.body, (1,), generator=self.generator))
        count = (self.stream.numel() - phase) // self.body
        if count == 0:
            phase, count = 0, 1
        order = torch.randperm(count, generator=self.generator)
        self.pending = (phase + order * self.body).tolist()
        self.epochs += 1

    def batch(self, batch_size: int) -> torch.Tensor:
        rows = []
        for _ in range(batch_size):
            if not self.pending:
                self._new_epoch()
            start = self.pending.pop()
            rows.append(self.stream[start : start + self.body])
        body = torch.stack(rows)  # [B, seq_len-1]
        bos = torch.full((batch_size, 1), BOS_ID, dtype=body.dtype)
        return torch.cat([bos, body], dim=1)  # [B, seq_len]


def eval_windows(stream: torch.Tensor, seq_len: int, count: int) -> torch.Tensor:
    """``count`` evenly spaced, non-overlapping windows, each [BOS] + seq_len-1 tokens. [count, seq_len]"""
    body = seq_len - 1
    available = stream.numel() // body
    if available == 0:
        raise ValueError("held-out stream shorter than one window")
    picks = torch.linspace(0, available - 1, min(count, available)).round().long().unique().tolist()
    rows = torch.stack([stream[i * body : (i + 1) * body] for i in picks])
    return torch.cat([torch.full((rows.shape[0], 1), BOS_ID, dtype=rows.dtype), rows], dim=1)


# --------------------------------------------------------------------------------------------------
# Models and training
# --------------------------------------------------------------------------------------------------
def make_model(spec: ModelSpec, vocab_size: int, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=spec.tie_embeddings,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        do_sample=False,
    )
    return model


def make_optimizer(model: torch.nn.Module, spec: TrainSpec) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=spec.peak_lr, betas=(0.9, 0.95), eps=1e-8)


def lm_loss(model: LlamaForCausalLM, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over a [B, T] batch (float32 scalar)."""
    logits = model(input_ids=batch).logits[:, :-1].float()  # [B, T-1, V]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def distill_loss(target: LlamaForCausalLM, draft: LlamaForCausalLM, batch: torch.Tensor) -> torch.Tensor:
    """Mean KL(p || q) per position, p = target, q = draft, both at temperature 1 (float32 scalar)."""
    with torch.no_grad():
        log_p = F.log_softmax(target(input_ids=batch).logits.float(), dim=-1)  # [B, T, V]
    log_q = F.log_softmax(draft(input_ids=batch).logits.float(), dim=-1)  # [B, T, V]
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def train(
    model: LlamaForCausalLM,
    spec: TrainSpec,
    sampler: WindowSampler,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    progress: Callable[[], str],
    plan: BuildPlan,
    log: Log,
    label: str,
) -> float:
    """Run ``spec.steps`` optimizer steps under bf16 autocast; returns the training wall time in seconds."""
    model.train()
    optimizer = make_optimizer(model, spec)
    start = time.time()
    running = 0.0
    for step in range(spec.steps):
        lr = lr_at(step, spec)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = sampler.batch(spec.batch_size)  # [B, T]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.detach().item()
        done = step + 1
        if done % plan.log_every == 0 or done == spec.steps:
            spent = time.time() - start
            eta = spent / done * (spec.steps - done)
            count = plan.log_every if done % plan.log_every == 0 else done % plan.log_every
            log(
                f"{label} step {done}/{spec.steps} loss {running / count:.4f} lr {lr:.2e} "
                f"{spent / done:.2f}s/step epoch {sampler.epochs} eta {eta / 60:.1f} min"
            )
            running = 0.0
        if done % plan.eval_every == 0 or done == spec.steps:
            model.eval()
            log(f"{label} step {done} held-out: {progress()}")
            model.train()
    model.eval()
    return time.time() - start


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def heldout_metrics(
    target: LlamaForCausalLM, draft: LlamaForCausalLM | None, windows: torch.Tensor, batch_size: int = 4
) -> dict[str, float]:
    """Held-out next-token losses and the draft's agreement with the target on [N, T] windows.

    top1/top4: the target's argmax is the draft's argmax / among the draft's 4 best tokens.
    expected_acceptance: mean sum_v min(p, q), the acceptance rate of one drafted token when sampling at T=1.
    """
    sums = {"target_loss": 0.0, "draft_loss": 0.0, "top1": 0.0, "top4": 0.0, "expected_acceptance": 0.0}
    count = 0
    for rows in windows.split(batch_size):
        labels = rows[:, 1:]  # [b, T-1]
        p_logits = target(input_ids=rows).logits[:, :-1].float()  # [b, T-1, V]
        sums["target_loss"] += float(F.cross_entropy(p_logits.transpose(1, 2), labels, reduction="sum"))
        if draft is not None:
            q_logits = draft(input_ids=rows).logits[:, :-1].float()  # [b, T-1, V]
            sums["draft_loss"] += float(F.cross_entropy(q_logits.transpose(1, 2), labels, reduction="sum"))
            greedy = p_logits.argmax(-1, keepdim=True)  # [b, T-1, 1]
            top4 = q_logits.topk(4, dim=-1).indices  # [b, T-1, 4]
            sums["top1"] += float((top4[..., :1] == greedy).sum())
            sums["top4"] += float((top4 == greedy).any(-1).sum())
            p, q = p_logits.softmax(-1), q_logits.softmax(-1)
            sums["expected_acceptance"] += float(torch.minimum(p, q).sum(-1).sum())
        count += labels.numel()
    keys = list(sums) if draft is not None else ["target_loss"]
    return {k: sums[k] / count for k in keys}


@torch.no_grad()
def greedy_continuation_agreement(
    target: LlamaForCausalLM, draft: LlamaForCausalLM, tokenizer, prompts: Sequence[str], new_tokens: int
) -> dict[str, float]:
    """The draft's top-1 / top-4 agreement with the target's own greedy continuation of held-out prompts.

    This is the per-token acceptance chance of greedy chain speculation when the prefix is the target's.
    """
    hits1 = hits4 = total = 0
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids  # [1, P]
        out = target.generate(ids, max_new_tokens=new_tokens, do_sample=False)  # [1, P+n]
        cont = out[:, ids.shape[1] :]  # [1, n]
        q_logits = draft(input_ids=out).logits[:, ids.shape[1] - 1 : -1]  # [1, n, V] predicts cont
        top4 = q_logits.topk(4, dim=-1).indices  # [1, n, 4]
        hits1 += int((top4[..., 0] == cont).sum())
        hits4 += int((top4 == cont.unsqueeze(-1)).any(-1).sum())
        total += cont.numel()
    return {"top1": hits1 / max(1, total), "top4": hits4 / max(1, total), "tokens": total}


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------
def save_model(model: LlamaForCausalLM, folder: Path, tokenizer_dir: Path) -> None:
    """fp16 safetensors + config + generation_config, and a byte-identical copy of the tokenizer files."""
    model.half().save_pretrained(str(folder))
    model.float()
    for f in sorted(tokenizer_dir.iterdir()):
        shutil.copy2(f, folder / f.name)
    if not (folder / "model.safetensors").is_file():
        raise RuntimeError(f"expected {folder / 'model.safetensors'} after save_pretrained")


def write_manifest(staging: Path, info: dict[str, object]) -> dict[str, object]:
    """Hash every file under ``staging`` into MANIFEST.json; enforce the size limit."""
    files = {}
    total = 0
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = path.relative_to(staging).as_posix()
        size = path.stat().st_size
        files[rel] = {"sha256": sha256_file(path), "bytes": size}
        total += size
    if total > MAX_TOTAL_BYTES:
        raise RuntimeError(f"pair is {total} bytes, over the {MAX_TOTAL_BYTES} byte limit")
    manifest = {"format": 1, **info, "total_bytes": total, "files": files}
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def publish(staging: Path, out: Path) -> None:
    """Replace ``out`` with a copy of ``staging``: copy beside it, then swap by renames (old removed last)."""
    partial = out.with_name(f".{out.name}.partial")
    old = out.with_name(f".{out.name}.old")
    for leftover in (partial, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    shutil.copytree(staging, partial)
    if out.exists():
        out.rename(old)
    partial.rename(out)
    if old.exists():
        shutil.rmtree(old)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=EMBEDDED_PAIR_DIR, help="output folder (default: package)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--smoke", action="store_true", help="tiny models and steps: checks the pipeline")
    parser.add_argument("--target-steps", type=int, default=None, help="override (speed trials only)")
    parser.add_argument("--draft-steps", type=int, default=None, help="override (speed trials only)")
    parser.add_argument("--no-save", action="store_true", help="train and evaluate but write nothing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if args.target_steps is not None:
        plan = _with_steps(plan, target=args.target_steps)
    if args.draft_steps is not None:
        plan = _with_steps(plan, draft=args.draft_steps)
    out: Path = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if plan is not FULL and out == EMBEDDED_PAIR_DIR.resolve() and not args.no_save:
        raise SystemExit("refusing to write a smoke/trial pair into the package; pass --out or --no-save")

    log = Log()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    transformers.set_seed(SEED)
    log(
        f"plan {plan.name}: python {platform.python_version()} torch {torch.__version__} "
        f"transformers {transformers.__version__} threads {args.threads} -> {out}"
    )

    # 1. corpus (pinned files, hash-checked; held-out never trained on)
    train_sel = load_pinned(training_files()[:: plan.train_file_stride])
    held_sel = load_pinned(HELDOUT_FILES)
    skipped = {"training": train_sel.report(), "heldout": held_sel.report()}
    for kind, report in skipped.items():
        if report["missing"] or report["changed"]:
            log(f"skipped {kind} files: missing {report['missing']} changed {report['changed']}")
    if not train_sel.files or not held_sel.files:
        raise SystemExit("no usable corpus files (pinned hashes match nothing on this install)")
    log(f"corpus: {len(train_sel.files)} training files, {len(held_sel.files)} held-out files")

    # 2. tokenizer: sentencepiece, then the transformers tokenizer loaded back from its saved folder
    sp_model = train_sentencepiece(train_sel.files, plan.vocab_size)
    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    work = Path(tempfile.mkdtemp(prefix="specdec_embedded_pair_"))
    try:
        tok_dir = work / "tokenizer"
        build_hf_tokenizer(sp_model, tok_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        tok_check = verify_tokenizer(tokenizer, sp, train_sel.files, held_sel.files)
        log(
            f"tokenizer: vocab {len(tokenizer)}, "
            f"identical to sentencepiece on {tok_check['files_checked_ids']} files"
        )

        # 3. token streams from the saved tokenizer
        train_stream = encode_stream(tokenizer, train_sel.files)  # [N]
        held_stream = encode_stream(tokenizer, held_sel.files)  # [M]
        train_chars = sum(len(f.text) for f in train_sel.files)
        log(
            f"tokens: train {train_stream.numel()} ({train_chars / train_stream.numel():.2f} chars/token), "
            f"held-out {held_stream.numel()}"
        )
        progress_windows = eval_windows(held_stream, plan.target_train.seq_len, plan.progress_eval_windows)

        # 4. target: next-token cross-entropy
        target = make_model(plan.target, plan.vocab_size, SEED)
        log(f"target: {count_params(target):,} parameters, {plan.target_train.steps} steps")
        target_seconds = train(
            target,
            plan.target_train,
            WindowSampler(train_stream, plan.target_train.seq_len, SEED + 1),
            lambda batch: lm_loss(target, batch),
            lambda: _fmt(heldout_metrics_bf16(target, None, progress_windows)),
            plan,
            log,
            "target",
        )
        target.half().float()  # the teacher and the evaluation use the shipped fp16 weights
        target.requires_grad_(False)

        # 5. draft: distilled from the target, KL(p || q)
        draft = make_model(plan.draft, plan.vocab_size, SEED + 2)
        log(f"draft: {count_params(draft):,} parameters, {plan.draft_train.steps} steps")
        draft_seconds = train(
            draft,
            plan.draft_train,
            WindowSampler(train_stream, plan.draft_train.seq_len, SEED + 3),
            lambda batch: distill_loss(target, draft, batch),
            lambda: _fmt(heldout_metrics_bf16(target, draft, progress_windows)),
            plan,
            log,
            "draft",
        )
        draft.half().float()

        # 6. final evaluation, float32 compute on the fp16 weights
        windows = eval_windows(held_stream, plan.target_train.seq_len, plan.eval_windows)
        metrics = heldout_metrics(target, draft, windows)
        prompts = heldout_code_prompts(
            tokenizer, num_prompts=plan.agreement_prompts, prompt_tokens=64, seed=0
        )
        continuation = greedy_continuation_agreement(
            target, draft, tokenizer, prompts, plan.agreement_new_tokens
        )
        log(f"final held-out: {_fmt(metrics)}; on the target's greedy continuations: {_fmt(continuation)}")

        # 7. save into a staging folder, manifest, then publish in one rename
        info = {
            "plan": plan.name,
            "built_with": {
                "python": platform.python_version(),
                "pinned_python": PINNED_PYTHON,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "sentencepiece": spm.__version__,
                "machine": platform.machine(),
                "threads": args.threads,
                "command": "python benchmarks/make_embedded_pair.py " + " ".join(sys.argv[1:]),
            },
            "tokenizer": {
                "kind": "sentencepiece BPE, byte fallback, split digits, identity normalization, "
                "no dummy prefix",
                "vocab_size": len(tokenizer),
                "unk_bos_eos": [UNK_ID, BOS_ID, EOS_ID],
                **tok_check,
            },
            "corpus": {
                "training_files": len(train_sel.files),
                "heldout_files": len(held_sel.files),
                "training_tokens": train_stream.numel(),
                "heldout_tokens": held_stream.numel(),
                "training_ids_sha256": stream_fingerprint(train_stream),
                "training_file_stride": plan.train_file_stride,
                "skipped": skipped,
            },
            "target": {
                "parameters": count_params(target),
                "spec": asdict(plan.target),
                "train": asdict(plan.target_train),
                "train_seconds": round(target_seconds, 1),
                "heldout_loss": round(metrics["target_loss"], 4),
            },
            "draft": {
                "parameters": count_params(draft),
                "spec": asdict(plan.draft),
                "train": asdict(plan.draft_train),
                "distillation": "KL(p_target || q_draft), temperature 1, on training windows",
                "train_seconds": round(draft_seconds, 1),
                "heldout_loss": round(metrics["draft_loss"], 4),
            },
            "agreement": {
                "heldout_text": {
                    "windows": int(windows.shape[0]),
                    "tokens_per_window": int(windows.shape[1]),
                    "top1": round(metrics["top1"], 4),
                    "top4": round(metrics["top4"], 4),
                    "expected_acceptance_t1": round(metrics["expected_acceptance"], 4),
                },
                "target_greedy_continuation": {
                    "prompts": len(prompts),
                    "prompt_tokens": 64,
                    **{k: round(v, 4) for k, v in continuation.items()},
                },
            },
            "build_seconds": None,  # filled below
        }
        if args.no_save:
            log("--no-save: nothing written")
            return 0
        staging = work / "pair"
        staging.mkdir()
        save_model(target, staging / "target", tok_dir)
        save_model(draft, staging / "draft", tok_dir)
        info["build_seconds"] = round(log.elapsed(), 1)
        manifest = write_manifest(staging, info)
        publish(staging, out)
        log(f"wrote {out} ({manifest['total_bytes'] / 1e6:.1f} MB) in {log.elapsed() / 60:.1f} min")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


@torch.no_grad()
def heldout_metrics_bf16(
    target: LlamaForCausalLM, draft: LlamaForCausalLM | None, windows: torch.Tensor
) -> dict[str, float]:
    """``heldout_metrics`` under bf16 autocast: the cheap periodic check in the progress log."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return heldout_metrics(target, draft, windows)


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


def _with_steps(plan: BuildPlan, target: int | None = None, draft: int | None = None) -> BuildPlan:
    return replace(
        plan,
        name=plan.name if plan.name.endswith("-trial") else f"{plan.name}-trial",
        target_train=replace(plan.target_train, steps=target) if target is not None else plan.target_train,
        draft_train=replace(plan.draft_train, steps=draft) if draft is not None else plan.draft_train,
    )


if __name__ == "__main__":
    raise SystemExit(main())
