// The large GEMMs around the time loop: the input projection x W_ih^T before it; dx and the
// weight gradients after it, or the weight gradients step by step in it (StepWeightGrads).
//
// float32 on AVX-512 CPUs: fusedrnn's packed kernel (packed_gemm.h) on a thread team of
// single-threaded members, which pack their share of B's panels, meet at one barrier, then
// each computes its own panels (or, when B has too few panels to share, its own rows of the
// output). Measured on this 2-core EPYC, 700 x 650 x 2600 and 3200 x 256 x 1024, three runs
// (benchmarks/results/cpu-20261203-avx512/gemm_kernels.sh): MKL's sgemm (torch.mm) 71-89 GFLOP/s
// on one thread, 121-135 on two; oneDNN's 158-191 on two; the packed kernel 90-97 on one thread,
// and its members do not share anything but the packed operands. Elsewhere
// (float64, no AVX-512, FUSEDRNN_PACKED_GEMM other than 1, fewer than 16 output columns, small
// products) ATen's mm.
#pragma once

#include <ATen/ATen.h>

#include "packed_gemm.h"
#include "pool.h"
#include "team.h"

namespace fusedrnn {
namespace cpu {

// out[M, N] = a[M, K] b[K, N] (+ bias[N] on every row); a and b of any strides, out contiguous,
// bias (float32) [N].
inline void gemm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor* bias = nullptr) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  const int64_t n = team_members(M * K * N);
#if FUSEDRNN_HAS_AVX512_KERNEL
  const bool own = out.scalar_type() == at::kFloat && mkl::own_kernel_available() && N >= 16 && K >= 1 && M >= 1 &&
                   M * K * N >= (int64_t(1) << 16);
#else
  const bool own = false;
#endif
  if (!own) {
    if (bias) at::addmm_out(out, *bias, a, b);
    else at::mm_out(out, a, b);
    return;
  }
#if FUSEDRNN_HAS_AVX512_KERNEL
  const int64_t P = avx512::panels(N), tiles = avx512::row_tiles(M);
  at::Tensor packed = cached_empty({P * avx512::kNR * K}, out.options());
  float* pk = packed.data_ptr<float>();
  // a with contiguous rows is read in place; other strides (dG^T) are packed by row tiles
  const bool a_rows = a.stride(1) == 1;
  at::Tensor a_packed = a_rows ? at::Tensor() : cached_empty({M * K}, out.options());
  float* apk = a_rows ? nullptr : a_packed.data_ptr<float>();
  float* c = out.data_ptr<float>();
  const float *ap = a.data_ptr<float>(), *bp = b.data_ptr<float>();
  const at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();
  const float* biasp = bias ? bias_c.data_ptr<float>() : nullptr;
  const int64_t sa = a.stride(0), sk = a.stride(1), bk = b.stride(0), bn = b.stride(1), ldc = out.stride(0);
  const float* a_in = a_rows ? ap : apk;
  const int64_t lda = a_rows ? sa : 0;
  // members take panels or row tiles, whichever split evens their work out better (a 12-column
  // tail panel costs a 16-column one): row MNIST's weight gradients, N = 156 in panels of 3, 3, 3
  // and 1 zmm, split 6 | 4 by panels, 32 | 32 tiles by rows
  auto balance = [&](int64_t parts, auto weight) {
    int64_t total = 0, most = 0;
    for (int64_t m = 0; m < n; ++m) {
      const auto [lo, hi] = split(parts, n, m);
      int64_t w = 0;
      for (int64_t q = lo; q < hi; ++q) w += weight(q);
      total += w;
      most = std::max(most, w);
    }
    return double(total) / double(n * std::max<int64_t>(most, 1));
  };
  const bool by_panels =
      balance(P, [&](int64_t q) { return (std::min<int64_t>(avx512::kNR, N - q * avx512::kNR) + 15) / 16; }) >=
      balance(tiles, [&](int64_t q) { return avx512::tile_start(M, q + 1) - avx512::tile_start(M, q); });
  run_team(n, [&](Team& team) {
    team.each_part(P, [&](int64_t, int64_t q0, int64_t q1) { avx512::pack(bp, bk, bn, K, N, q0, q1, pk); });
    if (!a_rows)
      team.each_part(tiles, [&](int64_t, int64_t q0, int64_t q1) { avx512::pack_a(ap, sa, sk, M, K, q0, q1, apk); });
    team.barrier();
    if (by_panels) {
      team.each_part(P, [&](int64_t, int64_t q0, int64_t q1) {
        if (q1 > q0)
          avx512::gemm(a_in, lda, M, 0, tiles, pk, K, q0 * avx512::kNR, std::min(N, q1 * avx512::kNR), c, ldc, false,
                       biasp);
      });
    } else {
      team.each_part(tiles, [&](int64_t, int64_t q0, int64_t q1) {
        if (q1 > q0) avx512::gemm(a_in, lda, M, q0, q1, pk, K, 0, N, c, ldc, false, biasp);
      });
    }
  });
#endif
}

// Weight gradients accumulated step by step inside a time loop whose members own batch rows:
// member m adds dG^T X for its rows of the step (dG [rows, M], X [rows, N_j], both row-major)
// into its own accumulators C_j [M, N_j], while dG's rows are still in its cache; total(j) sums
// the members' after the loop. set_dg packs dG^T once for the products that share it. float32
// with fusedrnn's AVX-512 kernel only (available()); elsewhere the weight gradients stay GEMMs
// after the loop (common.h weight_grads). The gate gradients then need no [T, B, 4H] buffer
// written in the loop and read back (and packed, transposed) after it. Measured on the LSTM
// backward, fwd+bwd alternating with a temporary switch to the GEMMs after the loop, median of
// 21: row MNIST LSTM / LN / BN 11.88 / 15.97 / 18.78 ms against 12.15 / 16.56 / 19.27, pixel
// MNIST 117.4 / 171.9 / 187.5 against 121.9 / 181.3 / 194.6.
class StepWeightGrads {
 public:
  static bool available(at::ScalarType dt) {
#if FUSEDRNN_HAS_AVX512_KERNEL
    return dt == at::kFloat && mkl::own_kernel_available();
#else
    (void)dt;
    return false;
#endif
  }

  StepWeightGrads(int64_t members, int64_t M, std::vector<int64_t> N, int64_t max_rows, const at::TensorOptions& opts)
      : M_(M), N_(std::move(N)), max_rows_(max_rows) {
#if FUSEDRNN_HAS_AVX512_KERNEL
    const auto f32 = opts.dtype(at::kFloat);
    a_ = at::empty({members, M * max_rows}, f32);
    int64_t widest = 0;
    for (int64_t n : N_) {
      acc_.push_back(at::zeros({members, M, n}, f32));
      widest = std::max(widest, avx512::panels(n) * avx512::kNR);
    }
    b_ = at::empty({members, widest * max_rows}, f32);
#else
    (void)members; (void)opts;
#endif
  }

  // Member m's dG rows of this step: dG(r, i) = dg[r * ldg + i], r < rows <= max_rows.
  void set_dg(int64_t m, const float* dg, int64_t ldg, int64_t rows) {
    TORCH_CHECK(rows <= max_rows_, "fusedrnn: StepWeightGrads: ", rows, " rows, sized for ", max_rows_);
#if FUSEDRNN_HAS_AVX512_KERNEL
    if (rows > 0) avx512::pack_a(dg, 1, ldg, M_, rows, 0, avx512::row_tiles(M_), a_.data_ptr<float>() + m * a_.size(1));
#else
    (void)m; (void)dg; (void)ldg;
#endif
  }

  // C_j[m] += dG^T X, X(r, k) = x[r * ldx + k], for the rows of member m's last set_dg.
  void add(int64_t m, size_t j, const float* x, int64_t ldx, int64_t rows) {
#if FUSEDRNN_HAS_AVX512_KERNEL
    if (rows == 0) return;
    const int64_t N = N_[j];
    float* pk = b_.data_ptr<float>() + m * b_.size(1);
    avx512::pack(x, ldx, 1, rows, N, 0, avx512::panels(N), pk);
    avx512::gemm(a_.data_ptr<float>() + m * a_.size(1), 0, M_, 0, avx512::row_tiles(M_), pk, rows, 0, N,
                 acc_[j].data_ptr<float>() + m * M_ * N, N, /*accumulate=*/true);
#else
    (void)m; (void)j; (void)x; (void)ldx; (void)rows;
#endif
  }

  at::Tensor total(size_t j) const { return acc_[j].sum(0); }
  int64_t max_rows() const { return max_rows_; }

 private:
  int64_t M_;
  std::vector<int64_t> N_;
  int64_t max_rows_;
  at::Tensor a_, b_;
  std::vector<at::Tensor> acc_;
};

// a @ b into a cached buffer (pool.h).
inline at::Tensor cached_mm(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = cached_empty({a.size(0), b.size(1)}, a.options());
  gemm_out(out, a, b);
  return out;
}

}  // namespace cpu
}  // namespace fusedrnn
