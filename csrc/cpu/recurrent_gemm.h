// The per-step recurrent products of the CPU kernels, with the weights packed once for all
// steps: forward out[B, GH] = h[B, H] W^T, backward out[B, H] = d[B, GH] W, W = W_hh [GH, H].
//
// float32 uses MKL's packed-GEMM API (cblas_sgemm_pack / cblas_sgemm_compute) when the torch
// build exports it (the x86-64 wheels statically link MKL into libtorch_cpu): W is packed into
// MKL's internal blocked layout once per layer call and every step reuses it, which is what
// oneDNN's RNN primitive does, instead of re-packing W_hh inside each step's GEMM. The symbols
// are weak references resolved at load time, so a torch without MKL loads this library and
// falls back to Fortran BLAS or a plain loop (float64 uses dgemm_: MKL exports no packed dgemm).
// On CPUs with AVX-512 float32 uses fusedrnn's own packed kernel instead (packed_gemm.h: 1.3-1.7x
// MKL's packed GEMM on these skinny products here). FUSEDRNN_PACKED_GEMM in the environment
// forces the others (for comparisons and tests): mkl = MKL's packed GEMM, 0 = BLAS ?gemm_ per
// step, loop = the plain loop.
#pragma once

#include <ATen/ATen.h>

#include "amx_gemm.h"
#include "packed_gemm.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern "C" {
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
// Fortran BLAS (column-major, arguments by pointer), also exported by MKL in those wheels.
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace fusedrnn {
namespace cpu {

namespace mkl {
enum : int { kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162 };

// FUSEDRNN_LARGE_GEMM, validated (large_gemm below).
inline const char* large_gemm_mode() {
  const char* env = std::getenv("FUSEDRNN_LARGE_GEMM");
  const char* mode = env ? env : "auto";
  TORCH_CHECK(!std::strcmp(mode, "auto") || !std::strcmp(mode, "amx") || !std::strcmp(mode, "avx512") ||
                  !std::strcmp(mode, "aten"),
              "FUSEDRNN_LARGE_GEMM must be auto, amx, avx512 or aten, got '", mode, "'");
  return mode;
}

// FUSEDRNN_PACKED_GEMM (read per layer call, with FUSEDRNN_LARGE_GEMM, which is validated here
// too): unset/1 = the fastest available (fusedrnn's AVX-512 kernel, and the AMX tiles for the
// larger step products where the CPU has them, step_amx; else MKL's packed GEMM), avx512 =
// fusedrnn's AVX-512 kernel for every step product, amx = the AMX tiles for every step product
// (an error where the CPU or OS has none), mkl = MKL's packed GEMM, 0 = no packed GEMM (BLAS
// ?gemm_ each step), loop = the plain loop (the fallback of a torch without BLAS symbols, tested
// through this).
inline const char* gemm_mode() {
  large_gemm_mode();
  const char* env = std::getenv("FUSEDRNN_PACKED_GEMM");
  const char* mode = env ? env : "1";
  TORCH_CHECK(!std::strcmp(mode, "1") || !std::strcmp(mode, "avx512") || !std::strcmp(mode, "amx") ||
                  !std::strcmp(mode, "mkl") || !std::strcmp(mode, "0") || !std::strcmp(mode, "loop"),
              "FUSEDRNN_PACKED_GEMM must be 1, avx512, amx, mkl, 0 or loop, got '", mode, "'");
  if (!std::strcmp(mode, "amx"))
    TORCH_CHECK(amx::usable(), "FUSEDRNN_PACKED_GEMM=amx: this CPU or OS runs no AMX bf16 tiles");
  return mode;
}

// fusedrnn's own kernels (AVX-512, and AMX where step_amx says) for the step products.
inline bool own_kernel_available() {
  const char* mode = gemm_mode();
  return (!std::strcmp(mode, "1") || !std::strcmp(mode, "avx512") || !std::strcmp(mode, "amx")) &&
         simd_level() == kSimdAvx512;
}

// Who runs the large float32 GEMMs around the time loop (gemm.h own_gemm).
enum class LargeGemm { kAten, kAvx512, kAmx };

// FUSEDRNN_LARGE_GEMM (read per call), where fusedrnn's AVX-512 kernel is available (else ATen's
// mm): amx = the AMX tiles at float32 accuracy (amx_gemm.h; an error where the CPU or OS has
// none), avx512 = fusedrnn's kernel, aten = ATen's mm; auto (unset) = amx where usable, else
// ATen's mm on Intel CPUs with a torch that links MKL (its packed-GEMM symbols resolve), where
// MKL runs its AVX-512 kernels and its sgemm is faster than fusedrnn's, else fusedrnn's kernel.
// Measured on the 2-core Intel Xeon (AVX-512, 2 MiB L2 per core), one thread, the char-LM and
// PTB input projections, dx and weight gradients: fusedrnn's kernel 120-153 GFLOP/s against
// torch.mm's 149-185 (several runs, benchmarks/results/cpu-20261207-mklgemm/gemm_vs_mkl.sh); on
// the AMD EPYC of packed_gemm.h, where MKL runs AVX2, 90-97 against 71-89 (gemm.h). Fwd+bwd, one
// process per call alternating with the large GEMMs on the kernel, median of 11, three rounds
// (large_gemm_matrix.txt there): char-LM LSTM 103.8-120.2 ms against 112.9-127.7, the generic
// shape 39.2-41.6 against 42.9-44.1. AMX against MKL: benchmarks/results/cpu-20261207-amx.
inline LargeGemm large_gemm() {
  const char* mode = large_gemm_mode();
  if (!std::strcmp(mode, "amx"))
    TORCH_CHECK(amx::usable(), "FUSEDRNN_LARGE_GEMM=amx: this CPU or OS runs no AMX bf16 tiles");
  if (!own_kernel_available() || !std::strcmp(mode, "aten")) return LargeGemm::kAten;
  if (!std::strcmp(mode, "avx512")) return LargeGemm::kAvx512;
  if (amx::usable()) return LargeGemm::kAmx;
  const bool mkl_avx512 = cpu_is_intel() && cblas_sgemm_pack_get_size != nullptr;
  return mkl_avx512 ? LargeGemm::kAten : LargeGemm::kAvx512;
}

// Whether a per-step product of M rows by W's slice [K, N] runs on the AMX tiles (amx_gemm.h, at
// float32 accuracy): under FUSEDRNN_PACKED_GEMM=amx every one; by default (1) where the CPU has
// AMX, k >= 64, at least 2^22 multiply-adds per step and W's packed slice (three bf16 parts) at
// most 8 MiB. Measured fwd+bwd on the 2-core Intel Xeon, alternating with the AVX-512 kernel
// (benchmarks/results/cpu-20261207-amx): char-LM LSTM / LN / BN / GRU 0.83-0.88x, PTB LSTM / LN
// 0.94x / 0.92x, the generic shape 0.95x; row MNIST (a member's steps 50 x 157 x 512 and 50 x 512
// x 128) 1.00-1.03x and pixel MNIST 0.995x, hence the size floor.
inline bool step_amx(int64_t M, int64_t N, int64_t K) {
  const char* mode = gemm_mode();
  if (!std::strcmp(mode, "amx")) return true;
  return !std::strcmp(mode, "1") && amx::usable() && K >= 64 && M * K * N >= (int64_t(1) << 22) &&
         amx::packed_elems(N, K) * 2 <= (int64_t(8) << 20);
}

inline bool packed_gemm_available() {
  const char* mode = gemm_mode();
  return (std::strcmp(mode, "1") == 0 || std::strcmp(mode, "mkl") == 0) && cblas_sgemm_pack_get_size != nullptr &&
         cblas_sgemm_pack != nullptr && cblas_sgemm_compute != nullptr;
}

inline bool blas_available(bool single) {
  if (std::strcmp(gemm_mode(), "loop") == 0) return false;
  return single ? sgemm_ != nullptr : dgemm_ != nullptr;
}

// What the float32 products run under the current FUSEDRNN_PACKED_GEMM, FUSEDRNN_LARGE_GEMM and
// FUSEDRNN_CPU_SIMD: the per-step recurrent product ("amx" = the AMX tiles where step_amx says,
// packed_gemm.h for the others; "avx512" = packed_gemm.h, "mkl_packed", "blas", "loop"), the
// large GEMMs around the loop (gemm.h: "amx" or "avx512" where a product has at least 16 output
// columns and 64k multiply-adds, else ATen's mm; or "aten") and the level of the row loops
// (simd.h).
inline std::vector<std::string> kernel_names() {
  refresh_simd_level();
  const bool own = own_kernel_available();
  const char* mode = gemm_mode();
  const bool amx = own && (!std::strcmp(mode, "amx") || (!std::strcmp(mode, "1") && amx::usable()));
  const char* recurrent = amx                     ? "amx"
                          : own                   ? "avx512"
                          : packed_gemm_available() ? "mkl_packed"
                          : blas_available(true)    ? "blas"
                                                    : "loop";
  const LargeGemm large = large_gemm();
  return {recurrent, large == LargeGemm::kAmx ? "amx" : large == LargeGemm::kAvx512 ? "avx512" : "aten",
          simd_name(simd_level())};
}

}  // namespace mkl

// Recurrent product with a fixed weight W [GH, H] and a fixed row count M (the batch), for the
// output columns [lo, hi) (all by default): one team member (team.h) owns one such slice.
// transposed=true:  out[M, lo:hi] = a[M, H] W[lo:hi, :]^T   (forward; out is [M, GH])
// transposed=false: out[M, lo:hi] = a[M, GH] W[:, lo:hi]    (backward; out is [M, H])
// run() calls no ATen operator: it runs on team threads, which do not carry the caller's
// thread-local state (grad mode, dispatch guards), and must not throw. float32: W's slice is
// packed once and every step reuses it (what oneDNN's RNN primitive does), for fusedrnn's
// AVX-512 kernel where the CPU has it, else into MKL's blocked layout; otherwise Fortran BLAS
// ?gemm_ when exported, else a plain loop.
template <typename T>
class RecurrentGemm {
 public:
  RecurrentGemm(const at::Tensor& w, int64_t M, bool transposed = true, int64_t lo = 0, int64_t hi = -1)
      : M_(M), lo_(lo), ldw_(w.size(1)), transposed_(transposed) {
    ldc_ = transposed ? w.size(0) : w.size(1);
    N_ = (hi < 0 ? ldc_ : hi) - lo;
    K_ = transposed ? w.size(1) : w.size(0);
    w_ = w.data_ptr<T>() + (transposed ? lo * ldw_ : lo);
    const bool work = M > 0 && N_ > 0 && K_ > 0;
    own_ = std::is_same<T, float>::value && mkl::own_kernel_available() && work;
    packed_ = !own_ && std::is_same<T, float>::value && mkl::packed_gemm_available() && work;
    blas_ = mkl::blas_available(std::is_same<T, float>::value);
    amx_ = own_ && mkl::step_amx(M_, N_, K_);
    if (amx_) {
#if FUSEDRNN_HAS_AMX
      const auto i16 = w.options().dtype(at::kShort);  // from pool.h's cache, like PackedPanels
      amx_b_ = cached_empty({amx::packed_elems(N_, K_)}, i16);
      amx_a_ = cached_empty({amx::packed_elems(M_, K_)}, i16);
#endif
    } else if (own_) {
      panels_ = PackedPanels(reinterpret_cast<const float*>(w_), ldw_, transposed, N_, K_, w.options());
    } else if (packed_) {
      size_t bytes = cblas_sgemm_pack_get_size(mkl::kBMatrix, int(M_), int(N_), int(K_));
      buf_ = at::empty({int64_t((bytes + sizeof(float) - 1) / sizeof(float))}, w.options().dtype(at::kFloat));
    }
  }

  // Packs W's slice for the packed GEMMs (a no-op otherwise). Calls no ATen operator, so the
  // members of a team pack their own slices in parallel (member_gemms).
  void pack() {
#if FUSEDRNN_HAS_AMX
    if (amx_) {
      const float* w = reinterpret_cast<const float*>(w_);
      amx::pack_b(w, transposed_ ? 1 : ldw_, transposed_ ? ldw_ : 1, K_, N_, 0, amx::blocks32(N_), amx_bp());
      return;
    }
#endif
    if (own_) {
      panels_.pack();
    } else if (packed_) {
      cblas_sgemm_pack(mkl::kRowMajor, mkl::kBMatrix, transposed_ ? mkl::kTrans : mkl::kNoTrans, int(M_), int(N_),
                       int(K_), 1.0f, reinterpret_cast<const float*>(w_), int(ldw_), buf_.data_ptr<float>());
    }
  }

  // Whether pack() has anything to do (a packed GEMM: float32 with fusedrnn's kernel or MKL's).
  bool packs() const { return own_ || packed_; }

  // This slice's output columns [lo, hi).
  int64_t lo() const { return lo_; }
  int64_t hi() const { return lo_ + N_; }

  // a: [M, K] contiguous; out: the full [M, ldc] output (this slice's columns are written, or
  // added to with accumulate: beta = 1, which also spares MKL its pass zeroing C).
  void run(const T* a, T* out, bool accumulate = false) const {
    if (N_ <= 0 || M_ <= 0) return;
    T* c = out + lo_;
#if FUSEDRNN_HAS_AMX
    if (amx_) {
      const int64_t KB = amx::blocks32(K_);
      auto* pa = reinterpret_cast<amx::bf16*>(amx_a_.data_ptr<int16_t>());
      amx::pack_a(reinterpret_cast<const float*>(a), K_, 1, M_, K_, 0, amx::blocks32(M_), pa);
      amx::with_tiles([&] {
        amx::gemm({pa, KB}, {amx_bp(), KB}, KB, M_, N_, 0, amx::blocks32(M_), 0, amx::blocks32(N_),
                  reinterpret_cast<float*>(c), ldc_, nullptr, accumulate);
      });
      return;
    }
#endif
    if (own_) {
      panels_.run(reinterpret_cast<const float*>(a), K_, M_, reinterpret_cast<float*>(c), ldc_, accumulate);
      return;
    }
    if (packed_) {
      cblas_sgemm_compute(mkl::kRowMajor, mkl::kNoTrans, mkl::kPacked, int(M_), int(N_), int(K_),
                          reinterpret_cast<const float*>(a), int(K_), buf_.data_ptr<float>(), int(ldw_),
                          accumulate ? 1.0f : 0.0f,
                          reinterpret_cast<float*>(c), int(ldc_));
      return;
    }
    // Row-major out = a op(W) is column-major out^T = op(W)^T a^T.
    const char ta = transposed_ ? 'T' : 'N', tb = 'N';
    const int m = int(N_), n = int(M_), k = int(K_), lda = int(ldw_), ldb = int(K_), ldc = int(ldc_);
    const T one = 1, beta = accumulate ? 1 : 0;
    if (blas_ && std::is_same<T, float>::value) {
      sgemm_(&ta, &tb, &m, &n, &k, reinterpret_cast<const float*>(&one), reinterpret_cast<const float*>(w_), &lda,
             reinterpret_cast<const float*>(a), &ldb, reinterpret_cast<const float*>(&beta),
             reinterpret_cast<float*>(c), &ldc);
      return;
    }
    if (blas_ && std::is_same<T, double>::value) {
      dgemm_(&ta, &tb, &m, &n, &k, reinterpret_cast<const double*>(&one), reinterpret_cast<const double*>(w_),
             &lda, reinterpret_cast<const double*>(a), &ldb, reinterpret_cast<const double*>(&beta),
             reinterpret_cast<double*>(c), &ldc);
      return;
    }
    for (int64_t i = 0; i < M_; ++i)
      for (int64_t j = 0; j < N_; ++j) {
        T acc = 0;
        for (int64_t q = 0; q < K_; ++q)
          acc += a[i * K_ + q] * (transposed_ ? w_[j * ldw_ + q] : w_[q * ldw_ + j]);
        c[i * ldc_ + j] = accumulate ? c[i * ldc_ + j] + acc : acc;
      }
  }

 private:
#if FUSEDRNN_HAS_AMX
  amx::bf16* amx_bp() const { return reinterpret_cast<amx::bf16*>(amx_b_.data_ptr<int16_t>()); }
#endif
  const T* w_ = nullptr;
  at::Tensor buf_, amx_a_, amx_b_;
  PackedPanels panels_;
  int64_t M_, lo_, ldw_, N_ = 0, K_ = 0, ldc_ = 0;
  bool transposed_, own_ = false, amx_ = false, packed_ = false, blas_ = false;
};

}  // namespace cpu
}  // namespace fusedrnn
