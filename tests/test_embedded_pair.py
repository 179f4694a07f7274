"""The embedded model pair: loads offline, tokenizer reproduces the training ids, corruption is caught.

Runs against the shipped pair (``specdec/embedded/pair_files``); set ``SPECDEC_EMBEDDED_PAIR`` to a folder
built with ``benchmarks/make_embedded_pair.py --smoke --out DIR`` to check the pipeline on a smoke build.
Nothing here writes into the shipped folder: corruption tests work on a temporary copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

sentencepiece = pytest.importorskip("sentencepiece")
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: E402

from specdec.embedded.corpus import (  # noqa: E402
    HELDOUT_FILES,
    PINNED_FILES,
    load_pinned,
    training_files,
)
from specdec.embedded.pair import (  # noqa: E402
    EMBEDDED_PAIR_DIR,
    MANIFEST_NAME,
    REBUILD_COMMAND,
    EmbeddedPairError,
    heldout_code_prompts,
    load_embedded_pair,
    verify_embedded_pair,
)

BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def pair_dir() -> Path:
    folder = Path(os.environ.get("SPECDEC_EMBEDDED_PAIR", EMBEDDED_PAIR_DIR))
    if not (folder / MANIFEST_NAME).is_file():
        pytest.fail(f"no embedded pair at {folder}: build it with `{REBUILD_COMMAND}`")
    return folder


@pytest.fixture(scope="module")
def manifest(pair_dir: Path) -> dict:
    return verify_embedded_pair(pair_dir)


@pytest.fixture(scope="module")
def tokenizer(pair_dir: Path):
    return AutoTokenizer.from_pretrained(str(pair_dir / "target"), local_files_only=True)


@pytest.fixture(scope="module")
def sp(pair_dir: Path):
    return sentencepiece.SentencePieceProcessor(model_file=str(pair_dir / "target" / "tokenizer.model"))


@pytest.fixture(scope="module")
def heldout():
    files = load_pinned(HELDOUT_FILES).files
    if not files:
        pytest.skip("no held-out stdlib file with its pinned hash on this Python")
    return files


# ---------------------------------------------------------------------------------------------------------
# corpus constants
# ---------------------------------------------------------------------------------------------------------
def test_pinned_corpus_and_split_are_consistent():
    names = [name for name, _ in PINNED_FILES]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert all(len(sha) == 64 for _, sha in PINNED_FILES)
    assert set(HELDOUT_FILES) <= set(names) and len(set(HELDOUT_FILES)) == len(HELDOUT_FILES)
    assert not set(HELDOUT_FILES) & set(training_files())
    assert len(training_files()) + len(HELDOUT_FILES) == len(PINNED_FILES)


def test_load_pinned_skips_missing_and_changed_files(tmp_path: Path):
    present, changed, absent = HELDOUT_FILES[:3]
    for name in (present, changed):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    source = load_pinned([present])
    if not source.files:
        pytest.skip(f"{present} differs on this Python")
    (tmp_path / present).write_text(source.files[0].text, encoding="utf-8")
    (tmp_path / changed).write_text("x = 1\n", encoding="utf-8")
    selection = load_pinned([present, changed, absent], root=tmp_path)
    assert [f.name for f in selection.files] == [present]
    assert selection.changed == [changed] and selection.missing == [absent]


# ---------------------------------------------------------------------------------------------------------
# the shipped files
# ---------------------------------------------------------------------------------------------------------
def test_manifest_covers_every_file_and_size_limit(pair_dir: Path, manifest: dict):
    on_disk = {p.relative_to(pair_dir).as_posix() for p in pair_dir.rglob("*") if p.is_file()}
    assert on_disk - {MANIFEST_NAME} == set(manifest["files"])
    total = sum(p.stat().st_size for p in pair_dir.rglob("*") if p.is_file())
    assert total <= 40_000_000
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        assert manifest["files"][f"target/{name}"]["sha256"] == manifest["files"][f"draft/{name}"]["sha256"]


def test_loads_offline_with_transformers_alone(pair_dir: Path, manifest: dict, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = {}
    for name in ("target", "draft"):
        model = AutoModelForCausalLM.from_pretrained(str(pair_dir / name), local_files_only=True)
        assert isinstance(model, LlamaForCausalLM)
        assert model.dtype == torch.float16  # stored weights
        assert sum(p.numel() for p in model.parameters()) == manifest[name]["parameters"]
        assert model.config.bos_token_id == BOS and model.config.eos_token_id == EOS
        assert model.config.max_position_embeddings >= 1024
        assert model.generation_config.do_sample is False
        models[name] = model
    assert models["target"].config.vocab_size == models["draft"].config.vocab_size
    if manifest["plan"] == "full":
        assert 10e6 <= manifest["target"]["parameters"] <= 20e6
        assert 1e6 <= manifest["draft"]["parameters"] <= 3e6


def test_load_embedded_pair(pair_dir: Path, tokenizer):
    target, draft, tok = load_embedded_pair(path=pair_dir)
    for model in (target, draft):
        assert model.dtype == torch.float32 and not model.training
        assert model.config.vocab_size == len(tok)
    assert (tok.bos_token_id, tok.eos_token_id) == (BOS, EOS)
    ids = tok("def add(a, b):\n    return", return_tensors="pt").input_ids  # [1, P]
    assert ids[0, 0].item() == BOS
    with torch.no_grad():
        logits = target(input_ids=ids).logits  # [1, P, V]
        draft_logits = draft(input_ids=ids).logits  # [1, P, V]
    assert logits.shape == draft_logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all() and torch.isfinite(draft_logits).all()
    pair = load_embedded_pair(dtype=torch.float16, path=pair_dir)
    assert pair.target.dtype == torch.float16 and pair.tokenizer is not None


# ---------------------------------------------------------------------------------------------------------
# tokenizer invariant: the saved tokenizer reproduces the ids the models were trained on
# ---------------------------------------------------------------------------------------------------------
def test_tokenizer_round_trips_heldout_and_matches_sentencepiece(tokenizer, sp, heldout):
    for f in heldout:
        ids = tokenizer.encode(f.text, add_special_tokens=False)
        assert ids == sp.encode(f.text), f.name
        assert tokenizer.decode(ids) == f.text, f.name
    with_bos = tokenizer(heldout[0].text[:200]).input_ids
    assert with_bos[0] == BOS and with_bos[1:] == sp.encode(heldout[0].text[:200])


def test_tokenizer_handles_whitespace_specials_and_bytes(tokenizer, sp):
    text = "<s>x = '</s>'\n\tif  a:\n        return 'é€😀' # 0123\r\n\n   \n"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == sp.encode(text)
    assert BOS not in ids and EOS not in ids  # literal special-token text is ordinary text
    assert tokenizer.decode(ids) == text
    # no dummy prefix: decoding pieces one by one concatenates to the text (streaming-safe)
    assert "".join(
        tokenizer.decode([i]) for i in tokenizer.encode("    return x\n", add_special_tokens=False)
    ) == ("    return x\n")


def test_tokenizer_reproduces_training_ids(tokenizer, sp, manifest):
    """Recompute the fingerprint of the training token stream the build trained on."""
    corpus = manifest["corpus"]
    skipped = corpus["skipped"]["training"]
    names = training_files()[:: corpus["training_file_stride"]]
    selection = load_pinned(names)
    if skipped["missing"] or skipped["changed"] or selection.missing or selection.changed:
        pytest.skip("training corpus differs between the build and this Python")
    ids: list[int] = []
    for i, f in enumerate(selection.files):
        file_ids = tokenizer.encode(f.text, add_special_tokens=False)
        if i % 10 == 0:  # a sample against sentencepiece itself (all of them: 2x the time)
            assert file_ids == sp.encode(f.text), f.name
        ids.extend(file_ids)
        ids.append(EOS)
    assert len(ids) == corpus["training_tokens"]
    stream = torch.tensor(ids, dtype=torch.int32).numpy().astype("<i4").tobytes()
    assert hashlib.sha256(stream).hexdigest() == corpus["training_ids_sha256"]


# ---------------------------------------------------------------------------------------------------------
# a missing or corrupted pair gives the clear error (on a temporary copy)
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture()
def pair_copy(pair_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "pair"
    shutil.copytree(pair_dir, copy)
    return copy


def _assert_clear_error(folder: Path, fragment: str) -> None:
    with pytest.raises(EmbeddedPairError) as info:
        load_embedded_pair(path=folder)
    assert isinstance(info.value, RuntimeError)
    assert REBUILD_COMMAND in str(info.value) and fragment in str(info.value)


def test_corrupted_weights_raise(pair_copy: Path):
    weights = pair_copy / "draft" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-7] ^= 0xFF
    weights.write_bytes(bytes(data))
    _assert_clear_error(pair_copy, "draft/model.safetensors")


def test_missing_file_raises(pair_copy: Path):
    (pair_copy / "target" / "tokenizer.json").unlink()
    _assert_clear_error(pair_copy, "missing file target/tokenizer.json")


def test_missing_or_broken_manifest_raises(pair_copy: Path, tmp_path: Path):
    manifest = pair_copy / MANIFEST_NAME
    manifest.write_text("{not json")
    _assert_clear_error(pair_copy, "unreadable")
    data = {"files": {}}
    manifest.write_text(json.dumps(data))
    _assert_clear_error(pair_copy, "does not list")
    manifest.unlink()
    _assert_clear_error(pair_copy, "not found")
    _assert_clear_error(tmp_path / "nowhere", "not found")


def test_untouched_copy_loads(pair_copy: Path):
    assert verify_embedded_pair(pair_copy)["files"]


# ---------------------------------------------------------------------------------------------------------
# prompts cut at run time from held-out files
# ---------------------------------------------------------------------------------------------------------
def test_heldout_prompts_deterministic_and_heldout_only(tokenizer, heldout):
    prompts = heldout_code_prompts(tokenizer, num_prompts=6, prompt_tokens=48, seed=0)
    assert prompts == heldout_code_prompts(tokenizer, num_prompts=6, prompt_tokens=48, seed=0)
    assert prompts != heldout_code_prompts(tokenizer, num_prompts=6, prompt_tokens=48, seed=1)
    assert len(prompts) == 6 and len(set(prompts)) == 6
    held_texts = [f.text for f in heldout]
    training = load_pinned(training_files()[:40]).files
    for prompt in prompts:
        assert len(tokenizer.encode(prompt, add_special_tokens=False)) == 48
        sources = [t for t in held_texts if prompt in t]
        assert sources, prompt
        assert any(t.startswith(prompt) or f"\n{prompt}" in t for t in sources)  # starts at a line start
        assert not any(prompt in f.text for f in training)


def test_heldout_prompts_bad_input(tokenizer, tmp_path: Path):
    with pytest.raises(ValueError):
        heldout_code_prompts(tokenizer, num_prompts=2, prompt_tokens=0)
    assert heldout_code_prompts(tokenizer, num_prompts=0) == []
    with pytest.raises(RuntimeError, match="held-out"):
        heldout_code_prompts(tokenizer, num_prompts=1, root=tmp_path)  # no stdlib there


def test_wrap_loads_local_paths_and_checks_their_tokenizers(pair_dir: Path):
    """Hub ids / local paths go through from_pretrained (dtype passed through); the tokenizers saved
    beside the models are found, so ids are checked and no 'not checked' warning is raised."""
    import warnings

    import specdec

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = specdec.wrap(str(pair_dir / "target"), str(pair_dir / "draft"), dtype=torch.float32)
    assert spec.target.dtype == torch.float32 and spec.draft is not None
    ids = torch.tensor([[1, 100, 200, 300]])
    assert torch.equal(
        spec.generate(ids, max_new_tokens=8), spec.target.generate(ids, max_new_tokens=8, do_sample=False)
    )
