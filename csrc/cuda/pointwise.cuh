// Fused per-step pointwise kernels of the CUDA backend (every cell family, variant and norm).
//
// One launch per time step and direction of the recurrence does everything between the
// recurrent GEMM of step t and that of step t + 1: biases, normalization statistics (layer
// norm: block reduction over a batch row; batch norm: reduction over the batch of a column),
// gate activations, state update, output and padding. Backward mirrors it in reverse time.
// GEMMs (input projection of all steps, per-step h W_hh^T, dW/dx after the loop) are the
// host's job (cuda/rnn_cuda.cu through ATen, tests/test_cuda_emulated.py through torch).
//
// This header is framework-free and compiles twice: with nvcc for the GPU and with g++ under
// the SIMT emulator (csrc/simt/simt.h), where the CPU tests execute these same kernels.
// Shape legend: T steps, B batch, H hidden, G gates present, GH = G * H. Every pointer is a
// contiguous row-major tensor of ONE step ([B, *]) unless said otherwise; optional ones are null.
// T is the storage type (float, double, c10::Half, c10::BFloat16), A the accumulation and
// statistics type (double for double, float otherwise).
#pragma once

#include <stdint.h>

#include "../simt/simt.h"
#include "fusedrnn/cell_math.h"

namespace fusedrnn {
namespace cuda {

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

// ----------------------------------------------------------------------------- params

// Sizes and flags common to every step kernel; `t` is the local step index (for lengths).
struct StepDims {
  int B, H, variant, t;  // variant: LstmVariant (LSTM), RnnKind (RNN), unused (GRU)
  int training;          // batch norm: batch statistics (1) or the running slot (0)
  int unused_;
  double eps;
  const int64_t* lengths;  // [B] or null: row b is active at step t iff t < lengths[b]
};

// LSTM forward step. Stats (type A, the accumulation type): layer [B, 6] = (mean, rstd) of xw, hw, c; layer_per_gate
// [B, 2G + 2] = (mean, rstd) per gate of v = xw + hw, then of c; batch [2, 2GH + H] = batch
// mean row, biased variance row, columns (xw | hw | c), the running slot's values in eval.
template <typename T>
struct LstmStepFwd {
  StepDims d;
  const T *xw, *hw;         // [B, GH] raw x W_ih^T and h_{t-1} W_hh^T
  const T* fgr;             // [B, 3H] a_{t-1} W_fgr^T (FGR) or null
  const T *b_ih, *b_hh;     // [GH]
  const T* w_peep;          // [P, H]
  const T *g_ih, *g_hh;     // [GH] gains of norm(xw), norm(hw) (layer, batch)
  const T *g_cell, *b_cell;    // [H]
  const T *g_gates, *b_gates;  // [GH] (layer_per_gate)
  const T *rm_ih, *rv_ih, *rm_hh, *rv_hh, *rm_cell, *rv_cell;  // running slot of step t (eval)
  const T *h_prev, *c_prev, *a_prev;  // [B, H], [B, H], [B, 3H]
  T *h_next, *c_next, *a_next;        // state after the step (carried at padded rows)
  T* y;                               // [B, H], zero at padded rows
  T* acts;                            // [B, GH] gate activations
  T* v_out;                           // [B, GH] xw + hw (layer_per_gate, for backward) or null
  typename AccOf<T>::type* stats;  // statistics in the accumulation type (float for half types)
};

// LSTM backward step. dh/dc/da: gradients of the state after the step (carried from t + 1);
// outputs: dpre (gradient of the final gate pre-activations), dxw/dhw (of the raw projections;
// may alias dpre when there is no norm), the parts of the previous state's gradient that do
// not go through a GEMM (dh_direct, da_direct: the carry at padded rows), dc_prev, and
// per-row parameter-gradient sums added into wgrad [B, 3GH + 5H] (accumulated over steps):
//   [0, GH) gate biases | [GH, 2GH) g_ih or g_gates | [2GH, 3GH) g_hh or b_gates...
// exact layout: bias GH, g_ih GH, g_hh GH, peephole i/f/o 3H, g_cell H, b_cell H; for
// layer_per_gate b_gates uses the bias columns and g_gates the g_ih columns.
template <typename T>
struct LstmStepBwd {
  StepDims d;
  const T *xw, *hw;           // [B, GH] raw projections (layer, batch) / v = xw + hw in xw (layer_per_gate)
  const T* w_peep;
  const T *g_ih, *g_hh, *g_cell, *b_cell, *g_gates, *b_gates;
  const T *c_prev, *acts, *cs;  // forward values of step t (cs = c_t)
  const typename AccOf<T>::type* stats;
  const T *dy, *dh, *dc, *da;           // [B, H], [B, H], [B, H], [B, 3H] (FGR)
  T *dpre, *dxw, *dhw, *dh_direct, *dc_prev, *da_direct;
  typename AccOf<T>::type* wgrad;
};

// GRU. Stats (layer) [B, 4] = (mean, rstd) of xw and hw. hn: [B, H] h* of gate n (normalized
// h W_hh^T + b_hn), saved for backward. wgrad [B, 12H]: db_ih, db_hh, dg_ih, dg_hh.
template <typename T>
struct GruStepFwd {
  StepDims d;
  const T *xw, *hw, *b_ih, *b_hh, *g_ih, *g_hh, *h_prev;
  T *h_next, *y, *acts, *hn;
  typename AccOf<T>::type* stats;
};
template <typename T>
struct GruStepBwd {
  StepDims d;
  const T *xw, *hw, *g_ih, *g_hh, *h_prev, *acts, *hn;
  const typename AccOf<T>::type* stats;
  const T *dy, *dh;
  T *dxw, *dhw, *dh_direct;
  typename AccOf<T>::type* wgrad;
};

// Elman RNN (d.variant = RnnKind). Backward: dpre [B, H], dh_direct.
template <typename T>
struct RnnStepFwd {
  StepDims d;
  const T *xw, *hw, *b_ih, *b_hh, *h_prev;
  T *h_next, *y;
};
template <typename T>
struct RnnStepBwd {
  StepDims d;
  const T *y, *dy, *dh;
  T *dpre, *dh_direct;
};

// Batch-norm running statistics from the per-step statistics of lstm_fwd (the bn_update_ op):
// slot min(t0 + t, S - 1) of every running tensor, for each step with more than one active
// sequence, running = (1 - momentum) running + momentum batch (unbiased variance), in step order.
template <typename T>
struct BnUpdate {
  int steps, batch, slots, t0, gh, hidden;  // T, B, S, t0, GH, H
  double momentum;
  const int64_t* lengths;  // [B] or null
  const typename AccOf<T>::type* stats;  // [T, 2, 2GH + H]
  T *rm_ih, *rv_ih, *rm_hh, *rv_hh, *rm_cell, *rv_cell;  // [S, GH] / [S, H]
};

// ----------------------------------------------------------------------------- helpers

__device__ __forceinline__ bool row_active(const StepDims& d, int b) {
  return d.lengths == nullptr || d.t < d.lengths[b];
}

template <typename T, typename A>
__device__ __forceinline__ A ld(const T* p, long i) { return A(p[i]); }
template <typename T, typename A>
__device__ __forceinline__ A ld_or(const T* p, long i, A fallback) { return p ? A(p[i]) : fallback; }

// Sum of v over the 32 lanes of a warp, returned to every lane (the whole warp calls it).
template <typename V>
__device__ inline V warp_sum(V v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of v over the block, returned to every thread. blockDim.x is a multiple of 32, <= 1024;
// red: 32 shared accumulators.
template <typename A>
__device__ inline A block_sum(A v, A* red) {
  v = warp_sum(v);
  __syncthreads();  // red may still be read by the previous call
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  A s = 0;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) s += red[w];
  return s;
}

// Two-pass mean and rstd of get(k), k in [0, n), over the block.
template <typename A, typename F>
__device__ inline void block_moments(F get, int n, A eps, A* red, A* mean, A* rstd) {
  A s = 0;
  for (int k = threadIdx.x; k < n; k += blockDim.x) s += get(k);
  const A m = block_sum(s, red) / A(n);
  A q = 0;
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    const A dv = get(k) - m;
    q += dv * dv;
  }
  *mean = m;
  *rstd = A(1) / sqrt(block_sum(q, red) / A(n) + eps);
}

// Batch-norm tiles: a block takes kBnUnits = 32 hidden units (one per lane, so a batch row's
// loads are coalesced across the warp) and all batch rows, split over its kBnGroups warps (warp
// w takes rows w, w + kBnGroups, ...). A column statistic is each warp's partial sum over its
// rows, combined in warp order through shared memory: deterministic, two barriers per combine.
constexpr int kBnUnits = 32, kBnGroups = 8, kBnThreads = kBnUnits * kBnGroups;

// v[k] := the sum of v[k] over the block's warps (the same column in every warp), for k < K.
// blockDim.x == kBnThreads; red: K * kBnThreads shared accumulators.
template <int K, typename A>
__device__ inline void group_sums(A* v, A* red) {
  __syncthreads();  // red may still be read by the previous call
  for (int k = 0; k < K; ++k) red[k * kBnThreads + threadIdx.x] = v[k];
  __syncthreads();
  const int lane = threadIdx.x & 31;
  for (int k = 0; k < K; ++k) {
    A s = 0;
    for (int w = 0; w < kBnGroups; ++w) s += red[k * kBnThreads + w * kBnUnits + lane];
    v[k] = s;
  }
}

// Rows active at this step.
__device__ inline int active_rows(const StepDims& d) {
  if (d.lengths == nullptr) return d.B;
  int n = 0;
  for (int b = 0; b < d.B; ++b) n += d.t < d.lengths[b];
  return n;
}

// Two-pass batch mean and biased variance of K values per lane over the rows active at this
// step, each warp taking its rows (w, w + kBnGroups, ...): get(b, v) writes row b's K values to
// v. Every thread of the block calls it (barriers inside); a lane with unit false adds nothing.
template <int K, typename A, typename F>
__device__ inline void tile_moments(const StepDims& d, bool unit, A inv_n, F get, A* mean, A* var, A* red) {
  const int w = threadIdx.x >> 5;
  A v[K];
  for (int k = 0; k < K; ++k) mean[k] = var[k] = A(0);
  if (unit)
    for (int b = w; b < d.B; b += kBnGroups)
      if (row_active(d, b)) {
        get(b, v);
        for (int k = 0; k < K; ++k) mean[k] += v[k];
      }
  group_sums<K>(mean, red);
  for (int k = 0; k < K; ++k) mean[k] *= inv_n;
  if (unit)
    for (int b = w; b < d.B; b += kBnGroups)
      if (row_active(d, b)) {
        get(b, v);
        for (int k = 0; k < K; ++k) {
          const A dv = v[k] - mean[k];
          var[k] += dv * dv;
        }
      }
  group_sums<K>(var, red);
  for (int k = 0; k < K; ++k) var[k] *= inv_n;
}

// ----------------------------------------------------------------------------- LSTM forward

// Gate pre-activations of unit j of row b after norm, biases and FGR terms, in slots of the
// present gates (pre[q], q < G). ms/rs: statistics (see the kernels).
template <typename T, typename A, int NORM>
__device__ inline void lstm_pre(const LstmStepFwd<T>& p, const LstmFlags& fl, int b, int j, const A* ms,
                                const A* rs, A* pre) {
  const int H = p.d.H, GH = fl.num_gates * H;
  for (int q = 0; q < fl.num_gates; ++q) {
    const long col = long(q) * H + j, i = long(b) * GH + col;
    const A x = ld<T, A>(p.xw, i), h = ld<T, A>(p.hw, i);
    A v;
    if (NORM == kNormNone) {
      v = x + h;
    } else if (NORM == kNormLayerPerGate) {
      v = (x + h - ms[q]) * rs[q] * A(p.g_gates[col]) + A(p.b_gates[col]);
    } else if (NORM == kNormLayer) {
      v = (x - ms[0]) * rs[0] * A(p.g_ih[col]) + (h - ms[1]) * rs[1] * A(p.g_hh[col]);
    } else {  // batch: per-column statistics, slot q of (ih) and 4 + q of (hh)
      v = (x - ms[q]) * rs[q] * A(p.g_ih[col]) + (h - ms[4 + q]) * rs[4 + q] * A(p.g_hh[col]);
    }
    if (NORM != kNormLayerPerGate) v += ld_or<T, A>(p.b_ih, col, A(0)) + ld_or<T, A>(p.b_hh, col, A(0));
    pre[q] = v;
  }
  if (fl.fgr) {
    const long r = long(b) * 3 * H + j;
    pre[fl.gi] += A(p.fgr[r]);
    pre[fl.gf] += A(p.fgr[r + H]);
    pre[fl.go] += A(p.fgr[r + 2 * H]);
  }
}

// Phase A of unit j, row b: gates, c_t, acts, carried state. Returns c_t (the new value).
template <typename T, typename A, int NORM>
__device__ inline A lstm_unit_a(const LstmStepFwd<T>& p, const LstmFlags& fl, int b, int j, bool active,
                                const A* ms, const A* rs) {
  const int H = p.d.H, GH = fl.num_gates * H;
  A pre[4];
  lstm_pre<T, A, NORM>(p, fl, b, j, ms, rs, pre);
  const long bj = long(b) * H + j;
  const A c_prev = A(p.c_prev[bj]);
  const A pi = fl.pi >= 0 ? A(p.w_peep[long(fl.pi) * H + j]) : A(0);
  const A pf = fl.pf >= 0 ? A(p.w_peep[long(fl.pf) * H + j]) : A(0);
  const A po = fl.po >= 0 ? A(p.w_peep[long(fl.po) * H + j]) : A(0);
  A i, f, g, o, c;
  lstm_cell_fwd<A>(fl, fl.gi >= 0 ? pre[fl.gi] : A(0), fl.gf >= 0 ? pre[fl.gf] : A(0), pre[fl.gg],
                   fl.go >= 0 ? pre[fl.go] : A(0), c_prev, pi, pf, po, &i, &f, &g, &o, &c);
  T* act = p.acts + long(b) * GH + j;
  if (fl.gi >= 0) act[long(fl.gi) * H] = T(i);
  if (fl.gf >= 0) act[long(fl.gf) * H] = T(f);
  act[long(fl.gg) * H] = T(g);
  if (fl.go >= 0) act[long(fl.go) * H] = T(o);
  p.c_next[bj] = active ? T(c) : p.c_prev[bj];
  if (fl.fgr) {
    const long r = long(b) * 3 * H + j;
    p.a_next[r] = active ? T(i) : p.a_prev[r];
    p.a_next[r + H] = active ? T(f) : p.a_prev[r + H];
    p.a_next[r + 2 * H] = active ? T(o) : p.a_prev[r + 2 * H];
  }
  return c;
}

// Phase B of unit j, row b: h_t from o and the (normalized) c_t.
template <typename T, typename A>
__device__ inline void lstm_unit_b(const LstmStepFwd<T>& p, const LstmFlags& fl, int b, int j, bool active,
                                   A c, A mc, A rc, bool cell_norm) {
  const int H = p.d.H, GH = fl.num_gates * H;
  const long bj = long(b) * H + j;
  const A o = fl.go >= 0 ? A(p.acts[long(b) * GH + long(fl.go) * H + j]) : A(1);
  const A cn = cell_norm ? (c - mc) * rc * A(p.g_cell[j]) + A(p.b_cell[j]) : c;
  const A h = lstm_out_fwd<A>(fl, o, cn);
  p.y[bj] = active ? T(h) : T(0);
  p.h_next[bj] = active ? T(h) : p.h_prev[bj];
}

// One block per batch row: norm none, layer, layer_per_gate.
template <typename T, int NORM>
__global__ void lstm_fwd_rows_kernel(LstmStepFwd<T> p) {
  using A = typename AccOf<T>::type;
  SIMT_SHARED(A, red, 32);
  const LstmFlags fl = lstm_flags(p.d.variant);
  const int b = blockIdx.x, H = p.d.H, G = fl.num_gates, GH = G * H;
  const bool active = row_active(p.d, b);
  const A eps = A(p.d.eps);
  const T* xw = p.xw + long(b) * GH;
  const T* hw = p.hw + long(b) * GH;
  A ms[8] = {}, rs[8] = {};
  if (NORM == kNormLayer) {
    block_moments<A>([&](int k) { return A(xw[k]); }, GH, eps, red, &ms[0], &rs[0]);
    block_moments<A>([&](int k) { return A(hw[k]); }, GH, eps, red, &ms[1], &rs[1]);
  } else if (NORM == kNormLayerPerGate) {
    for (int q = 0; q < G; ++q)
      block_moments<A>([&](int k) { return A(xw[q * H + k]) + A(hw[q * H + k]); }, H, eps, red, &ms[q], &rs[q]);
  }
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    lstm_unit_a<T, A, NORM>(p, fl, b, j, active, ms, rs);
    if (NORM == kNormLayerPerGate)
      for (int q = 0; q < G; ++q) {
        const long i = long(b) * GH + long(q) * H + j;
        p.v_out[i] = T(A(p.xw[i]) + A(p.hw[i]));
      }
  }
  // The cell norm reads c_t of the row; at padded rows c_next holds the carried value, which
  // gives different (unused) statistics, exactly as the reference's discarded rows.
  A mc = 0, rc = 1;
  const T* c = p.c_next + long(b) * H;
  if (NORM != kNormNone) block_moments<A>([&](int k) { return A(c[k]); }, H, eps, red, &mc, &rc);
  for (int j = threadIdx.x; j < H; j += blockDim.x) lstm_unit_b<T, A>(p, fl, b, j, active, A(c[j]), mc, rc, NORM != kNormNone);
  if (threadIdx.x == 0 && NORM != kNormNone) {
    A* st = p.stats + long(b) * (NORM == kNormLayer ? 6 : 2 * G + 2);
    if (NORM == kNormLayer) {
      st[0] = ms[0]; st[1] = rs[0]; st[2] = ms[1]; st[3] = rs[1]; st[4] = mc; st[5] = rc;
    } else {
      for (int q = 0; q < G; ++q) { st[2 * q] = ms[q]; st[2 * q + 1] = rs[q]; }
      st[2 * G] = mc; st[2 * G + 1] = rc;
    }
  }
}

// Batch norm: one tile of hidden units per block (see kBnUnits): each lane owns all gate columns
// of its unit j over the rows of its warp. Statistics are two-pass over the rows active at this
// step (mean, then centered squares), as the reference's; padded rows never enter them.
template <typename T>
__global__ void lstm_fwd_batchnorm_kernel(LstmStepFwd<T> p) {
  using A = typename AccOf<T>::type;
  SIMT_SHARED(A, red, 8 * kBnThreads);
  const LstmFlags fl = lstm_flags(p.d.variant);
  const int H = p.d.H, G = fl.num_gates, GH = G * H, B = p.d.B, w = threadIdx.x >> 5;
  const int j = blockIdx.x * kBnUnits + (threadIdx.x & 31);
  const bool unit = j < H;  // lanes past H only take part in the barriers
  const A eps = A(p.d.eps);
  const long NB = 2L * GH + H;
  const int n = active_rows(p.d);
  const A inv_n = n ? A(1) / A(n) : A(0);
  // ms/rs: slot q (input projection) and 4 + q (recurrent projection) of gate q, as lstm_pre reads
  A ms[8] = {}, rs[8] = {}, var[8] = {};
  if (p.d.training) {
    tile_moments<8, A>(p.d, unit, inv_n, [&](int b, A* v) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {  // absent gates (q >= G) give zero statistics
        v[q] = q < G ? A(p.xw[long(b) * GH + q * H + j]) : A(0);
        v[4 + q] = q < G ? A(p.hw[long(b) * GH + q * H + j]) : A(0);
      }
    }, ms, var, red);
  } else if (unit) {
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (q < G) {
        const long col = long(q) * H + j;
        ms[q] = A(p.rm_ih[col]); var[q] = A(p.rv_ih[col]);
        ms[4 + q] = A(p.rm_hh[col]); var[4 + q] = A(p.rv_hh[col]);
      }
  }
  if (unit) {
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (q < G) {
        rs[q] = A(1) / sqrt(var[q] + eps);
        rs[4 + q] = A(1) / sqrt(var[4 + q] + eps);
        if (w == 0) {
          const long col = long(q) * H + j;
          p.stats[col] = ms[q]; p.stats[NB + col] = var[q];
          p.stats[GH + col] = ms[4 + q]; p.stats[NB + GH + col] = var[4 + q];
        }
      }
    for (int b = w; b < B; b += kBnGroups) lstm_unit_a<T, A, kNormBatch>(p, fl, b, j, row_active(p.d, b), ms, rs);
  }
  // Cell statistics over c_t of the active rows: each lane reads the c_next it has just written.
  A mc[1] = {A(0)}, vc[1] = {A(0)};
  if (p.d.training) {
    tile_moments<1, A>(p.d, unit, inv_n, [&](int b, A* v) { v[0] = A(p.c_next[long(b) * H + j]); }, mc, vc, red);
  } else if (unit) {
    mc[0] = A(p.rm_cell[j]); vc[0] = A(p.rv_cell[j]);
  }
  if (!unit) return;  // no barrier below
  if (w == 0) { p.stats[2L * GH + j] = mc[0]; p.stats[NB + 2L * GH + j] = vc[0]; }
  const A rc = A(1) / sqrt(vc[0] + eps);
  for (int b = w; b < B; b += kBnGroups)
    lstm_unit_b<T, A>(p, fl, b, j, row_active(p.d, b), A(p.c_next[long(b) * H + j]), mc[0], rc, true);
}

// ----------------------------------------------------------------------------- LSTM backward

// Backward of the cell output for unit j, row b: from dh to d_o and d_cn (gradient of the
// normalized cell value), given c_t and the cell statistics.
template <typename T, typename A>
__device__ inline void lstm_out_grads(const LstmStepBwd<T>& p, const LstmFlags& fl, int b, int j, bool active,
                                      bool cell_norm, A mc, A rc, A* d_o, A* d_cn, A* chat) {
  const int H = p.d.H, GH = fl.num_gates * H;
  const long bj = long(b) * H + j;
  const A dh = active ? A(p.dy[bj]) + A(p.dh[bj]) : A(p.dh[bj]);
  const A c = A(p.cs[bj]);
  const A o = fl.go >= 0 ? A(p.acts[long(b) * GH + long(fl.go) * H + j]) : A(1);
  *chat = cell_norm ? (c - mc) * rc : c;
  const A cn = cell_norm ? *chat * A(p.g_cell[j]) + A(p.b_cell[j]) : c;
  lstm_out_bwd<A>(fl, dh, o, cn, d_o, d_cn);
}

// Gate backward of unit j, row b, once dc (gradient of c_t through output and norm) is known.
// Writes dpre (0 at padded rows), dc_prev, the direct state carries and peephole gradients.
template <typename T, typename A>
__device__ inline void lstm_unit_bwd(const LstmStepBwd<T>& p, const LstmFlags& fl, int b, int j, bool active,
                                     A d_o, A dc_out) {
  using W = typename AccOf<T>::type;
  const int H = p.d.H, G = fl.num_gates, GH = G * H;
  const long bj = long(b) * H + j;
  const A dc_carry = A(p.dc[bj]);
  T* dpre = p.dpre + long(b) * GH + j;
  if (!active) {
    for (int q = 0; q < G; ++q) dpre[long(q) * H] = T(0);
    p.dc_prev[bj] = p.dc[bj];
    p.dh_direct[bj] = p.dh[bj];
    if (fl.fgr)
      for (int k = 0; k < 3; ++k) p.da_direct[long(b) * 3 * H + k * H + j] = p.da[long(b) * 3 * H + k * H + j];
    return;
  }
  p.dh_direct[bj] = T(0);
  A da_i = 0, da_f = 0;
  if (fl.fgr) {
    const long r = long(b) * 3 * H + j;
    da_i = A(p.da[r]); da_f = A(p.da[r + H]); d_o += A(p.da[r + 2 * H]);
    for (int k = 0; k < 3; ++k) p.da_direct[r + k * H] = T(0);
  }
  const T* act = p.acts + long(b) * GH + j;
  const A i = fl.gi >= 0 ? A(act[long(fl.gi) * H]) : A(1);
  const A f = fl.cifg ? A(1) - i : (fl.gf >= 0 ? A(act[long(fl.gf) * H]) : A(1));
  const A g = A(act[long(fl.gg) * H]);
  const A o = fl.go >= 0 ? A(act[long(fl.go) * H]) : A(1);
  const A pi = fl.pi >= 0 ? A(p.w_peep[long(fl.pi) * H + j]) : A(0);
  const A pf = fl.pf >= 0 ? A(p.w_peep[long(fl.pf) * H + j]) : A(0);
  const A po = fl.po >= 0 ? A(p.w_peep[long(fl.po) * H + j]) : A(0);
  A dpi, dpf, dpg, dpo, dcp, dwi, dwf, dwo;
  lstm_cell_bwd<A>(fl, d_o, dc_out + dc_carry, da_i, da_f, i, f, g, o, A(p.c_prev[bj]), A(p.cs[bj]), pi, pf, po,
                   &dpi, &dpf, &dpg, &dpo, &dcp, &dwi, &dwf, &dwo);
  if (fl.gi >= 0) dpre[long(fl.gi) * H] = T(dpi);
  if (fl.gf >= 0) dpre[long(fl.gf) * H] = T(dpf);
  dpre[long(fl.gg) * H] = T(dpg);
  if (fl.go >= 0) dpre[long(fl.go) * H] = T(dpo);
  p.dc_prev[bj] = T(dcp);
  W* wg = p.wgrad + long(b) * (3L * GH + 5L * H) + 3L * GH;
  wg[j] += W(dwi);
  wg[H + j] += W(dwf);
  wg[2 * H + j] += W(dwo);
}

// Row kernel backward (norm none, layer, layer_per_gate): one block per batch row.
template <typename T, int NORM>
__global__ void lstm_bwd_rows_kernel(LstmStepBwd<T> p) {
  using A = typename AccOf<T>::type;
  SIMT_SHARED(A, red, 32);
  const LstmFlags fl = lstm_flags(p.d.variant);
  const int b = blockIdx.x, H = p.d.H, G = fl.num_gates, GH = G * H;
  const long WG = 3L * GH + 5L * H;
  A* wg = p.wgrad + long(b) * WG;
  const bool active = row_active(p.d, b);
  const int SW = NORM == kNormLayer ? 6 : 2 * G + 2;
  const A* st = NORM == kNormNone ? nullptr : p.stats + long(b) * SW;
  const A mc = st ? A(st[SW - 2]) : A(0), rc = st ? A(st[SW - 1]) : A(1);
  const bool cell_norm = NORM != kNormNone;
  // cell norm backward needs the row means of dcn * g and dcn * g * chat
  A m1 = 0, m2 = 0;
  if (cell_norm) {
    A s1 = 0, s2 = 0;
    for (int j = threadIdx.x; j < H; j += blockDim.x) {
      A d_o, d_cn, chat;
      lstm_out_grads<T, A>(p, fl, b, j, active, true, mc, rc, &d_o, &d_cn, &chat);
      const A dg = d_cn * A(p.g_cell[j]);
      s1 += dg;
      s2 += dg * chat;
    }
    m1 = block_sum(s1, red) / A(H);
    m2 = block_sum(s2, red) / A(H);
  }
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    A d_o, d_cn, chat;
    lstm_out_grads<T, A>(p, fl, b, j, active, cell_norm, mc, rc, &d_o, &d_cn, &chat);
    A dc = d_cn;
    if (cell_norm) {
      dc = norm_bwd<A>(d_cn * A(p.g_cell[j]), chat, rc, m1, m2);
      if (active) {
        wg[3L * GH + 3 * H + j] += d_cn * chat;
        wg[3L * GH + 4 * H + j] += d_cn;
      }
    }
    lstm_unit_bwd<T, A>(p, fl, b, j, active, d_o, dc);
  }
  __syncthreads();  // below, threads read dpre columns that other threads wrote
  if (NORM == kNormNone) {
    for (int j = threadIdx.x; j < GH; j += blockDim.x) wg[j] += A(p.dpre[long(b) * GH + j]);
    return;  // dxw = dhw = dpre (aliases)
  }
  // Gradients of the gate pre-activations through the gate norms.
  const T* dpre = p.dpre + long(b) * GH;
  const T* xw = p.xw + long(b) * GH;
  if (NORM == kNormLayer) {
    const T* hw = p.hw + long(b) * GH;
    const A mx = A(st[0]), rx = A(st[1]), mh = A(st[2]), rh = A(st[3]);
    A sx1 = 0, sx2 = 0, sh1 = 0, sh2 = 0;
    for (int k = threadIdx.x; k < GH; k += blockDim.x) {
      const A d = A(dpre[k]), xh = (A(xw[k]) - mx) * rx, hh = (A(hw[k]) - mh) * rh;
      sx1 += d * A(p.g_ih[k]); sx2 += d * A(p.g_ih[k]) * xh;
      sh1 += d * A(p.g_hh[k]); sh2 += d * A(p.g_hh[k]) * hh;
    }
    sx1 = block_sum(sx1, red) / A(GH); sx2 = block_sum(sx2, red) / A(GH);
    sh1 = block_sum(sh1, red) / A(GH); sh2 = block_sum(sh2, red) / A(GH);
    for (int k = threadIdx.x; k < GH; k += blockDim.x) {
      const A d = A(dpre[k]), xh = (A(xw[k]) - mx) * rx, hh = (A(hw[k]) - mh) * rh;
      p.dxw[long(b) * GH + k] = active ? T(norm_bwd<A>(d * A(p.g_ih[k]), xh, rx, sx1, sx2)) : T(0);
      p.dhw[long(b) * GH + k] = active ? T(norm_bwd<A>(d * A(p.g_hh[k]), hh, rh, sh1, sh2)) : T(0);
      wg[k] += d;
      wg[GH + k] += d * xh;
      wg[2L * GH + k] += d * hh;
    }
  } else {  // layer_per_gate over each gate's H values of v = xw + hw (saved in xw)
    for (int q = 0; q < G; ++q) {
      const A m = A(st[2 * q]), r = A(st[2 * q + 1]);
      A s1 = 0, s2 = 0;
      for (int j = threadIdx.x; j < H; j += blockDim.x) {
        const int k = q * H + j;
        const A d = A(dpre[k]) * A(p.g_gates[k]);
        s1 += d;
        s2 += d * (A(xw[k]) - m) * r;
      }
      s1 = block_sum(s1, red) / A(H);
      s2 = block_sum(s2, red) / A(H);
      for (int j = threadIdx.x; j < H; j += blockDim.x) {
        const int k = q * H + j;
        const A d = A(dpre[k]), vh = (A(xw[k]) - m) * r;
        p.dxw[long(b) * GH + k] = active ? T(norm_bwd<A>(d * A(p.g_gates[k]), vh, r, s1, s2)) : T(0);
        wg[k] += d;
        wg[GH + k] += d * vh;
      }
    }
  }
}

// Batch-norm backward: the forward's tiles (kBnUnits lanes x kBnGroups warps of rows). Each
// (row, unit) belongs to one lane, which writes its dpre and reads it back for the gate norms.
template <typename T>
__global__ void lstm_bwd_batchnorm_kernel(LstmStepBwd<T> p) {
  using A = typename AccOf<T>::type;
  SIMT_SHARED(A, red, 4 * kBnThreads);
  const LstmFlags fl = lstm_flags(p.d.variant);
  const int H = p.d.H, G = fl.num_gates, GH = G * H, B = p.d.B, w = threadIdx.x >> 5;
  const int j = blockIdx.x * kBnUnits + (threadIdx.x & 31);
  const bool unit = j < H;  // lanes past H only take part in the barriers
  const long NB = 2L * GH + H, WG = 3L * GH + 5L * H;
  const A eps = A(p.d.eps);
  const int n = active_rows(p.d);
  const bool stats = p.d.training != 0 && n > 0;  // uniform over the block
  const A inv_n = n ? A(1) / A(n) : A(0);
  const A mc = unit ? A(p.stats[2L * GH + j]) : A(0);
  const A rc = unit ? A(1) / sqrt(A(p.stats[NB + 2L * GH + j]) + eps) : A(1);
  const A g_cell = unit ? A(p.g_cell[j]) : A(0);
  A m[2] = {A(0), A(0)};  // batch means of dcn * g and dcn * g * chat (cell norm backward)
  if (stats) {
    if (unit)
      for (int b = w; b < B; b += kBnGroups) {
        if (!row_active(p.d, b)) continue;
        A d_o, d_cn, chat;
        lstm_out_grads<T, A>(p, fl, b, j, true, true, mc, rc, &d_o, &d_cn, &chat);
        m[0] += d_cn * g_cell;
        m[1] += d_cn * g_cell * chat;
      }
    group_sums<2>(m, red);
    m[0] *= inv_n; m[1] *= inv_n;
  }
  if (unit)
    for (int b = w; b < B; b += kBnGroups) {
      const bool active = row_active(p.d, b);
      A d_o, d_cn, chat;
      lstm_out_grads<T, A>(p, fl, b, j, active, true, mc, rc, &d_o, &d_cn, &chat);
      const A dg = d_cn * g_cell;
      const A dc = stats ? norm_bwd<A>(dg, chat, rc, m[0], m[1]) : rc * dg;
      if (active) {
        A* wg = p.wgrad + long(b) * WG + 3L * GH;
        wg[3 * H + j] += d_cn * chat;
        wg[4 * H + j] += d_cn;
      }
      lstm_unit_bwd<T, A>(p, fl, b, j, active, d_o, dc);
    }
  for (int q = 0; q < G; ++q) {  // G is uniform: every lane meets the same barriers
    const long col = long(q) * H + j;
    A mx = 0, rx = 1, mh = 0, rh = 1, gx = 0, gh = 0;
    if (unit) {
      mx = A(p.stats[col]); rx = A(1) / sqrt(A(p.stats[NB + col]) + eps);
      mh = A(p.stats[GH + col]); rh = A(1) / sqrt(A(p.stats[NB + GH + col]) + eps);
      gx = A(p.g_ih[col]); gh = A(p.g_hh[col]);
    }
    A sm[4] = {A(0), A(0), A(0), A(0)};  // means of d * g and d * g * vhat, input then recurrent
    if (stats) {
      if (unit)
        for (int b = w; b < B; b += kBnGroups) {
          if (!row_active(p.d, b)) continue;
          const long i = long(b) * GH + col;
          const A d = A(p.dpre[i]);
          sm[0] += d * gx; sm[1] += d * gx * (A(p.xw[i]) - mx) * rx;
          sm[2] += d * gh; sm[3] += d * gh * (A(p.hw[i]) - mh) * rh;
        }
      group_sums<4>(sm, red);
      for (int k = 0; k < 4; ++k) sm[k] *= inv_n;
    }
    if (!unit) continue;
    for (int b = w; b < B; b += kBnGroups) {
      const long i = long(b) * GH + col;
      if (!row_active(p.d, b)) {
        p.dxw[i] = T(0);
        p.dhw[i] = T(0);
        continue;
      }
      const A d = A(p.dpre[i]), xh = (A(p.xw[i]) - mx) * rx, hh = (A(p.hw[i]) - mh) * rh;
      p.dxw[i] = T(stats ? norm_bwd<A>(d * gx, xh, rx, sm[0], sm[1]) : rx * d * gx);
      p.dhw[i] = T(stats ? norm_bwd<A>(d * gh, hh, rh, sm[2], sm[3]) : rh * d * gh);
      A* wg = p.wgrad + long(b) * WG;
      wg[col] += d;
      wg[GH + col] += d * xh;
      wg[2L * GH + col] += d * hh;
    }
  }
}

// ----------------------------------------------------------------------------- GRU

template <typename T, int NORM>
__global__ void gru_fwd_kernel(GruStepFwd<T> p) {
  using A = typename AccOf<T>::type;
  SIMT_SHARED(A, red, 32);
  const int b = blockIdx.x, H = p.d.H, GH = 3 * H;
  const bool active = row_active(p.d, b);
  const T* xw = p.xw + long(b) * GH;
  const T* hw = p.hw + long(b) * GH;
  A mx = 0, rx = 1, mh = 0, rh = 1;
  if (NORM == kNormLayer) {
    block_moments<A>([&](int k) { return A(xw[k]); }, GH, A(p.d.eps), red, &mx, &rx);
    block_moments<A>([&](int k) { return A(hw[k]); }, GH, A(p.d.eps), red, &mh, &rh);
  }
  auto xs = [&](int k) {
    const A v = NORM == kNormLayer ? (A(xw[k]) - mx) * rx * A(p.g_ih[k]) : A(xw[k]);
    return v + ld_or<T, A>(p.b_ih, k, A(0));
  };
  auto hs = [&](int k) {
    const A v = NORM == kNormLayer ? (A(hw[k]) - mh) * rh * A(p.g_hh[k]) : A(hw[k]);
    return v + ld_or<T, A>(p.b_hh, k, A(0));
  };
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    const long bj = long(b) * H + j;
    const A hn = hs(2 * H + j);
    A r, z, n, h;
    gru_cell_fwd<A>(xs(j), xs(H + j), xs(2 * H + j), hs(j), hs(H + j), hn, A(p.h_prev[bj]), &r, &z, &n, &h);
    T* act = p.acts + long(b) * GH + j;
    act[0] = T(r); act[H] = T(z); act[2 * H] = T(n);
    p.hn[bj] = T(hn);
    p.y[bj] = active ? T(h) : T(0);
    p.h_next[bj] = active ? T(h) : p.h_prev[bj];
  }
  if (NORM == kNormLayer && threadIdx.x == 0) {
    A* st = p.stats + long(b) * 4;
    st[0] = mx; st[1] = rx; st[2] = mh; st[3] = rh;
  }
}

template <typename T, int NORM>
__global__ void gru_bwd_kernel(GruStepBwd<T> p) {
  using A = typename AccOf<T>::type;
  SIMT_SHARED(A, red, 32);
  const int b = blockIdx.x, H = p.d.H, GH = 3 * H;
  const bool active = row_active(p.d, b);
  A* wg = p.wgrad + long(b) * 12 * H;
  // dx*, dh* (gradients after norm and bias) go to dxw/dhw first, then through the norms in place.
  T* dxw = p.dxw + long(b) * GH;
  T* dhw = p.dhw + long(b) * GH;
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    const long bj = long(b) * H + j;
    if (!active) {
      dxw[j] = dxw[H + j] = dxw[2 * H + j] = T(0);
      dhw[j] = dhw[H + j] = dhw[2 * H + j] = T(0);
      p.dh_direct[bj] = p.dh[bj];
      continue;
    }
    const A dh = A(p.dy[bj]) + A(p.dh[bj]);
    const T* act = p.acts + long(b) * GH + j;
    A dxr, dxz, dxn, dhn, dhp;
    gru_cell_bwd<A>(dh, A(act[0]), A(act[H]), A(act[2 * H]), A(p.hn[bj]), A(p.h_prev[bj]), &dxr, &dxz, &dxn,
                    &dhn, &dhp);
    dxw[j] = T(dxr); dxw[H + j] = T(dxz); dxw[2 * H + j] = T(dxn);
    dhw[j] = T(dxr); dhw[H + j] = T(dxz); dhw[2 * H + j] = T(dhn);
    p.dh_direct[bj] = T(dhp);
    wg[j] += dxr; wg[H + j] += dxz; wg[2 * H + j] += dxn;
    wg[GH + j] += dxr; wg[GH + H + j] += dxz; wg[GH + 2 * H + j] += dhn;
  }
  if (NORM != kNormLayer) return;
  __syncthreads();  // below, threads read dxw/dhw columns that other threads wrote
  const A* st = p.stats + long(b) * 4;
  const T* xw = p.xw + long(b) * GH;
  const T* hw = p.hw + long(b) * GH;
  const A mx = A(st[0]), rx = A(st[1]), mh = A(st[2]), rh = A(st[3]);
  A sx1 = 0, sx2 = 0, sh1 = 0, sh2 = 0;
  for (int k = threadIdx.x; k < GH; k += blockDim.x) {
    const A dx = A(dxw[k]) * A(p.g_ih[k]), dhh = A(dhw[k]) * A(p.g_hh[k]);
    sx1 += dx; sx2 += dx * (A(xw[k]) - mx) * rx;
    sh1 += dhh; sh2 += dhh * (A(hw[k]) - mh) * rh;
  }
  sx1 = block_sum(sx1, red) / A(GH); sx2 = block_sum(sx2, red) / A(GH);
  sh1 = block_sum(sh1, red) / A(GH); sh2 = block_sum(sh2, red) / A(GH);
  for (int k = threadIdx.x; k < GH; k += blockDim.x) {
    const A xh = (A(xw[k]) - mx) * rx, hh = (A(hw[k]) - mh) * rh;
    const A dx = A(dxw[k]), dhh = A(dhw[k]);
    if (active) {
      wg[2 * GH + k] += dx * xh;
      wg[3 * GH + k] += dhh * hh;
    }
    dxw[k] = active ? T(norm_bwd<A>(dx * A(p.g_ih[k]), xh, rx, sx1, sx2)) : T(0);
    dhw[k] = active ? T(norm_bwd<A>(dhh * A(p.g_hh[k]), hh, rh, sh1, sh2)) : T(0);
  }
}

// ----------------------------------------------------------------------------- Elman RNN

template <typename T>
__global__ void rnn_fwd_kernel(RnnStepFwd<T> p) {
  using A = typename AccOf<T>::type;
  const long n = long(p.d.B) * p.d.H;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x) {
    const int b = int(i / p.d.H), j = int(i % p.d.H);
    const A pre = A(p.xw[i]) + A(p.hw[i]) + ld_or<T, A>(p.b_ih, j, A(0)) + ld_or<T, A>(p.b_hh, j, A(0));
    const A h = rnn_cell_fwd<A>(p.d.variant, pre);
    const bool active = row_active(p.d, b);
    p.y[i] = active ? T(h) : T(0);
    p.h_next[i] = active ? T(h) : p.h_prev[i];
  }
}

template <typename T>
__global__ void rnn_bwd_kernel(RnnStepBwd<T> p) {
  using A = typename AccOf<T>::type;
  const long n = long(p.d.B) * p.d.H;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x) {
    const bool active = row_active(p.d, int(i / p.d.H));
    p.dpre[i] = active ? T(rnn_cell_bwd<A>(p.d.variant, A(p.dy[i]) + A(p.dh[i]), A(p.y[i]))) : T(0);
    p.dh_direct[i] = active ? T(0) : p.dh[i];
  }
}

// ----------------------------------------------------------------------------- batch-norm update

// One thread per statistics column, serial over the steps (their order matters for slot S - 1).
template <typename T>
__global__ void bn_update_kernel(BnUpdate<T> p) {
  using A = typename AccOf<T>::type;
  const long NB = 2L * p.gh + p.hidden;
  const long k = blockIdx.x * long(blockDim.x) + threadIdx.x;
  if (k >= NB) return;
  const int which = k < p.gh ? 0 : k < 2L * p.gh ? 1 : 2;
  T* rm = which == 0 ? p.rm_ih : which == 1 ? p.rm_hh : p.rm_cell;
  T* rv = which == 0 ? p.rv_ih : which == 1 ? p.rv_hh : p.rv_cell;
  const long col = k - long(which) * p.gh, width = which == 2 ? p.hidden : p.gh;
  const A mom = A(p.momentum);
  for (int t = 0; t < p.steps; ++t) {
    int n = p.batch;
    if (p.lengths) {
      n = 0;
      for (int b = 0; b < p.batch; ++b) n += t < p.lengths[b];
    }
    if (n <= 1) continue;  // a single active sequence normalizes but does not update
    const int slot = p.t0 + t < p.slots - 1 ? p.t0 + t : p.slots - 1;
    const A mean = A(p.stats[2L * NB * t + k]), var = A(p.stats[2L * NB * t + NB + k]);
    T* m = rm + long(slot) * width + col;
    T* v = rv + long(slot) * width + col;
    *m = T((A(1) - mom) * A(*m) + mom * mean);
    *v = T((A(1) - mom) * A(*v) + mom * var * A(n) / A(n - 1));
  }
}

// ----------------------------------------------------------------------------- launchers
// One launch each; the caller checks it (C10_CUDA_KERNEL_LAUNCH_CHECK on the GPU).

// Threads per block of the row kernels: enough warps to cover H, at most 256.
inline int row_threads(int H) {
  int t = 32;
  while (t < H && t < 256) t *= 2;
  return t;
}

#define FUSEDRNN_NORM_SWITCH(norm, NORM, ...)                                         \
  [&] {                                                                                \
    switch (norm) {                                                                    \
      case kNormLayer: { constexpr int NORM = kNormLayer; return __VA_ARGS__(); }      \
      case kNormLayerPerGate: { constexpr int NORM = kNormLayerPerGate; return __VA_ARGS__(); } \
      default: { constexpr int NORM = kNormNone; return __VA_ARGS__(); }               \
    }                                                                                  \
  }()

template <typename T>
inline void lstm_step_fwd(const LstmStepFwd<T>& p, int norm, cudaStream_t stream) {
  if (norm == kNormBatch) {
    simt::launch(lstm_fwd_batchnorm_kernel<T>, dim3((p.d.H + kBnUnits - 1) / kBnUnits), dim3(kBnThreads), 0, stream, p);
    return;
  }
  FUSEDRNN_NORM_SWITCH(norm, NORM, [&] {
    simt::launch(lstm_fwd_rows_kernel<T, NORM>, dim3(p.d.B), dim3(row_threads(p.d.H)), 0, stream, p);
  });
}

template <typename T>
inline void lstm_step_bwd(const LstmStepBwd<T>& p, int norm, cudaStream_t stream) {
  if (norm == kNormBatch) {
    simt::launch(lstm_bwd_batchnorm_kernel<T>, dim3((p.d.H + kBnUnits - 1) / kBnUnits), dim3(kBnThreads), 0, stream, p);
    return;
  }
  FUSEDRNN_NORM_SWITCH(norm, NORM, [&] {
    simt::launch(lstm_bwd_rows_kernel<T, NORM>, dim3(p.d.B), dim3(row_threads(p.d.H)), 0, stream, p);
  });
}

template <typename T>
inline void gru_step_fwd(const GruStepFwd<T>& p, int norm, cudaStream_t stream) {
  if (norm == kNormLayer)
    simt::launch(gru_fwd_kernel<T, kNormLayer>, dim3(p.d.B), dim3(row_threads(p.d.H)), 0, stream, p);
  else
    simt::launch(gru_fwd_kernel<T, kNormNone>, dim3(p.d.B), dim3(row_threads(p.d.H)), 0, stream, p);
}

template <typename T>
inline void gru_step_bwd(const GruStepBwd<T>& p, int norm, cudaStream_t stream) {
  if (norm == kNormLayer)
    simt::launch(gru_bwd_kernel<T, kNormLayer>, dim3(p.d.B), dim3(row_threads(p.d.H)), 0, stream, p);
  else
    simt::launch(gru_bwd_kernel<T, kNormNone>, dim3(p.d.B), dim3(row_threads(p.d.H)), 0, stream, p);
}

inline int flat_blocks(long n, int threads) {
  const long b = (n + threads - 1) / threads;
  return int(b < 4096 ? (b > 0 ? b : 1) : 4096);
}

template <typename T>
inline void rnn_step_fwd(const RnnStepFwd<T>& p, cudaStream_t stream) {
  const int threads = 256;
  simt::launch(rnn_fwd_kernel<T>, dim3(flat_blocks(long(p.d.B) * p.d.H, threads)), dim3(threads), 0, stream, p);
}

template <typename T>
inline void rnn_step_bwd(const RnnStepBwd<T>& p, cudaStream_t stream) {
  const int threads = 256;
  simt::launch(rnn_bwd_kernel<T>, dim3(flat_blocks(long(p.d.B) * p.d.H, threads)), dim3(threads), 0, stream, p);
}

template <typename T>
inline void bn_update(const BnUpdate<T>& p, cudaStream_t stream) {
  const int threads = 256;
  const long n = 2L * p.gh + p.hidden;
  simt::launch(bn_update_kernel<T>, dim3(int((n + threads - 1) / threads)), dim3(threads), 0, stream, p);
}

}  // namespace cuda
}  // namespace fusedrnn
