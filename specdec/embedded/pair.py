"""The embedded default model pair: a small Llama target and a draft distilled from it, shipped in-package.

Both are ``LlamaForCausalLM`` checkpoints in transformers format (fp16 safetensors) sharing one Llama-style
SentencePiece BPE tokenizer, trained on CPython standard-library code by
``python benchmarks/make_embedded_pair.py``. They let the library run its main job, with real numbers, on a
machine without a GPU or network; the same code runs unchanged on real TinyLlama / Llama-2 checkpoints.

Contract:
* ``load_embedded_pair()`` checks every file against ``MANIFEST.json`` (sha256) before loading, offline, and
  raises ``EmbeddedPairError`` (a ``RuntimeError``) naming the rebuild command if anything is missing or
  corrupted. It loads only the listed files (a ``chat_template.jinja`` or ``special_tokens_map.json``
  dropped into the folder has no effect), through ``load_causal_lm`` like ``wrap()``.
* ``heldout_code_prompts()`` cuts prompts at run time from the held-out standard-library files of the
  running Python (hash-checked; files missing or different are skipped), never from training files.
* The tokenizer adds ``<s>`` (id 1) by default, has no pad token, and no dummy prefix space: decoding any
  slice of ids gives exactly the text those ids cover, so streamed pieces can be concatenated.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
import weakref
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from specdec.embedded.corpus import HELDOUT_FILES, load_pinned
from specdec.models.loading import load_causal_lm

EMBEDDED_PAIR_DIR = Path(__file__).resolve().parent / "pair_files"
"""Folder of the shipped pair: ``target/``, ``draft/`` and ``MANIFEST.json``."""

MANIFEST_NAME = "MANIFEST.json"
REBUILD_COMMAND = "python benchmarks/make_embedded_pair.py"
_REQUIRED = tuple(
    f"{model}/{name}"
    for model in ("target", "draft")
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
    )
)


class EmbeddedPairError(RuntimeError):
    """The embedded pair is missing, incomplete or corrupted (its files do not match MANIFEST.json)."""


class EmbeddedPair(NamedTuple):
    """What ``load_embedded_pair`` returns; unpacks as ``target, draft, tokenizer``."""

    target: PreTrainedModel
    draft: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def _fail(folder: Path, problem: str) -> EmbeddedPairError:
    return EmbeddedPairError(
        f"embedded model pair at {folder}: {problem}. Rebuild it with `{REBUILD_COMMAND}` "
        "(offline, about 70 minutes on one CPU core) or restore the files from the repository."
    )


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(folder: Path) -> tuple[dict[str, Any], dict[str, tuple[str, int]]]:
    """The parsed manifest and its file entries (name -> (sha256, bytes)), names checked to stay inside."""
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise _fail(folder, f"{MANIFEST_NAME} not found")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        entries = {name: (str(e["sha256"]), int(e["bytes"])) for name, e in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _fail(folder, f"{MANIFEST_NAME} is unreadable ({exc})") from exc
    absent = [name for name in _REQUIRED if name not in entries]
    if absent:
        raise _fail(folder, f"{MANIFEST_NAME} does not list {absent}")
    for name in entries:
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise _fail(folder, f"{MANIFEST_NAME} names a file outside the folder: {name!r}")
    return manifest, entries


def _check_files(root: Path, entries: dict[str, tuple[str, int]], folder: Path, strip: str = "") -> None:
    """Every listed file (its name less the prefix `strip`) under `root` has its listed size and sha256;
    errors name `folder` and the listed name."""
    for name, (sha, size) in entries.items():
        file = root / PurePosixPath(name[len(strip) :])
        if not file.is_file():
            raise _fail(folder, f"missing file {name}")
        if file.stat().st_size != size or sha256_file(file) != sha:
            raise _fail(folder, f"file {name} does not match its sha256 in {MANIFEST_NAME} (corrupted)")


def verify_embedded_pair(path: str | Path | None = None) -> dict[str, Any]:
    """Check every file of the pair against its MANIFEST.json entry; return the parsed manifest.

    ``path`` defaults to the shipped ``EMBEDDED_PAIR_DIR``. Raises ``EmbeddedPairError`` if the folder or
    the manifest is missing or unreadable, a required file is absent, or any sha256 / size differs.
    Files the manifest does not list are not checked here; ``load_embedded_pair`` never reads them.
    """
    folder = Path(EMBEDDED_PAIR_DIR if path is None else path)
    manifest, entries = _read_manifest(folder)
    _check_files(folder, entries, folder)
    return manifest


def _sealed_copy(folder: Path, entries: dict[str, tuple[str, int]], model: str) -> Path:
    """A fresh temporary folder holding only the files the manifest lists under ``model/``, hash-checked
    after copying (the bytes checked are the bytes loaded)."""
    prefix = f"{model}/"
    listed = {name: entry for name, entry in entries.items() if name.startswith(prefix)}
    sealed = Path(tempfile.mkdtemp(prefix=f"specdec-pair-{model}-"))
    try:
        for name in listed:
            source = folder / PurePosixPath(name)
            if not source.is_file():
                raise _fail(folder, f"missing file {name}")
            destination = sealed / PurePosixPath(name).relative_to(model)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
        _check_files(sealed, listed, folder, strip=prefix)
    except BaseException:
        shutil.rmtree(sealed, ignore_errors=True)
        raise
    return sealed


def load_embedded_pair(
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", path: str | Path | None = None
) -> EmbeddedPair:
    """Load the embedded (target, draft, tokenizer) offline, after checking the manifest hashes.

    Models come back in ``eval()`` mode, in ``dtype`` (weights are stored in fp16), on ``device``.
    ``path`` defaults to the shipped pair. Raises ``EmbeddedPairError`` if the pair is missing or corrupted.
    Only the files ``MANIFEST.json`` lists are read: they are copied into a private temporary folder
    per model (kept while the model lives, so its tokenizer can still be found there) and loaded from
    it, through the same loading function as ``wrap()``; anything else in ``path`` is ignored.
    """
    folder = Path(EMBEDDED_PAIR_DIR if path is None else path)
    _manifest, entries = _read_manifest(folder)
    models = []
    sealed = {}
    for name in ("target", "draft"):
        sealed[name] = _sealed_copy(folder, entries, name)
        try:
            model = load_causal_lm(str(sealed[name]), name, dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as exc:
            shutil.rmtree(sealed[name], ignore_errors=True)
            raise _fail(folder, f"transformers could not load {name}/ ({exc})") from exc
        weakref.finalize(model, shutil.rmtree, str(sealed[name]), ignore_errors=True)
        models.append(model.to(device).eval())
    tokenizer = AutoTokenizer.from_pretrained(
        str(sealed["target"]), local_files_only=True, trust_remote_code=False
    )
    return EmbeddedPair(target=models[0], draft=models[1], tokenizer=tokenizer)


def heldout_code_prompts(
    tokenizer: PreTrainedTokenizerBase,
    num_prompts: int = 8,
    prompt_tokens: int = 128,
    seed: int = 0,
    root: str | Path | None = None,
) -> list[str]:
    """Cut ``num_prompts`` code prompts of exactly ``prompt_tokens`` tokens from held-out stdlib files.

    Each prompt starts at the beginning of a non-blank line of a held-out file (see
    ``stdlib_corpus.HELDOUT_FILES``) found under ``root`` (default: this interpreter's stdlib) with its
    pinned sha256, and is the exact text that ``prompt_tokens`` tokens cover (``<s>`` not counted); the file
    continues after it. The same tokenizer, seed and files give the same prompts; prompts are distinct.
    Raises ``RuntimeError`` if no held-out file is available or too few prompts can be cut.
    """
    if num_prompts < 0 or prompt_tokens < 1:
        raise ValueError(f"need num_prompts >= 0 and prompt_tokens >= 1, got {num_prompts}, {prompt_tokens}")
    files = load_pinned(HELDOUT_FILES, None if root is None else Path(root)).files
    if not files and num_prompts:
        raise RuntimeError("no held-out standard-library file with its pinned hash was found on this Python")
    rng = random.Random(seed)
    line_starts: dict[str, list[int]] = {}
    prompts: list[str] = []
    seen: set[tuple[str, int]] = set()
    attempts = 0
    while len(prompts) < num_prompts:
        attempts += 1
        if attempts > 50 * num_prompts + 100:
            raise RuntimeError(
                f"could only cut {len(prompts)} of {num_prompts} prompts of {prompt_tokens} tokens"
            )
        file = rng.choice(files)
        text = file.text
        if file.name not in line_starts:
            line_starts[file.name] = _nonblank_line_starts(text)
        starts = line_starts[file.name]
        if not starts:
            continue
        start = rng.choice(starts)
        if (file.name, start) in seen:
            continue
        seen.add((file.name, start))
        window = text[start : start + 16 * prompt_tokens + 64]
        ids = tokenizer.encode(window, add_special_tokens=False)
        if len(ids) <= prompt_tokens:  # too close to the end of the file: no continuation left
            continue
        prompt = tokenizer.decode(ids[:prompt_tokens])
        if not window.startswith(prompt):  # a cut inside a multi-byte character
            continue
        prompts.append(prompt)
    return prompts


def heldout_quote_prompts(
    tokenizer: PreTrainedTokenizerBase,
    num_prompts: int = 8,
    quote_tokens: int = 96,
    seed: int = 0,
    root: str | Path | None = None,
) -> list[str]:
    """Prompts that quote their context, cut at run time from held-out files ("edit this code"):
    a held-out snippet of about `quote_tokens` tokens, then a comment asking for it again with its
    first line, so a faithful continuation copies the snippet (where n-gram drafting shines)."""
    snippets = heldout_code_prompts(tokenizer, num_prompts, quote_tokens, seed=seed + 1000, root=root)
    prompts = []
    for snippet in snippets:
        first_line = snippet.split("\n", 1)[0]
        prompts.append(f"{snippet}\n\n# The same code again, unchanged:\n{first_line}\n")
    return prompts


def _nonblank_line_starts(text: str) -> list[int]:
    """Offsets of the first character of every line that holds more than whitespace."""
    starts, offset = [], 0
    for line in text.splitlines(keepends=True):
        if line.strip():
            starts.append(offset)
        offset += len(line)
    return starts
