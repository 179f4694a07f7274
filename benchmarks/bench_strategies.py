"""Chain vs static tree vs dynamic tree vs prompt lookup vs hybrid vs auto, against transformers.

A fixed configuration of `specdec bench` (same models, same prompts, one process, warm-up excluded):
the embedded pair, 8 held-out code prompts of 128 tokens, greedy, 128 new tokens. Extra arguments are
passed through (e.g. --temperature 0.7, --out results/strategies).

    python benchmarks/bench_strategies.py --out results/strategies
"""

from __future__ import annotations

import sys

from specdec.cli.main import main

DEFAULTS = [
    "bench",
    "--num-prompts", "8",
    "--prompt-tokens", "128",
    "--max-new-tokens", "128",
    "--strategies", "chain,tree,dynamic-tree,prompt-lookup,hybrid,auto",
    "--baselines", "target,hf-assisted,hf-prompt-lookup,specdec-no-speculation",
]  # fmt: skip

if __name__ == "__main__":
    sys.exit(main(DEFAULTS + sys.argv[1:]))
