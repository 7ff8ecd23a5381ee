// Params structs of the fused kernels: raw pointers and sizes of one layer, one direction.
// Shape legend: see cell_math.h (T steps, B batch, I input, H hidden, G gates, GH = G * H,
// P peephole rows, S batch-norm slots). Every tensor is contiguous, row-major; optional
// tensors are null pointers when absent. Framework-free, shared by the CPU and CUDA kernels.
//
// Saved for backward (outputs of the forward op, per step t, per batch row, in elements):
//   LSTM, norm none:           acts GH + cs H          (+ y H, an output anyway)
//   LSTM, norm layer:          acts GH + cs H + xw GH + hw GH + 6 statistics
//   LSTM, norm layer_per_gate: acts GH + cs H + (xw + hw) GH + 2G + 2 statistics
//   LSTM, norm batch:          acts GH + cs H + xw GH + hw GH, plus 2 * (2GH + H) per step
//   GRU, norm none:            acts 3H + hn H;  GRU layer: + xw 3H + hw 3H + 4 statistics
//   LSTM with projection (proj_size P, norm none): acts GH + cs H + m H (y is P wide)
//   RNN:                       nothing but y (h_t is the output)
// e.g. vanilla LSTM: 5H per row and step (4H gates + H cell state), y excluded.
#pragma once

#include <stdint.h>

#include "fusedrnn/cell_math.h"

namespace fusedrnn {

template <typename T>
struct LstmFwdParams {
  int steps, batch, input, hidden, gates;  // T, B, I, H, G
  int bn_slots;                            // S (batch norm), else 0
  LstmFlags flags;
  int norm;                                // NormKind
  bool training;
  int t0;                                  // time step of x[0] (batch-norm slot offset)
  double eps;
  const T* x;            // [T, B, I]
  const int64_t* lengths;  // [B] or null: sequence b is active at steps t < lengths[b]
  const T *h0, *c0, *a0;   // [B, H], [B, H], [B, 3H] (FGR)
  const T *w_ih, *w_hh;    // [GH, I], [GH, H]
  const T *b_ih, *b_hh;    // [GH]
  const T* w_peep;         // [P, H]
  const T* w_fgr;          // [3H, 3H]
  const T *g_ih, *g_hh;    // [GH] gains of norm(W_ih x), norm(W_hh h)
  const T *g_cell, *b_cell;  // [H]
  const T *g_gates, *b_gates;  // [GH] layer_per_gate
  const T *rm_ih, *rv_ih, *rm_hh, *rv_hh, *rm_cell, *rv_cell;  // [S, GH] / [S, H] (eval)
  // projection (torch.nn.LSTM's proj_size; vanilla LSTM without norm): h_t = W_hr m_t, m_t =
  // o * tanh(c_t); then h0, h_n, y, w_hh's rows and the recurrence have width R = proj, not H
  int proj;                // P, or 0
  const T* w_hr;           // [P, H]
  T* ms;                   // [T, B, H] m_t (saved for dW_hr and d m_t), zero at padded steps
  // outputs
  T* y;                    // [T, B, R], zero at padded steps
  T *h_n, *c_n, *a_n;      // final states
  T* acts;                 // [T, B, GH] gate activations
  T* cs;                   // [T, B, H] c_t (carried value at padded steps)
  T* xw;                   // [T, B, GH] raw x W_ih^T (layer/batch), xW_ih^T + hW_hh^T (layer_per_gate)
  T* hw;                   // [T, B, GH] raw h W_hh^T (layer/batch)
  T* stats;                // layer [T, B, 6]; layer_per_gate [T, B, 2G + 2]; batch [T, 2, 2GH + H]
};

template <typename T>
struct LstmBwdParams : LstmFwdParams<T> {
  const T *dy, *dh_n, *dc_n, *da_n;  // gradients of the forward outputs
  T *dx, *dh0, *dc0, *da0;           // input / initial-state gradients
  T* dpre;                           // [T, B, GH] gradient of the gate pre-activations
  T *dxw, *dhw;                      // [T, B, GH] gradients of the raw projections
  T* dhy;                            // [T, B, P] projection: gradient of h_t (kept for dW_hr)
};

}  // namespace fusedrnn
