#!/usr/bin/env bash
# Builds and runs gemm_kernels.cc (fusedrnn's packed kernel alone, one thread) and mkl_rates.py
# (MKL's packed GEMM through torch's exported cblas_sgemm_pack/compute, one thread; torch.mm and
# oneDNN's linear at 1 and 2 threads). Needs the project's virtualenv (torch) active.
# With arguments (shapes "M,K,N" or "M,K,N,t"), the kernel on those shapes only.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
inc="$(python -c 'import torch.utils.cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths()))')"
bin="$(mktemp -d)/gemm_kernels"
# shellcheck disable=SC2086
g++ -O3 -std=c++20 $inc -o "$bin" "$here/gemm_kernels.cc"
"$bin" "$@"
if [ $# -eq 0 ]; then python "$here/mkl_rates.py"; fi
