// The per-step recurrent product out[B, GH] = h[B, H] W_hh^T of the CPU kernels.
#pragma once

#include <ATen/ATen.h>

namespace fusedrnn {
namespace cpu {

// W_hh [GH, H] is bound once for all steps; run() computes one step's product.
template <typename T>
class RecurrentGemm {
 public:
  explicit RecurrentGemm(const at::Tensor& w_hh) : w_t_(w_hh.t()) {}
  // h: [B, H] contiguous; out: [B, GH] contiguous.
  void run(const T* h, int64_t B, T* out) const {
    const int64_t GH = w_t_.size(1), H = w_t_.size(0);
    auto opts = w_t_.options();
    at::Tensor o = at::from_blob(out, {B, GH}, opts);
    at::mm_out(o, at::from_blob(const_cast<T*>(h), {B, H}, opts), w_t_);
  }

 private:
  at::Tensor w_t_;
};

}  // namespace cpu
}  // namespace fusedrnn
