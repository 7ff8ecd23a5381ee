#!/usr/bin/env bash
# compile.sh TREE OUT.ptx|OUT.cubin [python]: the PTX or the cubin (sm_90) of TREE/csrc/cuda/rnn_cuda.cu,
# built with the flags of tests/nvcc_check.sh plus -lineinfo (nvcc on PATH; a CPU build of torch
# gives the headers). ~50-60 s on 2 cores.
set -eu
TREE=$1
OUT=$2
PY="${3:-python}"
INC=()
for d in $("$PY" -c 'import torch.utils.cpp_extension as c; print(" ".join(c.include_paths()))'); do INC+=("-I$d"); done
PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
KIND=-ptx
[ "${OUT##*.}" = cubin ] && KIND=-cubin
nvcc "$KIND" -lineinfo "$TREE/csrc/cuda/rnn_cuda.cu" -o "$OUT" -arch=sm_90 -std=c++20 -O3 --expt-relaxed-constexpr \
  -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -DFUSEDRNN_WITH_CUDA -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ -I"$TREE/csrc/include" "${INC[@]}" -I"$PYINC"
