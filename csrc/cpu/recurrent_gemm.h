// The per-step recurrent products of the CPU kernels, with the weights packed once for all
// steps: forward out[B, GH] = h[B, H] W^T, backward out[B, H] = d[B, GH] W, W = W_hh [GH, H].
//
// float32 uses MKL's packed-GEMM API (cblas_sgemm_pack / cblas_sgemm_compute) when the torch
// build exports it (the x86-64 wheels statically link MKL into libtorch_cpu): W is packed into
// MKL's internal blocked layout once per layer call and every step reuses it, which is what
// oneDNN's RNN primitive does, instead of re-packing W_hh inside each step's GEMM. The symbols
// are weak references resolved at load time, so a torch without MKL loads this library and
// falls back to at::mm (also used for float64: MKL exports no packed dgemm here).
// FUSEDRNN_PACKED_GEMM=0 in the environment forces the fallback (for comparisons).
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>

extern "C" {
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}

namespace fusedrnn {
namespace cpu {

namespace mkl {
enum : int { kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162 };

inline bool packed_gemm_available() {
  static const bool ok = [] {
    const char* env = std::getenv("FUSEDRNN_PACKED_GEMM");
    if (env && std::strcmp(env, "0") == 0) return false;
    return cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr && cblas_sgemm_compute != nullptr;
  }();
  return ok;
}
}  // namespace mkl

// Recurrent product with a fixed weight W [GH, H] and a fixed row count M (the batch).
// transposed=true:  out[M, GH] = a[M, H] W^T   (forward)
// transposed=false: out[M, H]  = a[M, GH] W    (backward)
template <typename T>
class RecurrentGemm {
 public:
  RecurrentGemm(const at::Tensor& w, int64_t M, bool transposed = true)
      : w_(w), M_(M), transposed_(transposed) {
    N_ = transposed ? w.size(0) : w.size(1);
    K_ = transposed ? w.size(1) : w.size(0);
    packed_ = std::is_same<T, float>::value && mkl::packed_gemm_available() && M > 0 && N_ > 0 && K_ > 0;
    if (packed_) {
      size_t bytes = cblas_sgemm_pack_get_size(mkl::kBMatrix, int(M_), int(N_), int(K_));
      buf_ = at::empty({int64_t((bytes + sizeof(float) - 1) / sizeof(float))}, w.options());
      cblas_sgemm_pack(mkl::kRowMajor, mkl::kBMatrix, transposed ? mkl::kTrans : mkl::kNoTrans, int(M_), int(N_),
                       int(K_), 1.0f, reinterpret_cast<const float*>(w.data_ptr<T>()), int(w.size(1)),
                       buf_.data_ptr<float>());
    } else {
      wt_ = transposed ? w.t() : w;
    }
  }

  // a: [M, K] contiguous; out: [M, N] contiguous.
  void run(const T* a, T* out) const {
    if (packed_) {
      cblas_sgemm_compute(mkl::kRowMajor, mkl::kNoTrans, mkl::kPacked, int(M_), int(N_), int(K_),
                          reinterpret_cast<const float*>(a), int(K_), buf_.data_ptr<float>(), int(w_.size(1)),
                          0.0f, reinterpret_cast<float*>(out), int(N_));
      return;
    }
    auto opts = w_.options();
    at::Tensor o = at::from_blob(out, {M_, N_}, opts);
    at::mm_out(o, at::from_blob(const_cast<T*>(a), {M_, K_}, opts), wt_);
  }

 private:
  at::Tensor w_, wt_, buf_;
  int64_t M_, N_ = 0, K_ = 0;
  bool transposed_, packed_ = false;
};

}  // namespace cpu
}  // namespace fusedrnn
