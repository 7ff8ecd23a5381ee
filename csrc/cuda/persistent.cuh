// Persistent LSTM forward kernel: ONE cooperative launch runs all T steps of a layer.
//
// Layout: the grid has at most one CTA per SM; CTA k owns the hidden units
// [k * U, min(H, (k + 1) * U)) ("its slice", nu units) with ALL gate rows of those units and
// the whole batch. It copies its G * nu rows of W_hh (and, for FGR, its 3 * nu rows of W_fgr)
// into shared memory once, keeps its slice of the cell state c in shared memory, and loops:
//   1. stage h_{t-1} (written by every CTA at step t - 1) in chunks of `chunk` batch rows into
//      shared memory and compute its slice of h_{t-1} W_hh^T (and a_{t-1} W_fgr^T);
//   2. normalization statistics:
//        batch:            per column over the batch: CTA-local (the CTA holds every row), a
//                          warp per column;
//        layer, per gate:  per row over GH (or H) columns that live in every CTA: each CTA
//                          writes (mean, M2) of its part, grid sync, every CTA merges them
//                          (Chan et al.'s pairwise update, numerically stable);
//   3. gates and c_t (cell_math.h lstm_cell_fwd), the cell norm's statistics (the same two
//      schemes), h_t (lstm_out_fwd), masking of finished sequences;
//   4. grid sync: h_t is visible to every CTA for step t + 1.
// Grid syncs per step: 1 (norm none, batch) or 3 (layer, layer_per_gate).
// It writes exactly what the per-step path (pointwise.cuh) writes -- y, acts, cs, xw/hw,
// stats -- so the per-step backward and bn_update_ consume its results unchanged.
//
// Framework-free; compiles with nvcc and, under the SIMT emulator (csrc/simt/simt.h), with
// g++ for the CPU tests. Shape legend: T steps, B batch, H hidden, G gates present, GH = G * H,
// U units per CTA, S batch-norm slots. T_ is the storage type, A the accumulation type
// (AccOf<T_>: double for double, float otherwise).
#pragma once

#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "../simt/simt.h"
#include "fusedrnn/cell_math.h"
#include "pointwise.cuh"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace fusedrnn {
namespace cuda {

// Gate rows x batch rows computed by one warp at a time in the recurrent product (4 x 4; 2 x 8 for
// a product of fewer than 4 rows: the backward's with U <= 2 units per CTA, e.g. H = 256 on an
// H100, where half of a 4-row tile would be padding). kPersistTile values either way.
constexpr int kPersistRowTile = 4;
constexpr int kPersistBatchTile = 4;
constexpr int kPersistTile = kPersistRowTile * kPersistBatchTile;

template <typename T>
struct PersistentLstmFwd {
  int steps, batch, hidden;  // T, B, H
  int variant;               // LstmVariant
  int training;              // batch norm: batch statistics (1) or the running slots (0)
  int t0, slots;             // batch-norm slot of step t: min(t0 + t, S - 1)
  int units;                 // U: hidden units per CTA (the last CTA may own fewer)
  int chunk;                 // batch rows of h_{t-1} staged in shared memory at once
  int mma;                   // recurrent product on tensor cores: 0 no, 1 bfloat16, 2 float16 (persist_product)
  double eps;
  const int64_t* lengths;    // [B] or null: row b is active at step t iff t < lengths[b]
  const T *h0, *c0, *a0;     // [B, H], [B, H], [B, 3H] (FGR)
  const T *w_hh, *w_fgr;     // [GH, H], [3H, 3H]
  const T *b_ih, *b_hh, *w_peep;  // [GH], [GH], [P, H]
  const T *g_ih, *g_hh, *g_cell, *b_cell, *g_gates, *b_gates;
  const T *rm_ih, *rv_ih, *rm_hh, *rv_hh, *rm_cell, *rv_cell;  // [S, GH] / [S, H] (eval)
  T* xw;                     // [T, B, GH] x W_ih^T; layer_per_gate: overwritten with xw + hw
  T* hw;                     // [T, B, GH] h_{t-1} W_hh^T saved (layer, batch) or null
  T *hbuf, *abuf;            // [2, B, H], [2, B, 3H]: h_t, a_t of step t in slot t % 2
  T *y, *acts, *cs;          // as lstm_fwd's outputs (pointwise.cuh)
  typename AccOf<T>::type* stats;  // lstm_fwd's statistics, in the accumulation type
  typename AccOf<T>::type* part;  // [CTAs, B, 2 * (NQ + 1)] partial row statistics (layer norms)
};

// Number of per-row quantities whose statistics span the CTAs: layer (xw, hw), per gate (G).
template <int NORM>
__host__ __device__ inline int persist_row_quantities(int G) {
  return NORM == kNormLayer ? 2 : NORM == kNormLayerPerGate ? G : 0;
}

// Shared memory of one CTA, in elements of A, in carve order (see the kernel).
struct PersistSmem {
  long w, wf, x, xa, hw, fg, c, rows, cols, red, total;
};

__host__ __device__ inline PersistSmem persist_smem(int norm, bool fgr, int G, int H, int B, int U, int chunk,
                                                    int warps) {
  PersistSmem s;
  s.w = long(G) * U * H;
  s.wf = fgr ? 3L * U * 3 * H : 0;
  s.x = long(chunk) * H;
  s.xa = fgr ? long(chunk) * 3 * H : 0;
  s.hw = long(B) * G * U;
  s.fg = fgr ? long(B) * 3 * U : 0;
  s.c = long(B) * U;
  const int nq = norm == kNormLayer ? 2 : norm == kNormLayerPerGate ? G : 0;
  s.rows = norm == kNormLayer || norm == kNormLayerPerGate ? long(B) * 2 * (nq + 1) : 0;
  s.cols = norm == kNormBatch ? 4L * G * U + 2L * U : 0;
  s.red = long(warps) * kPersistTile * 33;
  s.total = s.w + s.wf + s.x + s.xa + s.hw + s.fg + s.c + s.rows + s.cols + s.red;
  return s;
}

// out[b * ldo + r] = sum_k W[r * K + k] * X[b * K + k] for r < R, b < nb (shared memory in,
// shared memory out). A warp owns a tile of RB rows x BB batch rows (RB x BB = kPersistTile); its
// lanes split k, and the tile's partial sums are reduced through `red` (one slice per warp).
template <typename T, typename A, int RB, int BB>
__device__ inline void persist_matmul(const A* W, int R, const A* X, int nb, int K, A* out, int ldo, A* red) {
  constexpr int NV = RB * BB;
  static_assert(NV == kPersistTile, "persist_matmul: the tile's sums fill one reduction slice");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  A* rw = red + long(warp) * NV * 33;
  const int ntr = (R + RB - 1) / RB, ntb = (nb + BB - 1) / BB;
  for (int tile = warp; tile < ntr * ntb; tile += warps) {  // warp-uniform loop
    const int r0 = (tile % ntr) * RB, b0 = (tile / ntr) * BB;
    A acc[RB][BB];
    for (int i = 0; i < RB; ++i)
      for (int j = 0; j < BB; ++j) acc[i][j] = A(0);
    // Row pointers hoisted out of the k loop, the tile's rows past R (batch rows past nb) reading
    // the last one: their sums are never written, and the loop needs no bounds checks.
    const A* wr[RB];
    const A* xr[BB];
    for (int i = 0; i < RB; ++i) wr[i] = W + long(r0 + i < R ? r0 + i : R - 1) * K;
    for (int j = 0; j < BB; ++j) xr[j] = X + long(b0 + j < nb ? b0 + j : nb - 1) * K;
    for (int k = lane; k < K; k += 32) {
      A w[RB], x[BB];
      for (int i = 0; i < RB; ++i) w[i] = wr[i][k];
      for (int j = 0; j < BB; ++j) x[j] = xr[j][k];
      for (int i = 0; i < RB; ++i)
        for (int j = 0; j < BB; ++j) acc[i][j] += w[i] * x[j];
    }
    for (int i = 0; i < RB; ++i)
      for (int j = 0; j < BB; ++j) rw[(i * BB + j) * 33 + lane] = acc[i][j];
    __syncwarp();
    if (lane < NV) {
      const int i = lane / BB, j = lane % BB;
      A s = 0;
      for (int l = 0; l < 32; ++l) s += rw[lane * 33 + l];
      // rounded to the storage type, as the per-step path's GEMM output
      if (r0 + i < R && b0 + j < nb) out[long(b0 + j) * ldo + r0 + i] = A(T(s));
    }
    __syncwarp();
  }
}

// The tensor-core product is compiled for sm_80+ and for the emulator (simt.h emulates mma.sync
// and the bfloat16 / float16 conversions), so the CPU tests run the same fragment code.
#if !defined(__CUDACC__) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
#define FUSEDRNN_PERSIST_MMA 1
#endif

#if defined(FUSEDRNN_PERSIST_MMA)
// Two float values of the storage type (exact in it) as the .b32 operand of mma.sync: the lower
// index in the low half. KIND 1: bfloat16, 2: float16.
template <int KIND>
__device__ inline uint32_t mma_pack(float lo, float hi) {
  uint32_t r;
  if constexpr (KIND == 1) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    memcpy(&r, &v, sizeof(r));
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    memcpy(&r, &v, sizeof(r));
  }
  return r;
}

template <int KIND>
__device__ inline float mma_round(float v) {  // to the storage type and back, as persist_matmul's A(T(s))
  if constexpr (KIND == 1) return __bfloat162float(__float2bfloat16_rn(v));
  else return __half2float(__float2half_rn(v));
}

// d[4] += A[16 x 16] B[16 x 8] on the tensor cores, fp32 accumulation.
template <int KIND>
__device__ inline void mma_16x8x16(float* d, const uint32_t* a, const uint32_t* b) {
#if !defined(__CUDACC__)
  simt::mma_m16n8k16<KIND>(d, a, b);
#else
  if constexpr (KIND == 1)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// persist_matmul on the tensor cores (mma.sync m16n8k16, sm_80+): a warp owns a tile of 16 rows of
// W x 8 batch rows and walks K in steps of 16. The operands sit in shared memory as float but hold
// values of the storage type, so the fragments convert exactly; only the summation order differs
// from persist_matmul. Fragment layouts: PTX ISA, "Matrix fragments for mma.m16n8k16" (g = lane / 4,
// q = lane % 4: A rows g, g + 8, columns 2q, 2q + 1, +8; B columns g, rows 2q, 2q + 1, +8; C rows
// g, g + 8, columns 2q, 2q + 1). Out-of-range rows, batch rows and k read as 0.
template <int KIND>
__device__ inline void persist_matmul_mma(const float* W, int R, const float* X, int nb, int K, float* out,
                                          int ldo) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int ntr = (R + 15) / 16, ntb = (nb + 7) / 8;
  for (int tile = warp; tile < ntr * ntb; tile += warps) {  // warp-uniform: every lane reaches the mma
    const int r0 = (tile % ntr) * 16, b0 = (tile / ntr) * 8;
    auto w = [&](int r, int k) { return r0 + r < R && k < K ? W[long(r0 + r) * K + k] : 0.f; };
    auto x = [&](int b, int k) { return b0 + b < nb && k < K ? X[long(b0 + b) * K + k] : 0.f; };
    float d[4] = {0.f, 0.f, 0.f, 0.f};
    for (int k0 = 0; k0 < K; k0 += 16) {
      const int k = k0 + 2 * q;
      const uint32_t a[4] = {mma_pack<KIND>(w(g, k), w(g, k + 1)), mma_pack<KIND>(w(g + 8, k), w(g + 8, k + 1)),
                             mma_pack<KIND>(w(g, k + 8), w(g, k + 9)),
                             mma_pack<KIND>(w(g + 8, k + 8), w(g + 8, k + 9))};
      const uint32_t b[2] = {mma_pack<KIND>(x(g, k), x(g, k + 1)), mma_pack<KIND>(x(g, k + 8), x(g, k + 9))};
      mma_16x8x16<KIND>(d, a, b);
    }
    for (int e = 0; e < 4; ++e) {
      const int r = r0 + g + (e >> 1) * 8, b = b0 + 2 * q + (e & 1);
      if (r < R && b < nb) out[long(b) * ldo + r] = mma_round<KIND>(d[e]);
    }
  }
}
#endif

// The recurrent product of the persistent kernels: on the tensor cores when `mma` says so (set by
// the launcher for bfloat16 / float16 with FUSEDRNN_PERSISTENT_MMA=1; sm_80+ builds and the
// emulator), else persist_matmul (float32, float64, older GPUs).
template <typename T, typename A>
__device__ inline void persist_product(int mma, const A* W, int R, const A* X, int nb, int K, A* out, int ldo,
                                       A* red) {
#if defined(FUSEDRNN_PERSIST_MMA)
  if constexpr (sizeof(T) == 2 && std::is_same<A, float>::value) {  // the half types only
    if (mma == 1) return persist_matmul_mma<1>(W, R, X, nb, K, out, ldo);
    if (mma == 2) return persist_matmul_mma<2>(W, R, X, nb, K, out, ldo);
  }
#endif
  (void)mma;
  if (R >= kPersistRowTile) persist_matmul<T, A, kPersistRowTile, kPersistBatchTile>(W, R, X, nb, K, out, ldo, red);
  else persist_matmul<T, A, 2, kPersistTile / 2>(W, R, X, nb, K, out, ldo, red);
}

// Mean and M2 (sum of squared deviations) of get(k), k < n, two-pass, one thread.
template <typename A, typename F>
__device__ inline void persist_local_moments(F get, int n, A* mean, A* m2) {
  A s = 0;
  for (int k = 0; k < n; ++k) s += get(k);
  const A m = s / A(n);
  A q = 0;
  for (int k = 0; k < n; ++k) {
    const A d = get(k) - m;
    q += d * d;
  }
  *mean = m;
  *m2 = q;
}

// Merges the per-CTA (mean, M2) of quantity q of row b (stride `width` per row) into mean, rstd,
// with Chan et al.'s pairwise update. Called by a whole warp: lanes split the CTAs, then merge
// through shuffles; every lane returns the result. count(c): values CTA c contributed.
template <typename A, typename F>
__device__ inline void persist_merge(const A* part, int B, int width, int b, int q, F count, A eps, A* mean,
                                     A* rstd) {
  A n = 0, m = 0, m2 = 0;
  for (int c = threadIdx.x & 31; c < int(gridDim.x); c += 32) {
    const A* pc = part + (long(c) * B + b) * width + 2 * q;
    const A nc = A(count(c)), mc = pc[0], m2c = pc[1];
    const A nn = n + nc, d = mc - m;
    m += d * nc / nn;
    m2 += m2c + d * d * n * nc / nn;
    n = nn;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const A no = __shfl_xor_sync(0xffffffffu, n, o), mo = __shfl_xor_sync(0xffffffffu, m, o);
    const A m2o = __shfl_xor_sync(0xffffffffu, m2, o);
    const A nn = n + no;
    if (nn > A(0)) {
      const A d = mo - m;
      m += d * no / nn;
      m2 += m2o + d * d * n * no / nn;
    }
    n = nn;
  }
  *mean = m;
  *rstd = A(1) / sqrt(m2 / n + eps);
}

// Sum over the CTAs of part[(c * B + b) * width + k], by a whole warp; every lane returns it.
template <typename A>
__device__ inline A persist_sum(const A* part, int B, int width, int b, int k) {
  A s = 0;
  for (int c = threadIdx.x & 31; c < int(gridDim.x); c += 32) s += part[(long(c) * B + b) * width + k];
  return warp_sum(s);
}

// dst[e] = A(src(e)) for e < n, by the whole block: the weight slices, and every step the rows
// other CTAs wrote (h_{t-1}, dhw_t). Each thread loads kPersistStageLoads elements into registers
// before it stores any, so its loads are in flight together instead of one round trip to L2 after
// another. The batches where every load is in range have no bounds checks: with them ptxas
// moved stores up between the loads (sm_90 SASS: as few as 2 loads before the first store);
// the last, partial batch checks each element.
constexpr int kPersistStageLoads = 16;
template <typename A, typename Src>
__device__ inline void persist_stage(A* dst, long n, Src src) {
  const long nthr = blockDim.x;
  long base = threadIdx.x;
  for (; base + (kPersistStageLoads - 1) * nthr < n; base += kPersistStageLoads * nthr) {
    A v[kPersistStageLoads];
    for (int i = 0; i < kPersistStageLoads; ++i) v[i] = A(src(base + i * nthr));
    for (int i = 0; i < kPersistStageLoads; ++i) dst[base + i * nthr] = v[i];
  }
  if (base < n) {
    A v[kPersistStageLoads];
    for (int i = 0; i < kPersistStageLoads; ++i) {
      const long e = base + i * nthr;
      v[i] = e < n ? A(src(e)) : A(0);
    }
    for (int i = 0; i < kPersistStageLoads; ++i) {
      const long e = base + i * nthr;
      if (e < n) dst[e] = v[i];
    }
  }
}

// Calls f(std::integral_constant<int, NORM>{}) for the runtime norm: the persistent kernels are
// instantiated for all four norms, and every launcher (persistent_launch.h, the TSan test)
// picks the instantiation this way.
template <typename F>
inline auto with_persist_norm(int norm, F&& f) {
  switch (norm) {
    case kNormLayer: return f(std::integral_constant<int, kNormLayer>{});
    case kNormLayerPerGate: return f(std::integral_constant<int, kNormLayerPerGate>{});
    case kNormBatch: return f(std::integral_constant<int, kNormBatch>{});
    default: return f(std::integral_constant<int, kNormNone>{});
  }
}

template <typename T, int NORM>
__global__ void __launch_bounds__(256) persistent_lstm_fwd_kernel(PersistentLstmFwd<T> p) {
  using A = typename AccOf<T>::type;
  SIMT_DYNAMIC_SHARED(A, smem);
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const LstmFlags fl = lstm_flags(p.variant);
  const int H = p.hidden, B = p.batch, G = fl.num_gates, GH = G * H, U = p.units;
  const int j0 = blockIdx.x * U, nu = H - j0 < U ? H - j0 : U;  // this CTA's units [j0, j0 + nu)
  const int R = G * nu, RF = fl.fgr ? 3 * nu : 0;
  const int tid = threadIdx.x, nthr = blockDim.x, lane = tid & 31, warp = tid >> 5, warps = nthr >> 5;
  const A eps = A(p.eps);
  constexpr bool kRowNorm = NORM == kNormLayer || NORM == kNormLayerPerGate;
  const int NQ = persist_row_quantities<NORM>(G), PW = 2 * (NQ + 1);  // partials per row
  const PersistSmem L = persist_smem(NORM, fl.fgr, G, H, B, U, p.chunk, nthr >> 5);
  A* w_s = smem;              // [G * nu, H]   row q * nu + jj = W_hh row q * H + j0 + jj
  A* wf_s = w_s + L.w;        // [3 * nu, 3H]  row k * nu + jj = W_fgr row k * H + j0 + jj
  A* x_s = wf_s + L.wf;       // [chunk, H]    staged h_{t-1}
  A* xa_s = x_s + L.x;        // [chunk, 3H]   staged a_{t-1}
  A* hw_s = xa_s + L.xa;      // [B, G * U]    h_{t-1} W_hh^T of the slice
  A* fg_s = hw_s + L.hw;      // [B, 3 * U]    a_{t-1} W_fgr^T of the slice
  A* c_s = fg_s + L.fg;       // [B, U]        c of the slice (storage-rounded)
  A* rows_s = c_s + L.c;      // [B, NQ + 1, 2] merged (mean, rstd) of the row norms, last = cell
  A* cols_s = rows_s + L.rows;  // batch: [2, 2, G * U] (mean, rstd) of ih, hh columns; [2, U] cell
  A* red_s = cols_s + L.cols;   // matmul reduction scratch
  auto count_gates = [&](int c) {  // values of the gate row norm that CTA c holds
    const int n = H - c * U < U ? H - c * U : U;
    return NORM == kNormLayer ? G * n : n;
  };
  auto count_units = [&](int c) { return H - c * U < U ? H - c * U : U; };

  persist_stage<A>(w_s, long(R) * H, [&](long e) {
    const int r = int(e / H), k = int(e % H), q = r / nu, jj = r % nu;
    return p.w_hh[(long(q) * H + j0 + jj) * H + k];
  });
  persist_stage<A>(wf_s, long(RF) * 3 * H, [&](long e) {
    const int r = int(e / (3 * H)), k = int(e % (3 * H)), q = r / nu, jj = r % nu;
    return p.w_fgr[(long(q) * H + j0 + jj) * 3 * H + k];
  });
  for (int e = tid; e < B * nu; e += nthr) {
    const int b = e / nu, jj = e % nu;
    c_s[b * U + jj] = A(p.c0[long(b) * H + j0 + jj]);
  }
  __syncthreads();

  for (int t = 0; t < p.steps; ++t) {
    const T* h_prev = t == 0 ? p.h0 : p.hbuf + long((t - 1) & 1) * B * H;
    T* h_next = p.hbuf + long(t & 1) * B * H;
    const T* a_prev = !fl.fgr ? nullptr : t == 0 ? p.a0 : p.abuf + long((t - 1) & 1) * B * 3 * H;
    T* a_next = fl.fgr ? p.abuf + long(t & 1) * B * 3 * H : nullptr;
    const T* xw = p.xw + long(t) * B * GH;
    T* xw_out = p.xw + long(t) * B * GH;
    A* st = p.stats ? p.stats + long(t) * (NORM == kNormBatch ? 2L * (2 * GH + H)
                                                                : long(B) * (NORM == kNormLayer ? 6 : 2 * G + 2))
                    : nullptr;
    const int slot = p.t0 + t < p.slots - 1 ? p.t0 + t : p.slots - 1;

    // 1. recurrent products of the slice, chunk by chunk of batch rows
    for (int b0 = 0; b0 < B; b0 += p.chunk) {
      const int nb = B - b0 < p.chunk ? B - b0 : p.chunk;
      persist_stage<A>(x_s, long(nb) * H, [&](long e) { return h_prev[long(b0) * H + e]; });
      if (fl.fgr) persist_stage<A>(xa_s, long(nb) * 3 * H, [&](long e) { return a_prev[long(b0) * 3 * H + e]; });
      __syncthreads();
      persist_product<T, A>(p.mma, w_s, R, x_s, nb, H, hw_s + long(b0) * G * U, G * U, red_s);
      if (fl.fgr) persist_product<T, A>(p.mma, wf_s, RF, xa_s, nb, 3 * H, fg_s + long(b0) * 3 * U, 3 * U, red_s);
      __syncthreads();
    }
    auto xv = [&](int b, int q, int jj) { return A(xw[long(b) * GH + long(q) * H + j0 + jj]); };
    auto hv = [&](int b, int q, int jj) { return hw_s[long(b) * G * U + q * nu + jj]; };
    auto active = [&](int b) { return p.lengths == nullptr || t < p.lengths[b]; };

    // 2. statistics of the gate normalization
    if (NORM == kNormLayer || NORM == kNormBatch)
      for (int e = tid; e < B * R; e += nthr) {
        const int b = e / R, r = e % R, q = r / nu, jj = r % nu;
        p.hw[long(t) * B * GH + long(b) * GH + long(q) * H + j0 + jj] = T(hw_s[long(b) * G * U + r]);
      }
    if (kRowNorm) {
      for (int b = tid; b < B; b += nthr) {
        A* pb = p.part + (long(blockIdx.x) * B + b) * PW;
        if (NORM == kNormLayer) {
          persist_local_moments<A>([&](int k) { return xv(b, k / nu, k % nu); }, R, &pb[0], &pb[1]);
          persist_local_moments<A>([&](int k) { return hv(b, k / nu, k % nu); }, R, &pb[2], &pb[3]);
        } else {
          for (int q = 0; q < G; ++q)
            persist_local_moments<A>([&](int k) { return xv(b, q, k) + hv(b, q, k); }, nu, &pb[2 * q],
                                     &pb[2 * q + 1]);
        }
      }
      grid.sync();
      for (int b = warp; b < B; b += warps)  // warp-uniform: the merge shuffles
        for (int q = 0; q < NQ; ++q) {
          A mean, rstd;
          persist_merge<A>(p.part, B, PW, b, q, count_gates, eps, &mean, &rstd);
          if (lane == 0) {
            rows_s[(b * (NQ + 1) + q) * 2] = mean;
            rows_s[(b * (NQ + 1) + q) * 2 + 1] = rstd;
          }
        }
    }
    if (NORM == kNormBatch) {
      const long NB = 2L * GH + H;
      for (int r = warp; r < R; r += warps) {  // warp-uniform: a warp per column, its lanes split the batch
        const int q = r / nu, jj = r % nu;
        const long col = long(q) * H + j0 + jj;
        A m_ih, v_ih, m_hh, v_hh;
        if (p.training) {
          A s1 = 0, s2 = 0;
          int n = 0;
          for (int b = lane; b < B; b += 32)
            if (active(b)) { s1 += xv(b, q, jj); s2 += hv(b, q, jj); ++n; }
          s1 = warp_sum(s1); s2 = warp_sum(s2); n = warp_sum(n);
          m_ih = n ? s1 / A(n) : A(0);
          m_hh = n ? s2 / A(n) : A(0);
          A q1 = 0, q2 = 0;
          for (int b = lane; b < B; b += 32)
            if (active(b)) {
              const A d1 = xv(b, q, jj) - m_ih, d2 = hv(b, q, jj) - m_hh;
              q1 += d1 * d1;
              q2 += d2 * d2;
            }
          q1 = warp_sum(q1); q2 = warp_sum(q2);
          v_ih = n ? q1 / A(n) : A(0);
          v_hh = n ? q2 / A(n) : A(0);
        } else {
          m_ih = A(p.rm_ih[long(slot) * GH + col]); v_ih = A(p.rv_ih[long(slot) * GH + col]);
          m_hh = A(p.rm_hh[long(slot) * GH + col]); v_hh = A(p.rv_hh[long(slot) * GH + col]);
        }
        if (lane == 0) {
          st[col] = m_ih; st[NB + col] = v_ih;
          st[GH + col] = m_hh; st[NB + GH + col] = v_hh;
          cols_s[r] = m_ih; cols_s[G * U + r] = A(1) / sqrt(v_ih + eps);
          cols_s[2 * G * U + r] = m_hh; cols_s[3 * G * U + r] = A(1) / sqrt(v_hh + eps);
        }
      }
    }
    __syncthreads();

    // 3a. gates and c_t of every (row, unit) of the slice
    for (int e = tid; e < B * nu; e += nthr) {
      const int b = e / nu, jj = e % nu, j = j0 + jj;
      const bool act_b = active(b);
      A pre[4];
      for (int q = 0; q < G; ++q) {
        const long col = long(q) * H + j;
        const A x = xv(b, q, jj), h = hv(b, q, jj);
        A v;
        if (NORM == kNormNone) {
          v = x + h;
        } else if (NORM == kNormLayerPerGate) {
          const A* rs = &rows_s[(b * (NQ + 1) + q) * 2];
          v = (x + h - rs[0]) * rs[1] * A(p.g_gates[col]) + A(p.b_gates[col]);
          xw_out[long(b) * GH + col] = T(x + h);
        } else if (NORM == kNormLayer) {
          const A* rs = &rows_s[b * (NQ + 1) * 2];
          v = (x - rs[0]) * rs[1] * A(p.g_ih[col]) + (h - rs[2]) * rs[3] * A(p.g_hh[col]);
        } else {
          const int r = q * nu + jj;
          v = (x - cols_s[r]) * cols_s[G * U + r] * A(p.g_ih[col]) +
              (h - cols_s[2 * G * U + r]) * cols_s[3 * G * U + r] * A(p.g_hh[col]);
        }
        if (NORM != kNormLayerPerGate) v += ld_or<T, A>(p.b_ih, col, A(0)) + ld_or<T, A>(p.b_hh, col, A(0));
        pre[q] = v;
      }
      if (fl.fgr) {
        const A* fg = fg_s + long(b) * 3 * U;
        pre[fl.gi] += fg[jj];
        pre[fl.gf] += fg[nu + jj];
        pre[fl.go] += fg[2 * nu + jj];
      }
      const A c_prev = c_s[b * U + jj];
      const A pi = fl.pi >= 0 ? A(p.w_peep[long(fl.pi) * H + j]) : A(0);
      const A pf = fl.pf >= 0 ? A(p.w_peep[long(fl.pf) * H + j]) : A(0);
      const A po = fl.po >= 0 ? A(p.w_peep[long(fl.po) * H + j]) : A(0);
      A i, f, g, o, c;
      lstm_cell_fwd<A>(fl, fl.gi >= 0 ? pre[fl.gi] : A(0), fl.gf >= 0 ? pre[fl.gf] : A(0), pre[fl.gg],
                       fl.go >= 0 ? pre[fl.go] : A(0), c_prev, pi, pf, po, &i, &f, &g, &o, &c);
      T* act = p.acts + long(t) * B * GH + long(b) * GH + j;
      if (fl.gi >= 0) act[long(fl.gi) * H] = T(i);
      if (fl.gf >= 0) act[long(fl.gf) * H] = T(f);
      act[long(fl.gg) * H] = T(g);
      if (fl.go >= 0) act[long(fl.go) * H] = T(o);
      const T c_store = act_b ? T(c) : T(c_prev);
      p.cs[long(t) * B * H + long(b) * H + j] = c_store;
      c_s[b * U + jj] = A(c_store);
      if (fl.fgr) {
        const long r = long(b) * 3 * H + j;
        a_next[r] = act_b ? T(i) : a_prev[r];
        a_next[r + H] = act_b ? T(f) : a_prev[r + H];
        a_next[r + 2 * H] = act_b ? T(o) : a_prev[r + 2 * H];
      }
    }
    __syncthreads();

    // 3b. statistics of the cell norm (padded rows hold the carried c, as in the per-step path)
    if (kRowNorm) {
      for (int b = tid; b < B; b += nthr) {
        A* pb = p.part + (long(blockIdx.x) * B + b) * PW + 2 * NQ;
        persist_local_moments<A>([&](int k) { return c_s[b * U + k]; }, nu, &pb[0], &pb[1]);
      }
      grid.sync();
      for (int b = warp; b < B; b += warps) {
        A* rs = &rows_s[(b * (NQ + 1) + NQ) * 2];
        A mean, rstd;
        persist_merge<A>(p.part, B, PW, b, NQ, count_units, eps, &mean, &rstd);
        if (lane == 0) {
          rs[0] = mean;
          rs[1] = rstd;
          if (blockIdx.x == 0) {  // the row statistics record of the step (row b's rows_s: this lane's)
            A* sb = st + long(b) * (NORM == kNormLayer ? 6 : 2 * G + 2);
            for (int q = 0; q <= NQ; ++q) {
              sb[2 * q] = rows_s[(b * (NQ + 1) + q) * 2];
              sb[2 * q + 1] = rows_s[(b * (NQ + 1) + q) * 2 + 1];
            }
          }
        }
      }
    }
    if (NORM == kNormBatch) {
      const long NB = 2L * GH + H;
      for (int jj = warp; jj < nu; jj += warps) {  // warp-uniform, as the gate statistics
        const int j = j0 + jj;
        A mc, vc;
        if (p.training) {
          A s = 0;
          int n = 0;
          for (int b = lane; b < B; b += 32)
            if (active(b)) { s += c_s[b * U + jj]; ++n; }
          s = warp_sum(s); n = warp_sum(n);
          mc = n ? s / A(n) : A(0);
          A q = 0;
          for (int b = lane; b < B; b += 32)
            if (active(b)) { const A d = c_s[b * U + jj] - mc; q += d * d; }
          q = warp_sum(q);
          vc = n ? q / A(n) : A(0);
        } else {
          mc = A(p.rm_cell[long(slot) * H + j]);
          vc = A(p.rv_cell[long(slot) * H + j]);
        }
        if (lane == 0) {
          st[2L * GH + j] = mc;
          st[NB + 2L * GH + j] = vc;
          cols_s[4 * G * U + jj] = mc;
          cols_s[4 * G * U + U + jj] = A(1) / sqrt(vc + eps);
        }
      }
    }
    __syncthreads();

    // 3c. h_t
    for (int e = tid; e < B * nu; e += nthr) {
      const int b = e / nu, jj = e % nu, j = j0 + jj;
      const long bj = long(b) * H + j;
      const A o = fl.go >= 0 ? A(p.acts[long(t) * B * GH + long(b) * GH + long(fl.go) * H + j]) : A(1);
      const A c = c_s[b * U + jj];
      A cn = c;
      if (kRowNorm) {
        const A* rs = &rows_s[(b * (NQ + 1) + NQ) * 2];
        cn = (c - rs[0]) * rs[1] * A(p.g_cell[j]) + A(p.b_cell[j]);
      } else if (NORM == kNormBatch) {
        cn = (c - cols_s[4 * G * U + jj]) * cols_s[4 * G * U + U + jj] * A(p.g_cell[j]) + A(p.b_cell[j]);
      }
      const A h = lstm_out_fwd<A>(fl, o, cn);
      const bool act_b = active(b);
      p.y[long(t) * B * H + bj] = act_b ? T(h) : T(0);
      h_next[bj] = act_b ? T(h) : h_prev[bj];
    }
    // 4. h_t (and a_t) of every CTA visible before the next step's products
    if (t + 1 < p.steps) grid.sync();
  }
}

// ----------------------------------------------------------------------------- planning

// How the persistent kernel would run a layer on a device, or why it cannot.
struct PersistPlan {
  bool fits = false;
  int blocks = 0, units = 0, threads = 0, chunk = 0;
  long smem_bytes = 0;
  const char* why = "";
};

// Units per CTA: spread H over at most `sms` CTAs (one per SM). Batch rows staged at once:
// as many as fit next to the weights, up to B. `acc_bytes`: sizeof(A). `smem_of(units, chunk)`
// gives the shared-memory element count of the kernel being planned (forward or backward).
template <typename SmemOf>
inline PersistPlan persist_search(int H, int B, int sms, long smem_max, int threads, int acc_bytes,
                                  SmemOf smem_of) {
  PersistPlan plan;
  plan.threads = threads;
  if (sms < 1 || H < 1 || B < 1) { plan.why = "empty problem or no SMs"; return plan; }
  plan.units = (H + sms - 1) / sms;
  plan.blocks = (H + plan.units - 1) / plan.units;
  for (int chunk = B;; chunk = (chunk + 1) / 2) {
    const long bytes = smem_of(plan.units, chunk) * acc_bytes;
    if (bytes <= smem_max) {
      plan.chunk = chunk;
      plan.smem_bytes = bytes;
      plan.fits = true;
      return plan;
    }
    if (chunk <= 1) break;
  }
  plan.why = "the weight slice does not fit in shared memory";
  return plan;
}

inline PersistPlan persist_plan(int norm, bool fgr, int G, int H, int B, int sms, long smem_max, int threads,
                                int acc_bytes) {
  return persist_search(H, B, sms, smem_max, threads, acc_bytes, [&](int units, int chunk) {
    return long(persist_smem(norm, fgr, G, H, B, units, chunk, threads / 32).total);
  });
}

}  // namespace cuda
}  // namespace fusedrnn
