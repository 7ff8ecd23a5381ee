// CPU GRU forward/backward (torch.nn.GRU; norm layer = haste's LayerNormGRU placement).
// Same engine shape as lstm.cpp: hoisted input GEMM, per-step recurrent product, one fused
// row pass per step; backward in reverse time, weight GEMMs after the loop.
#include <torch/library.h>

#include "common.h"
#include "fusedrnn/cell_math.h"
#include "team.h"
#include "units.h"

namespace fusedrnn {
namespace cpu {
namespace {

using A = double;
constexpr const char* kFwd = "fusedrnn::gru_fwd";
constexpr const char* kBwd = "fusedrnn::gru_bwd";

void check_gru(const char* op, const at::Tensor& x, const c10::optional<at::Tensor>& lengths, const at::Tensor& h0,
               const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
               const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& g_ih,
               const c10::optional<at::Tensor>& g_hh, int64_t norm) {
  TORCH_CHECK(norm == kNormNone || norm == kNormLayer, op, ": GRU norm must be 0 (none) or 1 (layer), got ", norm);
  const int64_t H = check_recurrence(op, x, lengths, h0, w_ih, w_hh, 3);
  auto dt = x.scalar_type();
  TORCH_CHECK(!(b_ih.has_value() && b_ih->defined()) == !(b_hh.has_value() && b_hh->defined()), op,
              ": b_ih and b_hh must be given together");
  check_opt(op, "b_ih", b_ih, dt, {3 * H}, false);
  check_opt(op, "b_hh", b_hh, dt, {3 * H}, false);
  check_opt(op, "g_ih", g_ih, dt, {3 * H}, norm == kNormLayer);
  check_opt(op, "g_hh", g_hh, dt, {3 * H}, norm == kNormLayer);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_fwd_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& lengths, const at::Tensor& h0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& g_ih, const c10::optional<at::Tensor>& g_hh, int64_t norm, double eps) {
  refresh_simd_level();
  check_gru(kFwd, x, lengths, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, norm);
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1), GH = 3 * H;
  const bool ln = norm == kNormLayer;
  auto opts = x.options();
  at::Tensor xw = cached_mm(x.reshape({T * B, I}), w_ih.t()).view({T, B, GH});
  at::Tensor hw = ln ? cached_empty({T, B, GH}, opts) : cached_empty({B, GH}, opts);
  at::Tensor y = cached_empty({T, B, H}, opts), h = h0.clone();
  at::Tensor acts = cached_empty({T, B, GH}, opts), hn = cached_empty({T, B, H}, opts);
  at::Tensor stats = ln ? at::zeros({T, B, 4}, opts) : none_like(x);
  const int64_t* L = len_ptr(lengths);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gru_fwd_cpu", [&] {
    using T_ = scalar_t;
    const int64_t n = team_members(B * GH * H);
    const TeamSplit how = team_split(n, B, w_hh.nbytes());
    auto gemm = member_gemms<T_>(w_hh, B, /*transposed=*/true, n, how);
    const T_ *bi = ptr<T_>(b_ih), *bh = ptr<T_>(b_hh), *gi = ptr<T_>(g_ih), *gh = ptr<T_>(g_hh);
    T_* hp = h.data_ptr<T_>();
    at::Tensor scratch = cached_empty({n, 2 * GH}, opts);  // per member: xs, hs [GH]
    // the recurrent product of step t for the member's rows from r0 (all rows for a column slice)
    auto product = [&](int64_t t, int64_t m, int64_t r0) {
      gemm[m].run(hp + r0 * H, hw.data_ptr<T_>() + (ln ? t * B * GH : 0) + r0 * GH);
    };
    auto rows = [&](int64_t t, int64_t m, int64_t lo, int64_t hi) {
      const T_* xw_t = xw.data_ptr<T_>() + t * B * GH;
      const T_* hw_t = hw.data_ptr<T_>() + (ln ? t * B * GH : 0);
      T_* acts_t = acts.data_ptr<T_>() + t * B * GH;
      T_* hn_t = hn.data_ptr<T_>() + t * B * H;
      T_* y_t = y.data_ptr<T_>() + t * B * H;
      T_* st = ln ? stats.data_ptr<T_>() + t * B * 4 : nullptr;
      T_* xs = scratch.data_ptr<T_>() + m * 2 * GH;
      T_* hs = xs + GH;
      for (int64_t b = lo; b < hi; ++b) {
        T_* a = acts_t + b * GH;
        if (!active(L, b, t)) {
          for (int64_t k = 0; k < GH; ++k) a[k] = T_(0);
          for (int64_t j = 0; j < H; ++j) { y_t[b * H + j] = T_(0); hn_t[b * H + j] = T_(0); }
          continue;
        }
        const T_* xr = xw_t + b * GH;
        const T_* hr = hw_t + b * GH;
        if (ln) {
          ln_rows2_fwd<T_>(xr, hr, GH, gi, gh, eps, xs, hs, st + b * 4);
        } else {
          for (int64_t k = 0; k < GH; ++k) { xs[k] = xr[k]; hs[k] = hr[k]; }
        }
        if (bi)
          for (int64_t k = 0; k < GH; ++k) { xs[k] += bi[k]; hs[k] += bh[k]; }
        gru_units_fwd_run<T_>(H, static_cast<const T_*>(xs), static_cast<const T_*>(hs), hp + b * H, a,
                              hn_t + b * H, y_t + b * H);
      }
    };
    run_team(n, [&](Team& team) {  // csrc/cpu/team.h
      if (how == TeamSplit::kRows) {  // each member its rows through every step, no barrier
        team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) {
          for (int64_t t = 0; t < T; ++t) {
            product(t, m, lo);
            rows(t, m, lo, hi);
          }
        });
        return;
      }
      for (int64_t t = 0; t < T; ++t) {  // members own gate columns of the product, then rows
        team.each([&](int64_t m) { product(t, m, 0); });
        team.barrier();
        team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) { rows(t, m, lo, hi); });
        team.barrier();
      }
    });
  });
  return {y, h, acts, hn, ln ? xw : none_like(x), ln ? hw : none_like(x), stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gru_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& x,
            const c10::optional<at::Tensor>& lengths, const at::Tensor& h0, const at::Tensor& w_ih,
            const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
            const c10::optional<at::Tensor>& g_ih, const c10::optional<at::Tensor>& g_hh, const at::Tensor& y,
            const at::Tensor& acts, const at::Tensor& hn, const at::Tensor& xw, const at::Tensor& hw,
            const at::Tensor& stats, int64_t norm, double eps) {
  refresh_simd_level();
  check_gru(kBwd, x, lengths, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, norm);
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1), GH = 3 * H;
  const bool ln = norm == kNormLayer;
  auto dt = x.scalar_type();
  check_tensor(kBwd, "grad_y", grad_y, dt, {T, B, H});
  check_tensor(kBwd, "grad_h_n", grad_h_n, dt, {B, H});
  check_tensor(kBwd, "y", y, dt, {T, B, H});
  check_tensor(kBwd, "acts", acts, dt, {T, B, GH});
  check_tensor(kBwd, "hn", hn, dt, {T, B, H});
  if (ln) {
    check_tensor(kBwd, "xw", xw, dt, {T, B, GH});
    check_tensor(kBwd, "hw", hw, dt, {T, B, GH});
    check_tensor(kBwd, "stats", stats, dt, {T, B, 4});
  }
  auto opts = x.options();
  const int64_t* L = len_ptr(lengths);
  at::Tensor dh = grad_h_n.clone(), dh_direct = at::zeros({B, H}, opts), dh_new = cached_empty({B, H}, opts);
  // every row of these is written by the backward loop (zeros at finished steps)
  at::Tensor dxs = cached_empty({T, B, GH}, opts), dhs = cached_empty({T, B, GH}, opts);
  at::Tensor dxw = ln ? cached_empty({T, B, GH}, opts) : dxs, dhw = ln ? cached_empty({T, B, GH}, opts) : dhs;
  ThreadAcc acc(team_members(B * GH * H), 2 * GH, opts);  // one row per team member
  AT_DISPATCH_FLOATING_TYPES(dt, "gru_bwd_cpu", [&] {
    using T_ = scalar_t;
    const T_ *gi = ptr<T_>(g_ih), *gh = ptr<T_>(g_hh);
    T_* dhp = dh.data_ptr<T_>();
    T_* ddp = dh_direct.data_ptr<T_>();
    const int64_t n = acc.rows();
    const TeamSplit how = team_split(n, B, w_hh.nbytes());
    auto gemm_bwd = member_gemms<T_>(w_hh, B, /*transposed=*/false, n, how);
    T_* dnp = dh_new.data_ptr<T_>();
    auto rows = [&](int64_t t, int64_t m, int64_t lo, int64_t hi) {
      const T_* a_t = acts.data_ptr<T_>() + t * B * GH;
      const T_* hn_t = hn.data_ptr<T_>() + t * B * H;
      const T_* dy_t = grad_y.data_ptr<T_>() + t * B * H;
      const T_* hprev_t = t > 0 ? y.data_ptr<T_>() + (t - 1) * B * H : h0.data_ptr<T_>();
      T_* dxs_t = dxs.data_ptr<T_>() + t * B * GH;
      T_* dhs_t = dhs.data_ptr<T_>() + t * B * GH;
      T_* dg = ln ? acc.row<T_>(m) : nullptr;
      for (int64_t b = lo; b < hi; ++b) {
        if (!active(L, b, t)) {  // finished sequence: no gradient into this step
          const int64_t off = (t * B + b) * GH;
          for (T_* buf : {dxs.data_ptr<T_>(), dhs.data_ptr<T_>(), dxw.data_ptr<T_>(), dhw.data_ptr<T_>()})
            std::fill(buf + off, buf + off + GH, T_(0));
          continue;
        }
        const T_* a = a_t + b * GH;
        T_* dx_b = dxs_t + b * GH;
        T_* dh_b = dhs_t + b * GH;
        gru_units_bwd_run<T_>(H, static_cast<const T_*>(dhp + b * H), dy_t + b * H, a, hn_t + b * H,
                              hprev_t + b * H, dx_b, dh_b, ddp + b * H);
        if (ln) {
          const T_* sb = stats.data_ptr<T_>() + (t * B + b) * 4;
          const int64_t off = (t * B + b) * GH;
          ln_rows2_bwd<T_>(xw.data_ptr<T_>() + off, hw.data_ptr<T_>() + off, dx_b, dh_b, GH, gi, gh, sb,
                           dxw.data_ptr<T_>() + off, dhw.data_ptr<T_>() + off, dg, dg + GH);
        }
      }
    };
    // dh_{t-1} of the rows still active at t: the direct part plus the product
    auto carry = [&](int64_t t, int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        if (!active(L, b, t)) continue;
        for (int64_t j = 0; j < H; ++j) dhp[b * H + j] = ddp[b * H + j] + dnp[b * H + j];
      }
    };
    run_team(n, [&](Team& team) {  // as the forward
      if (how == TeamSplit::kRows) {
        team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) {
          for (int64_t t = T - 1; t >= 0; --t) {
            rows(t, m, lo, hi);
            gemm_bwd[m].run(dhw.data_ptr<T_>() + t * B * GH + lo * GH, dnp + lo * H);
            carry(t, lo, hi);
          }
        });
        return;
      }
      for (int64_t t = T - 1; t >= 0; --t) {  // rows, then dh columns of the product
        team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) { rows(t, m, lo, hi); });
        team.barrier();
        team.each([&](int64_t m) { gemm_bwd[m].run(dhw.data_ptr<T_>() + t * B * GH, dnp); });
        team.barrier();
        team.each_part(B, [&](int64_t, int64_t lo, int64_t hi) { carry(t, lo, hi); });  // rows of the next pass
      }
    });
  });
  at::Tensor dxw2 = dxw.view({T * B, GH}), dhw2 = dhw.view({T * B, GH});
  at::Tensor dx = cached_mm(dxw2, w_ih).view({T, B, I});
  auto [dw_ih, dw_hh] = weight_grads(dxw2, dhw2, x, h0, y);
  bool has_bias = b_ih.has_value() && b_ih->defined();
  at::Tensor db_ih = has_bias ? dxs.sum(at::IntArrayRef{0, 1}) : none_like(x);
  at::Tensor db_hh = has_bias ? dhs.sum(at::IntArrayRef{0, 1}) : none_like(x);
  at::Tensor dg_ih = none_like(x), dg_hh = none_like(x);
  if (ln) {
    at::Tensor tot = acc.total();
    dg_ih = tot.narrow(0, 0, GH).clone();
    dg_hh = tot.narrow(0, GH, GH).clone();
  }
  return {dx, dh, dw_ih, dw_hh, db_ih, db_hh, dg_ih, dg_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("gru_fwd", &gru_fwd_cpu);
  m.impl("gru_bwd", &gru_bwd_cpu);
}

}  // namespace cpu
}  // namespace fusedrnn
