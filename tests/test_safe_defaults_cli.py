"""Safe defaults (issue 17 items 1, 3, 4; issue 16's phantom tokenizer).

The command line loads models through the function wrap() uses and refuses what wrap() refuses with
the same message, never asks on stdin, says what is wrong in one line (no traceback unless --debug);
the embedded pair reads only the files its manifest lists; a model saved without tokenizer files is
not compared with a default tokenizer transformers would build for it.
"""

from __future__ import annotations

import builtins
import gc
import json
import os
import shutil
import string
import sys
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

import specdec
from specdec.cli.main import main
from specdec.embedded.pair import EMBEDDED_PAIR_DIR, MANIFEST_NAME, load_embedded_pair
from specdec.models.loading import ModelSourceError, find_tokenizer, load_causal_lm
from tests.tiny_models import VOCAB, tiny_llama

TINY = ["--max-new-tokens", "4", "--strategy", "prompt-lookup"]

# ---------------------------------------------------------------------------------------------------------
# helpers: tiny model folders saved to tmp_path
# ---------------------------------------------------------------------------------------------------------


def save_tokenizer(folder: Path, shuffle: bool = False) -> None:
    """A 96-token character tokenizer (<unk>, <s>, </s>, then characters); shuffled: other ids."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    chars = list(string.ascii_letters + string.digits + " \n" + string.punctuation[:29])
    if shuffle:
        chars = chars[::-1]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    assert len(vocab) == VOCAB
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)


def llama_folder(folder: Path, tokenizer: bool = True, shuffle: bool = False, seed: int = 0) -> Path:
    tiny_llama(seed=seed).save_pretrained(folder)
    if tokenizer:
        save_tokenizer(folder, shuffle)
    return folder


def pickle_folder(folder: Path) -> Path:
    model = tiny_llama(seed=0)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    save_tokenizer(folder)
    return folder


CUSTOM_CONFIG = """
import os, pathlib
pathlib.Path(os.environ["SPECDEC_TEST_MARKER"]).write_text("configuration code ran")
from transformers import LlamaConfig


class CustomConfig(LlamaConfig):
    model_type = "specdec-custom"
"""

CUSTOM_MODEL = """
from transformers import LlamaForCausalLM

from .configuration_custom import CustomConfig


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
"""


def custom_code_folder(folder: Path) -> Path:
    """A checkpoint whose model type exists only in its own Python files (which write a marker file)."""
    llama_folder(folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "specdec-custom"
    config["architectures"] = ["CustomForCausalLM"]
    config["auto_map"] = {
        "AutoConfig": "configuration_custom.CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_custom.py").write_text(CUSTOM_CONFIG)
    (folder / "modeling_custom.py").write_text(CUSTOM_MODEL)
    return folder


@pytest.fixture
def no_stdin(monkeypatch):
    """Any question on stdin is recorded and answered with an error (and fails the test afterwards)."""
    asked = []

    def refuse(*args, **kwargs):
        asked.append(args)
        raise EOFError("stdin must not be read")

    monkeypatch.setattr(builtins, "input", refuse)
    return asked


@pytest.fixture
def no_hub(monkeypatch):
    """Offline mode on, and any attempt to load a model or tokenizer recorded as a hub call."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    calls = []

    def record(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"from_pretrained called with {args}")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", record)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", record)
    return calls


def one_line_error(err: str, code: int) -> str:
    """The single error line a failed command printed (no traceback)."""
    lines = [line for line in err.splitlines() if line.startswith("specdec ")]
    assert code == 1, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------------------------------------
# 1. the command line loads like wrap(): pickle and custom code need an opt-in, same messages, no prompt
# ---------------------------------------------------------------------------------------------------------


def test_cli_refuses_a_pickle_checkpoint_like_wrap(tmp_path, capsys, no_stdin):
    folder = pickle_folder(tmp_path / "pickled")
    with pytest.raises(ValueError) as refused:
        specdec.wrap(str(folder), None, strategy="prompt-lookup")
    code = main(["generate", "--target", str(folder), "--prompt", "def f", *TINY])
    line = one_line_error(capsys.readouterr().err, code)
    assert line == f"specdec generate: {refused.value}"
    assert "--allow-pickle" in line and "allow_pickle=True" in line

    assert main(["generate", "--target", str(folder), "--prompt", "def f", *TINY, "--allow-pickle"]) == 0
    assert capsys.readouterr().out.startswith("def f")
    assert not no_stdin


def test_cli_never_asks_about_custom_code_and_refuses_it_like_wrap(tmp_path, capsys, monkeypatch, no_stdin):
    marker = tmp_path / "ran.txt"
    monkeypatch.setenv("SPECDEC_TEST_MARKER", str(marker))
    folder = custom_code_folder(tmp_path / "custom")
    with pytest.raises(ValueError) as refused:
        specdec.wrap(str(folder), None, strategy="prompt-lookup")
    for role in ("--target", "--draft"):
        code = main(["generate", role, str(folder), "--prompt", "def f", *TINY])
        line = one_line_error(capsys.readouterr().err, code)
        expected = (
            str(refused.value).replace("the target", "the draft") if role == "--draft" else refused.value
        )
        assert line == f"specdec generate: {expected}"
        assert "--trust-remote-code" in line
    assert not no_stdin, "transformers asked on stdin"
    assert not marker.exists(), "checkpoint code ran without --trust-remote-code"


def test_trust_remote_code_flag_runs_checkpoint_code(tmp_path, capsys, monkeypatch, no_stdin):
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    marker = tmp_path / "ran.txt"
    monkeypatch.setenv("SPECDEC_TEST_MARKER", str(marker))
    folder = custom_code_folder(tmp_path / "custom")
    args = ["generate", "--target", str(folder), "--prompt", "def f", *TINY, "--trust-remote-code"]
    assert main(args) == 0, capsys.readouterr().err
    assert marker.exists() and capsys.readouterr().out.startswith("def f")
    assert not no_stdin


# ---------------------------------------------------------------------------------------------------------
# 4. one clear line per bad input, no hub call for a missing path, traceback only with --debug
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["--target", "--draft"])
@pytest.mark.parametrize("kind", ["relative", "absolute", "home", "parent-exists"])
def test_missing_path_is_refused_without_any_hub_call(kind, role, tmp_path, capsys, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    name = {
        "relative": "./no-such-model",
        "absolute": str(tmp_path / "no-such-model"),
        "home": "~/specdec-no-such-model-folder",
        "parent-exists": "models/llama-typo",
    }[kind]
    code = main(["generate", role, name, "--prompt", "x", *TINY])
    line = one_line_error(capsys.readouterr().err, code)
    assert f"path {name!r} does not exist" in line and "check the path" in line
    assert not no_hub
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_causal_lm(name, "target")  # the same function wrap() uses


def test_unreachable_hub_id_is_said_offline(capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code = main(["generate", "--target", "specdec-test/no-such-model", "--prompt", "x", *TINY])
    line = one_line_error(capsys.readouterr().err, code)
    assert "'specdec-test/no-such-model' is not a local folder" in line and "offline" in line


def test_unknown_hub_id_is_said_not_found(capsys, monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError

    class NotFound(RepositoryNotFoundError):
        def __init__(self) -> None:
            Exception.__init__(self, "404 Client Error")

    def not_found(name, *args, **kwargs):  # what transformers raises for an unknown repository
        raise OSError(f"{name} is not a local folder and is not a valid model identifier") from NotFound()

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", not_found)
    code = main(["generate", "--target", "specdec-test/no-such-model", "--prompt", "x", *TINY])
    line = one_line_error(capsys.readouterr().err, code)
    assert "not found on the Hugging Face hub" in line


def test_debug_shows_the_traceback(tmp_path, capsys, no_hub):
    code = main(["generate", "--target", str(tmp_path / "nope"), "--prompt", "x", *TINY, "--debug"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" in err and "ModelSourceError" in err


def test_mismatched_pair_is_one_line(tmp_path, capsys):
    target = llama_folder(tmp_path / "target")
    draft = llama_folder(tmp_path / "draft", shuffle=True, seed=1)
    args = ["generate", "--target", str(target), "--draft", str(draft), "--prompt", "x"]
    code = main([*args, "--strategy", "chain", "--max-new-tokens", "4"])
    line = one_line_error(capsys.readouterr().err, code)
    assert "tokenizers differ at id 3" in line and "target's tokenizer" in line


def test_target_folder_without_tokenizer_is_one_line(tmp_path, capsys):
    folder = llama_folder(tmp_path / "bare", tokenizer=False)
    code = main(["generate", "--target", str(folder), "--prompt", "x", *TINY])
    line = one_line_error(capsys.readouterr().err, code)
    assert "has no tokenizer files" in line and "save_pretrained" in line


def test_missing_or_malformed_prompts_file_is_one_line(tmp_path, capsys, no_hub):
    code = main(["bench", "--prompts", str(tmp_path / "missing.jsonl")])
    assert "prompts file" in one_line_error(capsys.readouterr().err, code)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": 3}\n')
    code = main(["bench", "--prompts", str(bad)])
    assert "bad.jsonl, line 2: expected" in one_line_error(capsys.readouterr().err, code)
    assert not no_hub  # the prompts file is read before any model is loaded


def test_bench_without_draft_leaves_assisted_generation_out(tmp_path, capsys):
    target = llama_folder(tmp_path / "target")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def f(x):"}\n')
    out = tmp_path / "out"
    args = ["bench", "--target", str(target), "--prompts", str(prompts), "--max-new-tokens", "4"]
    args += ["--strategies", "prompt-lookup", "--baselines", "target,hf-assisted,hf-assisted-k2"]
    assert main([*args, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "hf-assisted, hf-assisted-k2 left out" in captured.err and "needs a draft" in captured.err
    results = json.loads((out / "results.json").read_text())
    assert {row["method"] for row in results["summary"]} == {"target", "specdec-prompt-lookup"}
    assert "hf-assisted" not in captured.out


def test_baseline_harness_refuses_assisted_generation_without_draft():
    from specdec.cli.bench import baseline_methods

    with pytest.raises(ValueError, match="needs a draft model"):
        baseline_methods(tiny_llama(), None, ["hf-assisted"], {"max_new_tokens": 2})


def test_strategies_and_baselines_have_help(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--strategies STRATEGIES comma-separated specdec strategies" in text
    assert "--baselines BASELINES comma-separated reference methods" in text
    assert "--allow-pickle" in text and "--trust-remote-code" in text and "--debug" in text


def test_generate_does_not_print_special_tokens(tmp_path, capsys):
    target = llama_folder(tmp_path / "target")  # its tokenizer adds <s> to every prompt
    code = main(["generate", "--target", str(target), "--prompt", "def f(x):", *TINY])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("def f(x):")
    assert "<s>" not in out and "</s>" not in out and "<unk>" not in out


# ---------------------------------------------------------------------------------------------------------
# 3. the embedded pair loads only the files its manifest lists
# ---------------------------------------------------------------------------------------------------------


def test_files_added_to_the_embedded_pair_have_no_effect(tmp_path):
    copy = tmp_path / "pair"
    shutil.copytree(EMBEDDED_PAIR_DIR, copy)
    listed = set(json.loads((copy / MANIFEST_NAME).read_text())["files"])
    for model in ("target", "draft"):
        (copy / model / "special_tokens_map.json").write_text('{"eos_token": "<unk>", "bos_token": "<unk>"}')
        (copy / model / "chat_template.jinja").write_text("{{ messages[0].content }}")
        (copy / model / "added_tokens.json").write_text('{"<extra>": 4096}')
        assert f"{model}/special_tokens_map.json" not in listed
    shipped = load_embedded_pair().tokenizer
    target, draft, tokenizer = load_embedded_pair(path=copy)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("</s>", 2)
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<s>", 1)
    assert tokenizer.chat_template is None and len(tokenizer) == len(shipped)
    text = "def f(x):\n    return x  # <extra> </s>\n"
    assert tokenizer(text).input_ids == shipped(text).input_ids
    assert tokenizer.get_vocab() == shipped.get_vocab()
    for model in (target, draft):  # what wrap() finds beside the models is the sealed copy too
        found = find_tokenizer(model)
        assert found is not None and (found.eos_token, found.chat_template) == ("</s>", None)


def test_sealed_copy_lives_as_long_as_the_model():
    target, draft, _ = load_embedded_pair()
    folders = [Path(target.name_or_path), Path(draft.name_or_path)]
    assert all(f.is_dir() and EMBEDDED_PAIR_DIR not in f.parents for f in folders)
    del target, draft
    gc.collect()
    assert not any(f.exists() for f in folders)


# ---------------------------------------------------------------------------------------------------------
# issue 16: a model saved without tokenizer files is checked against nothing, with a warning
# ---------------------------------------------------------------------------------------------------------


def gpt2_folder(folder: Path, tokenizer: bool, seed: int) -> Path:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)
    GPT2LMHeadModel(config).eval().save_pretrained(folder)
    if tokenizer:
        save_tokenizer(folder)
    return folder


def test_draft_without_tokenizer_files_is_trusted_with_a_warning(tmp_path):
    target = gpt2_folder(tmp_path / "target", tokenizer=True, seed=0)
    draft = gpt2_folder(tmp_path / "draft", tokenizer=False, seed=1)
    assert AutoTokenizer.from_pretrained(str(draft)) is not None  # transformers builds a phantom here
    with pytest.warns(UserWarning, match="no tokenizer for the target or the draft") as seen:
        spec = specdec.wrap(str(target), str(draft), strategy="chain", runtime="transformers")
    assert len([w for w in seen if "no tokenizer" in str(w.message)]) == 1
    assert find_tokenizer(spec.target) is not None
    assert find_tokenizer(spec.draft) is None


def test_cli_pair_with_a_tokenizerless_draft_runs_with_a_one_line_warning(tmp_path, capsys):
    target = gpt2_folder(tmp_path / "target", tokenizer=True, seed=0)
    draft = gpt2_folder(tmp_path / "draft", tokenizer=False, seed=1)
    args = ["generate", "--target", str(target), "--draft", str(draft), "--prompt", "def f"]
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # the test configuration silences this warning elsewhere
        code = main([*args, "--strategy", "chain", "--max-new-tokens", "4", "--runtime", "transformers"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    warned = [line for line in captured.err.splitlines() if "no tokenizer" in line]
    assert warned and all(line.startswith("specdec: warning: ") for line in warned)
    assert captured.out.startswith("def f")


def test_tokenizer_files_decide_not_the_config(tmp_path):
    bare = gpt2_folder(tmp_path / "bare", tokenizer=False, seed=0)
    model = AutoModelForCausalLM.from_pretrained(str(bare))
    assert find_tokenizer(model) is None
    save_tokenizer(bare)
    assert len(find_tokenizer(model).get_vocab()) == VOCAB
    assert os.path.isfile(bare / "tokenizer_config.json")


def test_folder_without_a_saved_model_is_one_line(tmp_path, capsys, no_hub):
    (tmp_path / "empty").mkdir()
    code = main(["generate", "--target", str(tmp_path / "empty"), "--prompt", "x", *TINY])
    line = one_line_error(capsys.readouterr().err, code)
    assert "has no config.json" in line and "save_pretrained" in line
    assert not no_hub
