"""The `specdec` command line (layer L7): `specdec demo | generate | bench`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

from specdec.cli_commands import add_bench_parser, add_generate_parser
from specdec.config import STRATEGIES


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
    demo.set_defaults(run=run_demo, command_parser=demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specdec", description="Exact speculative decoding for transformers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _demo_parser(sub)
    add_generate_parser(sub)
    add_bench_parser(sub)
    return parser


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run_demo(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    import specdec
    from specdec.models.embedded import EmbeddedPairError, heldout_code_prompts, load_embedded_pair

    if args.max_new_tokens < 1 or args.prompt_tokens < 1 or args.repeats < 1 or args.prompt_index < 0:
        print("specdec demo: --max-new-tokens, --prompt-tokens and --repeats must be >= 1", file=sys.stderr)
        return 2
    try:
        target, draft, tokenizer = load_embedded_pair(path=args.pair)
    except EmbeddedPairError as error:
        print(f"specdec demo: {error}", file=sys.stderr)
        return 1
    prompt = heldout_code_prompts(
        tokenizer, num_prompts=args.prompt_index + 1, prompt_tokens=args.prompt_tokens
    )[args.prompt_index]
    ids = tokenizer(prompt, return_tensors="pt").input_ids  # [1, L]
    spec = specdec.wrap(target, None if args.strategy == "prompt-lookup" else draft, strategy=args.strategy)
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
    else:  # warm-up
        spec.generate(ids, max_new_tokens=min(new, 8))
    target.generate(ids, max_new_tokens=min(new, 8), do_sample=False)

    target_times, spec_times, stats = [], [], []
    reference = output = None
    for _ in range(args.repeats):
        seconds, reference = _timed(lambda: target.generate(ids, max_new_tokens=new, do_sample=False))
        target_times.append(seconds)
        seconds, output = _timed(lambda: spec.generate(ids, max_new_tokens=new))
        spec_times.append(seconds)
        stats.append(spec.stats)
    generated = reference.shape[1] - ids.shape[1]
    t_target = sorted(target_times)[len(target_times) // 2]
    t_spec = sorted(spec_times)[len(spec_times) // 2]
    last = stats[-1]
    identical = torch.equal(reference, output)
    print(f"{'method':<34}{'tokens/s':>10}{'speedup':>9}{'tau':>7}")
    print(f"{'target generate() (transformers)':<34}{generated / t_target:>10.1f}{1.0:>9.2f}{1.0:>7.2f}")
    name = f"specdec {args.strategy}"
    print(f"{name:<34}{generated / t_spec:>10.1f}{t_target / t_spec:>9.2f}{last.tau:>7.2f}")
    per_depth = " ".join(f"{a:.2f}" for a in last.acceptance_per_position)
    print(f"acceptance per depth: [{per_depth}]")
    print(
        f"time split (specdec, last run): draft {last.draft_time:.3f}s, verify {last.verify_time:.3f}s, "
        f"rest {last.rest_time:.3f}s; {generated} tokens, median of {args.repeats} runs, greedy"
    )
    print(f"output identical to the target's own generate(): {'yes' if identical else 'NO'}")
    return 0 if identical else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # name the sub-command's own usage, not the top-level one
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    from specdec.models.embedded import EmbeddedPairError

    try:
        return args.run(args)
    except EmbeddedPairError as error:
        print(f"specdec {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
