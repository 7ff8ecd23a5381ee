// The CUDA backend's host code (csrc/cuda/rnn_cuda.cu) built for the CPU: the same ATen
// calls on CPU tensors, the same pointwise kernels under the SIMT emulator. Registered as
// torch.ops.fusedrnn_emulated.* (schemas inferred from the C++ signatures) and loaded by
// tests/test_cuda_emulated.py through torch.utils.cpp_extension.load.
#define FUSEDRNN_EMULATED
#include "../../csrc/cuda/rnn_cuda.cu"

TORCH_LIBRARY(fusedrnn_emulated, m) { FUSEDRNN_CUDA_OPS(m); }
