// Per-row unit loops of the LSTM kernels (the cell_math.h functions over the H units of one
// batch row), compiled three times: for baseline x86-64 and, through function-level target
// attributes, for AVX2+FMA and AVX-512, chosen at run time by simd.h's level (no -march for the
// whole build). With the variant fixed at compile time (with_variant) every flag branch folds
// away and the loops vectorize (the float activations are branch-free polynomials).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.h"
#include "simd.h"

#include "fusedrnn/cell_math.h"

#define FUSEDRNN_ALWAYS_INLINE inline __attribute__((always_inline))
// For the lambdas of the row loops: one GCC does not inline is compiled for the baseline target,
// not the AVX2 / AVX-512 build that calls it.
#define FUSEDRNN_LAMBDA_INLINE __attribute__((always_inline))

namespace fusedrnn {
namespace cpu {

// Pass A of one row: gates and c_t from the final pre-activations pre [GH] and c_{t-1}.
// Writes acts [GH], c_new [H] and, for FGR, a [3H] = (i, f, o).
template <typename T, int FIXED>
FUSEDRNN_ALWAYS_INLINE void units_fwd(const LstmFlags& flr, int64_t H, const T* __restrict pre,
                                      const T* __restrict c_prev, const T* __restrict wp, T* __restrict acts,
                                      T* __restrict c_new, T* __restrict a) {
  const LstmFlags fl = FIXED >= 0 ? lstm_flags(FIXED) : flr;
  for (int64_t j = 0; j < H; ++j) {
    T i, f, g, o, c;
    lstm_cell_fwd(fl, fl.gi >= 0 ? pre[fl.gi * H + j] : T(0), fl.gf >= 0 ? pre[fl.gf * H + j] : T(0),
                  pre[fl.gg * H + j], fl.go >= 0 ? pre[fl.go * H + j] : T(0), c_prev[j],
                  fl.pi >= 0 ? wp[fl.pi * H + j] : T(0), fl.pf >= 0 ? wp[fl.pf * H + j] : T(0),
                  fl.po >= 0 ? wp[fl.po * H + j] : T(0), &i, &f, &g, &o, &c);
    if (fl.gi >= 0) acts[fl.gi * H + j] = i;
    if (fl.gf >= 0) acts[fl.gf * H + j] = f;
    acts[fl.gg * H + j] = g;
    if (fl.go >= 0) acts[fl.go * H + j] = o;
    c_new[j] = c;
    if (fl.fgr) {
      a[j] = i;
      a[H + j] = f;
      a[2 * H + j] = o;
    }
  }
}

// Pass B of one row: h = o * act(cn); writes y and the carried h and c.
template <typename T, int FIXED>
FUSEDRNN_ALWAYS_INLINE void units_out(const LstmFlags& flr, int64_t H, const T* __restrict acts,
                                      const T* __restrict cn, const T* __restrict c_new, T* __restrict y,
                                      T* __restrict h, T* __restrict c) {
  const LstmFlags fl = FIXED >= 0 ? lstm_flags(FIXED) : flr;
  for (int64_t j = 0; j < H; ++j) {
    T o = fl.go >= 0 ? acts[fl.go * H + j] : T(1);
    T hv = lstm_out_fwd(fl, o, cn[j]);
    y[j] = hv;
    h[j] = hv;
    c[j] = c_new[j];
  }
}

// Backward pass 1 of one row: dh (carried + dy) -> d_o, d_cn.
template <typename T, int FIXED>
FUSEDRNN_ALWAYS_INLINE void units_out_bwd(const LstmFlags& flr, int64_t H, const T* __restrict dh,
                                          const T* __restrict dy, const T* __restrict acts, const T* __restrict cn,
                                          T* __restrict d_o, T* __restrict d_cn) {
  const LstmFlags fl = FIXED >= 0 ? lstm_flags(FIXED) : flr;
  for (int64_t j = 0; j < H; ++j) {
    T o = fl.go >= 0 ? acts[fl.go * H + j] : T(1);
    lstm_out_bwd(fl, dh[j] + dy[j], o, cn[j], &d_o[j], &d_cn[j]);
  }
}

// Backward pass 2 of one row: gate pre-activation gradients dpre [GH], dc carry (in place),
// peephole-weight gradient accumulation dpeep [P, H]; da [3H]: FGR's carried gradient.
template <typename T, int FIXED>
FUSEDRNN_ALWAYS_INLINE void units_bwd(const LstmFlags& flr, int64_t H, const T* __restrict d_o,
                                      const T* __restrict d_cn, T* __restrict dc, const T* __restrict da,
                                      const T* __restrict acts, const T* __restrict c_prev,
                                      const T* __restrict c_new, const T* __restrict wp, T* __restrict dpre,
                                      T* __restrict dpeep) {
  const LstmFlags fl = FIXED >= 0 ? lstm_flags(FIXED) : flr;
  for (int64_t j = 0; j < H; ++j) {
    T i = fl.gi >= 0 ? acts[fl.gi * H + j] : T(1);
    T f = fl.cifg ? T(1) - i : (fl.gf >= 0 ? acts[fl.gf * H + j] : T(1));
    T g = acts[fl.gg * H + j];
    T o = fl.go >= 0 ? acts[fl.go * H + j] : T(1);
    T dai = fl.fgr ? da[j] : T(0);
    T daf = fl.fgr ? da[H + j] : T(0);
    T dao = fl.fgr ? da[2 * H + j] : T(0);
    T dpi, dpf, dpg, dpo, dcp, dwi, dwf, dwo;
    lstm_cell_bwd(fl, d_o[j] + dao, d_cn[j] + dc[j], dai, daf, i, f, g, o, c_prev[j], c_new[j],
                  fl.pi >= 0 ? wp[fl.pi * H + j] : T(0), fl.pf >= 0 ? wp[fl.pf * H + j] : T(0),
                  fl.po >= 0 ? wp[fl.po * H + j] : T(0), &dpi, &dpf, &dpg, &dpo, &dcp, &dwi, &dwf, &dwo);
    if (fl.gi >= 0) dpre[fl.gi * H + j] = dpi;
    if (fl.gf >= 0) dpre[fl.gf * H + j] = dpf;
    dpre[fl.gg * H + j] = dpg;
    if (fl.go >= 0) dpre[fl.go * H + j] = dpo;
    dc[j] = dcp;
    if (fl.pi >= 0) dpeep[fl.pi * H + j] += dwi;
    if (fl.pf >= 0) dpeep[fl.pf * H + j] += dwf;
    if (fl.po >= 0) dpeep[fl.po * H + j] += dwo;
  }
}

// Calls f(std::integral_constant<int, V>()) with the variant V of fl fixed at compile time: for
// float every variant, whose flag branches then fold so that the unit loops vectorize (with
// runtime flags they did not: benchmark CLI, fwd+bwd, before / after, generic shape peephole
// 85.4 / 69.3 ms, NIG 110.7 / 47.9, NFG 112.6 / 48.6, vanilla 68.1; row MNIST peephole 19.2 /
// 11.6, NFG 25.7 / 8.9, FGR 36.3 / 29.4); for double (tests, gradcheck) vanilla or V = -1,
// runtime flags, which keeps the build's instantiations down. The ops check the variant first.
template <typename T, typename F>
FUSEDRNN_ALWAYS_INLINE void with_variant(const LstmFlags& fl, F&& f) {
  if constexpr (std::is_same<T, float>::value) {
    switch (fl.variant) {
      case kVanilla: return f(std::integral_constant<int, kVanilla>());
      case kPeephole: return f(std::integral_constant<int, kPeephole>());
      case kNIG: return f(std::integral_constant<int, kNIG>());
      case kNFG: return f(std::integral_constant<int, kNFG>());
      case kNOG: return f(std::integral_constant<int, kNOG>());
      case kNIAF: return f(std::integral_constant<int, kNIAF>());
      case kNOAF: return f(std::integral_constant<int, kNOAF>());
      case kCIFG: return f(std::integral_constant<int, kCIFG>());
      case kFGR: return f(std::integral_constant<int, kFGR>());
      default: TORCH_INTERNAL_ASSERT(false, "fusedrnn: unknown LSTM variant ", fl.variant);
    }
  } else {
    if (fl.variant == kVanilla) return f(std::integral_constant<int, kVanilla>());
    f(std::integral_constant<int, -1>());
  }
}

// Dispatch: the variant (with_variant) x the simd.h level.
#define FUSEDRNN_UNITS_DISPATCH(NAME)                                                          \
  template <typename T, int FIXED, typename... Args>                                           \
  FUSEDRNN_AVX512_TARGET void NAME##_avx512(const LstmFlags& fl, Args... args) {               \
    NAME<T, FIXED>(fl, args...);                                                               \
  }                                                                                            \
  template <typename T, int FIXED, typename... Args>                                           \
  FUSEDRNN_AVX2_TARGET void NAME##_avx2(const LstmFlags& fl, Args... args) {                   \
    NAME<T, FIXED>(fl, args...);                                                               \
  }                                                                                            \
  template <typename T, int FIXED, typename... Args>                                           \
  void NAME##_base(const LstmFlags& fl, Args... args) {                                        \
    NAME<T, FIXED>(fl, args...);                                                               \
  }                                                                                            \
  template <typename T, int FIXED, typename... Args>                                           \
  void NAME##_at(const LstmFlags& fl, Args... args) {                                          \
    switch (simd_level()) {                                                                    \
      case kSimdAvx512: return NAME##_avx512<T, FIXED>(fl, args...);                           \
      case kSimdAvx2: return NAME##_avx2<T, FIXED>(fl, args...);                               \
      default: return NAME##_base<T, FIXED>(fl, args...);                                      \
    }                                                                                          \
  }                                                                                            \
  template <typename T, typename... Args>                                                      \
  void NAME##_run(const LstmFlags& fl, Args... args) {                                         \
    with_variant<T>(fl, [&](auto v) { NAME##_at<T, decltype(v)::value>(fl, args...); });       \
  }

FUSEDRNN_UNITS_DISPATCH(units_fwd)
FUSEDRNN_UNITS_DISPATCH(units_out)
FUSEDRNN_UNITS_DISPATCH(units_out_bwd)
FUSEDRNN_UNITS_DISPATCH(units_bwd)

#undef FUSEDRNN_UNITS_DISPATCH

// GRU and Elman RNN unit loops of one row, with the same dispatch on the simd.h level.
// GRU forward: xs, hs [3H] (normalized projections plus biases), h [H] updated in place;
// writes acts [3H] = (r, z, n), hn [H] = h* of gate n, y [H].
template <typename T>
FUSEDRNN_ALWAYS_INLINE void gru_units_fwd(int64_t H, const T* __restrict xs, const T* __restrict hs,
                                          T* __restrict h, T* __restrict acts, T* __restrict hn, T* __restrict y) {
  for (int64_t j = 0; j < H; ++j) {
    T r, z, n, hv;
    gru_cell_fwd(xs[j], xs[H + j], xs[2 * H + j], hs[j], hs[H + j], hs[2 * H + j], h[j], &r, &z, &n, &hv);
    acts[j] = r; acts[H + j] = z; acts[2 * H + j] = n;
    hn[j] = hs[2 * H + j];
    y[j] = hv;
    h[j] = hv;
  }
}

// GRU backward: dh [H] carried, dy [H]; writes dx [3H] (gradients of x*), dhs [3H] (of h*) and
// dd [H] (the direct part of dh_{t-1}).
template <typename T>
FUSEDRNN_ALWAYS_INLINE void gru_units_bwd(int64_t H, const T* __restrict dh, const T* __restrict dy,
                                          const T* __restrict acts, const T* __restrict hn,
                                          const T* __restrict h_prev, T* __restrict dx, T* __restrict dhs,
                                          T* __restrict dd) {
  for (int64_t j = 0; j < H; ++j) {
    T dxr, dxz, dxn, dhn, d;
    gru_cell_bwd(dh[j] + dy[j], acts[j], acts[H + j], acts[2 * H + j], hn[j], h_prev[j], &dxr, &dxz, &dxn, &dhn, &d);
    dx[j] = dxr; dx[H + j] = dxz; dx[2 * H + j] = dxn;
    dhs[j] = dxr; dhs[H + j] = dxz; dhs[2 * H + j] = dhn;
    dd[j] = d;
  }
}

// Elman RNN forward of one row (KIND fixed so the loop has no branch): h = act(xw + hw + b).
template <typename T, int KIND>
FUSEDRNN_ALWAYS_INLINE void rnn_units_fwd(int64_t H, const T* __restrict xw, const T* __restrict hw,
                                          const T* __restrict bi, const T* __restrict bh, T* __restrict y,
                                          T* __restrict h) {
  for (int64_t j = 0; j < H; ++j) {
    T hv = rnn_cell_fwd(KIND, xw[j] + hw[j] + (bi ? bi[j] + bh[j] : T(0)));
    y[j] = hv;
    h[j] = hv;
  }
}

// Elman RNN backward of one row: dpre = act'(dh + dy).
template <typename T, int KIND>
FUSEDRNN_ALWAYS_INLINE void rnn_units_bwd(int64_t H, const T* __restrict dh, const T* __restrict dy,
                                          const T* __restrict y, T* __restrict dpre) {
  for (int64_t j = 0; j < H; ++j) dpre[j] = rnn_cell_bwd(KIND, dh[j] + dy[j], y[j]);
}

// Batch-norm LSTM pre-activations of one row of n gate columns: pre = BN(xw) g_ih + BN(hw) g_hh
// (+ b_ih + b_hh where the cell has biases), mx / rx and mh / rh the columns' means and rstd.
// Built per simd.h level like the unit loops (the loop in lstm.cpp it replaces, and bn_apply_row's,
// ran on the baseline build): BN-LSTM forward, no_grad, alternating with a temporary switch to
// the old loops, median of 195 calls: row MNIST 5.68 / 5.45 ms against 5.86 / 5.63 (two runs),
// pixel MNIST 74.4 against 77.0.
template <typename T>
FUSEDRNN_ALWAYS_INLINE void bn_pre_row(int64_t n, const T* __restrict xr, const T* __restrict mx,
                                       const T* __restrict rx, const T* __restrict gx, const T* __restrict hr,
                                       const T* __restrict mh, const T* __restrict rh, const T* __restrict gh,
                                       const T* __restrict bi, const T* __restrict bh, T* __restrict pre) {
  if (bi) {
    for (int64_t k = 0; k < n; ++k)
      pre[k] = norm_apply(xr[k], mx[k], rx[k], gx[k], T(0)) + norm_apply(hr[k], mh[k], rh[k], gh[k], T(0)) + bi[k] +
               bh[k];
  } else {
    for (int64_t k = 0; k < n; ++k)
      pre[k] = norm_apply(xr[k], mx[k], rx[k], gx[k], T(0)) + norm_apply(hr[k], mh[k], rh[k], gh[k], T(0));
  }
}

// acc += v (+ bi + bh where the cell has biases) over one row of n values: the LN-LSTM's
// pre-activations LN(xw) g_ih + LN(hw) g_hh + b_ih + b_hh, the per-gate LN's xw + hw, and the
// LSTM backward's bias sums. Per simd.h level like bn_pre_row: LN-LSTM forward, no_grad,
// alternating with the baseline-built loop, median of 195 calls: row MNIST 6.32 / 5.78 ms
// against 6.46 / 5.91 (two runs), pixel MNIST 66.4 against 67.9.
template <typename T>
FUSEDRNN_ALWAYS_INLINE void add_row(int64_t n, T* __restrict acc, const T* __restrict v, const T* __restrict bi,
                                    const T* __restrict bh) {
  if (bi) {
    for (int64_t k = 0; k < n; ++k) acc[k] += v[k] + bi[k] + bh[k];
  } else {
    for (int64_t k = 0; k < n; ++k) acc[k] += v[k];
  }
}

// The LN-LSTM's pre-activations of one row from the statistics st = [mean, rstd of x W_ih^T,
// mean, rstd of h W_hh^T]: pre = LN(x) g_ih + LN(h) g_hh (+ b_ih + b_hh), per element the
// operations (and roundings) of layer_norm_row_apply into two rows followed by add_row.
template <typename T>
FUSEDRNN_ALWAYS_INLINE void ln_pre_apply(int64_t n, const T* __restrict x, const T* __restrict h, const T* st,
                                         const T* __restrict gi, const T* __restrict gh, const T* __restrict bi,
                                         const T* __restrict bh, T* __restrict pre) {
  const T mx = st[0], rx = st[1], mh = st[2], rh = st[3];
  if (bi) {
    for (int64_t k = 0; k < n; ++k)
      pre[k] = norm_apply(x[k], mx, rx, gi[k], T(0)) + (norm_apply(h[k], mh, rh, gh[k], T(0)) + bi[k] + bh[k]);
  } else {
    for (int64_t k = 0; k < n; ++k) pre[k] = norm_apply(x[k], mx, rx, gi[k], T(0)) + norm_apply(h[k], mh, rh, gh[k], T(0));
  }
}

// y = BN(v) gain + bias over one row of n columns with per-column mean and rstd.
template <typename T>
FUSEDRNN_ALWAYS_INLINE void bn_apply_row(int64_t n, const T* __restrict v, const T* __restrict mean,
                                         const T* __restrict rstd, const T* __restrict gain, const T* __restrict bias,
                                         T* __restrict y) {
  for (int64_t k = 0; k < n; ++k) y[k] = norm_apply(v[k], mean[k], rstd[k], gain[k], bias[k]);
}

// Batch-norm passes over v [B, N] (row-major, row stride ld = N), rows active at step t. Each
// column sums its rows in order, in double. Two ways to split them over a team (team.h): the
// column split gives a member columns [k0, k1) of every row (bn_column_*); the row split gives
// it rows [lo, hi) of every column, and the members' partials are combined after a barrier
// (bn_partial_*, then bn_combine_stats / bn_apply_bwd). Both are built from the same partial
// passes below. Those run over blocks of kBnBlock columns, rows inner, so that a block's sums
// and per-column constants stay in registers (the same sums in the same order as a rows-outer
// loop, whose sums made a load and a store per element and row); the row split's backward
// converts the combined means to T once per column, not per element. BN-LSTM fwd+bwd, two builds
// in alternating processes (benchmarks/results/cpu-20261207-bn): row MNIST 9.43 against 10.43 ms,
// pixel MNIST 153.0 against 155.0; the column split's generic shape 56.9 against 56.1 (noise).
// Dispatched like the unit loops.
constexpr int kBnBlock = 32;

inline int64_t active_count(const int64_t* lengths, int64_t lo, int64_t hi, int64_t t) {
  int64_t n = 0;
  for (int64_t b = lo; b < hi; ++b) n += active(lengths, b, t) ? 1 : 0;
  return n;
}

// Calls block(std::integral_constant<int, W>(), k, w) over [k0, k1) in blocks of w columns:
// W = kBnBlock for the full blocks, W = 0 (w known at run time, < kBnBlock) for the tail.
template <typename F>
FUSEDRNN_ALWAYS_INLINE void bn_blocks(int64_t k0, int64_t k1, F&& block) {
  int64_t k = k0;
  for (; k + kBnBlock <= k1; k += kBnBlock) block(std::integral_constant<int, kBnBlock>(), k, int64_t(kBnBlock));
  if (k < k1) block(std::integral_constant<int, 0>(), k, k1 - k);
}

// Asks for the next block of a row (kBnBlock values from p) while this one is summed: the passes
// walk a block down the rows (stride ld), a pattern the hardware prefetchers do not follow, and
// the backward's inputs of step t were written by the forward long before (out of L2). Row
// MNIST BN-LSTM, the backward's phase holding the hh and ih sums (with pass 2 and the cell's
// apply), summed over the steps (rdtsc at the barriers, a temporary build): 0.79-0.84 ->
// 0.62-0.71 ms per call and member.
template <typename T>
FUSEDRNN_ALWAYS_INLINE void prefetch_block(const T* p) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t i = 0; i < int64_t(kBnBlock * sizeof(T)); i += 64) __builtin_prefetch(c + i);
}

// Statistics of rows [lo, hi), columns [k0, k1): the active-row count and, per column, the mean
// and M2 (sum of squared deviations from it), in double, in one pass over the rows: the sums of d
// = v - s and d^2, s being the column's value in the first active row (mean = s + sum d / n, M2 =
// sum d^2 - (sum d)^2 / n; shifted by a value of the column, the subtraction cancels at most
// log2(n) bits of double's 53). part: [mean w | M2 w], w = k1 - k0. Row MNIST BN-LSTM fwd+bwd
// 0.981 of two passes (mean, then M2), two builds in alternating processes.
template <typename T>
FUSEDRNN_ALWAYS_INLINE void bn_partial_stats(const T* v, int64_t ld, int64_t lo, int64_t hi, int64_t k0, int64_t k1,
                                             const int64_t* lengths, int64_t t, double* part, int64_t* count) {
  const int64_t w = k1 - k0;
  const int64_t n = active_count(lengths, lo, hi, t);
  *count = n;
  if (n == 0) {
    std::fill(part, part + 2 * w, 0.0);
    return;
  }
  int64_t first = lo;
  while (!active(lengths, first, t)) ++first;
  bn_blocks(k0, k1, [&](auto fixed, int64_t k, int64_t wb) FUSEDRNN_LAMBDA_INLINE {
    constexpr int W = decltype(fixed)::value;
    const int64_t nb = W ? W : wb;
    double sh[kBnBlock], s1[kBnBlock], s2[kBnBlock];
    for (int64_t j = 0; j < nb; ++j) {
      sh[j] = double(v[first * ld + k + j]);
      s1[j] = s2[j] = 0.0;
    }
    for (int64_t b = first + 1; b < hi; ++b) {
      if (!active(lengths, b, t)) continue;
      const T* __restrict row = v + b * ld + k;
      prefetch_block(row + kBnBlock);
#pragma GCC unroll 32
      for (int64_t j = 0; j < nb; ++j) {
        const double d = double(row[j]) - sh[j];
        s1[j] += d;
        s2[j] += d * d;
      }
    }
    for (int64_t j = 0; j < nb; ++j) {
      part[k - k0 + j] = sh[j] + s1[j] / double(n);
      part[w + k - k0 + j] = std::max(0.0, s2[j] - s1[j] * s1[j] / double(n));
    }
  });
}

// Column split, statistics of columns [k0, k1) over every row. Training: batch mean and biased
// variance; eval: the running slot. acc: 2 (k1 - k0) doubles.
template <typename T>
FUSEDRNN_ALWAYS_INLINE void bn_column_stats(const T* v, int64_t B, int64_t N, int64_t k0, int64_t k1,
                                            const int64_t* lengths, int64_t t, bool training, const T* rm_slot,
                                            const T* rv_slot, T* mean, T* var, double* acc) {
  if (!training) {
    std::copy(rm_slot + k0, rm_slot + k1, mean + k0);
    std::copy(rv_slot + k0, rv_slot + k1, var + k0);
    return;
  }
  const int64_t w = k1 - k0;
  int64_t n = 0;
  bn_partial_stats(v, N, 0, B, k0, k1, lengths, t, acc, &n);
  for (int64_t j = 0; j < w; ++j) {
    mean[k0 + j] = T(acc[j]);
    var[k0 + j] = n ? T(acc[w + j] / double(n)) : T(0);
  }
}

// Row split: mean and biased variance of every column from the members' partials (part m at
// parts + m * stride), merged in member order (Chan, Golub and LeVeque's pairwise update; the
// counts are the same for every column, so their ratios are taken once per member).
template <typename T>
FUSEDRNN_ALWAYS_INLINE void bn_combine_stats(const double* parts, const int64_t* counts, int64_t members,
                                             int64_t stride, int64_t N, T* mean, T* var) {
  bn_blocks(0, N, [&](auto fixed, int64_t k, int64_t wb) FUSEDRNN_LAMBDA_INLINE {
    constexpr int W = decltype(fixed)::value;
    const int64_t nb = W ? W : wb;
    double mu[kBnBlock], q[kBnBlock];
    for (int64_t j = 0; j < nb; ++j) mu[j] = q[j] = 0.0;
    double n = 0;
    for (int64_t m = 0; m < members; ++m) {
      const double nm = double(counts[m]);
      if (nm == 0) continue;
      const double nn = n + nm, a = nm / nn, c = n * nm / nn;
      const double* pm = parts + m * stride + k;
      for (int64_t j = 0; j < nb; ++j) {
        const double delta = pm[j] - mu[j];
        mu[j] += delta * a;
        q[j] += pm[N + j] + delta * delta * c;
      }
      n = nn;
    }
    for (int64_t j = 0; j < nb; ++j) {
      mean[k + j] = T(mu[j]);
      var[k + j] = n > 0 ? T(q[j] / n) : T(0);
    }
  });
}

// Backward sums over rows [lo, hi), columns [k0, k1): per column s1 = sum dy gain and s2 = sum
// dy gain vhat (double) into part [s1 w | s2 w]; dgain += dy vhat and dbias += dy (if non-null),
// row by row. dy is the gradient of the normalized output before the gain.
template <typename T>
FUSEDRNN_ALWAYS_INLINE void bn_partial_bwd(const T* v, const T* dy, int64_t ld, int64_t lo, int64_t hi, int64_t k0,
                                           int64_t k1, const int64_t* lengths, int64_t t, const T* mean,
                                           const T* rstd, const T* gain, double* part, T* dgain, T* dbias) {
  const int64_t w = k1 - k0;
  auto blocks = [&](auto with_bias) FUSEDRNN_LAMBDA_INLINE {  // whether dbias is summed, fixed at compile time
    constexpr bool kBias = decltype(with_bias)::value;
    bn_blocks(k0, k1, [&](auto fixed, int64_t k, int64_t wb) FUSEDRNN_LAMBDA_INLINE {
      constexpr int W = decltype(fixed)::value;
      const int64_t nb = W ? W : wb;
      double s1[kBnBlock], s2[kBnBlock];
      T mu[kBnBlock], rs[kBnBlock], ga[kBnBlock], dg[kBnBlock], db[kBnBlock];
      for (int64_t j = 0; j < nb; ++j) {
        s1[j] = s2[j] = 0.0;
        mu[j] = mean[k + j];
        rs[j] = rstd[k + j];
        ga[j] = gain[k + j];
        dg[j] = dgain[k + j];
        if constexpr (kBias) db[j] = dbias[k + j];
      }
      for (int64_t b = lo; b < hi; ++b) {
        if (!active(lengths, b, t)) continue;
        const T* __restrict vr = v + b * ld + k;
        const T* __restrict gr = dy + b * ld + k;
        prefetch_block(vr + kBnBlock);
        prefetch_block(gr + kBnBlock);
#pragma GCC unroll 32
        for (int64_t j = 0; j < nb; ++j) {
          T vhat = (vr[j] - mu[j]) * rs[j];
          T g = gr[j];
          s1[j] += double(g * ga[j]);
          s2[j] += double(g * ga[j] * vhat);
          dg[j] += g * vhat;
          if constexpr (kBias) db[j] += g;
        }
      }
      for (int64_t j = 0; j < nb; ++j) {
        part[k - k0 + j] = s1[j];
        part[w + k - k0 + j] = s2[j];
        dgain[k + j] = dg[j];
        if constexpr (kBias) dbias[k + j] = db[j];
      }
    });
  };
  if (dbias) blocks(std::true_type());
  else blocks(std::false_type());
}

// Backward of rows [lo, hi), columns [k0, k1): dy -> dv (may alias dy) as dv = a dy + b (v -
// mean) + e, each column's coefficients from norm_bwd_coefs (a, b, e indexed from k0), two
// active rows at a time so that a column's four constants are read once per pair. Row MNIST
// BN-LSTM fwd+bwd 0.992 of one row at a time with norm_bwd (two builds, alternating processes).
template <typename T>
FUSEDRNN_ALWAYS_INLINE void bn_bwd_rows(const T* v, const T* dy, T* dv, int64_t ld, int64_t lo, int64_t hi,
                                        int64_t k0, int64_t k1, const int64_t* lengths, int64_t t,
                                        const T* mean, const T* a, const T* b, const T* e) {
  const int64_t w = k1 - k0;
  const T* mk = mean + k0;
  auto next = [&](int64_t r) {
    while (r < hi && !active(lengths, r, t)) ++r;
    return r;
  };
  for (int64_t r0 = next(lo); r0 < hi;) {
    const int64_t r1 = next(r0 + 1);
    const T* v0 = v + r0 * ld + k0;
    const T* g0 = dy + r0 * ld + k0;
    T* d0 = dv + r0 * ld + k0;
    if (r1 == hi) {
#pragma GCC ivdep
      for (int64_t k = 0; k < w; ++k) d0[k] = a[k] * g0[k] + b[k] * (v0[k] - mk[k]) + e[k];
      break;
    }
    const T* v1 = v + r1 * ld + k0;
    const T* g1 = dy + r1 * ld + k0;
    T* d1 = dv + r1 * ld + k0;
#pragma GCC ivdep
    for (int64_t k = 0; k < w; ++k) {
      const T ak = a[k], bk = b[k], ek = e[k], m = mk[k];
      const T x0 = ak * g0[k] + bk * (v0[k] - m) + ek;
      const T x1 = ak * g1[k] + bk * (v1[k] - m) + ek;
      d0[k] = x0;
      d1[k] = x1;
    }
    r0 = next(r1 + 1);
  }
}

// The coefficients of bn_bwd_rows for columns [k0, k0 + w) (out: a, b and e at out, out + ldo,
// out + 2 ldo) from the step's sums s1 = sum dy gain and s2 = sum dy gain vhat over its n active
// rows (s1[j], s2 at s1 + ld2); eval (the running statistics, which do not depend on v): the
// means are 0, so a = rstd gain and b = e = 0.
template <typename T>
FUSEDRNN_ALWAYS_INLINE void bn_bwd_coefs(int64_t k0, int64_t w, bool training, const T* rstd, const T* gain,
                                         const double* s1, int64_t ld2, int64_t n, T* out, int64_t ldo) {
  for (int64_t j = 0; j < w; ++j) {
    const T m1 = training ? T(s1[j] / double(n)) : T(0), m2 = training ? T(s1[ld2 + j] / double(n)) : T(0);
    const NormBwdCoefs<T> c = norm_bwd_coefs(rstd[k0 + j], gain[k0 + j], m1, m2);
    out[j] = c.a;
    out[ldo + j] = c.b;
    out[2 * ldo + j] = c.e;
  }
}

// Column split, backward of columns [k0, k1) over every row; accumulates dgain (and dbias if
// non-null). acc: 2 (k1 - k0) doubles.
template <typename T>
FUSEDRNN_ALWAYS_INLINE void bn_column_bwd(const T* v, const T* dy, T* dv, int64_t B, int64_t N, int64_t k0,
                                          int64_t k1, const int64_t* lengths, int64_t t, bool training,
                                          const T* mean, const T* rstd, const T* gain, T* dgain, T* dbias,
                                          double* acc) {
  const int64_t w = k1 - k0;
  bn_partial_bwd(v, dy, N, 0, B, k0, k1, lengths, t, mean, rstd, gain, acc, dgain, dbias);
  const int64_t n = active_count(lengths, 0, B, t);
  if (n == 0) return;
  bn_blocks(k0, k1, [&](auto, int64_t k, int64_t wb) FUSEDRNN_LAMBDA_INLINE {  // coefficients once per column
    T c[3 * kBnBlock];
    bn_bwd_coefs(k, wb, training, rstd, gain, acc + (k - k0), w, n, c, wb);
    bn_bwd_rows(v, dy, dv, N, 0, B, k, k + wb, lengths, t, mean, static_cast<const T*>(c),
                static_cast<const T*>(c + wb), static_cast<const T*>(c + 2 * wb));
  });
}

// Row split, backward of rows [lo, hi) from the members' bn_partial_bwd sums (part m at parts +
// m * stride, over all N columns). scratch: 3N values (bn_bwd_rows' coefficients).
template <typename T>
FUSEDRNN_ALWAYS_INLINE void bn_apply_bwd(const T* v, const T* dy, T* dv, int64_t B, int64_t lo, int64_t hi, int64_t N,
                                         const int64_t* lengths, int64_t t, bool training, const T* mean,
                                         const T* rstd, const T* gain, const double* parts, int64_t members,
                                         int64_t stride, T* scratch) {
  const int64_t n = active_count(lengths, 0, B, t);
  if (n == 0) return;
  // the members' sums in order, in blocks (a column at a time with two divisions each, this
  // was a scalar loop: row MNIST BN-LSTM's hh / ih apply took 8.0 / 7.5 us per step and member,
  // now 6.0 / 5.3)
  bn_blocks(0, N, [&](auto fixed, int64_t k, int64_t wb) FUSEDRNN_LAMBDA_INLINE {
    constexpr int W = decltype(fixed)::value;
    const int64_t nb = W ? W : wb;
    double sums[2 * kBnBlock];
    for (int64_t j = 0; j < 2 * kBnBlock; ++j) sums[j] = 0.0;
    for (int64_t m = 0; m < members; ++m) {
      const double* pm = parts + m * stride + k;
      for (int64_t j = 0; j < nb; ++j) {
        sums[j] += pm[j];
        sums[kBnBlock + j] += pm[N + j];
      }
    }
    bn_bwd_coefs(k, nb, training, rstd, gain, static_cast<const double*>(sums), kBnBlock, n, scratch + k, N);
  });
  bn_bwd_rows(v, dy, dv, N, lo, hi, 0, N, lengths, t, mean, static_cast<const T*>(scratch),
              static_cast<const T*>(scratch + N), static_cast<const T*>(scratch + 2 * N));
}

// out[j] = norm_rstd(var[j]) = 1 / sqrt(var[j] + eps) in double over n values (out may be var):
// the batch norms' rstd of each step's columns. float32 on AVX2 / AVX-512 with intrinsics (GCC
// keeps sqrt scalar under math-errno), the same operations per value, so the same values. The
// scalar loop in lstm.cpp it replaces waited on a divide and a square root per value: 2.5% of a
// row-MNIST BN-LSTM forward's samples, and the backward converts all T steps' variances.
template <typename T>
inline void rstd_row_scalar(int64_t n, const T* var, double eps, T* out) {
  for (int64_t j = 0; j < n; ++j) out[j] = norm_rstd<T, double>(double(var[j]), eps);
}
#if FUSEDRNN_X86
FUSEDRNN_AVX512_TARGET inline void rstd_row_avx512_f32(int64_t n, const float* var, double eps, float* out) {
  const __m512d e = _mm512_set1_pd(eps), one = _mm512_set1_pd(1.0);
  for (int64_t j = 0; j < n; j += 8) {
    const __mmask8 m = n - j >= 8 ? __mmask8(0xff) : __mmask8((1u << (n - j)) - 1);
    const __m512d v = _mm512_add_pd(_mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, var + j)), e);
    _mm256_mask_storeu_ps(out + j, m, _mm512_cvtpd_ps(_mm512_div_pd(one, _mm512_sqrt_pd(v))));
  }
}

FUSEDRNN_AVX2_TARGET inline void rstd_row_avx2_f32(int64_t n, const float* var, double eps, float* out) {
  const __m256d e = _mm256_set1_pd(eps), one = _mm256_set1_pd(1.0);
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const __m256d v = _mm256_add_pd(_mm256_cvtps_pd(_mm_loadu_ps(var + j)), e);
    _mm_storeu_ps(out + j, _mm256_cvtpd_ps(_mm256_div_pd(one, _mm256_sqrt_pd(v))));
  }
  rstd_row_scalar(n - j, var + j, eps, out + j);
}
#endif

template <typename T>
inline void rstd_row_run(int64_t n, const T* var, double eps, T* out) {
#if FUSEDRNN_X86
  if constexpr (std::is_same<T, float>::value) {
    if (simd_level() == kSimdAvx512) return rstd_row_avx512_f32(n, var, eps, out);
    if (simd_level() == kSimdAvx2) return rstd_row_avx2_f32(n, var, eps, out);
  }
#endif
  rstd_row_scalar(n, var, eps, out);
}

#define FUSEDRNN_ROW_DISPATCH(NAME, TPARAMS, TARGS)                                          \
  template <TPARAMS, typename... Args>                                                      \
  FUSEDRNN_AVX512_TARGET void NAME##_avx512(Args... args) { NAME<TARGS>(args...); }         \
  template <TPARAMS, typename... Args>                                                      \
  FUSEDRNN_AVX2_TARGET void NAME##_avx2(Args... args) { NAME<TARGS>(args...); }             \
  template <TPARAMS, typename... Args>                                                      \
  void NAME##_base(Args... args) { NAME<TARGS>(args...); }                                  \
  template <TPARAMS, typename... Args>                                                      \
  void NAME##_run(Args... args) {                                                           \
    switch (simd_level()) {                                                                 \
      case kSimdAvx512: return NAME##_avx512<TARGS>(args...);                               \
      case kSimdAvx2: return NAME##_avx2<TARGS>(args...);                                   \
      default: return NAME##_base<TARGS>(args...);                                          \
    }                                                                                       \
  }
#define FUSEDRNN_COMMA ,
FUSEDRNN_ROW_DISPATCH(gru_units_fwd, typename T, T)
FUSEDRNN_ROW_DISPATCH(gru_units_bwd, typename T, T)
FUSEDRNN_ROW_DISPATCH(rnn_units_fwd, typename T FUSEDRNN_COMMA int KIND, T FUSEDRNN_COMMA KIND)
FUSEDRNN_ROW_DISPATCH(rnn_units_bwd, typename T FUSEDRNN_COMMA int KIND, T FUSEDRNN_COMMA KIND)
FUSEDRNN_ROW_DISPATCH(bn_column_stats, typename T, T)
FUSEDRNN_ROW_DISPATCH(bn_column_bwd, typename T, T)
FUSEDRNN_ROW_DISPATCH(bn_partial_stats, typename T, T)
FUSEDRNN_ROW_DISPATCH(bn_partial_bwd, typename T, T)
FUSEDRNN_ROW_DISPATCH(bn_apply_bwd, typename T, T)
FUSEDRNN_ROW_DISPATCH(bn_combine_stats, typename T, T)
FUSEDRNN_ROW_DISPATCH(bn_pre_row, typename T, T)
FUSEDRNN_ROW_DISPATCH(bn_apply_row, typename T, T)
FUSEDRNN_ROW_DISPATCH(add_row, typename T, T)
#undef FUSEDRNN_COMMA
#undef FUSEDRNN_ROW_DISPATCH

// The row layer norms of cell_math.h (statistics in double), also compiled for AVX2+FMA and
// AVX-512 and chosen at run time like the unit loops; flatten inlines everything they call into
// each version. GCC keeps LaneSum's 8 double chains in scalar registers (vcvtss2sd / vaddsd), so the
// float32 AVX2 and AVX-512 versions sum them with intrinsics: the same lanes, the same
// FMA-contracted squares and the same final combination as the scalar code, so the same values.
// The AVX-512 sums on zmm registers (before: the AVX2 intrinsics in that build too) with the
// LN-LSTM's fused pre-activation pass (ln_pre_row): LN-LSTM row MNIST fwd+bwd 0.937x, two builds
// in alternating processes (benchmarks/results/cpu-20261207-s5/ab-ln-rows.txt).

// The end of a float32 row layer norm backward's first pass, after the vector steps: the values
// [k, n) into lane j % 8 of s1 (dy gain) and s2 (dy gain vhat), dgain += dy vhat; then m1 =
// mean(dy gain), m2 = mean(dy gain vhat) from the lanes.
inline void ln_sums_finish(const float* v, const float* dy, int k, int n, const float* gain, float mean, float rstd,
                           float* dgain, LaneSum<double> s1, LaneSum<double> s2, float* m1, float* m2) {
  for (int j = k; j < n; ++j) {
    const float vhat = (v[j] - mean) * rstd, dyg = dy[j] * gain[j];
    s1.p[j % 8] += double(dyg);
    s2.p[j % 8] += double(dyg * vhat);
    dgain[j] = std::fma(dy[j], vhat, dgain[j]);
  }
  *m1 = float(s1.total() / double(n));
  *m2 = float(s2.total() / double(n));
}

#if FUSEDRNN_X86
// Adds the 8 values x converted to double into lanes (lo: 0-3, hi: 4-7).
FUSEDRNN_AVX2_TARGET FUSEDRNN_ALWAYS_INLINE void lanes_add(__m256 x, __m256d& lo, __m256d& hi) {
  lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(x)));
  hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)));
}

FUSEDRNN_AVX2_TARGET FUSEDRNN_ALWAYS_INLINE LaneSum<double> lanes_of(__m256d lo, __m256d hi) {
  LaneSum<double> s;
  _mm256_storeu_pd(s.p, lo);
  _mm256_storeu_pd(s.p + 4, hi);
  return s;
}

// R rows' layer-norm statistics at once (R = 2: LN-LSTM's x W_ih^T and h W_hh^T rows, LN-GRU's):
// each row's sums are chains of their own, so R rows interleave R times the independent
// additions (one row's two chains of 4 lanes wait on the adds' latency); every row's values are
// those of R = 1. Row r: v[r] -> st[2r] = mean, st[2r+1] = rstd.
template <int R>
FUSEDRNN_AVX2_TARGET inline void ln_stats_avx2_f32(const float* const* v, int n, double eps, float* st) {
  __m256d lo[R], hi[R];
  for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_pd();
  int k = 0;
  for (; k + 8 <= n; k += 8)
    for (int r = 0; r < R; ++r) lanes_add(_mm256_loadu_ps(v[r] + k), lo[r], hi[r]);
  double mean[R];
  for (int r = 0; r < R; ++r) {
    LaneSum<double> s = lanes_of(lo[r], hi[r]);
    for (int j = k; j < n; ++j) s.p[j % 8] += double(v[r][j]);
    mean[r] = s.total() / double(n);
  }
  __m256d m4[R], qlo[R], qhi[R];
  for (int r = 0; r < R; ++r) {
    m4[r] = _mm256_set1_pd(mean[r]);
    qlo[r] = qhi[r] = _mm256_setzero_pd();
  }
  for (k = 0; k + 8 <= n; k += 8)
    for (int r = 0; r < R; ++r) {
      const __m256 x = _mm256_loadu_ps(v[r] + k);
      const __m256d dlo = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)), m4[r]);
      const __m256d dhi = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)), m4[r]);
      qlo[r] = _mm256_fmadd_pd(dlo, dlo, qlo[r]);
      qhi[r] = _mm256_fmadd_pd(dhi, dhi, qhi[r]);
    }
  for (int r = 0; r < R; ++r) {
    LaneSum<double> q = lanes_of(qlo[r], qhi[r]);
    for (int j = k; j < n; ++j) {
      const double d = double(v[r][j]) - mean[r];
      q.p[j % 8] = std::fma(d, d, q.p[j % 8]);
    }
    st[2 * r] = float(mean[r]);
    st[2 * r + 1] = norm_rstd<float, double>(q.total() / double(n), eps);
  }
}

// The same statistics, the same values, on zmm registers: one register holds a row's 8 lanes,
// and each 8 values convert from memory (vcvtps2pd zmm, m256), where the ymm version extracts
// and converts two halves -- three port-5 operations for 8 values against one.
template <int R>
FUSEDRNN_AVX512_TARGET inline void ln_stats_avx512_f32(const float* const* v, int n, double eps, float* st) {
  __m512d s[R];
  for (int r = 0; r < R; ++r) s[r] = _mm512_setzero_pd();
  int k = 0;
  for (; k + 8 <= n; k += 8)
    for (int r = 0; r < R; ++r) s[r] = _mm512_add_pd(s[r], _mm512_cvtps_pd(_mm256_loadu_ps(v[r] + k)));
  double mean[R];
  for (int r = 0; r < R; ++r) {
    LaneSum<double> l;
    _mm512_storeu_pd(l.p, s[r]);
    for (int j = k; j < n; ++j) l.p[j % 8] += double(v[r][j]);
    mean[r] = l.total() / double(n);
  }
  __m512d m8[R], q[R];
  for (int r = 0; r < R; ++r) {
    m8[r] = _mm512_set1_pd(mean[r]);
    q[r] = _mm512_setzero_pd();
  }
  for (k = 0; k + 8 <= n; k += 8)
    for (int r = 0; r < R; ++r) {
      const __m512d d = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(v[r] + k)), m8[r]);
      q[r] = _mm512_fmadd_pd(d, d, q[r]);
    }
  for (int r = 0; r < R; ++r) {
    LaneSum<double> l;
    _mm512_storeu_pd(l.p, q[r]);
    for (int j = k; j < n; ++j) {
      const double d = double(v[r][j]) - mean[r];
      l.p[j % 8] = std::fma(d, d, l.p[j % 8]);
    }
    st[2 * r] = float(mean[r]);
    st[2 * r + 1] = norm_rstd<float, double>(l.total() / double(n), eps);
  }
}

// The float32 layer norms of the AVX2 (ZMM = false) and AVX-512 (ZMM = true) builds differ in
// their statistics' registers only (the same values).
template <int R, bool ZMM>
FUSEDRNN_ALWAYS_INLINE void ln_stats_f32(const float* const* v, int n, double eps, float* st) {
  if constexpr (ZMM) ln_stats_avx512_f32<R>(v, n, eps, st);
  else ln_stats_avx2_f32<R>(v, n, eps, st);
}

// R rows: row r's statistics at st[2r], st[2r + 1], then y[r] = norm(v[r]) gain[r] (+ bias[r] if
// non-null).
template <int R, bool ZMM>
FUSEDRNN_ALWAYS_INLINE void ln_rows_fwd_f32(const float* const* v, int n, const float* const* gain,
                                            const float* const* bias, double eps, float* const* y, float* st) {
  ln_stats_f32<R, ZMM>(v, n, eps, st);
  for (int r = 0; r < R; ++r) layer_norm_row_apply(v[r], n, gain[r], bias[r], st[2 * r], st[2 * r + 1], y[r]);
}

template <bool ZMM>
FUSEDRNN_ALWAYS_INLINE void ln_row_fwd_f32(const float* v, int n, const float* gain, const float* bias, double eps,
                                           float* y, float* mean_out, float* rstd_out) {
  float st[2];
  ln_rows_fwd_f32<1, ZMM>(&v, n, &gain, &bias, eps, &y, st);
  *mean_out = st[0];
  *rstd_out = st[1];
}

template <bool ZMM>
FUSEDRNN_ALWAYS_INLINE void ln_rows2_fwd_f32(const float* v0, const float* v1, int n, const float* g0,
                                             const float* g1, double eps, float* y0, float* y1, float* st) {
  const float* v[2] = {v0, v1};
  const float* g[2] = {g0, g1};
  const float* b[2] = {nullptr, nullptr};
  float* y[2] = {y0, y1};
  ln_rows_fwd_f32<2, ZMM>(v, n, g, b, eps, y, st);
}

// The LN-LSTM's pre-activations of one row in one pass: pre = LN(xr) g_ih + LN(hr) g_hh (+ b_ih +
// b_hh where the cell has biases), the values of ln_rows2_fwd into two rows and add_row
// (statistics at st[0..3]), without writing and reading back the two normalized rows.
template <bool ZMM>
FUSEDRNN_ALWAYS_INLINE void ln_pre_row_f32(const float* xr, const float* hr, int n, const float* g_ih,
                                           const float* g_hh, const float* b_ih, const float* b_hh, double eps,
                                           float* __restrict pre, float* st) {
  const float* v[2] = {xr, hr};
  ln_stats_f32<2, ZMM>(v, n, eps, st);
  ln_pre_apply(n, xr, hr, st, g_ih, g_hh, b_ih, b_hh, pre);
}

// The first pass of R rows' layer-norm backward at once (R = 2: the pairs of ln_rows2_fwd), each
// row's sums chains of their own as in ln_stats_avx2_f32; every row's values are those of R = 1.
// Row r: v[r], dy[r], gain[r], its mean and rstd st[2r], st[2r + 1] -> m1[r] = mean(dy gain),
// m2[r] = mean(dy gain vhat) (summed in double), dgain[r] += dy vhat.
template <int R>
FUSEDRNN_AVX2_TARGET inline void ln_sums_avx2_f32(const float* const* v, const float* const* dy, int n,
                                                  const float* const* gain, const float* st, float* const* dgain,
                                                  float* m1, float* m2) {
  __m256d s1lo[R], s1hi[R], s2lo[R], s2hi[R];
  __m256 m8[R], r8[R];
  for (int r = 0; r < R; ++r) {
    s1lo[r] = s1hi[r] = s2lo[r] = s2hi[r] = _mm256_setzero_pd();
    m8[r] = _mm256_set1_ps(st[2 * r]);
    r8[r] = _mm256_set1_ps(st[2 * r + 1]);
  }
  int k = 0;
  for (; k + 8 <= n; k += 8)
    for (int r = 0; r < R; ++r) {
      const __m256 d = _mm256_loadu_ps(dy[r] + k);
      const __m256 vhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(v[r] + k), m8[r]), r8[r]);
      const __m256 dyg = _mm256_mul_ps(d, _mm256_loadu_ps(gain[r] + k));
      lanes_add(dyg, s1lo[r], s1hi[r]);
      lanes_add(_mm256_mul_ps(dyg, vhat), s2lo[r], s2hi[r]);
      _mm256_storeu_ps(dgain[r] + k, _mm256_fmadd_ps(d, vhat, _mm256_loadu_ps(dgain[r] + k)));
    }
  for (int r = 0; r < R; ++r)
    ln_sums_finish(v[r], dy[r], k, n, gain[r], st[2 * r], st[2 * r + 1], dgain[r], lanes_of(s1lo[r], s1hi[r]),
                   lanes_of(s2lo[r], s2hi[r]), m1 + r, m2 + r);
}

// x's 8 floats converted to double and added into the 8 lanes s.
FUSEDRNN_AVX512_TARGET FUSEDRNN_ALWAYS_INLINE __m512d lanes_add8(__m256 x, __m512d s) {
  return _mm512_add_pd(s, _mm512_cvtps_pd(x));
}

// The same first pass, the same values, 16 values a step on zmm registers: each sum's 8 lanes in
// one register, taking the first 8 values, then the next 8 (the lanes' order of the ymm version,
// whose extracts and conversions of two halves take twice the port-5 operations); the last n % 16
// values go through ln_sums_finish, into the same lanes in the same order.
template <int R>
FUSEDRNN_AVX512_TARGET inline void ln_sums_avx512_f32(const float* const* v, const float* const* dy, int n,
                                                      const float* const* gain, const float* st,
                                                      float* const* dgain, float* m1, float* m2) {
  __m512d s1[R], s2[R];
  __m512 m16[R], r16[R];
  for (int r = 0; r < R; ++r) {
    s1[r] = s2[r] = _mm512_setzero_pd();
    m16[r] = _mm512_set1_ps(st[2 * r]);
    r16[r] = _mm512_set1_ps(st[2 * r + 1]);
  }
  int k = 0;
  for (; k + 16 <= n; k += 16)
    for (int r = 0; r < R; ++r) {
      const __m512 d = _mm512_loadu_ps(dy[r] + k);
      const __m512 vhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(v[r] + k), m16[r]), r16[r]);
      const __m512 dyg = _mm512_mul_ps(d, _mm512_loadu_ps(gain[r] + k));
      const __m512 dygv = _mm512_mul_ps(dyg, vhat);
      s1[r] = lanes_add8(_mm512_extractf32x8_ps(dyg, 1), lanes_add8(_mm512_castps512_ps256(dyg), s1[r]));
      s2[r] = lanes_add8(_mm512_extractf32x8_ps(dygv, 1), lanes_add8(_mm512_castps512_ps256(dygv), s2[r]));
      _mm512_storeu_ps(dgain[r] + k, _mm512_fmadd_ps(d, vhat, _mm512_loadu_ps(dgain[r] + k)));
    }
  for (int r = 0; r < R; ++r) {
    LaneSum<double> a, b;
    _mm512_storeu_pd(a.p, s1[r]);
    _mm512_storeu_pd(b.p, s2[r]);
    ln_sums_finish(v[r], dy[r], k, n, gain[r], st[2 * r], st[2 * r + 1], dgain[r], a, b, m1 + r, m2 + r);
  }
}

// R rows' layer-norm backward (the sums of the AVX2 or, ZMM, the AVX-512 first pass): dv[r] (may
// alias dy[r] only), dgain[r] += dy vhat, dbias[r] += dy (if non-null).
template <int R, bool ZMM>
FUSEDRNN_ALWAYS_INLINE void ln_rows_bwd_f32(const float* const* v, const float* const* dy, int n,
                                            const float* const* gain, const float* st, float* const* dv,
                                            float* const* dgain, float* const* dbias) {
  float m1[R], m2[R];
  if constexpr (ZMM) ln_sums_avx512_f32<R>(v, dy, n, gain, st, dgain, m1, m2);
  else ln_sums_avx2_f32<R>(v, dy, n, gain, st, dgain, m1, m2);
  for (int r = 0; r < R; ++r)
    layer_norm_row_bwd_finish(v[r], dy[r], n, gain[r], st[2 * r], st[2 * r + 1], m1[r], m2[r], dv[r], dbias[r]);
}

template <bool ZMM>
FUSEDRNN_ALWAYS_INLINE void ln_row_bwd_f32(const float* v, const float* dy, int n, const float* gain, float mean,
                                           float rstd, float* dv, float* dgain, float* dbias) {
  const float st[2] = {mean, rstd};
  ln_rows_bwd_f32<1, ZMM>(&v, &dy, n, &gain, st, &dv, &dgain, &dbias);
}

template <bool ZMM>
FUSEDRNN_ALWAYS_INLINE void ln_rows2_bwd_f32(const float* v0, const float* v1, const float* dy0, const float* dy1,
                                             int n, const float* g0, const float* g1, const float* st, float* dv0,
                                             float* dv1, float* dg0, float* dg1) {
  const float* v[2] = {v0, v1};
  const float* dy[2] = {dy0, dy1};
  const float* g[2] = {g0, g1};
  float* dv[2] = {dv0, dv1};
  float* dg[2] = {dg0, dg1};
  float* db[2] = {nullptr, nullptr};
  ln_rows_bwd_f32<2, ZMM>(v, dy, n, g, st, dv, dg, db);
}
#endif

// Two rows' layer norms without bias (row r's mean and rstd at st[2r], st[2r + 1]), one after the other.
template <typename T>
FUSEDRNN_ALWAYS_INLINE void ln_rows2_fwd_generic(const T* v0, const T* v1, int n, const T* g0, const T* g1, double eps,
                                                 T* y0, T* y1, T* st) {
  layer_norm_row_fwd<T, double>(v0, n, g0, nullptr, eps, y0, st, st + 1);
  layer_norm_row_fwd<T, double>(v1, n, g1, nullptr, eps, y1, st + 2, st + 3);
}

// ln_pre_apply with the two rows' statistics (those of layer_norm_row_fwd) into st[0..3].
template <typename T>
FUSEDRNN_ALWAYS_INLINE void ln_pre_row_generic(const T* xr, const T* hr, int n, const T* g_ih, const T* g_hh,
                                               const T* b_ih, const T* b_hh, double eps, T* pre, T* st) {
  layer_norm_row_stats<T, double>(xr, n, eps, st, st + 1);
  layer_norm_row_stats<T, double>(hr, n, eps, st + 2, st + 3);
  ln_pre_apply<T>(n, xr, hr, st, g_ih, g_hh, b_ih, b_hh, pre);
}

// The backward of such a pair: row r's gradient dy_r -> dv_r, dgain_r += dy_r vhat_r.
template <typename T>
FUSEDRNN_ALWAYS_INLINE void ln_rows2_bwd_generic(const T* v0, const T* v1, const T* dy0, const T* dy1, int n,
                                                 const T* g0, const T* g1, const T* st, T* dv0, T* dv1, T* dg0,
                                                 T* dg1) {
  layer_norm_row_bwd<T, double>(v0, dy0, n, g0, st[0], st[1], dv0, dg0, nullptr);
  layer_norm_row_bwd<T, double>(v1, dy1, n, g1, st[2], st[3], dv1, dg1, nullptr);
}

// Each build of the row layer norms; the float32 ones sum with the intrinsics above (ZMM: the
// AVX-512 build's).
#if FUSEDRNN_X86
#define FUSEDRNN_LN_F32(CALL) \
  if constexpr (std::is_same<T, float>::value) return CALL;
#else
#define FUSEDRNN_LN_F32(CALL)
#endif
#define FUSEDRNN_LN_ROWS(SUFFIX, TARGET, ZMM)                                                                     \
  template <typename T>                                                                                          \
  TARGET __attribute__((flatten)) void ln_row_fwd_##SUFFIX(const T* v, int n, const T* gain, const T* bias,       \
                                                           double eps, T* y, T* mean, T* rstd) {                 \
    FUSEDRNN_LN_F32(ln_row_fwd_f32<ZMM>(v, n, gain, bias, eps, y, mean, rstd))                                    \
    layer_norm_row_fwd<T, double>(v, n, gain, bias, eps, y, mean, rstd);                                         \
  }                                                                                                              \
  template <typename T>                                                                                          \
  TARGET __attribute__((flatten)) void ln_rows2_fwd_##SUFFIX(const T* v0, const T* v1, int n, const T* g0,        \
                                                             const T* g1, double eps, T* y0, T* y1, T* st) {     \
    FUSEDRNN_LN_F32(ln_rows2_fwd_f32<ZMM>(v0, v1, n, g0, g1, eps, y0, y1, st))                                    \
    ln_rows2_fwd_generic<T>(v0, v1, n, g0, g1, eps, y0, y1, st);                                                 \
  }                                                                                                              \
  template <typename T>                                                                                          \
  TARGET __attribute__((flatten)) void ln_pre_row_##SUFFIX(const T* xr, const T* hr, int n, const T* g_ih,        \
                                                           const T* g_hh, const T* b_ih, const T* b_hh,          \
                                                           double eps, T* pre, T* st) {                          \
    FUSEDRNN_LN_F32(ln_pre_row_f32<ZMM>(xr, hr, n, g_ih, g_hh, b_ih, b_hh, eps, pre, st))                         \
    ln_pre_row_generic<T>(xr, hr, n, g_ih, g_hh, b_ih, b_hh, eps, pre, st);                                      \
  }                                                                                                              \
  template <typename T>                                                                                          \
  TARGET __attribute__((flatten)) void ln_rows2_bwd_##SUFFIX(const T* v0, const T* v1, const T* dy0, const T* dy1, \
                                                             int n, const T* g0, const T* g1, const T* st, T* dv0, \
                                                             T* dv1, T* dg0, T* dg1) {                           \
    FUSEDRNN_LN_F32(ln_rows2_bwd_f32<ZMM>(v0, v1, dy0, dy1, n, g0, g1, st, dv0, dv1, dg0, dg1))                  \
    ln_rows2_bwd_generic<T>(v0, v1, dy0, dy1, n, g0, g1, st, dv0, dv1, dg0, dg1);                                \
  }                                                                                                              \
  template <typename T>                                                                                          \
  TARGET __attribute__((flatten)) void ln_row_bwd_##SUFFIX(const T* v, const T* dy, int n, const T* gain, T mean, \
                                                           T rstd, T* dv, T* dgain, T* dbias) {                  \
    FUSEDRNN_LN_F32(ln_row_bwd_f32<ZMM>(v, dy, n, gain, mean, rstd, dv, dgain, dbias))                           \
    layer_norm_row_bwd<T, double>(v, dy, n, gain, mean, rstd, dv, dgain, dbias);                                 \
  }
FUSEDRNN_LN_ROWS(avx512, FUSEDRNN_AVX512_TARGET, true)
FUSEDRNN_LN_ROWS(avx2, FUSEDRNN_AVX2_TARGET, false)
#undef FUSEDRNN_LN_ROWS
#undef FUSEDRNN_LN_F32

template <typename T>
__attribute__((flatten)) void ln_row_fwd_base(const T* v, int n, const T* gain, const T* bias, double eps, T* y,
                                              T* mean, T* rstd) {
  layer_norm_row_fwd<T, double>(v, n, gain, bias, eps, y, mean, rstd);
}
template <typename T>
inline void ln_row_fwd(const T* v, int64_t n, const T* gain, const T* bias, double eps, T* y, T* mean, T* rstd) {
  switch (simd_level()) {
    case kSimdAvx512: return ln_row_fwd_avx512<T>(v, int(n), gain, bias, eps, y, mean, rstd);
    case kSimdAvx2: return ln_row_fwd_avx2<T>(v, int(n), gain, bias, eps, y, mean, rstd);
    default: return ln_row_fwd_base<T>(v, int(n), gain, bias, eps, y, mean, rstd);
  }
}

template <typename T>
__attribute__((flatten)) void ln_rows2_fwd_base(const T* v0, const T* v1, int n, const T* g0, const T* g1, double eps,
                                                T* y0, T* y1, T* st) {
  ln_rows2_fwd_generic<T>(v0, v1, n, g0, g1, eps, y0, y1, st);
}
// Layer norms of two rows of n values (no bias): v0 -> y0, v1 -> y1, st = [mean0, rstd0, mean1,
// rstd1]; the values of two ln_row_fwd calls.
template <typename T>
inline void ln_rows2_fwd(const T* v0, const T* v1, int64_t n, const T* g0, const T* g1, double eps, T* y0, T* y1,
                         T* st) {
  switch (simd_level()) {
    case kSimdAvx512: return ln_rows2_fwd_avx512<T>(v0, v1, int(n), g0, g1, eps, y0, y1, st);
    case kSimdAvx2: return ln_rows2_fwd_avx2<T>(v0, v1, int(n), g0, g1, eps, y0, y1, st);
    default: return ln_rows2_fwd_base<T>(v0, v1, int(n), g0, g1, eps, y0, y1, st);
  }
}

template <typename T>
__attribute__((flatten)) void ln_pre_row_base(const T* xr, const T* hr, int n, const T* g_ih, const T* g_hh,
                                              const T* b_ih, const T* b_hh, double eps, T* pre, T* st) {
  ln_pre_row_generic<T>(xr, hr, n, g_ih, g_hh, b_ih, b_hh, eps, pre, st);
}
// The LN-LSTM's pre-activations of one row: pre = LN(xr) g_ih + LN(hr) g_hh (+ b_ih + b_hh where
// b_ih is non-null), st = [mean, rstd of xr, mean, rstd of hr]; the values of ln_rows2_fwd into
// two rows and add_row.
template <typename T>
inline void ln_pre_row(const T* xr, const T* hr, int64_t n, const T* g_ih, const T* g_hh, const T* b_ih,
                       const T* b_hh, double eps, T* pre, T* st) {
  switch (simd_level()) {
    case kSimdAvx512: return ln_pre_row_avx512<T>(xr, hr, int(n), g_ih, g_hh, b_ih, b_hh, eps, pre, st);
    case kSimdAvx2: return ln_pre_row_avx2<T>(xr, hr, int(n), g_ih, g_hh, b_ih, b_hh, eps, pre, st);
    default: return ln_pre_row_base<T>(xr, hr, int(n), g_ih, g_hh, b_ih, b_hh, eps, pre, st);
  }
}

template <typename T>
__attribute__((flatten)) void ln_rows2_bwd_base(const T* v0, const T* v1, const T* dy0, const T* dy1, int n,
                                                const T* g0, const T* g1, const T* st, T* dv0, T* dv1, T* dg0,
                                                T* dg1) {
  ln_rows2_bwd_generic<T>(v0, v1, dy0, dy1, n, g0, g1, st, dv0, dv1, dg0, dg1);
}
// The backward of an ln_rows2_fwd pair (no bias): dy_r -> dv_r (dv_r may alias dy_r only),
// dg_r += dy_r vhat_r; the values of two ln_row_bwd calls.
template <typename T>
inline void ln_rows2_bwd(const T* v0, const T* v1, const T* dy0, const T* dy1, int64_t n, const T* g0, const T* g1,
                         const T* st, T* dv0, T* dv1, T* dg0, T* dg1) {
  switch (simd_level()) {
    case kSimdAvx512: return ln_rows2_bwd_avx512<T>(v0, v1, dy0, dy1, int(n), g0, g1, st, dv0, dv1, dg0, dg1);
    case kSimdAvx2: return ln_rows2_bwd_avx2<T>(v0, v1, dy0, dy1, int(n), g0, g1, st, dv0, dv1, dg0, dg1);
    default: return ln_rows2_bwd_base<T>(v0, v1, dy0, dy1, int(n), g0, g1, st, dv0, dv1, dg0, dg1);
  }
}

template <typename T>
__attribute__((flatten)) void ln_row_bwd_base(const T* v, const T* dy, int n, const T* gain, T mean, T rstd, T* dv,
                                              T* dgain, T* dbias) {
  layer_norm_row_bwd<T, double>(v, dy, n, gain, mean, rstd, dv, dgain, dbias);
}
template <typename T>
inline void ln_row_bwd(const T* v, const T* dy, int64_t n, const T* gain, T mean, T rstd, T* dv, T* dgain, T* dbias) {
  switch (simd_level()) {
    case kSimdAvx512: return ln_row_bwd_avx512<T>(v, dy, int(n), gain, mean, rstd, dv, dgain, dbias);
    case kSimdAvx2: return ln_row_bwd_avx2<T>(v, dy, int(n), gain, mean, rstd, dv, dgain, dbias);
    default: return ln_row_bwd_base<T>(v, dy, int(n), gain, mean, rstd, dv, dgain, dbias);
  }
}

}  // namespace cpu
}  // namespace fusedrnn
