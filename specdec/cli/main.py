"""The `specdec` command line (layer L7): `specdec demo | generate | bench`."""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Sequence

from specdec.cli.commands import (
    CommandError,
    add_bench_parser,
    add_debug_argument,
    add_generate_parser,
    wrap_for_command,
)
from specdec.config import STRATEGIES
from specdec.runtime.factory import RUNTIMES


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the main job offline on the embedded model pair",
        description=(
            "Stream a speculative completion of a held-out code prompt with the embedded model pair, "
            "then compare tokens/s of the target's own transformers generate() with specdec's."
        ),
    )
    demo.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate (default 128)")
    demo.add_argument("--strategy", choices=STRATEGIES, default="auto", help="drafting strategy")
    demo.add_argument("--prompt-index", type=int, default=0, help="which held-out prompt (default 0)")
    demo.add_argument("--prompt-tokens", type=int, default=128, help="prompt length in tokens (default 128)")
    demo.add_argument("--repeats", type=int, default=3, help="timed repeats, median reported (default 3)")
    demo.add_argument(
        "--pair", default=None, help="folder of another embedded pair (default: the shipped one)"
    )
    demo.add_argument("--no-stream", action="store_true", help="do not print the completion")
    demo.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="specdec's forward (auto), also torch.compile'd (compiled: compiles first), or transformers'",
    )
    add_debug_argument(demo)
    demo.set_defaults(run=run_demo, command_parser=demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specdec", description="Exact speculative decoding for transformers."
    )
    parser.add_argument(
        "--debug", dest="debug_all", action="store_true", help="on an error, show the full Python traceback"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _demo_parser(sub)
    add_generate_parser(sub)
    add_bench_parser(sub)
    return parser


def run_demo(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    from specdec.cli.bench import baseline_methods, run_benchmark, summarize
    from specdec.embedded.pair import heldout_code_prompts, load_embedded_pair

    if args.max_new_tokens < 1 or args.prompt_tokens < 1 or args.repeats < 1 or args.prompt_index < 0:
        print("specdec demo: --max-new-tokens, --prompt-tokens and --repeats must be >= 1", file=sys.stderr)
        return 2
    target, draft, tokenizer = load_embedded_pair(path=args.pair)
    prompt = heldout_code_prompts(
        tokenizer, num_prompts=args.prompt_index + 1, prompt_tokens=args.prompt_tokens
    )[args.prompt_index]
    ids = tokenizer(prompt, return_tensors="pt").input_ids  # [1, L]
    spec = wrap_for_command(args, target, draft, tokenizer)
    new = args.max_new_tokens

    sizes = (
        f"target {target.num_parameters() / 1e6:.1f}M, draft {draft.num_parameters() / 1e6:.1f}M parameters"
    )
    print(f"embedded pair: {sizes}; strategy {args.strategy}; prompt: held-out code, {ids.shape[1]} tokens")
    if not args.no_stream:
        print("-" * 72)
        print(prompt, end="", flush=True)
        spec.generate(ids, max_new_tokens=new, streamer=TextStreamer(tokenizer, skip_prompt=True))
        print("\n" + "-" * 72)

    name = f"specdec {args.strategy}"
    methods = baseline_methods(target, draft, ["target"], {"max_new_tokens": new, "do_sample": False})
    methods[name] = lambda prompt_ids: (spec.generate(prompt_ids, max_new_tokens=new), spec.stats)
    results = run_benchmark(methods, [ids], repeats=args.repeats)
    rows = {row["method"]: row for row in summarize(results)}
    ours = next(r for r in results if r.method == name)
    target_rate = rows["target"]["tokens_per_second"]
    print(f"{'method':<34}{'tokens/s':>10}{'speedup':>9}{'tau':>7}")
    print(f"{'target generate() (transformers)':<34}{target_rate:>10.1f}{1.0:>9.2f}{1.0:>7.2f}")
    print(f"{name:<34}{ours.tokens_per_second:>10.1f}{rows[name]['speedup']:>9.2f}{ours.tau:>7.2f}")
    per_depth = " ".join(f"{a:.2f}" for a in ours.acceptance_per_depth)
    print(f"acceptance per depth: [{per_depth}]")
    last = spec.stats
    split = f"draft {last.draft_time:.3f}s, verify {last.verify_time:.3f}s, rest {last.rest_time:.3f}s"
    split += f"; {ours.new_tokens} tokens"
    print(f"time split (specdec, last run): {split}, median of {args.repeats} runs, greedy")
    identical = bool(ours.identical_to_target)
    print(f"output identical to the target's own generate(): {'yes' if identical else 'NO'}")
    return 0 if identical else 1


def _is_input_error(error: BaseException) -> bool:
    """Errors whose message describes bad input completely: what is wrong and what to do."""
    from specdec.embedded.pair import EmbeddedPairError
    from specdec.models.loading import ModelSourceError
    from specdec.models.vocab import VocabularyMismatchError

    known = (CommandError, EmbeddedPairError, ModelSourceError, VocabularyMismatchError, ValueError)
    return isinstance(error, known)


def _one_line(error: BaseException) -> str:
    """An error as one line, whitespace folded; other errors than input errors carry their type name."""
    text = " ".join(str(error).split())
    if text and _is_input_error(error):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr, without the source line Python would print under them."""
    print(f"specdec: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _name(args: argparse.Namespace) -> str:
    """The command as errors name it; on a rank other than 0 of a tensor-parallel launch, with its rank."""
    from specdec.cli.parallel import rank

    if getattr(args, "tensor_parallel", False) and rank() != 0:
        return f"specdec {args.command} (rank {rank()})"
    return f"specdec {args.command}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; errors are printed as one line on stderr (status 1), tracebacks only with --debug.

    Never reads stdin: models load under wrap()'s policy (no checkpoint code unless
    --trust-remote-code, no pickle unless --allow-pickle, no interactive question).
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # name the sub-command's own usage, not the top-level one
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    debug = bool(getattr(args, "debug", False) or args.debug_all)
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning
        try:
            return args.run(args)
        except KeyboardInterrupt:
            if debug:
                raise
            print(f"{_name(args)}: interrupted", file=sys.stderr)
            return 130
        except Exception as error:  # noqa: BLE001 - the command line reports, --debug shows the traceback
            if debug:
                traceback.print_exc()
            hint = "" if debug or _is_input_error(error) else " (run with --debug for the traceback)"
            print(f"{_name(args)}: {_one_line(error)}{hint}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
