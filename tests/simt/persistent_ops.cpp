// The CUDA backend's host code (csrc/cuda/rnn_cuda.cu, which includes the persistent kernel,
// csrc/cuda/persistent.cuh) built for the CPU under the SIMT emulator, registered as
// torch.ops.fusedrnn_persistent_emulated.* for tests/test_persistent_emulated.py. The path is
// selected at run time by FUSEDRNN_PERSISTENT exactly as on the GPU (the emulated device has
// 3 SMs, so a layer runs as a grid of up to 3 cooperative CTAs of 64 threads).
#define FUSEDRNN_EMULATED
#include "../../csrc/cuda/rnn_cuda.cu"

namespace {
// The FUSEDRNN_PERSISTENT=auto verdict for a float32 LSTM layer (variant 0) of batch B, hidden H
// and norm code `norm` on the emulated device: "" when auto picks the persistent kernel, else why not.
std::string persist_auto_why(int64_t B, int64_t H, int64_t norm) {
  using namespace fusedrnn::cuda;
  const PersistDevice dev = persist_device();
  const PersistPlan plan = persist_plan(int(norm), false, 4, int(H), int(B), dev.sms, dev.smem_max, kPersistThreads, 4);
  std::string why;
  persist_selected("persist_auto_why", PersistMode::kAuto, dev, plan, at::kFloat, norm, 1, B, H, &why);
  return why;
}
}  // namespace

TORCH_LIBRARY(fusedrnn_persistent_emulated, m) {
  FUSEDRNN_CUDA_OPS(m);
  m.def("persist_auto_why", &persist_auto_why);
}
