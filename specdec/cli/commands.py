"""`specdec generate` and `specdec bench` (layer L7)."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path

import torch

from specdec.cli.parallel import add_tensor_parallel_argument, rank, tensor_parallel_session
from specdec.config import STRATEGIES, strategy_needs_draft
from specdec.runtime.factory import RUNTIMES


class CommandError(Exception):
    """A command cannot run as asked; the message (one line: what is wrong, what to do) is printed
    without a traceback, and the command exits with status 1."""


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug", action="store_true", help="on an error, show the full Python traceback too"
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=None, help="target hub id or local path (default: embedded pair)")
    parser.add_argument("--draft", default=None, help="draft hub id or local path (default: embedded pair)")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also load pickle checkpoints (.bin), which can run code when loaded (default: safetensors)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run modeling code shipped in a checkpoint folder or repository (default: refuse it)",
    )
    parser.add_argument(
        "--dtype", default=None, choices=("float32", "float16", "bfloat16"), help="model dtype"
    )
    parser.add_argument("--device", default=None, help="device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--device-map", default=None, help="accelerate device map for the target, e.g. auto")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate (default 128)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), > 0 samples")
    parser.add_argument(
        "--runtime",
        default="auto",
        choices=RUNTIMES,
        help="forward passes: specdec's runner (auto), also torch.compile'd (compiled: slow first "
        "calls), or transformers' own",
    )
    add_tensor_parallel_argument(parser)
    add_debug_argument(parser)


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="generate text speculatively, streaming it")
    add_model_arguments(gen)
    gen.add_argument("--prompt", required=True, help="the prompt text")
    gen.add_argument(
        "--strategy", choices=STRATEGIES, default="auto", help="drafting strategy (default auto)"
    )
    gen.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template to the prompt")
    gen.add_argument("--seed", type=int, default=0, help="seed for sampling (default 0)")
    gen.add_argument("--stats", action="store_true", help="print generation statistics afterwards")
    gen.set_defaults(run=run_generate, command_parser=gen)


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    from specdec.cli.bench import BASELINES

    bench = sub.add_parser("bench", help="benchmark strategies against transformers on a prompt set")
    add_model_arguments(bench)
    bench.add_argument("--prompts", default=None, help="JSONL prompt file (default: held-out code prompts)")
    bench.add_argument(
        "--prompt-set",
        choices=("code", "quote"),
        default="code",
        help="built-in held-out set when --prompts is not given: code completion, or code quoted back",
    )
    bench.add_argument(
        "--num-prompts", type=int, default=8, help="held-out prompts when --prompts is not given"
    )
    bench.add_argument("--prompt-tokens", type=int, default=128, help="held-out prompt length (default 128)")
    bench.add_argument(
        "--strategies",
        default="chain,tree,dynamic-tree,prompt-lookup,hybrid,auto",
        help=f"comma-separated specdec strategies to time, from: {', '.join(STRATEGIES)} "
        "(default: %(default)s)",
    )
    bench.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help="comma-separated reference methods: target (transformers generate(), the speedup's base), "
        "hf-assisted (transformers' assisted generation with the draft; hf-assisted-kN: N draft tokens "
        "a step), hf-prompt-lookup, specdec-no-speculation (default: %(default)s)",
    )
    bench.add_argument("--repeats", type=int, default=1, help="timed repeats per prompt, median kept")
    bench.add_argument("--out", default=None, help="folder for results.json and table.md")
    bench.add_argument(
        "--chat", action="store_true", help="apply the chat template (to 'turns' or the prompt)"
    )
    bench.set_defaults(run=run_bench, command_parser=bench)


def load_models(args: argparse.Namespace):
    """(target, draft, tokenizer) from --target/--draft, or the embedded pair; with --tensor-parallel the
    target split over the ranks, the draft whole on every rank.

    Models load through `load_causal_lm`, the function wrap() uses: safetensors only unless
    --allow-pickle, checkpoint code only with --trust-remote-code, never an interactive question.
    """
    from specdec.cli.parallel import load_tensor_parallel_models
    from specdec.embedded.pair import load_embedded_pair
    from specdec.models.loading import load_causal_lm, load_tokenizer, resolve_source

    for name, role in ((args.target, "target"), (args.draft, "draft")):  # a mistyped path: before any load
        if name is not None:
            resolve_source(name, role)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    policy = {"trust_remote_code": args.trust_remote_code, "allow_pickle": args.allow_pickle}
    if getattr(args, "tensor_parallel", False):
        return load_tensor_parallel_models(args, dtype, policy)
    if args.target is None:
        target, draft, tokenizer = load_embedded_pair(
            dtype=dtype or torch.float32, device=args.device or "cpu"
        )
        if args.draft is None:
            return target, draft, tokenizer
    else:
        target = load_causal_lm(args.target, "target", dtype, args.device_map, **policy)
        if args.device and not args.device_map:
            target = target.to(args.device)
        tokenizer = load_tokenizer(args.target, "target", trust_remote_code=args.trust_remote_code)
    draft = None
    if args.draft is not None:
        draft = load_causal_lm(args.draft, "draft", dtype, None, **policy)
        draft = draft.to(args.device or target.device)
    return target, draft, tokenizer


def wrap_for_command(args: argparse.Namespace, target, draft, tokenizer):
    """`specdec.wrap` with --strategy and --runtime, the draft passed only to a strategy that drafts with
    a model (demo and generate)."""
    import specdec

    return specdec.wrap(
        target,
        draft if strategy_needs_draft(args.strategy) else None,
        strategy=args.strategy,
        runtime=args.runtime,
        tokenizer=tokenizer,
    )


def sampling_kwargs(args: argparse.Namespace) -> dict:
    if args.temperature < 0:
        raise CommandError(f"--temperature must be >= 0, got {args.temperature}")
    if args.temperature == 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": args.temperature}


def run_generate(args: argparse.Namespace) -> int:
    """`specdec generate`; with --tensor-parallel, on every rank of a torchrun launch."""
    with tensor_parallel_session(args):
        return _generate(args)


def _generate(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    sampling = sampling_kwargs(args)
    target, draft, tokenizer = load_models(args)
    if strategy_needs_draft(args.strategy) and draft is None:
        raise CommandError(
            f"strategy {args.strategy} needs a draft model: pass --draft, or use --strategy prompt-lookup"
        )
    spec = wrap_for_command(args, target, draft, tokenizer)
    if args.chat:
        if not getattr(tokenizer, "chat_template", None):
            raise CommandError("--chat needs a tokenizer with a chat template; drop --chat")
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": args.prompt}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    else:
        ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    ids = ids.to(target.device)
    generator = torch.Generator(device=target.device).manual_seed(args.seed)
    # special tokens (<s>, </s>) are ids, not text: the stream shows the prompt's text and the completion
    streamer = TextStreamer(tokenizer, skip_prompt=args.chat, skip_special_tokens=True)
    spec.generate(ids, max_new_tokens=args.max_new_tokens, streamer=streamer, generator=generator, **sampling)
    print()
    if args.stats:
        print(spec.stats.summary(), file=sys.stderr)
    return 0


def read_prompts(path: str) -> list[dict]:
    """JSONL lines {"prompt": str, "category": str (optional)}; a bad line names the file and line.

    Raises CommandError for a missing, unreadable, empty or malformed file.
    """
    prompts = []
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.readlines()
    except FileNotFoundError:
        raise CommandError(f"prompts file {path} not found; pass a JSONL file with --prompts") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise CommandError(f"cannot read prompts file {path} ({reason}); pass a UTF-8 JSONL file") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CommandError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise CommandError(f'{path}, line {number}: expected {{"prompt": "...", ...}}')
        prompts.append(record)
    if not prompts:
        raise CommandError(f'{path} holds no prompts; write one {{"prompt": "..."}} per line')
    return prompts


class ProgressBar:
    """A progress bar on stderr (tqdm, which transformers installs), one line per run without it."""

    def __init__(self) -> None:
        self._bar = None

    def update(self, done: int, total: int, message: str) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            print(f"[{done}/{total}] {message}", file=sys.stderr)
            return
        if self._bar is None:
            self._bar = tqdm(total=total, file=sys.stderr, unit="run", dynamic_ncols=True)
        self._bar.set_postfix_str(message, refresh=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _encode(tokenizer, record: dict, chat: bool) -> torch.Tensor:
    """[1, L] prompt ids; with chat, the template over the record's turns (or its prompt as one turn)."""
    if not chat:
        return tokenizer(record["prompt"], return_tensors="pt").input_ids
    turns = record.get("turns") or [{"role": "user", "content": record["prompt"]}]
    ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True, return_tensors="pt")
    return ids if isinstance(ids, torch.Tensor) else ids["input_ids"]


def _known_baseline(name: str) -> bool:
    from specdec.cli.bench import BASELINES

    k = name.removeprefix("hf-assisted-k")
    return name in BASELINES or (k != name and k.isdigit() and int(k) >= 1)


def run_bench(args: argparse.Namespace) -> int:
    """`specdec bench`; with --tensor-parallel, on every rank of a torchrun launch (rank 0 writes)."""
    with tensor_parallel_session(args):
        return _bench(args)


def _bench(args: argparse.Namespace) -> int:
    import specdec
    from specdec.cli.bench import (
        BASELINES,
        baseline_methods,
        markdown_table,
        plot,
        results_json,
        run_benchmark,
        strategy_methods,
        summarize,
    )
    from specdec.embedded.pair import heldout_code_prompts, heldout_quote_prompts

    strategies = [s for s in args.strategies.split(",") if s]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise CommandError(f"unknown strategy {unknown[0]!r}; valid: {', '.join(STRATEGIES)}")
    baselines = [b for b in args.baselines.split(",") if b]
    unknown = [b for b in baselines if not _known_baseline(b)]
    if unknown:
        raise CommandError(
            f"unknown baseline {unknown[0]!r}; valid: {', '.join(BASELINES)}, or hf-assisted-kN (N >= 1)"
        )
    gen_kwargs = {"max_new_tokens": args.max_new_tokens, **sampling_kwargs(args)}
    records = read_prompts(args.prompts) if args.prompts else None
    target, draft, tokenizer = load_models(args)
    needing = [s for s in strategies if strategy_needs_draft(s)]
    if draft is None and needing:
        raise CommandError(
            f"strategies {', '.join(needing)} need a draft model: pass --draft, or use --strategies "
            "prompt-lookup"
        )
    if draft is None:  # transformers' assisted generation without an assistant is the target alone
        left_out = [b for b in baselines if b.startswith("hf-assisted")]
        if left_out:
            print(
                f"specdec bench: {', '.join(left_out)} left out: assisted generation needs a draft (--draft)",
                file=sys.stderr,
            )
            baselines = [b for b in baselines if b not in left_out]
    if draft is not None:  # vocabularies are checked before any timing starts
        specdec.wrap(target, draft, tokenizer=tokenizer)
    if records is None and args.prompt_set == "quote":
        texts = heldout_quote_prompts(
            tokenizer, num_prompts=args.num_prompts, quote_tokens=args.prompt_tokens
        )
        records = [{"prompt": t, "category": "quote"} for t in texts]
    if records is None:
        texts = heldout_code_prompts(
            tokenizer, num_prompts=args.num_prompts, prompt_tokens=args.prompt_tokens
        )
        records = [{"prompt": t, "category": "code"} for t in texts]
    if args.chat and not getattr(tokenizer, "chat_template", None):
        raise CommandError("--chat needs a tokenizer with a chat template; drop --chat")
    prompts = [_encode(tokenizer, r, args.chat).to(target.device) for r in records]
    methods = baseline_methods(target, draft, baselines, gen_kwargs, args.runtime)
    methods |= strategy_methods(target, draft, strategies, gen_kwargs, args.runtime)
    greedy = args.temperature == 0
    bar = ProgressBar()
    try:
        results = run_benchmark(
            methods,
            prompts,
            repeats=args.repeats,
            reference="target" if greedy and "target" in methods else None,
            progress=bar.update,
        )
    finally:
        bar.close()
    rows = summarize(results)
    table = markdown_table(rows)
    print(table)
    if args.out and rank() == 0:
        meta = {
            "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            "torch": torch.__version__,
            "command": "specdec " + " ".join(sys.argv[1:]),
            "decoding": "greedy" if greedy else f"sampling, temperature {args.temperature}",
            "max_new_tokens": args.max_new_tokens,
            "categories": sorted({r.get("category", "") for r in records}),
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results_json(results, rows, meta), indent=2))
        (out / "table.md").write_text(table + "\n")
        categories = [r.get("category", "") for r in records]
        if not plot(results, rows, categories, str(out / "speedup.png")):
            print("specdec bench: no PNG plot (pip install matplotlib, or the [plot] extra)", file=sys.stderr)
    return 0
