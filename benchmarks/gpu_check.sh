#!/usr/bin/env bash
# One GPU loan (about 15 minutes, no network): CUDA tests, the attention kernel check and benchmark,
# and the GPU step benchmark (bench_steps_gpu.py). Every step has its own timeout and a failure
# does not stop the next; a summary table comes last. Time limits add up to under 9 minutes.
#
#   bash benchmarks/gpu_check.sh            # logs and JSON land in $OUT (default /tmp/gpu_check_out)
#
# The GPU machines carry Python 3.12, torch 2.11, transformers 5.17, triton 3.6 and no flash-attn:
# the checkout runs from PYTHONPATH, nothing is installed.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # the compiled kernels, not the interpreter

declare -a NAMES STATUS SECONDS_TAKEN

step() {  # step NAME TIMEOUT_S COMMAND...
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
}

echo "=== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
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

# 1. the kernel tests run whole on CUDA (the compiled kernel in fp32/fp16/bf16, no interpreter)
step kernel-tests 120 python -m pytest tests/test_kernels.py tests/test_kernels_bench.py -q -x -p no:cacheprovider

# 2. CUDA tests elsewhere in the suite, if any file mentions cuda
others=$(grep -l -i "cuda" tests/test_*.py 2>/dev/null | grep -v -e test_kernels.py -e test_kernels_bench.py | tr '\n' ' ')
if [ -n "$others" ]; then
    # shellcheck disable=SC2086
    step other-cuda-tests 90 python -m pytest $others -q -k cuda -p no:cacheprovider
fi

# 3. the kernel against the float64 reference on the GPU (bf16, fp16), then timings without flex
step bench-attention 120 python benchmarks/bench_attention.py --check \
    --methods triton-tree,triton-chain,sdpa-mask,fa2-causal,flash-kvcache --json "$OUT/bench_attention.json"

# 4. flex_attention compiles once per shape: only at prefix 2048, in its own time box
step bench-flex 45 python benchmarks/bench_attention.py --methods triton-tree,flex,fa2-causal --prefixes 2048 \
    --json "$OUT/bench_flex.json"

# 5. step latencies against the bandwidth floor (Llama-2-7B / TinyLlama shapes, random bf16 weights)
step bench-steps-gpu 150 python benchmarks/bench_steps_gpu.py --prefix 2048 --alpha 0.6,0.7,0.8

echo
echo "=== summary ($(date -u +%Y-%m-%dT%H:%MZ), logs in $OUT/)"
printf '| %-18s | %-22s | %8s |\n' step status seconds
printf '|%s|%s|%s|\n' "--------------------" "------------------------" "----------"
for i in "${!NAMES[@]}"; do
    printf '| %-18s | %-22s | %8s |\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECONDS_TAKEN[$i]}"
done
grep -h "goal check\|^check:" "$OUT"/bench-attention.log 2>/dev/null || true
