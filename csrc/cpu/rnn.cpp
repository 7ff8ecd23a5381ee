// CPU Elman RNN forward/backward (torch.nn.RNN, tanh or relu). Saves nothing but y: h_t is
// the output, and the activation derivative is a function of h_t.
#include <torch/library.h>

#include "common.h"
#include "fusedrnn/cell_math.h"
#include "team.h"
#include "units.h"

namespace fusedrnn {
namespace cpu {
namespace {

constexpr const char* kFwd = "fusedrnn::rnn_fwd";
constexpr const char* kBwd = "fusedrnn::rnn_bwd";

void check_rnn(const char* op, const at::Tensor& x, const c10::optional<at::Tensor>& lengths, const at::Tensor& h0,
               const at::Tensor& w_ih, const at::Tensor& w_hh, int64_t kind) {
  TORCH_CHECK(kind == kRnnTanh || kind == kRnnRelu, op, ": kind must be 0 (tanh) or 1 (relu), got ", kind);
  check_recurrence(op, x, lengths, h0, w_ih, w_hh, 1);
}

std::tuple<at::Tensor, at::Tensor> rnn_fwd_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& lengths,
                                               const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                               const c10::optional<at::Tensor>& b_ih,
                                               const c10::optional<at::Tensor>& b_hh, int64_t kind) {
  refresh_simd_level();
  check_rnn(kFwd, x, lengths, h0, w_ih, w_hh, kind);
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1);
  auto dt = x.scalar_type();
  TORCH_CHECK(!(b_ih.has_value() && b_ih->defined()) == !(b_hh.has_value() && b_hh->defined()), kFwd,
              ": b_ih and b_hh must be given together");
  check_opt(kFwd, "b_ih", b_ih, dt, {H}, false);
  check_opt(kFwd, "b_hh", b_hh, dt, {H}, false);
  auto opts = x.options();
  at::Tensor xw = cached_mm(x.reshape({T * B, I}), w_ih.t()).view({T, B, H});
  at::Tensor hw = cached_empty({B, H}, opts), y = cached_empty({T, B, H}, opts), h = h0.clone();
  const int64_t* L = len_ptr(lengths);
  AT_DISPATCH_FLOATING_TYPES(dt, "rnn_fwd_cpu", [&] {
    using T_ = scalar_t;
    const int64_t n = team_members(B * H * H);
    const TeamSplit how = team_split(n, B, w_hh.nbytes());
    auto gemm = member_gemms<T_>(w_hh, B, /*transposed=*/true, n, how);
    const T_ *bi = ptr<T_>(b_ih), *bh = ptr<T_>(b_hh);
    T_* hp = h.data_ptr<T_>();
    T_* hwp = hw.data_ptr<T_>();
    auto rows = [&](int64_t t, int64_t lo, int64_t hi) {
      const T_* xw_t = xw.data_ptr<T_>() + t * B * H;
      T_* y_t = y.data_ptr<T_>() + t * B * H;
      for (int64_t b = lo; b < hi; ++b) {
        if (!active(L, b, t)) {
          for (int64_t j = 0; j < H; ++j) y_t[b * H + j] = T_(0);
          continue;
        }
        if (kind == kRnnTanh)
          rnn_units_fwd_run<T_, kRnnTanh>(H, xw_t + b * H, static_cast<const T_*>(hwp + b * H), bi, bh,
                                           y_t + b * H, hp + b * H);
        else
          rnn_units_fwd_run<T_, kRnnRelu>(H, xw_t + b * H, static_cast<const T_*>(hwp + b * H), bi, bh,
                                           y_t + b * H, hp + b * H);
      }
    };
    run_team(n, [&](Team& team) {  // csrc/cpu/team.h
      if (how == TeamSplit::kRows) {  // each member its rows through every step, no barrier
        team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) {
          for (int64_t t = 0; t < T; ++t) {
            gemm[m].run(hp + lo * H, hwp + lo * H);
            rows(t, lo, hi);
          }
        });
        return;
      }
      for (int64_t t = 0; t < T; ++t) {  // members own h columns of the product, then rows
        team.each([&](int64_t m) { gemm[m].run(hp, hwp); });
        team.barrier();
        team.each_part(B, [&](int64_t, int64_t lo, int64_t hi) { rows(t, lo, hi); });
        team.barrier();
      }
    });
  });
  return {y, h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& x, const c10::optional<at::Tensor>& lengths,
    const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& y, int64_t kind,
    bool has_bias) {
  refresh_simd_level();
  check_rnn(kBwd, x, lengths, h0, w_ih, w_hh, kind);
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1);
  auto dt = x.scalar_type();
  check_tensor(kBwd, "grad_y", grad_y, dt, {T, B, H});
  check_tensor(kBwd, "grad_h_n", grad_h_n, dt, {B, H});
  check_tensor(kBwd, "y", y, dt, {T, B, H});
  auto opts = x.options();
  const int64_t* L = len_ptr(lengths);
  at::Tensor dh = grad_h_n.clone(), dh_new = cached_empty({B, H}, opts), dpre = cached_empty({T, B, H}, opts);  // all rows written below
  AT_DISPATCH_FLOATING_TYPES(dt, "rnn_bwd_cpu", [&] {
    using T_ = scalar_t;
    T_* dhp = dh.data_ptr<T_>();
    const int64_t n = team_members(B * H * H);
    const TeamSplit how = team_split(n, B, w_hh.nbytes());
    auto gemm_bwd = member_gemms<T_>(w_hh, B, /*transposed=*/false, n, how);
    T_* dnp = dh_new.data_ptr<T_>();
    auto rows = [&](int64_t t, int64_t lo, int64_t hi) {
      const T_* y_t = y.data_ptr<T_>() + t * B * H;
      const T_* dy_t = grad_y.data_ptr<T_>() + t * B * H;
      T_* dp = dpre.data_ptr<T_>() + t * B * H;
      for (int64_t b = lo; b < hi; ++b) {
        if (!active(L, b, t)) {  // finished sequence: no gradient into this step
          std::fill(dp + b * H, dp + (b + 1) * H, T_(0));
          continue;
        }
        if (kind == kRnnTanh)
          rnn_units_bwd_run<T_, kRnnTanh>(H, static_cast<const T_*>(dhp + b * H), dy_t + b * H, y_t + b * H,
                                           dp + b * H);
        else
          rnn_units_bwd_run<T_, kRnnRelu>(H, static_cast<const T_*>(dhp + b * H), dy_t + b * H, y_t + b * H,
                                           dp + b * H);
      }
    };
    // carried into step t - 1 for the rows still active at t
    auto carry = [&](int64_t t, int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b)
        if (active(L, b, t)) std::copy(dnp + b * H, dnp + (b + 1) * H, dhp + b * H);
    };
    run_team(n, [&](Team& team) {  // as the forward
      if (how == TeamSplit::kRows) {
        team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) {
          for (int64_t t = T - 1; t >= 0; --t) {
            rows(t, lo, hi);
            gemm_bwd[m].run(dpre.data_ptr<T_>() + t * B * H + lo * H, dnp + lo * H);
            carry(t, lo, hi);
          }
        });
        return;
      }
      for (int64_t t = T - 1; t >= 0; --t) {  // rows, then dh columns of the product
        team.each_part(B, [&](int64_t, int64_t lo, int64_t hi) { rows(t, lo, hi); });
        team.barrier();
        team.each([&](int64_t m) { gemm_bwd[m].run(dpre.data_ptr<T_>() + t * B * H, dnp); });
        team.barrier();
        team.each_part(B, [&](int64_t, int64_t lo, int64_t hi) { carry(t, lo, hi); });  // rows of the next pass
      }
    });
  });
  at::Tensor dpre2 = dpre.view({T * B, H});
  at::Tensor dx = cached_mm(dpre2, w_ih).view({T, B, I});
  auto [dw_ih, dw_hh] = weight_grads(dpre2, dpre2, x, h0, y);
  at::Tensor db = has_bias ? dpre.sum(at::IntArrayRef{0, 1}) : none_like(x);
  return {dx, dh, dw_ih, dw_hh, db, has_bias ? db.clone() : none_like(x)};
}

at::Tensor large_gemm_cpu(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0), "fusedrnn.cpu_large_gemm: a [M, K] and b [K, N], got ",
              a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fusedrnn.cpu_large_gemm: a and b of one dtype");
  const bool has_bias = bias.has_value() && bias->defined();
  TORCH_CHECK(!has_bias || (bias->dim() == 1 && bias->size(0) == b.size(1) && bias->scalar_type() == at::kFloat &&
                            a.scalar_type() == at::kFloat),
              "fusedrnn.cpu_large_gemm: bias must be float32 [N] with float32 a, b");
  refresh_simd_level();
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  gemm_out(out, a, b, has_bias ? &*bias : nullptr);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("rnn_fwd", &rnn_fwd_cpu);
  m.impl("rnn_bwd", &rnn_bwd_cpu);
  m.impl("cpu_large_gemm", &large_gemm_cpu);
}

// No tensor arguments, so no backend key to dispatch on: CompositeImplicitAutograd, like aten's
// is_vulkan_available.
TORCH_LIBRARY_IMPL(fusedrnn, CompositeImplicitAutograd, m) {
  m.impl("cpu_cache_info", [] { return BlockCache::get().info(); });
  m.impl("cpu_gemm_info", [] { return mkl::kernel_names(); });
  m.impl("cpu_cache_release", [] { BlockCache::get().release(); });
}

}  // namespace cpu
}  // namespace fusedrnn
