"""`specdec generate` and `specdec bench` (layer L7)."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path

import torch

from specdec.config import STRATEGIES, strategy_needs_draft
from specdec.models.llama_runner import RUNTIMES


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=None, help="target hub id or local path (default: embedded pair)")
    parser.add_argument("--draft", default=None, help="draft hub id or local path (default: embedded pair)")
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
    from specdec.bench import BASELINES

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
    bench.add_argument("--strategies", default="chain,tree,dynamic-tree,prompt-lookup,hybrid,auto")
    bench.add_argument("--baselines", default=",".join(BASELINES))
    bench.add_argument("--repeats", type=int, default=1, help="timed repeats per prompt, median kept")
    bench.add_argument("--out", default=None, help="folder for results.json and table.md")
    bench.add_argument(
        "--chat", action="store_true", help="apply the chat template (to 'turns' or the prompt)"
    )
    bench.set_defaults(run=run_bench, command_parser=bench)


def load_models(args: argparse.Namespace):
    """(target, draft, tokenizer) from --target/--draft, or the embedded pair."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specdec.models.embedded import load_embedded_pair

    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.target is None:
        target, draft, tokenizer = load_embedded_pair(
            dtype=dtype or torch.float32, device=args.device or "cpu"
        )
        if args.draft is None:
            return target, draft, tokenizer
    else:
        kwargs = {"dtype": dtype} if dtype else {}
        if args.device_map:
            kwargs["device_map"] = args.device_map
        target = AutoModelForCausalLM.from_pretrained(args.target, **kwargs).eval()
        if args.device and not args.device_map:
            target = target.to(args.device)
        tokenizer = AutoTokenizer.from_pretrained(args.target)
    draft = None
    if args.draft is not None:
        kwargs = {"dtype": dtype} if dtype else {}
        draft = AutoModelForCausalLM.from_pretrained(args.draft, **kwargs).eval()
        draft = draft.to(args.device or target.device)
    return target, draft, tokenizer


def sampling_kwargs(args: argparse.Namespace) -> dict:
    if args.temperature < 0:
        raise SystemExit("specdec: --temperature must be >= 0")
    if args.temperature == 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": args.temperature}


def run_generate(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    import specdec

    target, draft, tokenizer = load_models(args)
    if strategy_needs_draft(args.strategy) and draft is None:
        raise SystemExit(f"specdec generate: strategy {args.strategy} needs --draft")
    spec = specdec.wrap(
        target,
        draft if strategy_needs_draft(args.strategy) else None,
        strategy=args.strategy,
        runtime=args.runtime,
    )
    if args.chat:
        if not getattr(tokenizer, "chat_template", None):
            raise SystemExit("specdec generate: --chat needs a tokenizer with a chat template")
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": args.prompt}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    else:
        ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    ids = ids.to(target.device)
    generator = torch.Generator(device=target.device).manual_seed(args.seed)
    spec.generate(
        ids,
        max_new_tokens=args.max_new_tokens,
        streamer=TextStreamer(tokenizer, skip_prompt=args.chat),
        generator=generator,
        **sampling_kwargs(args),
    )
    print()
    if args.stats:
        print(spec.stats.summary(), file=sys.stderr)
    return 0


def read_prompts(path: str) -> list[dict]:
    """JSONL lines {"prompt": str, "category": str (optional)}; a bad line names the file and line."""
    prompts = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise SystemExit(
                    f"specdec bench: {path}, line {number}: not valid JSON ({error.msg})"
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise SystemExit(f'specdec bench: {path}, line {number}: expected {{"prompt": "...", ...}}')
            prompts.append(record)
    if not prompts:
        raise SystemExit(f"specdec bench: {path} holds no prompts")
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


def run_bench(args: argparse.Namespace) -> int:
    import specdec
    from specdec.bench import (
        baseline_methods,
        markdown_table,
        plot,
        results_json,
        run_benchmark,
        strategy_methods,
        summarize,
    )
    from specdec.models.embedded import heldout_code_prompts, heldout_quote_prompts

    strategies = [s for s in args.strategies.split(",") if s]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise SystemExit(f"specdec bench: unknown strategy {unknown[0]!r}; valid: {', '.join(STRATEGIES)}")
    records = read_prompts(args.prompts) if args.prompts else None
    target, draft, tokenizer = load_models(args)
    if draft is None and any(strategy_needs_draft(s) for s in strategies):
        raise SystemExit("specdec bench: these strategies need --draft")
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
        raise SystemExit("specdec bench: --chat needs a tokenizer with a chat template")
    prompts = [_encode(tokenizer, r, args.chat).to(target.device) for r in records]
    gen_kwargs = {"max_new_tokens": args.max_new_tokens, **sampling_kwargs(args)}
    baselines = [b for b in args.baselines.split(",") if b]
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
    if args.out:
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
