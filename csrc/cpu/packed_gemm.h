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

constexpr int kNR = 48;    // panel width: 3 zmm of float32 (the last panel: 16 x NV columns)
constexpr int kMR = 8;     // rows per register tile
constexpr int64_t kKC = 512;  // k block: a panel's block (96 KiB) stays in L2 over all row tiles

// c[MR, <= 16 NV] (+)= a[MR, K] p[K, 16 NV] (+ bias on every row, when not accumulating);
// a(i, k) = a[i * sa + k * sk]; columns past the panel's width are masked (m[v]).
template <int MR, int NV>
FUSEDRNN_AVX512_TARGET inline void tile(const float* __restrict a, int64_t sa, int64_t sk,
                                        const float* __restrict p, int64_t ldp, int64_t K, float* __restrict c,
                                        int64_t ldc, const __mmask16* m, bool accumulate, const float* bias) {
  __m512 r[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v)
      r[i][v] = accumulate ? _mm512_maskz_loadu_ps(m[v], c + i * ldc + 16 * v)
                : bias     ? _mm512_maskz_loadu_ps(m[v], bias + 16 * v)
                           : _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 w[NV];
    for (int v = 0; v < NV; ++v) w[v] = _mm512_loadu_ps(p + k * ldp + 16 * v);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 x = _mm512_set1_ps(a[i * sa + k * sk]);
      for (int v = 0; v < NV; ++v) r[i][v] = _mm512_fmadd_ps(x, w[v], r[i][v]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(c + i * ldc + 16 * v, m[v], r[i][v]);
}

inline __mmask16 lanes(int64_t width, int offset) {
  const int64_t q = width - offset;
  return q <= 0 ? __mmask16(0) : q >= 16 ? __mmask16(0xffff) : __mmask16((1u << q) - 1);
}

// Rows [0, M) of one panel block in ceil(M / 8) tiles of near-equal height (50 rows: 7 x 7 + 8,
// not 6 x 8 + 2: a short tile streams the panel block for few FMAs).
template <int NV>
FUSEDRNN_AVX512_TARGET inline void panel_rows(const float* a, int64_t sa, int64_t sk, int64_t M, const float* p,
                                              int64_t K, float* c, int64_t ldc, const __mmask16* m,
                                              bool accumulate, const float* bias) {
  constexpr int64_t ldp = 16 * NV;
  const int64_t tiles = (M + kMR - 1) / kMR;
  for (int64_t q = 0, i = 0; q < tiles; ++q) {
    const int64_t rows = M * (q + 1) / tiles - i;
    const float* ai = a + i * sa;
    float* ci = c + i * ldc;
    switch (rows) {
      case 8: tile<8, NV>(ai, sa, sk, p, ldp, K, ci, ldc, m, accumulate, bias); break;
      case 7: tile<7, NV>(ai, sa, sk, p, ldp, K, ci, ldc, m, accumulate, bias); break;
      case 6: tile<6, NV>(ai, sa, sk, p, ldp, K, ci, ldc, m, accumulate, bias); break;
      case 5: tile<5, NV>(ai, sa, sk, p, ldp, K, ci, ldc, m, accumulate, bias); break;
      case 4: tile<4, NV>(ai, sa, sk, p, ldp, K, ci, ldc, m, accumulate, bias); break;
      case 3: tile<3, NV>(ai, sa, sk, p, ldp, K, ci, ldc, m, accumulate, bias); break;
      case 2: tile<2, NV>(ai, sa, sk, p, ldp, K, ci, ldc, m, accumulate, bias); break;
      case 1: tile<1, NV>(ai, sa, sk, p, ldp, K, ci, ldc, m, accumulate, bias); break;
      default: break;
    }
    i += rows;
  }
}

// out[M, cols [n0, n1)] (+)= a[M, K] P[:, n0:n1] (+ bias[n0:n1] on every row, when not
// accumulating), P packed by pack() over N columns, n0 a multiple of 48; a(i, k) = a[i * sa +
// k * sk]. K is taken in blocks of kKC, each block's panel reused by every row tile.
FUSEDRNN_AVX512_TARGET inline void gemm(const float* a, int64_t sa, int64_t sk, int64_t M, const float* packed,
                                        int64_t K, int64_t n0, int64_t n1, float* c, int64_t ldc,
                                        bool accumulate, const float* bias = nullptr) {
  for (int64_t k0 = 0; k0 < K; k0 += kKC) {
    const int64_t kb = std::min(kKC, K - k0);
    const bool acc = accumulate || k0 > 0;
    for (int64_t p0 = n0; p0 < n1; p0 += kNR) {
      const int64_t w = std::min<int64_t>(kNR, n1 - p0);
      const int nv = int((w + 15) / 16);
      const __mmask16 m[3] = {lanes(w, 0), lanes(w, 16), lanes(w, 32)};
      const float* p = packed + p0 * K + k0 * 16 * nv;  // panel p0 / 48 starts at p0 * K floats
      const float* ak = a + k0 * sk;
      float* cp = c + p0;
      const float* bp = bias && !acc ? bias + p0 : nullptr;
      if (nv == 3) panel_rows<3>(ak, sa, sk, M, p, kb, cp, ldc, m, acc, bp);
      else if (nv == 2) panel_rows<2>(ak, sa, sk, M, p, kb, cp, ldc, m, acc, bp);
      else panel_rows<1>(ak, sa, sk, M, p, kb, cp, ldc, m, acc, bp);
    }
  }
}

// Packs panels [q0, q1) of B [K, N], B(k, j) = b[k * sk + j * sn], into `packed`: panel q holds
// columns [48 q, 48 q + w) as [K, 16 NV] row-major at offset 48 q K, w = min(48, N - 48 q),
// NV = ceil(w / 16), zero-padded to 16 NV.
inline void pack(const float* b, int64_t sk, int64_t sn, int64_t K, int64_t N, int64_t q0, int64_t q1,
                 float* packed) {
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t j0 = q * kNR, w = std::min<int64_t>(kNR, N - j0), ld = 16 * ((w + 15) / 16);
    float* dst = packed + j0 * K;
    if (sk == 1) {  // columns of B contiguous: read them whole
      for (int64_t j = 0; j < ld; ++j)
        for (int64_t k = 0; k < K; ++k) dst[k * ld + j] = j < w ? b[k + (j0 + j) * sn] : 0.0f;
    } else {
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < ld; ++j) dst[k * ld + j] = j < w ? b[k * sk + (j0 + j) * sn] : 0.0f;
    }
  }
}

inline int64_t panels(int64_t N) { return (N + kNR - 1) / kNR; }

}  // namespace avx512
#endif

// A float32 weight slice packed for fusedrnn's AVX-512 kernel: B [K, N] with
// B[k, j] = w[(lo + j) * ldw + k] (transposed: B = W[lo:lo+N, :]^T) or w[k * ldw + lo + j].
// The constructor allocates; pack() fills (no ATen call: team threads may run it).
class PackedPanels {
 public:
  PackedPanels() = default;
  PackedPanels(const float* w, int64_t ldw, bool transposed, int64_t lo, int64_t N, int64_t K,
               const at::TensorOptions& opts)
      : w_(transposed ? w + lo * ldw : w + lo), ldw_(ldw), N_(N), K_(K), transposed_(transposed) {
#if FUSEDRNN_HAS_AVX512_KERNEL
    buf_ = at::empty({avx512::panels(N) * avx512::kNR * K}, opts.dtype(at::kFloat));
#else
    (void)opts;
#endif
  }

  void pack() {
#if FUSEDRNN_HAS_AVX512_KERNEL
    avx512::pack(w_, transposed_ ? 1 : ldw_, transposed_ ? ldw_ : 1, K_, N_, 0, avx512::panels(N_),
                 buf_.data_ptr<float>());
#endif
  }

  // out[M, N] (+)= a[M, K] B; a row-major with leading dimension lda, out with ldc.
  void run(const float* a, int64_t lda, int64_t M, float* out, int64_t ldc, bool accumulate) const {
#if FUSEDRNN_HAS_AVX512_KERNEL
    avx512::gemm(a, lda, 1, M, buf_.data_ptr<float>(), K_, 0, N_, out, ldc, accumulate);
#else
    (void)a; (void)lda; (void)M; (void)out; (void)ldc; (void)accumulate;
#endif
  }

 private:
  at::Tensor buf_;
  const float* w_ = nullptr;
  int64_t ldw_ = 0, N_ = 0, K_ = 0;
  bool transposed_ = true;
};

}  // namespace cpu
}  // namespace fusedrnn
