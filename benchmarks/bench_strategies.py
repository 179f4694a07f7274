"""Chain vs static tree vs dynamic tree vs prompt lookup vs auto, against transformers' methods.

Same models, same prompts, one process, warm-up excluded. Default: the embedded pair and held-out code
prompts, greedy, 128 new tokens. Prints a markdown table and writes results.json.

    python benchmarks/bench_strategies.py --prompts 8 --max-new-tokens 128 --out results/strategies
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path

import torch

from specdec.bench import (
    baseline_methods,
    markdown_table,
    results_json,
    run_benchmark,
    strategy_methods,
    summarize,
)
from specdec.models.embedded import heldout_code_prompts, load_embedded_pair


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", default=None, help="embedded pair folder (default: the shipped one)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--strategies", default="chain,tree,dynamic-tree,prompt-lookup,auto")
    parser.add_argument("--baselines", default="target,hf-assisted,hf-prompt-lookup,specdec-no-speculation")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None, help="folder for results.json and table.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    target, draft, tokenizer = load_embedded_pair(path=args.pair)
    texts = heldout_code_prompts(tokenizer, num_prompts=args.prompts, prompt_tokens=args.prompt_tokens)
    prompts = [tokenizer(t, return_tensors="pt").input_ids for t in texts]
    gen_kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    methods = baseline_methods(target, draft, [b for b in args.baselines.split(",") if b], gen_kwargs)
    methods |= strategy_methods(target, draft, [s for s in args.strategies.split(",") if s], gen_kwargs)
    results = run_benchmark(
        methods, prompts, repeats=args.repeats, progress=lambda m: print(m, file=sys.stderr)
    )
    rows = summarize(results)
    meta = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor()} {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "command": "python benchmarks/bench_strategies.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "prompts": f"{args.prompts} held-out code prompts of {args.prompt_tokens} tokens",
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy",
    }
    table = markdown_table(rows)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results_json(results, rows, meta), indent=2))
        (out / "table.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
