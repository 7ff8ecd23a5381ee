// The large float32 GEMMs around the time loop on Intel AMX tiles, at float32 accuracy: out[M, N]
// = a[M, K] b[K, N] (+ bias) with each float32 operand split exactly into three bfloat16 parts,
// a = a0 + a1 + a2 (8 significant bits each: the 24 of float32), and the six products whose
// size is at least 2^-16 of a0 b0 (a0 b0, a0 b1, a1 b0, a0 b2, a1 b1, a2 b0) summed in the tiles'
// float32 accumulators. A bf16 x bf16 product is exact in float32; the dropped a1 b2, a2 b1 and
// a2 b2 are below 2^-25 |a b|, under float32's own rounding of each product's sum (2^-24), so
// the result has the error of a float32 GEMM (measured against float64: tests/test_cpu_kernels.py
// test_amx_gemm_accuracy). Not TF32 or plain bf16, which keep 10 or 7 bits of each operand.
//
// Why: a tile product (TDPBF16PS, 16 x 16 x 32) issues 16 x 16 x 32 multiply-adds per 16 cycles,
// 16x the two AVX-512 FMA ports' float32 rate (one core of the 2-core Intel Xeon here: 2.5
// bf16 TFLOP/s from L1); six of them per float32 product leave about 2.7x. Measured there
// (benchmarks/results/cpu-20261207-amx/gemm_rates.py, packing included, median of 15, GFLOP/s
// of the float32 product): char-LM input projection 2560 x 512 x 2048 251 on one thread / 475 on
// two against torch.mm's (MKL) 174 / 321, its weight gradients 2048 x 2560 x 512 227 / 416
// against 174 / 320; the generic shape's input projection (k = 256) 161 / 332 against 158 / 315.
//
// Layout: a packed by 16-row blocks, each [k blocks of 32][3 parts][16 rows x 32 k] bf16; b by
// 16-column blocks, each [k blocks][3 parts][16 k pairs x 16 columns x 2] bf16 (the pairs of k
// interleaved, as TDPBF16PS reads its second operand). Zero padding to 32 rows / columns / k. A
// member computes 32 x 32 output blocks (four accumulator tiles, two row and two column tiles
// of operands) over a range of k blocks, then adds the bias (or the earlier k blocks' sum) and
// stores the valid part. gemm.h amx_gemm_outs shares the work among the thread team.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "packed_gemm.h"
#include "simd.h"

// The AMX intrinsics and target names: GCC 11, clang 12.
#if FUSEDRNN_X86 && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define FUSEDRNN_HAS_AMX 1
#define FUSEDRNN_AMX_TARGET \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma")))
#else
#define FUSEDRNN_HAS_AMX 0
#endif

namespace fusedrnn {
namespace cpu {
namespace amx {

using bf16 = uint16_t;

constexpr int64_t kTileElems = 16 * 32;     // bf16 in one operand tile (1 KiB)
constexpr int64_t kBlockElems = 3 * kTileElems;  // the three parts of one k block of a 16-block

inline int64_t blocks32(int64_t n) { return (n + 31) / 32; }
// bf16 elements of an operand of `n` rows (a) or columns (b) and K, packed.
inline int64_t packed_elems(int64_t n, int64_t K) { return blocks32(n) * 2 * blocks32(K) * kBlockElems; }

// Whether this CPU and OS run AMX bf16 tiles (CPUID: AMX-TILE, AMX-BF16, AVX512-BF16; Linux
// grants the tile state on request, once per process).
inline bool usable() {
#if FUSEDRNN_HAS_AMX
  static const bool ok = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool tile = (d >> 24) & 1, amx_bf16 = (d >> 22) & 1, avx512f = (b >> 16) & 1;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
    const bool avx512_bf16 = (a >> 5) & 1;
    if (!(tile && amx_bf16 && avx512f && avx512_bf16)) return false;
    constexpr long kReqXcompPerm = 0x1023, kXtiledata = 18;  // arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

#if FUSEDRNN_HAS_AMX

// Eight 16 x 64-byte tiles: 0-3 the 2 x 2 accumulators, 4-5 a's two row tiles, 6-7 b's two column
// tiles. Loaded by each thread before its products, released after (with_tiles).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int t = 0; t < 8; ++t) colsb[t] = 64, rows[t] = 16;
  }
};

// Runs f() with this thread's tile registers configured, and releases them afterwards.
template <typename F>
FUSEDRNN_AMX_TARGET void with_tiles(F&& f) {
  static const TileConfig config;
  _tile_loadconfig(&config);
  f();
  _tile_release();
}

// 16 floats of a row of `n` (0-16) valid: contiguous, or at a stride (a gather).
FUSEDRNN_AMX_TARGET inline __m512 load16(const float* p, int64_t stride, int64_t n) {
  const __mmask16 m = avx512::lanes(n, 0);
  if (stride == 1) return _mm512_maskz_loadu_ps(m, p);
  const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                         _mm512_set1_epi32(int(stride)));
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, p, 4);
}

// x = p0 + p1 + p2 exactly, each part rounded to nearest bf16 from what the earlier ones left.
FUSEDRNN_AMX_TARGET inline void split3(__m512 x, __m256i p[3]) {
  for (int i = 0; i < 3; ++i) {
    const __m256bh h = _mm512_cvtneps_pbh(x);
    p[i] = (__m256i)h;
    if (i < 2) x = _mm512_sub_ps(x, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(p[i]), 16)));
  }
}

// Packs rows [32 q0, 32 q1) of a(i, k) = a[i * sa + k * sk], i < M, k < K (zeros past them), k
// blocks [0, KB) (by default all of K's).
FUSEDRNN_AMX_TARGET inline void pack_a(const float* a, int64_t sa, int64_t sk, int64_t M, int64_t K, int64_t q0,
                                       int64_t q1, bf16* out, int64_t KB = -1) {
  if (KB < 0) KB = blocks32(K);
  for (int64_t mb = 2 * q0; mb < 2 * q1; ++mb)
    for (int64_t kb = 0; kb < KB; ++kb) {
      bf16* t = out + (mb * KB + kb) * kBlockElems;
      for (int r = 0; r < 16; ++r) {
        const int64_t i = mb * 16 + r;
        for (int h = 0; h < 2; ++h) {
          const int64_t k0 = kb * 32 + h * 16;
          __m256i p[3];
          split3(i < M ? load16(a + i * sa + k0 * sk, sk, K - k0) : _mm512_setzero_ps(), p);
          for (int part = 0; part < 3; ++part)
            _mm256_storeu_si256((__m256i*)(t + part * kTileElems + r * 32 + h * 16), p[part]);
        }
      }
    }
}

// One k pair of a packed b's 16-column block into its place t: rows r0 and r1 (16 values of
// each at a stride, `n` of them valid; a null row: zeros).
// The rows' floats are interleaved first (x0: columns 0-7 of r0 and r1 alternating, x1: 8-15),
// so that each part is one two-vector conversion already in the pairs' order; the same
// roundings as split3, so the same parts.
FUSEDRNN_AMX_TARGET inline void pack_pair_rows(const float* r0, const float* r1, int64_t stride, int64_t n, bf16* t) {
  const __m512 a = r0 ? load16(r0, stride, n) : _mm512_setzero_ps();
  const __m512 b = r1 ? load16(r1, stride, n) : _mm512_setzero_ps();
  const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
  __m512 x0 = _mm512_permutex2var_ps(a, lo, b), x1 = _mm512_permutex2var_ps(a, hi, b);
  auto widen = [](__m256i h) FUSEDRNN_AMX_TARGET {  // bf16 -> float
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  };
  for (int part = 0; part < 3; ++part) {  // k even in the low half of each 32-bit pair
    const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);  // bf16(x0) low, bf16(x1) high
    _mm512_storeu_si512(t + part * kTileElems, h);
    if (part < 2) {
      x0 = _mm512_sub_ps(x0, widen(_mm512_castsi512_si256(h)));
      x1 = _mm512_sub_ps(x1, widen(_mm512_extracti64x4_epi64(h, 1)));
    }
  }
}

// Where k pair pr of k block kb of 16-column block nb lies in a packed b of kb_all k blocks.
inline int64_t pair_offset(int64_t nb, int64_t kb, int64_t pr, int64_t kb_all) {
  return (nb * kb_all + kb) * kBlockElems + pr * 32;
}

// k pair pr of k block kb, column block nb of b packed (pack_b).
FUSEDRNN_AMX_TARGET inline void pack_pair(const float* b, int64_t bk, int64_t bn, int64_t K, int64_t N, int64_t nb,
                                          int64_t kb, int pr, bf16* out) {
  const float* r[2];
  for (int e = 0; e < 2; ++e) {
    const int64_t k = kb * 32 + pr * 2 + e;
    r[e] = k < K ? b + k * bk + nb * 16 * bn : nullptr;
  }
  pack_pair_rows(r[0], r[1], bn, N - nb * 16, out + pair_offset(nb, kb, pr, blocks32(K)));
}

// Rows [0, rows) of a row-major b (row stride bk, N columns) into a packed b of kb_all k blocks at
// k = k0 (even), as k0 + [0, pairs) pairs: rows past `rows` (an odd count's last pair) are zeros.
// The step-by-step weight gradients' staging (gemm.h StepWeightGrads): each step's rows are
// packed where they land, while they are in cache. b null: zeros only.
FUSEDRNN_AMX_TARGET inline void pack_b_rows(const float* b, int64_t bk, int64_t N, int64_t rows, int64_t k0,
                                            int64_t pairs, int64_t kb_all, bf16* out) {
  const int64_t nbs = 2 * blocks32(N);
  for (int64_t nb = 0; nb < nbs; ++nb)
    for (int64_t q = 0; q < pairs; ++q) {
      const int64_t p = k0 / 2 + q;
      const float* r0 = b && 2 * q < rows ? b + 2 * q * bk + nb * 16 : nullptr;
      const float* r1 = b && 2 * q + 1 < rows ? b + (2 * q + 1) * bk + nb * 16 : nullptr;
      pack_pair_rows(r0, r1, 1, N - nb * 16, out + pair_offset(nb, p / 16, p % 16, kb_all));
    }
}

// Packs columns [32 q0, 32 q1) of b(k, j) = b[k * bk + j * bn], k < K, j < N (zeros past them):
// along b's rows where they are contiguous, else column block by column block (W^T: the rows of
// W a block reads stay in cache).
FUSEDRNN_AMX_TARGET inline void pack_b(const float* b, int64_t bk, int64_t bn, int64_t K, int64_t N, int64_t q0,
                                       int64_t q1, bf16* out) {
  const int64_t KB = blocks32(K);
  if (bn == 1) {
    for (int64_t kb = 0; kb < KB; ++kb)
      for (int pr = 0; pr < 16; ++pr)
        for (int64_t nb = 2 * q0; nb < 2 * q1; ++nb) pack_pair(b, bk, bn, K, N, nb, kb, pr, out);
  } else {
    for (int64_t nb = 2 * q0; nb < 2 * q1; ++nb)
      for (int64_t kb = 0; kb < KB; ++kb)
        for (int pr = 0; pr < 16; ++pr) pack_pair(b, bk, bn, K, N, nb, kb, pr, out);
  }
}

// c[32, 32] = a 32-row block of packed a x a 32-column block of packed b, KB k blocks; a_next and
// b_next: from the first 16-row (16-column) block to the second. The parts' products run smallest
// first, each operand tile loaded once per k block where the order allows (7 loads of tile pairs
// for 6 products).
FUSEDRNN_AMX_TARGET inline void block(const bf16* a, int64_t a_next, const bf16* b, int64_t b_next, int64_t KB,
                                      float* c) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t kb = 0; kb < KB; ++kb) {
    const bf16* a0 = a + kb * kBlockElems;
    const bf16* b0 = b + kb * kBlockElems;
    auto load_a = [&](int part) {
      _tile_loadd(4, a0 + part * kTileElems, 64);
      _tile_loadd(5, a0 + a_next + part * kTileElems, 64);
    };
    auto load_b = [&](int part) {
      _tile_loadd(6, b0 + part * kTileElems, 64);
      _tile_loadd(7, b0 + b_next + part * kTileElems, 64);
    };
    auto product = [] {
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    };
    load_a(2), load_b(0), product();  // a2 b0
    load_a(1), product();             // a1 b0
    load_b(1), product();             // a1 b1
    load_a(0), product();             // a0 b1
    load_b(2), product();             // a0 b2
    load_b(0), product();             // a0 b0
  }
  _tile_stored(0, c, 32 * 4);
  _tile_stored(1, c + 16, 32 * 4);
  _tile_stored(2, c + 16 * 32, 32 * 4);
  _tile_stored(3, c + 16 * 32 + 16, 32 * 4);
}

// out rows [32 mq, ...) x columns [32 nq, ...) (within M x N) from c[32, 32]: out = c + bias[N]
// (bias may be null), or out += c.
FUSEDRNN_AMX_TARGET inline void store(const float* c, int64_t mq, int64_t nq, int64_t M, int64_t N, float* out,
                                      int64_t ldo, const float* bias, bool accumulate) {
  const int64_t rows = std::min<int64_t>(32, M - 32 * mq), j0 = 32 * nq;
  for (int h = 0; h < 2; ++h) {
    const int64_t n = std::min<int64_t>(16, N - j0 - 16 * h);
    if (n <= 0) break;
    const __mmask16 m = avx512::lanes(n, 0);
    const __m512 add = bias ? _mm512_maskz_loadu_ps(m, bias + j0 + 16 * h) : _mm512_setzero_ps();
    for (int64_t r = 0; r < rows; ++r) {
      float* o = out + (32 * mq + r) * ldo + j0 + 16 * h;
      const __m512 base = accumulate ? _mm512_maskz_loadu_ps(m, o) : add;
      _mm512_mask_storeu_ps(o, m, _mm512_add_ps(_mm512_loadu_ps(c + r * 32 + 16 * h), base));
    }
  }
}

// A packed operand's view for gemm: its 32-blocks (of rows of a, columns of b) `stride` apart,
// each holding `kb_all` k blocks, from which a product reads k blocks starting at the pointer.
struct Packed {
  const bf16* p;
  int64_t kb_all;
  int64_t stride() const { return 2 * kb_all * kBlockElems; }
};

// Output blocks rows [r0, r1) x columns [c0, c1) (in 32-blocks) of out = a x b over KB k blocks
// (+ bias, or accumulated into out): a's first 32-block is row block r0, b's is column block 0.
// Row blocks in groups whose packed a (about 1 MiB) stays in L2 while the group meets each column
// block.
FUSEDRNN_AMX_TARGET inline void gemm(Packed a, Packed b, int64_t KB, int64_t M, int64_t N, int64_t r0, int64_t r1,
                                     int64_t c0, int64_t c1, float* out, int64_t ldo, const float* bias,
                                     bool accumulate) {
  const int64_t group = std::max<int64_t>(1, (int64_t(1) << 19) / (a.stride()));
  alignas(64) float c[32 * 32];
  for (int64_t g = r0; g < r1; g += group)
    for (int64_t nq = c0; nq < c1; ++nq)
      for (int64_t mq = g; mq < std::min(r1, g + group); ++mq) {
        block(a.p + (mq - r0) * a.stride(), a.stride() / 2, b.p + nq * b.stride(), b.stride() / 2, KB, c);
        store(c, mq, nq, M, N, out, ldo, bias, accumulate);
      }
}

#endif  // FUSEDRNN_HAS_AMX

}  // namespace amx
}  // namespace cpu
}  // namespace fusedrnn
