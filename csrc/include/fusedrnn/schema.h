// The schemas of the recurrent ops: csrc/ops.cpp defines them in TORCH_LIBRARY(fusedrnn), and the
// tests' emulated CUDA ops (tests/simt/*_ops.cpp, through rnn_cuda.cu's FUSEDRNN_CUDA_OPS) use the
// same strings, so both take the same arguments with the same defaults. Conventions: csrc/ops.cpp.
#pragma once

#define FUSEDRNN_SCHEMA_LSTM_FWD                                                             \
  "lstm_fwd(Tensor x, Tensor? lengths, Tensor h0, Tensor c0, Tensor? a0, Tensor w_ih, "     \
  "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_peep, Tensor? w_fgr, Tensor? g_ih, "  \
  "Tensor? g_hh, Tensor? g_cell, Tensor? b_cell, Tensor? g_gates, Tensor? b_gates, "        \
  "Tensor? rm_ih, Tensor? rv_ih, Tensor? rm_hh, Tensor? rv_hh, Tensor? rm_cell, "           \
  "Tensor? rv_cell, int variant, int norm, bool training, int t0, float eps, "              \
  "Tensor? w_hr=None, int cuda_path=0) -> "                                                 \
  "(Tensor y, Tensor h_n, Tensor c_n, Tensor a_n, Tensor acts, Tensor cs, Tensor xw, "      \
  "Tensor hw, Tensor stats)"

#define FUSEDRNN_SCHEMA_LSTM_BWD                                                             \
  "lstm_bwd(Tensor grad_y, Tensor grad_h_n, Tensor grad_c_n, Tensor grad_a_n, Tensor x, "   \
  "Tensor? lengths, Tensor h0, Tensor c0, Tensor? a0, Tensor w_ih, Tensor w_hh, "           \
  "Tensor? b_ih, Tensor? b_hh, Tensor? w_peep, Tensor? w_fgr, Tensor? g_ih, Tensor? g_hh, " \
  "Tensor? g_cell, Tensor? b_cell, Tensor? g_gates, Tensor? b_gates, Tensor y, Tensor acts, " \
  "Tensor cs, Tensor xw, Tensor hw, Tensor stats, int variant, int norm, bool training, "   \
  "float eps, Tensor? w_hr=None, int cuda_path=0) -> (Tensor dx, Tensor dh0, Tensor dc0, "  \
  "Tensor da0, Tensor dw_ih, Tensor dw_hh, Tensor db_ih, Tensor db_hh, Tensor dw_peep, "    \
  "Tensor dw_fgr, Tensor dg_ih, Tensor dg_hh, Tensor dg_cell, Tensor db_cell, "             \
  "Tensor dg_gates, Tensor db_gates, Tensor dw_hr)"

#define FUSEDRNN_SCHEMA_BN_UPDATE                                                                \
  "bn_update_(Tensor(a!) rm_ih, Tensor(b!) rv_ih, Tensor(c!) rm_hh, Tensor(d!) rv_hh, "          \
  "Tensor(e!) rm_cell, Tensor(f!) rv_cell, Tensor stats, Tensor? lengths, int batch, int t0, "   \
  "float momentum) -> ()"

#define FUSEDRNN_SCHEMA_GRU_FWD                                                                  \
  "gru_fwd(Tensor x, Tensor? lengths, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "       \
  "Tensor? b_hh, Tensor? g_ih, Tensor? g_hh, int norm, float eps) -> (Tensor y, Tensor h_n, "    \
  "Tensor acts, Tensor hn, Tensor xw, Tensor hw, Tensor stats)"

#define FUSEDRNN_SCHEMA_GRU_BWD                                                                  \
  "gru_bwd(Tensor grad_y, Tensor grad_h_n, Tensor x, Tensor? lengths, Tensor h0, Tensor w_ih, "  \
  "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? g_ih, Tensor? g_hh, Tensor y, Tensor acts, " \
  "Tensor hn, Tensor xw, Tensor hw, Tensor stats, int norm, float eps) -> (Tensor dx, "          \
  "Tensor dh0, Tensor dw_ih, Tensor dw_hh, Tensor db_ih, Tensor db_hh, Tensor dg_ih, "           \
  "Tensor dg_hh)"

#define FUSEDRNN_SCHEMA_RNN_FWD                                                               \
  "rnn_fwd(Tensor x, Tensor? lengths, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "    \
  "Tensor? b_hh, int kind) -> (Tensor y, Tensor h_n)"

#define FUSEDRNN_SCHEMA_RNN_BWD                                                                  \
  "rnn_bwd(Tensor grad_y, Tensor grad_h_n, Tensor x, Tensor? lengths, Tensor h0, Tensor w_ih, "  \
  "Tensor w_hh, Tensor y, int kind, bool has_bias) -> (Tensor dx, Tensor dh0, Tensor dw_ih, "    \
  "Tensor dw_hh, Tensor db_ih, Tensor db_hh)"
