#!/usr/bin/env bash
# Everything a lent GPU session runs, in one command that fits a 10-minute limit:
#   1. tests/gpu_check.sh: build with CUDA, pytest -m cuda, compute-sanitizer runs;
#   2. the benchmark on the GPU: the per-step CUDA path and the persistent kernel
#      (FUSEDRNN_PERSISTENT=1), each side by side with cuDNN in its own run;
#   3. one archive $OUT/gpu_session.tar.gz with every log and result.
# Usage (repository root, GPU machine): OUT=/some/dir bash benchmarks/gpu_session.sh
# Budgets: GPU_CHECK_BUDGET_S (default 330) for step 1, BENCH_BUDGET_S (default 110) per benchmark run.
set -u
cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-$(mktemp -d)}"
work="$(mktemp -d)"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

OUT="$work/check" GPU_CHECK_BUDGET_S="${GPU_CHECK_BUDGET_S:-330}" bash tests/gpu_check.sh > "$work/gpu_check.txt" 2>&1
echo "gpu_check exit: $?" | tee -a "$work/gpu_check.txt"
sed -n '/gpu_check summary/,$p' "$work/gpu_check.txt"

# issue 5 shapes: B sweep at H=256, H sweep at B=64, T=1000, and the char-LM shape
SHAPES="${SHAPES:-100x1x256x256,100x8x256x256,100x64x256x256,100x64x512x512,100x64x1024x1024,1000x8x256x256,80x32x512x512}"
bench() {  # bench NAME PERSISTENT_MODE CANDIDATES: one benchmark run into $work/NAME
  local name="$1" mode="$2" cands="$3"
  FUSEDRNN_PERSISTENT="$mode" timeout --kill-after=10 "${BENCH_BUDGET_S:-110}" "$PY" -m benchmarks \
    --device cuda --suite gpu --cells vanilla,ln,bn --candidates "$cands" --shapes "$SHAPES" \
    --dtype float32,bfloat16 --repeats 10 --warmup 3 --budget 1 --out "$work/$name" --quiet > "$work/$name.log" 2>&1
  echo "benchmark $name (FUSEDRNN_PERSISTENT=$mode): exit $?" | tee -a "$work/gpu_check.txt"
}
bench bench-step 0 fused,nn,floor
bench bench-persistent 1 fused,nn

tar czf "$OUT/gpu_session.tar.gz" -C "$work" .
for f in "$work"/bench-*/results.md; do
  [ -f "$f" ] && { echo "==== $f"; grep -E "^\|" "$f" | head -40; }
done
