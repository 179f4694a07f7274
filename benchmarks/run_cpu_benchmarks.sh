#!/usr/bin/env bash
# Every CPU number in BENCHMARKS.md, in one go (embedded pair, offline). Writes results/ and prints tables.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p results
python -m specdec demo --no-stream --repeats 3 | tee results/demo.txt
python benchmarks/bench_strategies.py \
    --baselines target,hf-assisted,hf-assisted-k3,hf-prompt-lookup,specdec-no-speculation \
    --out results/strategies-greedy | tee results/strategies-greedy.txt
python benchmarks/bench_strategies.py --runtime compiled --repeats 3 \
    --baselines target,hf-assisted,hf-assisted-k3,hf-prompt-lookup,specdec-no-speculation \
    --out results/strategies-greedy-compiled | tee results/strategies-greedy-compiled.txt
python benchmarks/bench_strategies.py --temperature 0.7 --baselines target,specdec-no-speculation \
    --out results/strategies-t0.7 | tee results/strategies-t0.7.txt
python benchmarks/bench_precision.py --prompts 8 | tee results/precision.txt
python benchmarks/bench_steps.py | tee results/steps.txt
python benchmarks/bench_bound.py | tee results/bound.txt
