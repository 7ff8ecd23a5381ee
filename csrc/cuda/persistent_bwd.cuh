// Persistent LSTM backward kernel: ONE cooperative launch runs all T steps in reverse.
//
// Same layout as the forward (persistent.cuh): CTA k owns the hidden units [k * U, k * U + nu)
// for the whole batch. It keeps the COLUMNS of W_hh of its units (W_hh[:, j0:j0+nu], GH x nu,
// stored transposed) and, for FGR, the matching columns of W_fgr in shared memory, and carries
// the gradients of its slice of h, c (and a) in shared memory. Per step, in reverse time:
//   1. dh -> d_o, d_cn (lstm_out_bwd), the cell norm's backward (layer norms: row sums over H
//      through per-CTA partial sums + grid sync; batch norm: column sums, CTA-local, a warp per
//      column);
//   2. gate backward (lstm_cell_bwd) -> dpre, dc_{t-1}, peephole gradients;
//   3. the gate norms' backward -> dxw, dhw (same two schemes);
//   4. grid sync: dhw_t of every unit is visible; dh_{t-1} of the slice = the direct part +
//      dhw_t W_hh[:, slice] (h staged in batch chunks), da_{t-1} likewise with W_fgr.
// Grid syncs per step: 1 (norm none, batch) or 3 (layer, layer_per_gate).
// It writes what the per-step path writes (dpre, dxw, dhw, the per-row parameter-gradient sums
// wgrad, dh0, dc0, da0); dx, dW_ih, dW_hh, dW_fgr stay the large GEMMs after the loop.
// Framework-free; nvcc and the SIMT emulator. Shape legend as in persistent.cuh.
#pragma once

#include "persistent.cuh"

namespace fusedrnn {
namespace cuda {

template <typename T>
struct PersistentLstmBwd {
  int steps, batch, hidden, variant, training, units, chunk;  // T, B, H, LstmVariant, BN mode, U, rows staged
  int mma;                         // tensor-core product (persist_product): 0 no, 1 bfloat16, 2 float16
  double eps;
  const int64_t* lengths;          // [B] or null
  const T *c0, *w_hh, *w_fgr, *w_peep;
  const T *g_ih, *g_hh, *g_cell, *b_cell, *g_gates;
  const T *xw, *hw, *acts, *cs;    // saved by the forward (pointwise.cuh conventions)
  const typename AccOf<T>::type* stats;
  const T *dy, *dh_n, *dc_n, *da_n;  // [T, B, H], [B, H], [B, H], [B, 3H]
  T *dpre, *dxw, *dhw;             // [T, B, GH]; dxw may alias dpre (none), dhw dxw (none, per gate)
  T *dh0, *dc0, *da0;              // [B, H], [B, H], [B, 3H]
  typename AccOf<T>::type* wgrad;  // [B, 3GH + 5H] per-row parameter-gradient sums (pointwise.cuh layout)
  typename AccOf<T>::type* part;   // [CTAs, B, 2 + NQ] partial row sums (layer norms)
};

// Row sums per row whose terms live in every CTA: 2 for the cell norm, then layer 4, per gate 2G.
template <int NORM>
__host__ __device__ inline int persist_bwd_row_sums(int G) {
  return NORM == kNormLayer ? 6 : NORM == kNormLayerPerGate ? 2 + 2 * G : 0;
}

struct PersistBwdSmem {
  long wt, wft, x, xa, out, outa, dh, dc, da, tmp, dpre, rows, cols, red, total;
};

__host__ __device__ inline PersistBwdSmem persist_bwd_smem(int norm, bool fgr, int G, int H, int B, int U,
                                                           int chunk, int warps) {
  PersistBwdSmem s;
  const long GH = long(G) * H;
  s.wt = long(U) * GH;
  s.wft = fgr ? 3L * U * 3 * H : 0;
  s.x = long(chunk) * GH;
  s.xa = fgr ? long(chunk) * 3 * H : 0;
  s.out = long(B) * U;
  s.outa = fgr ? 3L * B * U : 0;
  s.dh = long(B) * U;
  s.dc = long(B) * U;
  s.da = fgr ? 3L * B * U : 0;
  s.tmp = 3L * B * U;  // d_o, d_cn, chat
  s.dpre = long(B) * G * U;
  const int rw = norm == kNormLayer ? 6 : norm == kNormLayerPerGate ? 2 + 2 * G : 0;
  s.rows = long(B) * rw;
  s.cols = norm == kNormBatch ? 2L * U : 0;
  s.red = long(warps) * kPersistTile * 33;
  s.total = s.wt + s.wft + s.x + s.xa + s.out + s.outa + s.dh + s.dc + s.da + s.tmp + s.dpre + s.rows + s.cols +
            s.red;
  return s;
}

template <typename T, int NORM>
__global__ void __launch_bounds__(256) persistent_lstm_bwd_kernel(PersistentLstmBwd<T> p) {
  using A = typename AccOf<T>::type;
  SIMT_DYNAMIC_SHARED(A, smem);
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const LstmFlags fl = lstm_flags(p.variant);
  const int H = p.hidden, B = p.batch, G = fl.num_gates, GH = G * H, U = p.units;
  const int j0 = blockIdx.x * U, nu = H - j0 < U ? H - j0 : U;
  const int tid = threadIdx.x, nthr = blockDim.x, lane = tid & 31, warp = tid >> 5, warps = nthr >> 5;
  const A eps = A(p.eps);
  constexpr bool kRowNorm = NORM == kNormLayer || NORM == kNormLayerPerGate;
  const bool cell_norm = NORM != kNormNone;
  const bool train = p.training != 0;
  const int RW = persist_bwd_row_sums<NORM>(G);
  const int SW = NORM == kNormLayer ? 6 : 2 * G + 2;  // stats record of the row norms
  const long NB = 2L * GH + H, WG = 3L * GH + 5L * H;
  const PersistBwdSmem L = persist_bwd_smem(NORM, fl.fgr, G, H, B, U, p.chunk, nthr >> 5);
  A* wt_s = smem;              // [nu, GH]   wt_s[jj][r] = W_hh[r][j0 + jj]
  A* wft_s = wt_s + L.wt;      // [3 nu, 3H] wft_s[k nu + jj][r] = W_fgr[r][k H + j0 + jj]
  A* x_s = wft_s + L.wft;      // [chunk, GH] staged dhw_t rows
  A* xa_s = x_s + L.x;         // [chunk, 3H] staged dpre_t rows of i, f, o
  A* out_s = xa_s + L.xa;      // [B, U]   dhw_t W_hh[:, slice]
  A* outa_s = out_s + L.out;   // [B, 3U]  dpre_ifo W_fgr[:, slice]
  A* dh_s = outa_s + L.outa;   // [B, U]   gradient of h_t (of the step being processed)
  A* dc_s = dh_s + L.dh;       // [B, U]
  A* da_s = dc_s + L.dc;       // [B, 3U]
  A* do_s = da_s + L.da;       // [B, U]   d_o, then d_cn, then chat
  A* dcn_s = do_s + long(B) * U;
  A* chat_s = dcn_s + long(B) * U;
  A* dpre_s = do_s + L.tmp;    // [B, G U]
  A* rows_s = dpre_s + L.dpre; // [B, RW] merged row means
  A* cols_s = rows_s + L.rows; // [2, U]   batch norm of c: column means
  A* red_s = cols_s + L.cols;

  persist_stage<A>(wt_s, long(nu) * GH, [&](long e) {
    const int jj = int(e / GH), r = int(e % GH);
    return p.w_hh[long(r) * H + j0 + jj];
  });
  if (fl.fgr)
    persist_stage<A>(wft_s, 3L * nu * 3 * H, [&](long e) {
      const int row = int(e / (3 * H)), r = int(e % (3 * H)), k = row / nu, jj = row % nu;
      return p.w_fgr[long(r) * 3 * H + long(k) * H + j0 + jj];
    });
  for (int e = tid; e < B * nu; e += nthr) {
    const int b = e / nu, jj = e % nu;
    const long bj = long(b) * H + j0 + jj;
    dh_s[b * U + jj] = A(p.dh_n[bj]);
    dc_s[b * U + jj] = A(p.dc_n[bj]);
    if (fl.fgr)
      for (int k = 0; k < 3; ++k) da_s[(b * 3 + k) * U + jj] = A(p.da_n[long(b) * 3 * H + long(k) * H + j0 + jj]);
  }
  __syncthreads();

  for (int t = p.steps - 1; t >= 0; --t) {
    const long tBH = long(t) * B * H, tBG = long(t) * B * GH;
    const T* acts = p.acts + tBG;
    const T* cs = p.cs + tBH;
    const T* c_prev = t > 0 ? p.cs + tBH - long(B) * H : p.c0;
    const A* st = NORM == kNormNone ? nullptr
                  : p.stats + long(t) * (NORM == kNormBatch ? 2 * NB : long(B) * SW);
    auto active = [&](int b) { return p.lengths == nullptr || t < p.lengths[b]; };
    auto cell_stats = [&](int b, int j, A* mc, A* rc) {
      if (NORM == kNormBatch) {
        *mc = st[2L * GH + j];
        *rc = A(1) / sqrt(st[NB + 2L * GH + j] + eps);
      } else {
        *mc = st[long(b) * SW + SW - 2];
        *rc = st[long(b) * SW + SW - 1];
      }
    };

    // 1a. output backward: d_o, d_cn, chat of every (row, unit) of the slice
    for (int e = tid; e < B * nu; e += nthr) {
      const int b = e / nu, jj = e % nu, j = j0 + jj;
      const long bj = long(b) * H + j;
      const A dh = active(b) ? A(p.dy[tBH + bj]) + dh_s[b * U + jj] : dh_s[b * U + jj];
      const A c = A(cs[bj]);
      const A o = fl.go >= 0 ? A(acts[long(b) * GH + long(fl.go) * H + j]) : A(1);
      A chat = c, cn = c;
      if (cell_norm) {
        A mc, rc;
        cell_stats(b, j, &mc, &rc);
        chat = (c - mc) * rc;
        cn = chat * A(p.g_cell[j]) + A(p.b_cell[j]);
      }
      A d_o, d_cn;
      lstm_out_bwd<A>(fl, dh, o, cn, &d_o, &d_cn);
      do_s[b * U + jj] = d_o;
      dcn_s[b * U + jj] = d_cn;
      chat_s[b * U + jj] = chat;
    }
    __syncthreads();

    // 1b. means of the cell norm's backward: over H per row (layer norms) or over the batch per column
    if (kRowNorm) {
      for (int b = tid; b < B; b += nthr) {
        A s1 = 0, s2 = 0;
        for (int jj = 0; jj < nu; ++jj) {
          const A dg = dcn_s[b * U + jj] * A(p.g_cell[j0 + jj]);
          s1 += dg;
          s2 += dg * chat_s[b * U + jj];
        }
        A* pb = p.part + (long(blockIdx.x) * B + b) * RW;
        pb[0] = s1;
        pb[1] = s2;
      }
      grid.sync();
      for (int b = warp; b < B; b += warps) {  // warp-uniform: the sums shuffle
        const A s1 = persist_sum<A>(p.part, B, RW, b, 0), s2 = persist_sum<A>(p.part, B, RW, b, 1);
        if (lane == 0) {
          rows_s[b * RW] = s1 / A(H);
          rows_s[b * RW + 1] = s2 / A(H);
        }
      }
    }
    if (NORM == kNormBatch) {
      for (int jj = warp; jj < nu; jj += warps) {  // warp-uniform: a warp per column, lanes split the batch
        A s1 = 0, s2 = 0;
        int n = 0;
        if (train)
          for (int b = lane; b < B; b += 32)
            if (active(b)) {
              const A dg = dcn_s[b * U + jj] * A(p.g_cell[j0 + jj]);
              s1 += dg;
              s2 += dg * chat_s[b * U + jj];
              ++n;
            }
        s1 = warp_sum(s1); s2 = warp_sum(s2); n = warp_sum(n);
        if (lane == 0) {
          cols_s[jj] = n ? s1 / A(n) : A(0);
          cols_s[U + jj] = n ? s2 / A(n) : A(0);
        }
      }
    }
    __syncthreads();

    // 2. gate backward -> dpre, dc_{t-1}, the direct parts of dh_{t-1} and da_{t-1}
    for (int e = tid; e < B * nu; e += nthr) {
      const int b = e / nu, jj = e % nu, j = j0 + jj;
      const long bj = long(b) * H + j;
      const bool act_b = active(b);
      A* wg = p.wgrad + long(b) * WG;
      const A d_cn = dcn_s[b * U + jj];
      A dc_out = d_cn;
      if (cell_norm) {
        A mc, rc;
        cell_stats(b, j, &mc, &rc);
        const A chat = chat_s[b * U + jj], dg = d_cn * A(p.g_cell[j]);
        if (kRowNorm) dc_out = norm_bwd<A>(dg, chat, rc, rows_s[b * RW], rows_s[b * RW + 1]);
        else dc_out = train ? norm_bwd<A>(dg, chat, rc, cols_s[jj], cols_s[U + jj]) : rc * dg;
        if (act_b) {
          wg[3L * GH + 3 * H + j] += d_cn * chat;
          wg[3L * GH + 4 * H + j] += d_cn;
        }
      }
      A* dpre = dpre_s + long(b) * G * U;
      T* dpre_g = p.dpre + tBG + long(b) * GH + j;
      if (!act_b) {  // padded row: gradients pass through unchanged (dh_s, dc_s, da_s keep the carry)
        for (int q = 0; q < G; ++q) {
          dpre[q * U + jj] = A(0);
          dpre_g[long(q) * H] = T(0);
        }
        continue;
      }
      A d_o = do_s[b * U + jj], da_i = 0, da_f = 0;
      if (fl.fgr) {
        da_i = da_s[(b * 3 + 0) * U + jj];
        da_f = da_s[(b * 3 + 1) * U + jj];
        d_o += da_s[(b * 3 + 2) * U + jj];
        for (int k = 0; k < 3; ++k) da_s[(b * 3 + k) * U + jj] = A(0);
      }
      const T* act = acts + long(b) * GH + j;
      const A i = fl.gi >= 0 ? A(act[long(fl.gi) * H]) : A(1);
      const A f = fl.cifg ? A(1) - i : (fl.gf >= 0 ? A(act[long(fl.gf) * H]) : A(1));
      const A g = A(act[long(fl.gg) * H]);
      const A o = fl.go >= 0 ? A(act[long(fl.go) * H]) : A(1);
      const A pi = fl.pi >= 0 ? A(p.w_peep[long(fl.pi) * H + j]) : A(0);
      const A pf = fl.pf >= 0 ? A(p.w_peep[long(fl.pf) * H + j]) : A(0);
      const A po = fl.po >= 0 ? A(p.w_peep[long(fl.po) * H + j]) : A(0);
      A dq[4], dcp, dwi, dwf, dwo;
      A dpi, dpf, dpg, dpo;
      lstm_cell_bwd<A>(fl, d_o, dc_out + dc_s[b * U + jj], da_i, da_f, i, f, g, o, A(c_prev[bj]), A(cs[bj]), pi, pf,
                       po, &dpi, &dpf, &dpg, &dpo, &dcp, &dwi, &dwf, &dwo);
      if (fl.gi >= 0) dq[fl.gi] = dpi;
      if (fl.gf >= 0) dq[fl.gf] = dpf;
      dq[fl.gg] = dpg;
      if (fl.go >= 0) dq[fl.go] = dpo;
      for (int q = 0; q < G; ++q) {
        const T v = T(dq[q]);  // rounded to the storage type, as the per-step path stores dpre
        dpre_g[long(q) * H] = v;
        dpre[q * U + jj] = A(v);
      }
      dc_s[b * U + jj] = A(T(dcp));
      dh_s[b * U + jj] = A(0);  // direct part of dh_{t-1} of an active row
      wg[3L * GH + j] += dwi;
      wg[3L * GH + H + j] += dwf;
      wg[3L * GH + 2 * H + j] += dwo;
    }
    __syncthreads();

    // 3. gate norms' backward -> dxw, dhw of the slice, gain/bias sums
    auto dpv = [&](int b, int q, int jj) { return dpre_s[long(b) * G * U + q * U + jj]; };
    if (NORM == kNormNone) {
      for (int e = tid; e < B * nu; e += nthr) {
        const int b = e / nu, jj = e % nu;
        for (int q = 0; q < G; ++q) p.wgrad[long(b) * WG + long(q) * H + j0 + jj] += dpv(b, q, jj);
      }
    }
    if (kRowNorm) {
      for (int b = tid; b < B; b += nthr) {
        const A* sb = st + long(b) * SW;
        A* pb = p.part + (long(blockIdx.x) * B + b) * RW;
        if (NORM == kNormLayer) {
          A sx1 = 0, sx2 = 0, sh1 = 0, sh2 = 0;
          for (int q = 0; q < G; ++q)
            for (int jj = 0; jj < nu; ++jj) {
              const long col = long(q) * H + j0 + jj, i = tBG + long(b) * GH + col;
              const A d = dpv(b, q, jj), xh = (A(p.xw[i]) - sb[0]) * sb[1], hh = (A(p.hw[i]) - sb[2]) * sb[3];
              sx1 += d * A(p.g_ih[col]); sx2 += d * A(p.g_ih[col]) * xh;
              sh1 += d * A(p.g_hh[col]); sh2 += d * A(p.g_hh[col]) * hh;
            }
          pb[2] = sx1; pb[3] = sx2; pb[4] = sh1; pb[5] = sh2;
        } else {
          for (int q = 0; q < G; ++q) {
            A s1 = 0, s2 = 0;
            for (int jj = 0; jj < nu; ++jj) {
              const long col = long(q) * H + j0 + jj, i = tBG + long(b) * GH + col;
              const A d = dpv(b, q, jj) * A(p.g_gates[col]);
              s1 += d;
              s2 += d * (A(p.xw[i]) - sb[2 * q]) * sb[2 * q + 1];
            }
            pb[2 + 2 * q] = s1;
            pb[3 + 2 * q] = s2;
          }
        }
      }
      grid.sync();
      for (int b = warp; b < B; b += warps)
        for (int k = 2; k < RW; ++k) {
          const A sum = persist_sum<A>(p.part, B, RW, b, k);
          if (lane == 0) rows_s[b * RW + k] = sum / A(NORM == kNormLayer ? G * H : H);
        }
      __syncthreads();
      for (int e = tid; e < B * nu; e += nthr) {
        const int b = e / nu, jj = e % nu;
        const bool act_b = active(b);
        const A* sb = st + long(b) * SW;
        const A* rm = rows_s + b * RW;
        A* wg = p.wgrad + long(b) * WG;
        for (int q = 0; q < G; ++q) {
          const long col = long(q) * H + j0 + jj, i = tBG + long(b) * GH + col;
          const A d = dpv(b, q, jj);
          if (NORM == kNormLayer) {
            const A xh = (A(p.xw[i]) - sb[0]) * sb[1], hh = (A(p.hw[i]) - sb[2]) * sb[3];
            p.dxw[i] = act_b ? T(norm_bwd<A>(d * A(p.g_ih[col]), xh, sb[1], rm[2], rm[3])) : T(0);
            p.dhw[i] = act_b ? T(norm_bwd<A>(d * A(p.g_hh[col]), hh, sb[3], rm[4], rm[5])) : T(0);
            wg[col] += d;
            wg[GH + col] += d * xh;
            wg[2L * GH + col] += d * hh;
          } else {
            const A vh = (A(p.xw[i]) - sb[2 * q]) * sb[2 * q + 1];
            p.dxw[i] = act_b ? T(norm_bwd<A>(d * A(p.g_gates[col]), vh, sb[2 * q + 1], rm[2 + 2 * q], rm[3 + 2 * q]))
                             : T(0);
            wg[col] += d;
            wg[GH + col] += d * vh;
          }
        }
      }
    }
    if (NORM == kNormBatch) {
      for (int r = warp; r < G * nu; r += warps) {  // warp-uniform: a warp per column, lanes split the batch
        const int q = r / nu, jj = r % nu;
        const long col = long(q) * H + j0 + jj;
        const A mx = st[col], rx = A(1) / sqrt(st[NB + col] + eps);
        const A mh = st[GH + col], rh = A(1) / sqrt(st[NB + GH + col] + eps);
        const A gx = A(p.g_ih[col]), gh = A(p.g_hh[col]);
        A sx1 = 0, sx2 = 0, sh1 = 0, sh2 = 0;
        int n = 0;
        for (int b = lane; b < B; b += 32) n += active(b);
        n = warp_sum(n);
        if (train && n > 0) {
          for (int b = lane; b < B; b += 32) {
            if (!active(b)) continue;
            const long i = tBG + long(b) * GH + col;
            const A d = dpv(b, q, jj);
            sx1 += d * gx; sx2 += d * gx * (A(p.xw[i]) - mx) * rx;
            sh1 += d * gh; sh2 += d * gh * (A(p.hw[i]) - mh) * rh;
          }
          sx1 = warp_sum(sx1) / A(n); sx2 = warp_sum(sx2) / A(n);
          sh1 = warp_sum(sh1) / A(n); sh2 = warp_sum(sh2) / A(n);
        }
        for (int b = lane; b < B; b += 32) {
          const long i = tBG + long(b) * GH + col;
          if (!active(b)) {
            p.dxw[i] = T(0);
            p.dhw[i] = T(0);
            continue;
          }
          const A d = dpv(b, q, jj), xh = (A(p.xw[i]) - mx) * rx, hh = (A(p.hw[i]) - mh) * rh;
          p.dxw[i] = T(train ? norm_bwd<A>(d * gx, xh, rx, sx1, sx2) : rx * d * gx);
          p.dhw[i] = T(train ? norm_bwd<A>(d * gh, hh, rh, sh1, sh2) : rh * d * gh);
          A* wg = p.wgrad + long(b) * WG;
          wg[col] += d;
          wg[GH + col] += d * xh;
          wg[2L * GH + col] += d * hh;
        }
      }
    }
    // 4. dhw_t (and dpre_t) of every unit visible; recurrent products for the slice
    grid.sync();
    const T* dhw = p.dhw + tBG;
    const T* dpre_t = p.dpre + tBG;
    for (int b0 = 0; b0 < B; b0 += p.chunk) {
      const int nb = B - b0 < p.chunk ? B - b0 : p.chunk;
      persist_stage<A>(x_s, long(nb) * GH, [&](long e) { return dhw[long(b0) * GH + e]; });
      if (fl.fgr)
        persist_stage<A>(xa_s, long(nb) * 3 * H, [&](long e) {
          const int bb = int(e / (3 * H)), r = int(e % (3 * H)), k = r / H, u = r % H;
          const int gate = k == 0 ? fl.gi : k == 1 ? fl.gf : fl.go;
          return dpre_t[long(b0 + bb) * GH + long(gate) * H + u];
        });
      __syncthreads();
      persist_product<T, A>(p.mma, wt_s, nu, x_s, nb, GH, out_s + long(b0) * U, U, red_s);
      if (fl.fgr)
        persist_product<T, A>(p.mma, wft_s, 3 * nu, xa_s, nb, 3 * H, outa_s + long(b0) * 3 * U, 3 * U, red_s);
      __syncthreads();
    }
    for (int e = tid; e < B * nu; e += nthr) {
      const int b = e / nu, jj = e % nu;
      dh_s[b * U + jj] = A(T(dh_s[b * U + jj] + out_s[b * U + jj]));
      if (fl.fgr)
        for (int k = 0; k < 3; ++k)
          da_s[(b * 3 + k) * U + jj] = A(T(da_s[(b * 3 + k) * U + jj] + outa_s[long(b) * 3 * U + k * nu + jj]));
    }
    __syncthreads();
  }
  for (int e = tid; e < B * nu; e += nthr) {
    const int b = e / nu, jj = e % nu;
    const long bj = long(b) * H + j0 + jj;
    p.dh0[bj] = T(dh_s[b * U + jj]);
    p.dc0[bj] = T(dc_s[b * U + jj]);
    if (fl.fgr)
      for (int k = 0; k < 3; ++k) p.da0[long(b) * 3 * H + long(k) * H + j0 + jj] = T(da_s[(b * 3 + k) * U + jj]);
  }
}

// Like persist_plan, for the backward's shared memory.
inline PersistPlan persist_bwd_plan(int norm, bool fgr, int G, int H, int B, int sms, long smem_max, int threads,
                                    int acc_bytes) {
  return persist_search(H, B, sms, smem_max, threads, acc_bytes, [&](int units, int chunk) {
    return long(persist_bwd_smem(norm, fgr, G, H, B, units, chunk, threads / 32).total);
  });
}

}  // namespace cuda
}  // namespace fusedrnn
