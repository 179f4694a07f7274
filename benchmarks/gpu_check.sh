#!/usr/bin/env bash
# One GPU loan (about 15 minutes, no network): CUDA tests, the attention kernel against SDPA with a mask,
# flex_attention and SDPA causal at Llama-2-7B / 70B shapes, decode / verify / draft steps against the
# measured bandwidth floor (with CUDA graphs captured and replayed), greedy identity on random-weight
# Llama-2-7B / TinyLlama shapes, `specdec generate --tensor-parallel` on the embedded pair when the machine
# has more than one GPU, and the projected step model; one summary table comes last. Every step
# has its own timeout and a failure does not stop the next; the time limits add up to 9.25 minutes.
#
#   bash benchmarks/gpu_check.sh             # logs land in $OUT (default /tmp/gpu_check_out)
#   bash benchmarks/gpu_check.sh --dry-run   # CPU: every step that needs no CUDA, the rest listed as skipped
#
# Without CUDA the script always makes a dry run: the kernel on the Triton interpreter against the
# float64 reference (bench_attention.py --cpu-smoke), the step benchmark on tiny float32 shapes with
# the greedy identity check (bench_steps_gpu.py --dry-run) and the projected step model. Exit status 1
# when a step failed or timed out.
#
# The GPU machines carry Python 3.12, torch 2.11, transformers 5.17, triton 3.6 and no flash-attn: the
# checkout runs from PYTHONPATH, nothing is installed, nothing is downloaded (random weights).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
if [ "$DRY" = 0 ] && ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device: making a dry run (the CUDA steps are listed as skipped)"
    DRY=1
fi
if [ "$DRY" = 1 ]; then
    export TRITON_INTERPRET=1 # the kernel on CPU runs in triton's interpreter
else
    unset TRITON_INTERPRET # the compiled kernels, not the interpreter
fi

declare -a NAMES STATUS SECONDS_TAKEN RESULTS

step() { # step NAME TIMEOUT_S COMMAND...
    local name="$1" limit="$2"
    shift 2
    echo
    echo "=== $name (timeout ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    NAMES+=("$name")
    SECONDS_TAKEN+=("$((SECONDS - start))")
    case $rc in
        0) STATUS+=("ok") ;;
        124 | 137) STATUS+=("TIMEOUT") ;;
        *) STATUS+=("FAILED (rc $rc)") ;;
    esac
    RESULTS+=("$(result_of "$name")")
}

skip() { # skip NAME REASON
    echo
    echo "=== $1: skipped ($2)"
    NAMES+=("$1")
    STATUS+=("skipped ($2)")
    SECONDS_TAKEN+=("0")
    RESULTS+=("")
}

result_of() { # the line of a step's log that says how it went
    local log="$OUT/$1.log"
    case $1 in
        *tests) grep -E "passed|failed|error|no tests ran" "$log" | tail -1 ;;
        bench-attention) grep -h "^check:" "$log" | tail -1 ;;
        attention-cpu-smoke) grep -c "max err" "$log" | sed 's/$/ backends checked against float64/' ;;
        bench-flex) grep -h "goal check" "$log" | head -1 ;;
        bench-steps*) printf '%s identical of %s greedy checks; %s' "$(grep -c ": identical" "$log")" \
            "$(grep -c "^greedy identity" "$log")" "$(grep -h "^floors:" "$log" | head -1)" ;;
        tensor-parallel) grep -h "target passes" "$log" | tail -1 | cut -c1-90 ;;
        step-model) grep -h "^| H100 SXM | llama2-7b |" "$log" | tail -1 |
            awk -F'|' '{print "PROJECTED H100, 7B: chain" $4 "/ tree" $5}' ;;
    esac
}

echo "=== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python - <<'PY' || true
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for name in ("triton", "transformers", "flash_attn"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as error:
        print(name, "not importable:", type(error).__name__)
PY

# 1. the kernel tests run whole on CUDA (the compiled kernel in fp32/fp16/bf16, the runner through it)
if [ "$DRY" = 0 ]; then
    step kernel-tests 90 python -m pytest tests/test_kernels.py tests/test_kernels_bench.py \
        tests/test_kernel_runner.py -q -x -p no:cacheprovider
else
    skip kernel-tests "no CUDA; the suite runs them interpreted"
fi

# 2. CUDA tests elsewhere in the suite, if any file mentions cuda
others=$(grep -l -i "cuda" tests/test_*.py 2>/dev/null | grep -v -e test_kernels.py -e test_kernels_bench.py \
    -e test_kernel_runner.py -e test_kernel_aot.py | tr '\n' ' ')
if [ "$DRY" = 1 ]; then
    skip other-cuda-tests "no CUDA"
elif [ -n "$others" ]; then
    # shellcheck disable=SC2086
    step other-cuda-tests 60 python -m pytest $others -q -k cuda -p no:cacheprovider
fi

# 3. the kernel against the float64 reference on the GPU (bf16, fp16), then timings against SDPA with a
#    dense mask and SDPA's causal FlashAttention-2 at the 7B and 70B shapes (flex in its own step)
if [ "$DRY" = 0 ]; then
    step bench-attention 100 python benchmarks/bench_attention.py --check --repeats 20 \
        --methods triton-tree,triton-chain,sdpa-mask,fa2-causal,flash-kvcache --json "$OUT/bench_attention.json"
else
    step attention-cpu-smoke 120 python benchmarks/bench_attention.py --cpu-smoke
fi

# 4. flex_attention compiles once per shape: only at prefix 2048, in its own time box
if [ "$DRY" = 0 ]; then
    step bench-flex 45 python benchmarks/bench_attention.py --methods triton-tree,flex,fa2-causal \
        --prefixes 2048 --json "$OUT/bench_flex.json"
else
    skip bench-flex "no CUDA"
fi

# 5. step latencies against the bandwidth floor (Llama-2-7B / TinyLlama shapes, random bf16 weights),
#    CUDA graphs captured and replayed, greedy identity (float32 copies of the same shapes)
if [ "$DRY" = 0 ]; then
    step bench-steps-gpu 140 python benchmarks/bench_steps_gpu.py --prefix 2048 --repeats 10 --alpha 0.6,0.7,0.8
else
    step bench-steps-dry-run 150 python benchmarks/bench_steps_gpu.py --dry-run
fi

# 6. specdec generate --tensor-parallel on the embedded pair: its target split over 2 GPUs (nccl), the draft
#    whole on each; greedy, must exit 0 with rank 0 alone printing. 2 ranks whatever the GPU count: the
#    embedded target's 2 key/value heads (6 query heads) split over no more.
gpus=$([ "$DRY" = 1 ] && echo 0 || python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$DRY" = 1 ]; then
    skip tensor-parallel "no CUDA"
elif [ "${gpus:-0}" -gt 1 ]; then
    step tensor-parallel 90 python -m torch.distributed.run --nproc-per-node 2 -m specdec generate \
        --tensor-parallel --device cuda --prompt "def parse(self, text):" --max-new-tokens 32 --stats
else
    skip tensor-parallel "${gpus:-0} GPU: needs 2"
fi

# 7. the projected step model (roofline; needs no GPU), printed beside the measurements, and the 70B
#    target's verify step split over 1, 2, 4 and 8 GPUs (tensor parallelism)
step step-model 30 python benchmarks/bench_steps_gpu.py --project --prefix 2048 --tp 1,2,4,8

echo
echo "=== summary ($(date -u +%Y-%m-%dT%H:%MZ), $([ "$DRY" = 1 ] && echo "DRY RUN, no CUDA" || echo GPU), logs in $OUT/)"
printf '| %-20s | %-48s | %7s | %s |\n' step status seconds result
printf '|%s|%s|%s|%s|\n' "----------------------" "--------------------------------------------------" \
    "---------" "--------"
failed=0
for i in "${!NAMES[@]}"; do
    printf '| %-20s | %-48s | %7s | %s |\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECONDS_TAKEN[$i]}" "${RESULTS[$i]}"
    case "${STATUS[$i]}" in FAILED* | TIMEOUT) failed=1 ;; esac
done
grep -h "goal check" "$OUT"/bench-attention.log "$OUT"/bench-flex.log 2>/dev/null || true
grep -h "^| specdec runner\|^| transformers eager\|^greedy identity" "$OUT"/bench-steps*.log 2>/dev/null || true
exit $failed
