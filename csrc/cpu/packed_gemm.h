// fusedrnn's own packed float32 GEMM for the per-step recurrent products on AVX-512 CPUs:
// out[M, N] (+)= a[M, K] B, B [K, N] given as a slice of W (forward: B = W[lo:hi, :]^T; backward:
// B = W[:, lo:hi]), packed once per layer call into panels of 48 columns, k-major, so that a
// step streams each panel once per 8 rows of a.
//
// Why: the recurrent product of a step is a skinny GEMM (M = the batch, 16-100 rows) against a
// fixed weight. MKL's packed sgemm (cblas_sgemm_compute) reaches 57-68 GFLOP/s per thread on such
// shapes on this machine's AMD EPYC (Zen 4), where MKL runs its AVX2 kernels; this kernel's 8 x 48
// register tile (24 zmm accumulators, 3 panel loads and 8 broadcasts per 24 FMAs) reaches 91-102
// (standalone, one thread: M x K x N = 20 x 650 x 1300 (PTB-like LSTM step, one member's columns)
// 57 -> 97, 32 x 512 x 1024 64 -> 99, 100 x 128 x 512 68 -> 96). Same products, other summation
// order (plain k order, one FMA chain per output element), so results differ from MKL's in the
// last bits.
//
// Compiled with a function-level target attribute (no -march for the build) and used only when
// the CPU reports AVX-512F (with the OS's zmm state, which __builtin_cpu_supports checks);
// elsewhere RecurrentGemm keeps MKL's packed GEMM. FUSEDRNN_PACKED_GEMM=mkl forces MKL's (tests).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define FUSEDRNN_HAS_AVX512_KERNEL 1
#define FUSEDRNN_AVX512_TARGET __attribute__((target("avx512f")))
#else
#define FUSEDRNN_HAS_AVX512_KERNEL 0
#endif

namespace fusedrnn {
namespace cpu {

inline bool cpu_has_avx512() {
#if FUSEDRNN_HAS_AVX512_KERNEL
  static const bool v = __builtin_cpu_supports("avx512f");
  return v;
#else
  return false;
#endif
}

#if FUSEDRNN_HAS_AVX512_KERNEL
namespace avx512 {

constexpr int kNR = 48;  // panel width: 3 zmm of float32
constexpr int kMR = 8;   // rows per register tile

// c[MR, <= 48] (+)= a[MR, K] p[K, 48]; columns past the panel's width are masked (m0, m1, m2).
template <int MR>
FUSEDRNN_AVX512_TARGET inline void tile(const float* __restrict a, int64_t lda, const float* __restrict p,
                                        int64_t K, float* __restrict c, int64_t ldc, __mmask16 m0, __mmask16 m1,
                                        __mmask16 m2, bool accumulate) {
  __m512 r0[MR], r1[MR], r2[MR];
  for (int i = 0; i < MR; ++i) {
    if (accumulate) {
      r0[i] = _mm512_maskz_loadu_ps(m0, c + i * ldc);
      r1[i] = _mm512_maskz_loadu_ps(m1, c + i * ldc + 16);
      r2[i] = _mm512_maskz_loadu_ps(m2, c + i * ldc + 32);
    } else {
      r0[i] = r1[i] = r2[i] = _mm512_setzero_ps();
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    const __m512 w0 = _mm512_loadu_ps(p + k * kNR), w1 = _mm512_loadu_ps(p + k * kNR + 16),
                 w2 = _mm512_loadu_ps(p + k * kNR + 32);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 x = _mm512_set1_ps(a[i * lda + k]);
      r0[i] = _mm512_fmadd_ps(x, w0, r0[i]);
      r1[i] = _mm512_fmadd_ps(x, w1, r1[i]);
      r2[i] = _mm512_fmadd_ps(x, w2, r2[i]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    _mm512_mask_storeu_ps(c + i * ldc, m0, r0[i]);
    _mm512_mask_storeu_ps(c + i * ldc + 16, m1, r1[i]);
    _mm512_mask_storeu_ps(c + i * ldc + 32, m2, r2[i]);
  }
}

inline __mmask16 lanes(int64_t width, int offset) {
  const int64_t q = width - offset;
  return q <= 0 ? __mmask16(0) : q >= 16 ? __mmask16(0xffff) : __mmask16((1u << q) - 1);
}

// out[M, N] (+)= a[M, K] P, P packed by PackedPanels::pack.
FUSEDRNN_AVX512_TARGET inline void gemm(const float* a, int64_t lda, int64_t M, const float* packed, int64_t K,
                                        int64_t N, float* c, int64_t ldc, bool accumulate) {
  for (int64_t p0 = 0; p0 < N; p0 += kNR) {
    const float* p = packed + p0 * K;  // panel p0 / 48 starts at (p0 / 48) * K * 48 floats
    const int64_t w = std::min<int64_t>(kNR, N - p0);
    const __mmask16 m0 = lanes(w, 0), m1 = lanes(w, 16), m2 = lanes(w, 32);
    int64_t i = 0;
    for (; i + kMR <= M; i += kMR) tile<kMR>(a + i * lda, lda, p, K, c + i * ldc + p0, ldc, m0, m1, m2, accumulate);
    const float* ai = a + i * lda;
    float* ci = c + i * ldc + p0;
    switch (M - i) {
      case 7: tile<7>(ai, lda, p, K, ci, ldc, m0, m1, m2, accumulate); break;
      case 6: tile<6>(ai, lda, p, K, ci, ldc, m0, m1, m2, accumulate); break;
      case 5: tile<5>(ai, lda, p, K, ci, ldc, m0, m1, m2, accumulate); break;
      case 4: tile<4>(ai, lda, p, K, ci, ldc, m0, m1, m2, accumulate); break;
      case 3: tile<3>(ai, lda, p, K, ci, ldc, m0, m1, m2, accumulate); break;
      case 2: tile<2>(ai, lda, p, K, ci, ldc, m0, m1, m2, accumulate); break;
      case 1: tile<1>(ai, lda, p, K, ci, ldc, m0, m1, m2, accumulate); break;
      default: break;
    }
  }
}

}  // namespace avx512
#endif

// A float32 weight slice packed for fusedrnn's AVX-512 kernel: B [K, N] with
// B[k, j] = w[(lo + j) * ldw + k] (transposed: B = W[lo:lo+N, :]^T) or w[k * ldw + lo + j].
// Panels of 48 columns, each [K, 48] row-major, the last one zero-padded.
class PackedPanels {
 public:
  PackedPanels() = default;
  PackedPanels(const float* w, int64_t ldw, bool transposed, int64_t lo, int64_t N, int64_t K,
               const at::TensorOptions& opts)
      : N_(N), K_(K) {
#if FUSEDRNN_HAS_AVX512_KERNEL
    constexpr int64_t NR = avx512::kNR;
    const int64_t panels = (N + NR - 1) / NR;
    buf_ = at::empty({panels * K * NR}, opts.dtype(at::kFloat));
    float* dst = buf_.data_ptr<float>();
    for (int64_t q = 0; q < panels; ++q)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < NR; ++j) {
          const int64_t col = q * NR + j;
          dst[(q * K + k) * NR + j] =
              col >= N ? 0.0f : transposed ? w[(lo + col) * ldw + k] : w[k * ldw + lo + col];
        }
#else
    (void)w; (void)ldw; (void)transposed; (void)lo; (void)opts;
#endif
  }

  // out[M, N] (+)= a[M, K] B; a row-major with leading dimension lda, out with ldc.
  void run(const float* a, int64_t lda, int64_t M, float* out, int64_t ldc, bool accumulate) const {
#if FUSEDRNN_HAS_AVX512_KERNEL
    avx512::gemm(a, lda, M, buf_.data_ptr<float>(), K_, N_, out, ldc, accumulate);
#else
    (void)a; (void)lda; (void)M; (void)out; (void)ldc; (void)accumulate;
#endif
  }

 private:
  at::Tensor buf_;
  int64_t N_ = 0, K_ = 0;
};

}  // namespace cpu
}  // namespace fusedrnn
