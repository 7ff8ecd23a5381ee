#!/usr/bin/env bash
# Everything a lent GPU session runs, in ONE command that fits the 10-minute command limit (a
# session has 15 minutes of device time, the machine's start included):
#   1. tests/gpu_check.sh: build with CUDA, pytest -m cuda (the persistent kernels' tests included),
#      compute-sanitizer runs (CPU suite skipped: GPU_CHECK_SKIP_CPU=1);
#   2. the persistent kernel forced vs the per-step path (FUSEDRNN_PERSISTENT=1 / 0) at H = 256,
#      B = 16 / 32 / 64 and H = 1024, B = 32, float32, each with cuDNN in the same run;
#   3. the bfloat16 persistent product on the FMA units vs the tensor cores (FUSEDRNN_PERSISTENT_MMA=0/1);
#   4. the default dispatch side by side with cuDNN and the GEMM floor, in the time that is left;
#   5. one archive $OUT/gpu_session.tar.gz with every log and result.
# Usage (repository root, GPU machine): OUT=/some/dir bash benchmarks/gpu_session.sh
# Budget: SESSION_BUDGET_S (default 540) for the whole script; GPU_CHECK_BUDGET_S (default 260) of
# it for step 1 (on an H100 every step of gpu_check took 250 s together, 2026-11-23).
set -u
cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-$(mktemp -d)}"
work="$(mktemp -d)"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
BUDGET_S="${SESSION_BUDGET_S:-540}"

OUT="$work/check" GPU_CHECK_SKIP_CPU="${GPU_CHECK_SKIP_CPU:-1}" GPU_CHECK_BUDGET_S="${GPU_CHECK_BUDGET_S:-260}" \
  bash tests/gpu_check.sh > "$work/gpu_check.txt" 2>&1
echo "gpu_check exit: $?" | tee -a "$work/gpu_check.txt"
sed -n '/gpu_check summary/,$p' "$work/gpu_check.txt"

bench() {  # bench NAME LIMIT_S [ENV=VALUE...] -- BENCHMARK ARGS...: one benchmark run within the budget
  local name="$1" limit="$2" left=$((BUDGET_S - SECONDS))
  shift 2
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  if [ $left -lt 25 ]; then
    echo "benchmark $name: SKIPPED (session budget of $BUDGET_S s used up)" | tee -a "$work/gpu_check.txt"
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  env "${envs[@]}" timeout --kill-after=10 "$limit" "$PY" -m benchmarks --device cuda --repeats 10 --warmup 3 \
    --budget 0.5 --no-memory --quiet --out "$work/$name" "$@" > "$work/$name.log" 2>&1
  echo "benchmark $name (${envs[*]}): exit $? after $((SECONDS)) s of the session" | tee -a "$work/gpu_check.txt"
}

# 2. persistent vs per step (since the last GPU run the persistent kernels' copies, batch-norm loops
#    and FMA product changed: 601fb2a, 8fd9e39, 739c597, 1bac13c; the thresholds in persistent_launch.h
#    come from before them)
for mode in 1 0; do
  bench "bench-persistent-$mode" 70 FUSEDRNN_PERSISTENT=$mode -- --cells vanilla,ln,bn --candidates fused,nn \
    --shapes 100x16x256x256,100x32x256x256,100x64x256x256,100x32x1024x1024 --dtype float32 --no-plot
done
# 3. bfloat16 persistent product on the FMA units vs the tensor cores
for mma in 0 1; do
  bench "bench-mma-$mma" 45 FUSEDRNN_PERSISTENT=1 FUSEDRNN_PERSISTENT_MMA=$mma -- --cells vanilla,bn \
    --candidates fused,nn --shapes 100x8x256x256,100x32x256x256,100x32x1024x1024 --dtype bfloat16 --no-plot
done
# 4. the default dispatch (FUSEDRNN_PERSISTENT unset = auto) against cuDNN and the GEMM floor
SHAPES="${SHAPES:-100x8x256x256,100x16x256x256,100x32x256x256,100x64x256x256,100x32x1024x1024,1000x32x256x256,80x32x512x512}"
bench bench-auto 600 -- --suite gpu --cells vanilla,ln,bn --candidates fused,nn,floor --shapes "$SHAPES" \
  --dtype float32,bfloat16

tar czf "$OUT/gpu_session.tar.gz" -C "$work" .
for f in "$work"/bench-*/results.md; do
  [ -f "$f" ] && { echo "==== $f"; grep -E "^\|" "$f" | head -60; }
done
rm -rf "$work"
