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
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import fusedrnn._C` loads this library, which registers the ops; no Python bindings.
PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&def);
}
}

TORCH_LIBRARY(fusedrnn, m) {
  m.def(
      "lstm_fwd(Tensor x, Tensor? lengths, Tensor h0, Tensor c0, Tensor? a0, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_peep, Tensor? w_fgr, Tensor? g_ih, "
      "Tensor? g_hh, Tensor? g_cell, Tensor? b_cell, Tensor? g_gates, Tensor? b_gates, "
      "Tensor? rm_ih, Tensor? rv_ih, Tensor? rm_hh, Tensor? rv_hh, Tensor? rm_cell, "
      "Tensor? rv_cell, int variant, int norm, bool training, int t0, float eps, "
      "Tensor? w_hr=None) -> "
      "(Tensor y, Tensor h_n, Tensor c_n, Tensor a_n, Tensor acts, Tensor cs, Tensor xw, "
      "Tensor hw, Tensor stats)");
  m.def(
      "lstm_bwd(Tensor grad_y, Tensor grad_h_n, Tensor grad_c_n, Tensor grad_a_n, Tensor x, "
      "Tensor? lengths, Tensor h0, Tensor c0, Tensor? a0, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, Tensor? w_peep, Tensor? w_fgr, Tensor? g_ih, Tensor? g_hh, "
      "Tensor? g_cell, Tensor? b_cell, Tensor? g_gates, Tensor? b_gates, Tensor y, Tensor acts, "
      "Tensor cs, Tensor xw, Tensor hw, Tensor stats, int variant, int norm, bool training, "
      "float eps, Tensor? w_hr=None) -> (Tensor dx, Tensor dh0, Tensor dc0, Tensor da0, "
      "Tensor dw_ih, Tensor dw_hh, Tensor db_ih, Tensor db_hh, Tensor dw_peep, Tensor dw_fgr, "
      "Tensor dg_ih, Tensor dg_hh, Tensor dg_cell, Tensor db_cell, Tensor dg_gates, "
      "Tensor db_gates, Tensor dw_hr)");
  // stats: lstm_fwd's batch-norm statistics [T, 2, 2GH + H]; updates slot min(t0 + t, S - 1)
  // of every running tensor for each step t with more than one active sequence.
  m.def(
      "bn_update_(Tensor(a!) rm_ih, Tensor(b!) rv_ih, Tensor(c!) rm_hh, Tensor(d!) rv_hh, "
      "Tensor(e!) rm_cell, Tensor(f!) rv_cell, Tensor stats, Tensor? lengths, int batch, int t0, "
      "float momentum) -> ()");
  m.def(
      "gru_fwd(Tensor x, Tensor? lengths, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? g_ih, Tensor? g_hh, int norm, float eps) -> (Tensor y, Tensor h_n, "
      "Tensor acts, Tensor hn, Tensor xw, Tensor hw, Tensor stats)");
  m.def(
      "gru_bwd(Tensor grad_y, Tensor grad_h_n, Tensor x, Tensor? lengths, Tensor h0, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? g_ih, Tensor? g_hh, Tensor y, Tensor acts, "
      "Tensor hn, Tensor xw, Tensor hw, Tensor stats, int norm, float eps) -> (Tensor dx, "
      "Tensor dh0, Tensor dw_ih, Tensor dw_hh, Tensor db_ih, Tensor db_hh, Tensor dg_ih, "
      "Tensor dg_hh)");
  m.def(
      "rnn_fwd(Tensor x, Tensor? lengths, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, int kind) -> (Tensor y, Tensor h_n)");
  m.def(
      "rnn_bwd(Tensor grad_y, Tensor grad_h_n, Tensor x, Tensor? lengths, Tensor h0, Tensor w_ih, "
      "Tensor w_hh, Tensor y, int kind, bool has_bias) -> (Tensor dx, Tensor dh0, Tensor dw_ih, "
      "Tensor dw_hh, Tensor db_ih, Tensor db_hh)");
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
