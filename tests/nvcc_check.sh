#!/usr/bin/env bash
# Compile check of every CUDA source for sm_80 and sm_90: one nvcc call per file with both
# -gencode targets, against the headers of the installed torch (a CPU build is enough: its
# include tree has c10/cuda and ATen/cuda). Needs nvcc on PATH; no GPU.
# Usage: tests/nvcc_check.sh [python]   (default: python on PATH; e.g. /work/venv/bin/python)
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${1:-python}"
NVCC="${NVCC:-nvcc}"
command -v "$NVCC" >/dev/null || { echo "nvcc_check: $NVCC not found on PATH" >&2; exit 2; }
TORCH_INC="$("$PY" -c 'import torch.utils.cpp_extension as c; print(" ".join(c.include_paths()))')" || {
  echo "nvcc_check: cannot import torch with $PY" >&2; exit 2; }
INC=()
for d in $TORCH_INC; do INC+=("-I$d"); done
PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
status=0
shopt -s nullglob
files=("$ROOT"/csrc/cuda/*.cu)
[ ${#files[@]} -gt 0 ] || { echo "nvcc_check: no .cu files under csrc/cuda" >&2; exit 2; }
for f in "${files[@]}"; do
  start=$(date +%s)
  if "$NVCC" -c "$f" -o "$OUT/$(basename "$f").o" \
      -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
      -std=c++20 -O2 --expt-relaxed-constexpr -Xcompiler -fPIC \
      -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -DFUSEDRNN_WITH_CUDA \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -D__CUDA_NO_HALF2_OPERATORS__ \
      -I"$ROOT/csrc/include" "${INC[@]}" -I"$PYINC"; then
    echo "nvcc_check: OK   $(basename "$f") (sm_80 + sm_90, $(( $(date +%s) - start )) s)"
  else
    echo "nvcc_check: FAIL $(basename "$f")"
    status=1
  fi
done
exit $status
