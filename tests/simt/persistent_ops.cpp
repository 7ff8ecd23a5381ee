// The CUDA backend's host code (csrc/cuda/rnn_cuda.cu, which includes the persistent kernel,
// csrc/cuda/persistent.cuh) built for the CPU under the SIMT emulator, registered as
// torch.ops.fusedrnn_persistent_emulated.* for tests/test_persistent_emulated.py. The path is
// selected at run time by FUSEDRNN_PERSISTENT exactly as on the GPU (the emulated device has
// 3 SMs, so a layer runs as a grid of up to 3 cooperative CTAs of 64 threads).
#define FUSEDRNN_EMULATED
#include "../../csrc/cuda/rnn_cuda.cu"

TORCH_LIBRARY(fusedrnn_persistent_emulated, m) { FUSEDRNN_CUDA_OPS(m); }
