// Shared helpers of the CPU kernels: argument checks, optional-tensor pointers, per-member
// accumulators and the active-row test.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "gemm.h"
#include "pool.h"

#include <string>
#include <utility>
#include <vector>

namespace fusedrnn {
namespace cpu {

inline std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

// Checks a required tensor: dtype, CPU, contiguous, and shape.
inline void check_tensor(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype,
                         std::vector<int64_t> shape) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is required");
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got device ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must have dtype ", dtype, " (the dtype of x), got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), op, ": ", name, " must have shape ",
              at::IntArrayRef(shape), ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous (got strides ", t.strides(), ")");
}

inline void check_opt(const char* op, const char* name, const c10::optional<at::Tensor>& t,
                      at::ScalarType dtype, std::vector<int64_t> shape, bool required) {
  if (required) {
    TORCH_CHECK(t.has_value() && t->defined(), op, ": ", name, " is required by this cell, got None");
  }
  if (t.has_value() && t->defined()) check_tensor(op, name, *t, dtype, shape);
}

inline void check_lengths(const char* op, const c10::optional<at::Tensor>& lengths, int64_t B, int64_t T) {
  if (!lengths.has_value() || !lengths->defined()) return;
  const at::Tensor& l = *lengths;
  TORCH_CHECK(l.device().is_cpu(), op, ": lengths must be on the CPU like x, got device ", l.device());
  TORCH_CHECK(l.scalar_type() == at::kLong, op, ": lengths must be int64, got ", l.scalar_type());
  TORCH_CHECK(l.dim() == 1 && l.size(0) == B, op, ": lengths must have shape [", B, "], got ", l.sizes());
  TORCH_CHECK(l.is_contiguous(), op, ": lengths must be contiguous");
  auto mn = l.min().item<int64_t>(), mx = l.max().item<int64_t>();
  TORCH_CHECK(mn >= 0 && mx <= T, op, ": lengths must be in [0, T=", T, "], got min ", mn, " max ", mx);
}

// The checks every family shares: x [T, B, I] float32/float64 with at least one step, w_hh [G*H, R],
// w_ih [G*H, I], h0 [B, R] and lengths, R being the width of the recurrent state: H, or the
// projection width P of a projected LSTM (`hidden` = H given, from w_hr). Returns H.
inline int64_t check_recurrence(const char* op, const at::Tensor& x, const c10::optional<at::Tensor>& lengths,
                                const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh, int64_t G,
                                int64_t hidden = -1) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be [T, B, I], got shape ", x.sizes());
  auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, op, ": x must be float32 or float64 on the CPU, got ", dt);
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2);
  TORCH_CHECK(T >= 1, op, ": x must have at least one time step, got shape ", x.sizes());
  check_tensor(op, "x", x, dt, {T, B, I});
  TORCH_CHECK(w_hh.dim() == 2, op, ": w_hh must be [", G, "H, ", hidden < 0 ? "H" : "P", "], got shape ",
              w_hh.sizes());
  const int64_t R = w_hh.size(1), H = hidden < 0 ? R : hidden;
  check_tensor(op, "w_hh", w_hh, dt, {G * H, R});
  check_tensor(op, "w_ih", w_ih, dt, {G * H, I});
  check_tensor(op, "h0", h0, dt, {B, R});
  check_lengths(op, lengths, B, T);
  return H;
}

template <typename T>
inline const T* ptr(const c10::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->data_ptr<T>() : nullptr;
}

inline const int64_t* len_ptr(const c10::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->data_ptr<int64_t>() : nullptr;
}

inline bool active(const int64_t* lengths, int64_t b, int64_t t) { return !lengths || t < lengths[b]; }

// Zeroed [members, n] buffer: each member of a thread team (team.h) accumulates into its own
// row, then total() sums the rows (no races; deterministic for a fixed member count).
struct ThreadAcc {
  at::Tensor buf;
  ThreadAcc(int64_t members, int64_t n, const at::TensorOptions& opts) : buf(at::zeros({members, n}, opts)) {}
  template <typename T>
  T* row(int64_t member) { return buf.data_ptr<T>() + member * buf.size(1); }
  int64_t rows() const { return buf.size(0); }
  at::Tensor total() const { return buf.sum(0); }
};

// The weight gradients after the time loop: dW_ih = dxw^T x and dW_hh = dhw^T h_prev, h_prev =
// [h0; y[:T-1]] the h_{t-1} of every step; dxw, dhw [T * B, GH], x [T, B, I], y [T, B, R].
// Where the two share their left operand (dhw is dxw: no separate normalization of the recurrent
// projection) they are one product: on fusedrnn's kernels (AVX-512 or AMX, gemm.h own_gemm)
// dxw^T packed once and multiplied into both outputs (gemm_outs); elsewhere, for an x narrower
// than 512 columns, one GEMM dxw^T [x | h_prev] cut in two: a narrow x made dW_ih alone a poor GEMM (measured with torch.mm on the AMD
// host, 2 threads: row MNIST 0.99 ms for [512, 2800] x [2800, 28] next to 2.13 ms for the [2800,
// 128] dW_hh, merged 2.79 ms; pixel MNIST's I = 1: 8.0 + 25.9 ms, merged 29.5; I = H = 256: 9.2 +
// 9.2 ms, merged 17.5).
inline std::pair<at::Tensor, at::Tensor> weight_grads(const at::Tensor& dxw, const at::Tensor& dhw,
                                                      const at::Tensor& x, const at::Tensor& h0,
                                                      const at::Tensor& y) {
  const int64_t T = y.size(0), B = y.size(1), R = y.size(2), I = x.size(2), GH = dxw.size(1);
  const bool shared = dxw.data_ptr() == dhw.data_ptr();
  // on fusedrnn's kernel dW_ih and dW_hh are one product with two outputs (gemm_outs): no [x |
  // h_prev] copy, no copies out of one [GH, I + R] result. Measured fwd+bwd, alternating with a
  // temporary switch to the merged GEMM, median of 15: PTB LSTM 82.4 ms against 83.8, the
  // generic shape 58.4 against 60.5.
  const bool kernel = own_gemm(y.scalar_type(), GH, T * B, {I, R}), own = shared && kernel;
  // dW_ih = dxw^T x on its own (dxw not shared). For a narrow x (I < 32, e.g. row MNIST's 28
  // pixels) as (x^T dxw)^T on ATen's mm (MKL), which reads dxw along its rows, where the large-GEMM
  // paths pack (AMX: split into three parts) all of dxw^T for a product of a few columns. The
  // product alone, [2800, 512] x [2800, 28] on two / one threads: 0.43 / 0.63 ms against 0.60 /
  // 1.18 on AMX, 0.76 / 1.12 on the AVX-512 kernel, 0.81 / 0.80 as dxw^T x on ATen's mm.
  // Fwd+bwd, row MNIST, blocks of calls alternating with a temporary switch: LN-LSTM 0.96-0.98x,
  // BN-LSTM 0.97-0.99x, GRU 0.96x, LN-GRU 0.98x; one thread LN / BN 0.96x / 0.94x.
  auto dw_input = [&] {
    const at::Tensor x2 = x.reshape({T * B, I});
    if (I >= 32) return cached_mm(dxw.t(), x2);
    at::Tensor t = cached_empty({I, GH}, x.options());
    at::mm_out(t, x2.t(), dxw);
    return cached_contiguous(t.t());
  };
  // On ATen's mm, unless x is narrow and the left operand shared (the merged product below): two
  // products, and dW_hh itself in two, dhw[:B]^T h0 + dhw[B:]^T y[:T-1], so that neither x nor y
  // is copied into [x | h_prev] (nor the result out of one [GH, I + R]). Measured on the Intel
  // host (ATen's mm = MKL), the weight gradients' phase of the LSTM backward alone (rdtsc in a
  // temporary build, one process per run alternating with the merged product, mean of 30 calls,
  // three runs): char-LM (80, 32, 512, 512) 34.5-35.8 ms against 37.0-37.1, PTB 16.0-16.3 against
  // 16.2-18.4.
  if (!kernel && (!shared || I >= 512)) {
    auto prev_product = [&](const at::Tensor& d) {  // d^T h_prev
      at::Tensor out = cached_mm(d.narrow(0, 0, B).t(), h0);
      if (T > 1) out.addmm_(d.narrow(0, B, (T - 1) * B).t(), y.narrow(0, 0, T - 1).reshape({(T - 1) * B, R}));
      return out;
    };
    return {dw_input(), prev_product(dhw)};  // shared here only with I >= 512
  }
  at::Tensor xh = cached_empty({T, B, (shared && !own ? I : 0) + R}, y.options());  // [x |] h_prev
  at::Tensor hp = xh.narrow(2, shared && !own ? I : 0, R);
  hp[0].copy_(h0);
  if (T > 1) hp.narrow(0, 1, T - 1).copy_(y.narrow(0, 0, T - 1));
  if (own) {
    at::Tensor dw_ih = cached_empty({GH, I}, y.options()), dw_hh = cached_empty({GH, R}, y.options());
    const at::Tensor a = dxw.t(), bx = x.reshape({T * B, I}), bh = xh.view({T * B, R});
    gemm_outs(a, {{&dw_ih, &bx, nullptr}, {&dw_hh, &bh, nullptr}});
    return {dw_ih, dw_hh};
  }
  if (!shared)  // on fusedrnn's kernel, each product packs its own left operand
    return {dw_input(), cached_mm(dhw.t(), xh.view({T * B, R}))};
  xh.narrow(2, 0, I).copy_(x);
  at::Tensor dw = cached_mm(dxw.t(), xh.view({T * B, I + R}));
  return {cached_contiguous(dw.narrow(1, 0, I)), cached_contiguous(dw.narrow(1, I, R))};
}

// Empty stand-in for an absent result of an op.
inline at::Tensor none_like(const at::Tensor& x) { return at::empty({0}, x.options()); }

}  // namespace cpu
}  // namespace fusedrnn
