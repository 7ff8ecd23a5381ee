// fusedrnn's own packed float32 GEMM on AVX-512 CPUs: out[M, N] (+)= a[M, K] B, B [K, N] packed
// into panels of 48 columns, k-major, so that a product streams each panel once per 8 rows of a.
// The per-step recurrent products pack their slice of W once per layer call (PackedPanels,
// through recurrent_gemm.h); the large GEMMs around the time loop pack per call (gemm.h).
//
// Why: the recurrent product of a step is a skinny GEMM (M = the batch, 16-100 rows) against a
// fixed weight. MKL's packed sgemm (cblas_sgemm_compute) reaches 57-86 GFLOP/s per thread on such
// shapes on this machine's AMD EPYC (Zen 4), where MKL runs its AVX2 kernels; this kernel's 8 x 48
// register tile (24 zmm accumulators, 3 panel loads and 8 broadcasts per 24 FMAs) reaches 91-115
// (one thread, M x K x N = 20 x 650 x 1300, 32 x 512 x 1024, 100 x 128 x 512, 32 x 256 x 512: the
// steps of the PTB, char-LM, row-MNIST and generic shapes; three runs on the shared machine,
// benchmarks/results/cpu-20261203-avx512/gemm_kernels.sh). Same products, other summation order
// (plain k order, one FMA chain per output element), so results differ from MKL's in the last bits.
//
// Compiled with a function-level target attribute (no -march for the build) and used only at
// the AVX-512 level of simd.h; elsewhere RecurrentGemm keeps MKL's packed GEMM.
// FUSEDRNN_PACKED_GEMM=mkl forces MKL's (tests).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "pool.h"
#include "simd.h"

#define FUSEDRNN_HAS_AVX512_KERNEL FUSEDRNN_X86

namespace fusedrnn {
namespace cpu {

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

// One tile of `rows` (1-8) rows.
template <int NV>
FUSEDRNN_AVX512_TARGET inline void tile_rows(int64_t rows, const float* a, int64_t sa, int64_t sk, const float* p,
                                             int64_t K, float* c, int64_t ldc, const __mmask16* m, bool accumulate,
                                             const float* bias) {
  constexpr int64_t ldp = 16 * NV;
  switch (rows) {
    case 8: tile<8, NV>(a, sa, sk, p, ldp, K, c, ldc, m, accumulate, bias); break;
    case 7: tile<7, NV>(a, sa, sk, p, ldp, K, c, ldc, m, accumulate, bias); break;
    case 6: tile<6, NV>(a, sa, sk, p, ldp, K, c, ldc, m, accumulate, bias); break;
    case 5: tile<5, NV>(a, sa, sk, p, ldp, K, c, ldc, m, accumulate, bias); break;
    case 4: tile<4, NV>(a, sa, sk, p, ldp, K, c, ldc, m, accumulate, bias); break;
    case 3: tile<3, NV>(a, sa, sk, p, ldp, K, c, ldc, m, accumulate, bias); break;
    case 2: tile<2, NV>(a, sa, sk, p, ldp, K, c, ldc, m, accumulate, bias); break;
    case 1: tile<1, NV>(a, sa, sk, p, ldp, K, c, ldc, m, accumulate, bias); break;
    default: break;
  }
}

// Rows [i, i + rows) x the panel of columns [p0, p0 + w) (w <= 48) x the k block [k0, k0 + kb);
// a points at row i, k0.
FUSEDRNN_AVX512_TARGET inline void panel_tile(int64_t rows, const float* a, int64_t sa, int64_t sk,
                                              const float* packed, int64_t K, int64_t k0, int64_t kb, int64_t p0,
                                              int64_t w, float* c, int64_t ldc, bool accumulate, const float* bias) {
  const int nv = int((w + 15) / 16);
  const __mmask16 m[3] = {lanes(w, 0), lanes(w, 16), lanes(w, 32)};
  const float* p = packed + p0 * K + k0 * 16 * nv;  // panel p0 / 48 starts at p0 * K floats
  const float* bp = bias ? bias + p0 : nullptr;
  if (nv == 3) tile_rows<3>(rows, a, sa, sk, p, kb, c + p0, ldc, m, accumulate, bp);
  else if (nv == 2) tile_rows<2>(rows, a, sa, sk, p, kb, c + p0, ldc, m, accumulate, bp);
  else tile_rows<1>(rows, a, sa, sk, p, kb, c + p0, ldc, m, accumulate, bp);
}

// Rows [0, M) go in row_tiles(M) = ceil(M / 8) tiles of near-equal height (50 rows: 7 x 7 + 8,
// not 6 x 8 + 2: a short tile streams the panel block for few FMAs); tile q starts at row
// tile_start(M, q).
inline int64_t row_tiles(int64_t M) { return (M + kMR - 1) / kMR; }
inline int64_t tile_start(int64_t M, int64_t q) { return M * q / row_tiles(M); }

// out[rows of tiles [q0, q1), cols [n0, n1)] (+)= a[M, K] P[:, n0:n1] (+ bias[n0:n1] on every
// row, when not accumulating), P packed by pack() over N columns, n0 a multiple of 48; out and a
// point at row 0. a is row-major with leading dimension lda, or (lda = 0) packed by pack_a().
// K is taken in blocks of kKC, each block's panel reused by every row tile.
FUSEDRNN_AVX512_TARGET inline void gemm(const float* a, int64_t lda, int64_t M, int64_t q0, int64_t q1,
                                        const float* packed, int64_t K, int64_t n0, int64_t n1, float* c, int64_t ldc,
                                        bool accumulate, const float* bias = nullptr) {
  for (int64_t k0 = 0; k0 < K; k0 += kKC) {
    const int64_t kb = std::min(kKC, K - k0);
    const bool acc = accumulate || k0 > 0;
    for (int64_t p0 = n0; p0 < n1; p0 += kNR)
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t i = tile_start(M, q), rows = tile_start(M, q + 1) - i;
        const float* ai = lda > 0 ? a + i * lda + k0 : a + i * K + k0 * rows;
        panel_tile(rows, ai, lda > 0 ? lda : 1, lda > 0 ? 1 : rows, packed, K, k0, kb, p0,
                   std::min<int64_t>(kNR, n1 - p0), c + i * ldc, ldc, acc, acc ? nullptr : bias);
      }
  }
}

// Packs row tiles [q0, q1) of a [M, K], a(i, k) = a[i * sa + k * sk], for gemm(lda = 0): tile
// q (rows [i, i + rows), i = tile_start(M, q)) as [K, rows] at offset i K. For an a whose rows
// are not contiguous (the weight gradients' dG^T, sa = 1): read in place, every k of a tile is
// another cache line and, 2 KiB apart, every other k another page (measured, one thread: 512 x
// 2800 x 156, dG^T [x | h] of row MNIST, 69 GFLOP/s in place, 95 for a row-major a).
// With k_at and k_total (>= k_at + K) it fills k [k_at, k_at + K) of a packed a of k_total
// columns (one part of a product whose k range is packed in parts).
FUSEDRNN_AVX512_TARGET inline void pack_a(const float* a, int64_t sa, int64_t sk, int64_t M, int64_t K, int64_t q0,
                                          int64_t q1, float* dst, int64_t k_at = 0, int64_t k_total = -1) {
  constexpr int64_t kB = 64;  // k rows of dG's source per block (128 KiB at GH = 512): L2 over the tiles
  const int64_t KT = k_total < 0 ? K : k_total;
  for (int64_t kk = 0; kk < K; kk += kB)
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t i = tile_start(M, q), rows = tile_start(M, q + 1) - i;
      const __mmask16 mr = lanes(rows, 0);
      for (int64_t k = kk; k < std::min(K, kk + kB); ++k) {
        float* d = dst + i * KT + (k_at + k) * rows;
        if (sa == 1) _mm512_mask_storeu_ps(d, mr, _mm512_maskz_loadu_ps(mr, a + i + k * sk));
        else for (int64_t r = 0; r < rows; ++r) d[r] = a[(i + r) * sa + k * sk];
      }
    }
}

// r[0..15] (16 rows of 16) transposed in registers: r[i] holds what was column i.
FUSEDRNN_AVX512_TARGET inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
  }
}

// One panel of pack() where B's columns are contiguous (B = W^T: the forward's recurrent weight
// slices, x W_ih^T's W_ih): columns [j0, j0 + w) of B(k, j) = b[k + j * sn] into dst [K, ld]
// (zero past w), in 16 x 16 blocks transposed in registers (element by element, every write
// went to another cache line). Alternating with the element loops (a temporary switch), fwd+bwd
// median of 15: S4 (35, 20, 650, 650) 82.0 ms against 83.2; with pack_panel_rows too, 77.9
// against 79.2, and the generic shape 57.9 against 57.9.
FUSEDRNN_AVX512_TARGET inline void pack_panel_cols(const float* b, int64_t sn, int64_t K, int64_t j0, int64_t w,
                                                   int64_t ld, float* dst) {
  for (int64_t k0 = 0; k0 < K; k0 += 16) {
    const int64_t kn = std::min<int64_t>(16, K - k0);
    const __mmask16 mk = lanes(kn, 0);
    for (int64_t jb = 0; jb < ld; jb += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = jb + i < w ? _mm512_maskz_loadu_ps(mk, b + (j0 + jb + i) * sn + k0) : _mm512_setzero_ps();
      transpose16(r);
      for (int64_t kk = 0; kk < kn; ++kk) _mm512_storeu_ps(dst + (k0 + kk) * ld + jb, r[kk]);
    }
  }
}

// One panel of pack() where B's rows are contiguous: row k's w columns at b + k sk into dst [K,
// ld] (zero past w), a masked vector copy per 16 columns.
FUSEDRNN_AVX512_TARGET inline void pack_panel_rows(const float* b, int64_t sk, int64_t K, int64_t w, int64_t ld,
                                                   float* dst) {
  for (int64_t k = 0; k < K; ++k)
    for (int64_t jb = 0; jb < ld; jb += 16)
      _mm512_storeu_ps(dst + k * ld + jb, _mm512_maskz_loadu_ps(lanes(w, int(jb)), b + k * sk + jb));
}

// Packs panels [q0, q1) of B [K, N], B(k, j) = b[k * sk + j * sn], into `packed`: panel q holds
// columns [48 q, 48 q + w) as [K, 16 NV] row-major at offset 48 q K, w = min(48, N - 48 q),
// NV = ceil(w / 16), zero-padded to 16 NV. With k_at and k_total (>= k_at + K): rows [k_at,
// k_at + K) of a packed B of k_total rows, as pack_a.
inline void pack(const float* b, int64_t sk, int64_t sn, int64_t K, int64_t N, int64_t q0, int64_t q1,
                 float* packed, int64_t k_at = 0, int64_t k_total = -1) {
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t j0 = q * kNR, w = std::min<int64_t>(kNR, N - j0), ld = 16 * ((w + 15) / 16);
    float* dst = packed + j0 * (k_total < 0 ? K : k_total) + k_at * ld;
    if (sk == 1) {  // columns of B contiguous: 16 x 16 blocks transposed
      pack_panel_cols(b, sn, K, j0, w, ld, dst);
    } else if (sn == 1) {  // rows of B contiguous: copy them
      pack_panel_rows(b + j0, sk, K, w, ld, dst);
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
// B[k, j] = w[j * ldw + k] (transposed: B = W[0:N, :]^T) or w[k * ldw + j], w at the slice.
// The constructor allocates (from pool.h's cache: a layer's packed W is megabytes, allocated and
// freed every call); pack() fills (no ATen call: team threads may run it).
class PackedPanels {
 public:
  PackedPanels() = default;
  PackedPanels(const float* w, int64_t ldw, bool transposed, int64_t N, int64_t K, const at::TensorOptions& opts)
      : w_(w), ldw_(ldw), N_(N), K_(K), transposed_(transposed) {
#if FUSEDRNN_HAS_AVX512_KERNEL
    buf_ = cached_empty({avx512::panels(N) * avx512::kNR * K}, opts.dtype(at::kFloat));
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
    avx512::gemm(a, lda, M, 0, avx512::row_tiles(M), buf_.data_ptr<float>(), K_, 0, N_, out, ldc, accumulate);
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
