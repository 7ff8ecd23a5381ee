// The single TORCH_LIBRARY(fusedrnn, m): every op schema. Backends register kernels with
// TORCH_LIBRARY_IMPL(fusedrnn, CPU/CUDA, m); autograd, fake tensors and autocast are
// registered in fusedrnn/_ops.py.
//
// Shape legend: T steps, B batch, I input, H hidden, G gates, GH = G * H, S BN slots.
// Forward ops run ONE layer in ONE direction (reference.run_layer's contract); they are
// functional: batch-norm running statistics are read (eval) but updated by the separate
// mutable op bn_update_ from the per-step statistics the forward returns.
//   variant: LstmVariant (vanilla 0, peephole 1, nig 2, nfg 3, nog 4, niaf 5, noaf 6, cifg 7, fgr 8)
//   norm:    NormKind (none 0, layer 1, layer_per_gate 2, batch 3)
//   kind:    RnnKind (tanh 0, relu 1)
// Absent optional results (e.g. a_n without FGR, grads of absent roles) are empty tensors.
// w_hr [P, H]: torch.nn.LSTM's projection (proj_size P; vanilla LSTM, norm none): h0, h_n, y,
// grad_y, grad_h_n and dh0 are then P wide, w_hh is [4H, P], and lstm_fwd's hw result holds
// m_t = o * tanh(c_t) [T, B, H] (h_t = m_t W_hr^T), which lstm_bwd reads for dW_hr.
// cuda_path (lstm_fwd, lstm_bwd): which CUDA path runs the recurrence (persistent_launch.h):
// 0 FUSEDRNN_PERSISTENT's choice (unset: auto), 1 auto, 2 per step, 3 persistent when it fits;
// the CPU kernels ignore it.
// The schema strings: csrc/include/fusedrnn/schema.h.
#include <Python.h>
#include <torch/library.h>

#include "fusedrnn/schema.h"

extern "C" {
// `import fusedrnn._C` loads this library, which registers the ops; no Python bindings.
PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&def);
}
}

TORCH_LIBRARY(fusedrnn, m) {
  m.def(FUSEDRNN_SCHEMA_LSTM_FWD);
  m.def(FUSEDRNN_SCHEMA_LSTM_BWD);
  // stats: lstm_fwd's batch-norm statistics [T, 2, 2GH + H]; updates slot min(t0 + t, S - 1)
  // of every running tensor for each step t with more than one active sequence.
  m.def(FUSEDRNN_SCHEMA_BN_UPDATE);
  m.def(FUSEDRNN_SCHEMA_GRU_FWD);
  m.def(FUSEDRNN_SCHEMA_GRU_BWD);
  m.def(FUSEDRNN_SCHEMA_RNN_FWD);
  m.def(FUSEDRNN_SCHEMA_RNN_BWD);
  // The CPU kernels' cache of large buffers (csrc/cpu/pool.h): [free bytes cached, bytes in
  // use, cap]; release unmaps the free blocks.
  m.def("cpu_cache_info() -> int[]");
  m.def("cpu_cache_release() -> ()");
  // What the CPU kernels' float32 products run here (csrc/cpu/recurrent_gemm.h): [per-step
  // recurrent product, large GEMMs around the time loop].
  m.def("cpu_gemm_info() -> str[]");
  // a @ b (+ bias) through the CPU kernels' large GEMM (csrc/cpu/gemm.h gemm_out, whichever
  // FUSEDRNN_LARGE_GEMM picks): for tests and GEMM benchmarks.
  m.def("cpu_large_gemm(Tensor a, Tensor b, Tensor? bias) -> Tensor");
}
