#!/usr/bin/env bash
# Everything a lent GPU session runs, in one command that fits a 10-minute limit:
#   1. tests/gpu_check.sh: build with CUDA, pytest -m cuda, compute-sanitizer runs;
#   2. the benchmark on the GPU: the default dispatch side by side with cuDNN, then the persistent
#      kernel forced vs the per-step path at B = 16 and 32, then the bfloat16 persistent product on
#      the FMA units vs the tensor cores (FUSEDRNN_PERSISTENT_MMA=0/1; each of these runs ~20 s);
#   3. one archive $OUT/gpu_session.tar.gz with every log and result.
# Usage (repository root, GPU machine): OUT=/some/dir bash benchmarks/gpu_session.sh
# Budgets: GPU_CHECK_BUDGET_S (default 300) for step 1 (its CPU suite skipped: GPU_CHECK_SKIP_CPU=1),
# BENCH_BUDGET_S (default 230) for the main benchmark, 60 s for each persistent-vs-per-step run.
set -u
cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-$(mktemp -d)}"
work="$(mktemp -d)"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

OUT="$work/check" GPU_CHECK_SKIP_CPU="${GPU_CHECK_SKIP_CPU:-1}" GPU_CHECK_BUDGET_S="${GPU_CHECK_BUDGET_S:-300}" \
  bash tests/gpu_check.sh > "$work/gpu_check.txt" 2>&1
echo "gpu_check exit: $?" | tee -a "$work/gpu_check.txt"
sed -n '/gpu_check summary/,$p' "$work/gpu_check.txt"

# 1. the default dispatch (FUSEDRNN_PERSISTENT unset = auto) against cuDNN and the GEMM floor:
#    a B sweep at H=256, H=1024 at B=32, T=1000, and the char-LM shape
SHAPES="${SHAPES:-100x8x256x256,100x16x256x256,100x32x256x256,100x64x256x256,100x32x1024x1024,1000x32x256x256,80x32x512x512}"
timeout --kill-after=10 "${BENCH_BUDGET_S:-230}" "$PY" -m benchmarks --device cuda --suite gpu --cells vanilla,ln,bn \
  --candidates fused,nn,floor --shapes "$SHAPES" --dtype float32,bfloat16 --repeats 10 --warmup 3 --budget 0.5 \
  --no-memory --out "$work/bench-auto" --quiet > "$work/bench-auto.log" 2>&1
echo "benchmark bench-auto: exit $?" | tee -a "$work/gpu_check.txt"
# 2. the persistent kernel forced vs the per-step path at B = 16 and 32 (H = 256; H = 1024 at B = 32)
for mode in 1 0; do
  FUSEDRNN_PERSISTENT=$mode timeout --kill-after=10 60 "$PY" -m benchmarks --device cuda --cells vanilla,ln,bn \
    --candidates fused,nn --shapes 100x16x256x256,100x32x256x256,100x32x1024x1024 --dtype float32 --repeats 10 --warmup 3 \
    --budget 0.5 --no-memory --no-plot --out "$work/bench-persistent-$mode" --quiet > "$work/bench-persistent-$mode.log" 2>&1
  echo "benchmark bench-persistent-$mode (FUSEDRNN_PERSISTENT=$mode): exit $?" | tee -a "$work/gpu_check.txt"
done
# bfloat16 persistent product on the FMA units vs the tensor cores (FUSEDRNN_PERSISTENT_MMA)
for mma in 0 1; do
  FUSEDRNN_PERSISTENT=1 FUSEDRNN_PERSISTENT_MMA=$mma timeout --kill-after=10 60 "$PY" -m benchmarks --device cuda \
    --cells vanilla,bn --candidates fused,nn --shapes 100x8x256x256,100x32x256x256,100x32x1024x1024 --dtype bfloat16 \
    --repeats 10 --warmup 3 --budget 0.5 --no-memory --no-plot --out "$work/bench-mma-$mma" --quiet \
    > "$work/bench-mma-$mma.log" 2>&1
  echo "benchmark bench-mma-$mma (FUSEDRNN_PERSISTENT=1 FUSEDRNN_PERSISTENT_MMA=$mma): exit $?" | tee -a "$work/gpu_check.txt"
done

tar czf "$OUT/gpu_session.tar.gz" -C "$work" .
for f in "$work"/bench-*/results.md; do
  [ -f "$f" ] && { echo "==== $f"; grep -E "^\|" "$f" | head -60; }
done
