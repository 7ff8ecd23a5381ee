// CPU LSTM forward/backward (every variant and norm) and the batch-norm running-stat update.
//
// Forward: x W_ih^T for all steps is one GEMM (or, with a norm where members own rows, each
// member's rows step by step in the loop: input_in_loop); per step h W_hh^T (and a W_fgr^T for
// FGR), then fused passes over batch rows: normalization, biases, gates, cell update, output,
// masking. The passes run on a thread team (team.h) split by columns of the product or by batch
// rows. Batch norm needs statistics across rows, so its step is: statistics of the recurrent
// projection (column split: each member right after its own columns of the product; row split:
// each member's partials of its rows, combined after a barrier), row pass A (gates, c_t),
// statistics of c_t (likewise), row pass B (h_t). The input projection's statistics do not
// depend on the recurrence: under the column split all steps' are computed before the loop, and
// backward runs their part after it; under the row split each member's partials of step t join
// the hh part's at its barrier, forward and backward.
// Backward mirrors it in reverse time; dW_ih, dW_hh, dW_fgr, dW_hr and dx are large GEMMs after
// the loop, except where members own rows: then dx, and for float32 on the AVX-512 kernel or the
// AMX tiles dW_ih and dW_hh where StepWeightGrads::chosen says (gemm.h), are computed step by
// step in the loop.
// Projection (torch.nn.LSTM's proj_size, vanilla LSTM without norm): the row pass writes m_t =
// o * tanh(c_t), and one more product per step, h_t = m_t W_hr^T (packed once like W_hh), gives
// the output and the recurrent state, R = P wide; backward starts each step with
// d m_t = (dh_t + dy_t) W_hr, and dW_hr = sum_t (dh_t + dy_t)^T m_t is one GEMM after the loop.
#include <torch/library.h>

#include "common.h"
#include "fusedrnn/cell_math.h"
#include "fusedrnn/params.h"
#include "team.h"
#include "units.h"

namespace fusedrnn {
namespace cpu {
namespace {

using A = double;  // accumulation type of every statistic

constexpr const char* kFwd = "fusedrnn::lstm_fwd";
constexpr const char* kBwd = "fusedrnn::lstm_bwd";

// Sizes of the per-row / per-step statistics record of each norm (see params.h).
inline int64_t stats_width(int norm, int64_t G, int64_t H) {
  switch (norm) {
    case kNormLayer: return 6;
    case kNormLayerPerGate: return 2 * G + 2;
    case kNormBatch: return 2 * (2 * G * H + H);
    default: return 0;
  }
}

// ----------------------------------------------------------------------------- forward

// The thread team of an LSTM layer's forward and backward: its member count and how the
// members share a step (team.h).
struct LstmTeam {
  int64_t n;
  TeamSplit how;
};

// Whether each member takes its batch rows through the whole loop: the rows split, or a team of one.
inline bool owns_rows(const LstmTeam& plan) { return plan.n == 1 || plan.how == TeamSplit::kRows; }

inline LstmTeam lstm_team(int64_t B, const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr) {
  const int64_t GH = w_hh.size(0), R = w_hh.size(1);
  const bool proj = w_hr.has_value() && w_hr->defined();
  const int64_t n = team_members(B * GH * R + (proj ? B * w_hr->numel() : 0));
  return {n, team_split(n, B, w_hh.nbytes() + (proj ? w_hr->nbytes() : 0))};
}

// Whether the input projection joins the recurrent product: without norm or projection, where
// each member takes its batch rows through the whole loop (the rows split, or a team of one),
// every step multiplies [x_t | 1 | h] by W_x = [W_ih | b_ih + b_hh | W_hh]^T, packed once. Then
// x W_ih^T is never written out for all steps and read back ([T, B, 4H]: 5.7 MB for row MNIST,
// 80 MB for pixel MNIST), and the forward needs no GEMM before its loop. Measured fwd+bwd, one
// process alternating with a temporary switch to the separate projection, median of 21: row
// MNIST 11.6 / 12.3 ms against 12.6 / 13.2 (two runs), pixel MNIST 136.5 against 145.3.
inline bool joins_input(int64_t norm, bool projected, const LstmTeam& plan) {
  return norm == kNormNone && !projected && owns_rows(plan);
}

// Whether, with a norm, each member computes its rows of x_t W_ih^T step by step in the loop
// (W_ih packed once per member, like W_hh), where members own rows and W_ih takes at most half a
// core's L2, instead of one GEMM for all steps before the loop: the norms then read the step's
// rows from the member's cache, not back from [T, B, GH] written before the loop (5.7 MB for row
// MNIST). Measured fwd+bwd, two builds in alternating processes (3073bfa and this one, with the
// batch-norm passes' prefetch and vectorized combine of the same commit series;
// benchmarks/results/cpu-20261207-inloop): LN-LSTM row MNIST 9.05 -> 8.73 ms, pixel MNIST 124.5
// -> 116.1 (LN reads none of those passes); BN-LSTM 10.0 -> 9.0 and 157.6 -> 130.4.
inline bool input_in_loop(int64_t norm, const LstmTeam& plan, const at::Tensor& w_ih) {
  return norm != kNormNone && owns_rows(plan) && w_ih.numel() * w_ih.element_size() <= (int64_t(1) << 19);
}

// xw_all: x W_ih^T (+ the biases without norm) of every step [T, B, GH], or undefined when the
// input projection joins the recurrent product (joins_input); w_rec is then W_x, else W_hh.
// w_in: W_ih where the loop fills xw_all (input_in_loop), else undefined.
template <typename T, int NORM>
void lstm_forward(const LstmFwdParams<T>& p, const at::Tensor& xw_all, const at::Tensor& hw_all,
                  const at::Tensor& w_rec, const c10::optional<at::Tensor>& w_fgr,
                  const c10::optional<at::Tensor>& w_hr, const LstmTeam& plan, const at::Tensor& w_in) {
  const int64_t Tn = p.steps, B = p.batch, H = p.hidden, G = p.gates, GH = G * H;
  const int64_t P = p.proj, R = P ? P : H;  // R: width of h (the recurrent state and the output)
  const LstmFlags fl = p.flags;
  const int64_t* L = p.lengths;
  auto opts = hw_all.options();
  // carried state; with the input joined, h is the last R columns of the product's left operand
  // xh = [x_t | 1 | h] (row stride ldh), whose x_t columns each member fills for its rows
  const bool joined = !xw_all.defined();
  const int64_t I = p.input, X = joined ? w_rec.size(1) - R : 0, ldh = X + R;
  at::Tensor h = at::empty({B, ldh}, opts);
  h.narrow(1, X, R).copy_(at::from_blob(const_cast<T*>(p.h0), {B, R}, opts));
  if (X > I) h.select(1, I).fill_(1);
  at::Tensor c = at::from_blob(const_cast<T*>(p.c0), {B, H}, opts).clone();
  at::Tensor a = fl.fgr ? at::from_blob(const_cast<T*>(p.a0), {B, 3 * H}, opts).clone() : at::Tensor();
  at::Tensor a_rec = fl.fgr ? cached_empty({B, 3 * H}, opts) : at::Tensor();
  // the team: member m owns gate columns [lo, hi) of the recurrent products (its W_hh / W_fgr
  // rows, packed once), a slice of batch rows of the row passes and of the BN columns
  // (and of W_hr's rows with a projection)
  const int64_t n = plan.n;
  const TeamSplit how = plan.how;
  auto gemm = member_gemms<T>(w_rec, B, /*transposed=*/true, n, how);
  auto gemm_fgr =
      fl.fgr ? member_gemms<T>(*w_fgr, B, /*transposed=*/true, n, how) : std::vector<RecurrentGemm<T>>();
  auto gemm_hr = P ? member_gemms<T>(*w_hr, B, /*transposed=*/true, n, how) : std::vector<RecurrentGemm<T>>();
  auto gemm_in =
      w_in.defined() ? member_gemms<T>(w_in, B, /*transposed=*/true, n, how) : std::vector<RecurrentGemm<T>>();
  // member m's rows [lo, hi) of x_t W_ih^T, where the loop computes them (w_in)
  auto input_rows = [&](int64_t t, int64_t m, int64_t lo, int64_t hi) {
    if (w_in.defined() && hi > lo) gemm_in[m].run(p.x + (t * B + lo) * I, xw_all.data_ptr<T>() + (t * B + lo) * GH);
  };
  // batch norm, column split: rstd of the ih columns of every step (their statistics do not
  // depend on the recurrence and are computed before the time loop), of this step's hh and cell
  // columns (the row split keeps each member's copy in bn_own)
  const int64_t NB = 2 * GH + H;
  std::vector<T> bn_rstd(NORM == kNormBatch ? NB : 0), bn_rstd_ih(NORM == kNormBatch && !owns_rows(plan) ? Tn * GH : 0);
  const int64_t SW = stats_width(NORM, G, H);
  T* xh = h.data_ptr<T>();
  T* hp = xh + X;
  T* cp = c.data_ptr<T>();
  T* ap = fl.fgr ? a.data_ptr<T>() : nullptr;
  T* arp = fl.fgr ? a_rec.data_ptr<T>() : nullptr;
  at::Tensor scratch = cached_empty({n, 2 * GH + H}, opts);  // per member: pre [GH], tmp [GH], cn [H]
  at::Tensor bn_acc = cached_empty({NORM == kNormBatch ? n : 0, 2 * GH}, opts.dtype(at::kDouble));
  // batch norm under the row split: per member its rows' partial statistics of xw_t, hw_t and
  // c_t [ih mean GH | ih M2 GH | hh mean GH | hh M2 GH | cell mean H | cell M2 H] with their
  // counts, and its own combined copy of the step's statistics (the same layout, rstd for M2)
  enum BnPart { kBnIh, kBnHh, kBnCell };
  const bool bn_rows = NORM == kNormBatch && owns_rows(plan);
  const int64_t PW = 2 * (2 * GH + H);
  std::vector<double> bn_part(bn_rows ? n * PW : 0);
  std::vector<int64_t> bn_count(bn_rows ? 3 * n : 0);
  std::vector<T> bn_own(bn_rows ? n * PW : 0);
  // The ih, hh and cell statistics of step t as member m reads them.
  struct BnView {
    const T *mean_ih, *rstd_ih, *mean_hh, *rstd_hh, *mean_c, *rstd_c;
  };
  auto bn_view = [&](int64_t t, int64_t m) -> BnView {
    if (bn_rows) {
      const T* own = bn_own.data() + m * PW;
      return {own, own + GH, own + 2 * GH, own + 3 * GH, own + 4 * GH, own + 4 * GH + H};
    }
    const T* st = p.stats + t * SW;
    return {st, bn_rstd_ih.data() + t * GH, st + GH, bn_rstd.data() + GH, st + 2 * GH, bn_rstd.data() + 2 * GH};
  };

  // Row pass A of rows [b0, b1): gate pre-activations, gates, c_t; and (unless batch norm) pass B: h_t.
  auto rows_a = [&](int64_t t, int64_t m, int64_t b0, int64_t b1) {
    T* pre_m = scratch.data_ptr<T>() + m * (2 * GH + H);
    T* tmp = pre_m + GH;
    T* cn = tmp + GH;
    const T* xw_t = joined ? nullptr : xw_all.data_ptr<T>() + t * B * GH;
    const T* hw_t = hw_all.data_ptr<T>() + (hw_all.dim() == 3 ? t * B * GH : 0);
    T* st = p.stats ? p.stats + (NORM == kNormBatch ? t * SW : t * B * SW) : nullptr;
    T* acts_t = p.acts + t * B * GH;
    T* cs_t = p.cs + t * B * H;
    T* y_t = (P ? p.ms : p.y) + t * B * H;  // the output, or m_t, the projection's input
    for (int64_t b = b0; b < b1; ++b) {
      T* acts_b = acts_t + b * GH;
      T* cs_b = cs_t + b * H;
      T* y_b = y_t + b * H;
      if (!active(L, b, t)) {
        for (int64_t k = 0; k < GH; ++k) acts_b[k] = T(0);
        for (int64_t j = 0; j < H; ++j) { cs_b[j] = cp[b * H + j]; y_b[j] = T(0); }
        if (st && NORM != kNormBatch) for (int64_t k = 0; k < SW; ++k) st[b * SW + k] = T(0);
        continue;
      }
      const T* xr = joined ? nullptr : xw_t + b * GH;
      const T* hr = hw_t + b * GH;
      T* pre = pre_m;
      if (NORM == kNormNone) {
        // x W_ih^T + b_ih + b_hh, to which the step's product was added (joined: the product)
        pre = const_cast<T*>(joined ? hr : xr);
      } else if (NORM == kNormLayer) {
        T* sb = st + b * SW;
        ln_pre_row<T>(xr, hr, GH, p.g_ih, p.g_hh, p.b_ih, p.b_hh, p.eps, pre, sb);
      } else if (NORM == kNormLayerPerGate) {
        T* vr = const_cast<T*>(xr);  // saved: x W_ih^T + h W_hh^T, normalized per gate
        add_row_run<T>(GH, vr, hr, static_cast<const T*>(nullptr), static_cast<const T*>(nullptr));
        T* sb = st + b * SW;
        for (int64_t g = 0; g < G; ++g)
          ln_row_fwd<T>(vr + g * H, H, p.g_gates + g * H, p.b_gates + g * H, p.eps, pre + g * H,
                                   sb + 2 * g, sb + 2 * g + 1);
      } else {  // batch
        const BnView bv = bn_view(t, m);
        bn_pre_row_run<T>(GH, xr, bv.mean_ih, bv.rstd_ih, p.g_ih, hr, bv.mean_hh, bv.rstd_hh, p.g_hh, p.b_ih, p.b_hh,
                          pre);
      }
      if (fl.fgr) {
        const T* ar = arp + b * 3 * H;
        for (int64_t j = 0; j < H; ++j) {
          pre[fl.gi * H + j] += ar[j];
          pre[fl.gf * H + j] += ar[H + j];
          pre[fl.go * H + j] += ar[2 * H + j];
        }
      }
      T* c_b = cp + b * H;
      units_fwd_run<T>(fl, H, static_cast<const T*>(pre), static_cast<const T*>(c_b), p.w_peep, acts_b,
                       cs_b, fl.fgr ? ap + b * 3 * H : static_cast<T*>(nullptr));
      if (NORM == kNormBatch) continue;  // pass B after the column statistics of c_t
      const T* cnp = cs_b;
      if (NORM != kNormNone) {
        T* sb = st + b * SW + SW - 2;
        ln_row_fwd<T>(cs_b, H, p.g_cell, p.b_cell, p.eps, cn, sb, sb + 1);
        cnp = cn;
      }
      units_out_run<T>(fl, H, static_cast<const T*>(acts_b), cnp, static_cast<const T*>(cs_b), y_b,
                       P ? tmp : hp + b * ldh, c_b);  // with a projection h_t comes from project()
    }
  };
  // Projection of step t, rows [b0, b1), columns [lo, hi) of y_t = m_t W_hr^T (the member's
  // product just wrote them): rows active at t carry them as h_t, the others keep h and output 0.
  auto project = [&](int64_t t, int64_t b0, int64_t b1, int64_t lo, int64_t hi) {
    T* y_t = p.y + t * B * P;
    for (int64_t b = b0; b < b1; ++b) {
      T* yb = y_t + b * P;
      if (active(L, b, t)) std::copy(yb + lo, yb + hi, hp + b * ldh + lo);
      else std::fill(yb + lo, yb + hi, T(0));
    }
  };
  // Batch norm, pass B of rows [b0, b1): h_t from the normalized c_t.
  auto rows_b = [&](int64_t t, int64_t m, int64_t b0, int64_t b1) {
    T* cn = scratch.data_ptr<T>() + m * (2 * GH + H) + 2 * GH;
    const BnView bv = bn_view(t, m);
    for (int64_t b = b0; b < b1; ++b) {
      if (!active(L, b, t)) continue;
      const T* acts_b = p.acts + (t * B + b) * GH;
      const T* cs_b = p.cs + (t * B + b) * H;
      bn_apply_row_run<T>(H, cs_b, bv.mean_c, bv.rstd_c, p.g_cell, p.b_cell, cn);
      units_out_run<T>(fl, H, acts_b, static_cast<const T*>(cn), cs_b, p.y + (t * B + b) * H, hp + b * ldh,
                       cp + b * H);
    }
  };

  // Batch-norm statistics of hw_t's columns [lo, hi) (with their rstd) or, ih = true, of xw_t's.
  auto bn_stats = [&](int64_t t, int64_t m, int64_t lo, int64_t hi, bool ih) {
    T* st = p.stats + t * SW + (ih ? 0 : GH);
    const int64_t slot = std::min<int64_t>(p.t0 + t, p.bn_slots - 1);
    const T* v = ih ? xw_all.data_ptr<T>() + t * B * GH : hw_all.data_ptr<T>() + t * B * GH;
    bn_column_stats_run<T>(v, B, GH, lo, hi, L, t, p.training, (ih ? p.rm_ih : p.rm_hh) + slot * GH,
                           (ih ? p.rv_ih : p.rv_hh) + slot * GH, st, st + NB, bn_acc.data_ptr<A>() + m * 2 * GH);
    T* rstd = ih ? bn_rstd_ih.data() + t * GH : bn_rstd.data() + GH;
    rstd_row_run<T>(hi - lo, static_cast<const T*>(st + NB + lo), p.eps, rstd + lo);
  };

  // Row split: member m's partial statistics of its rows of xw_t, hw_t or c_t.
  auto bn_partial = [&](int64_t t, int64_t m, int64_t lo, int64_t hi, BnPart part) {
    if (!p.training) return;
    const at::Tensor& proj = part == kBnIh ? xw_all : hw_all;
    const T* v = part == kBnCell ? p.cs + t * B * H : proj.template data_ptr<T>() + t * B * GH;
    const int64_t N = part == kBnCell ? H : GH;
    bn_partial_stats_run<T>(v, N, lo, hi, int64_t(0), N, L, t, bn_part.data() + m * PW + part * 2 * GH,
                            bn_count.data() + part * n + m);
  };
  // Row split: member m's own copy of step t's statistics of one part, combined from every
  // member's partials (eval: the running slot); member 0 also writes the saved ones.
  auto bn_combine = [&](int64_t t, int64_t m, BnPart part) {
    const int64_t N = part == kBnCell ? H : GH, off = part * 2 * GH;
    T* mean = bn_own.data() + m * PW + off;
    T* rstd = mean + N;  // holds the variance until converted below
    const int64_t slot = std::min<int64_t>(p.t0 + t, p.bn_slots - 1);
    if (p.training) {
      bn_combine_stats_run<T>(static_cast<const double*>(bn_part.data() + off),
                              static_cast<const int64_t*>(bn_count.data() + part * n), n, PW, N, mean, rstd);
    } else {
      const T* rm = part == kBnIh ? p.rm_ih : part == kBnHh ? p.rm_hh : p.rm_cell;
      const T* rv = part == kBnIh ? p.rv_ih : part == kBnHh ? p.rv_hh : p.rv_cell;
      std::copy_n(rm + slot * N, N, mean);
      std::copy_n(rv + slot * N, N, rstd);
    }
    if (m == 0) {
      T* st = p.stats + t * SW + part * GH;
      std::copy_n(mean, N, st);
      std::copy_n(rstd, N, st + NB);
    }
    rstd_row_run<T>(N, static_cast<const T*>(rstd), p.eps, rstd);
  };

  run_team(n, [&](Team& team) {
    if (bn_rows) {  // members own rows; the statistics are combined after one barrier each
      for (int64_t t = 0; t < Tn; ++t) {
        team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) {
          input_rows(t, m, lo, hi);
          gemm[m].run(hp + lo * ldh, hw_all.data_ptr<T>() + t * B * GH + lo * GH);
          if (fl.fgr) gemm_fgr[m].run(ap + lo * 3 * H, arp + lo * 3 * H);
          bn_partial(t, m, lo, hi, kBnIh);
          bn_partial(t, m, lo, hi, kBnHh);
        });
        team.barrier();
        team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) {
          bn_combine(t, m, kBnIh);
          bn_combine(t, m, kBnHh);
          rows_a(t, m, lo, hi);
          bn_partial(t, m, lo, hi, kBnCell);
        });
        team.barrier();
        team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) {
          bn_combine(t, m, kBnCell);
          rows_b(t, m, lo, hi);
        });
      }
      return;
    }
    if (how == TeamSplit::kRows || joined) {  // each member its rows through every step, no barrier
      team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) {
        for (int64_t t = 0; t < Tn; ++t) {
          T* out = NORM == kNormNone && !joined ? xw_all.data_ptr<T>() + t * B * GH
                                                : hw_all.data_ptr<T>() + (hw_all.dim() == 3 ? t * B * GH : 0);
          if (joined)
            for (int64_t b = lo; b < hi; ++b) std::copy_n(p.x + (t * B + b) * I, I, xh + b * ldh);
          input_rows(t, m, lo, hi);
          gemm[m].run(xh + lo * ldh, out + lo * GH, /*accumulate=*/NORM == kNormNone && !joined);
          if (fl.fgr) gemm_fgr[m].run(ap + lo * 3 * H, arp + lo * 3 * H);
          rows_a(t, m, lo, hi);
          if (P) {
            gemm_hr[m].run(p.ms + (t * B + lo) * H, p.y + (t * B + lo) * P);
            project(t, lo, hi, 0, P);
          }
        }
      });
      return;
    }
    if (NORM == kNormBatch)  // read after the first step's product (the barrier below)
      team.each_part(GH, [&](int64_t m, int64_t lo, int64_t hi) {
        for (int64_t t = 0; t < Tn; ++t) bn_stats(t, m, lo, hi, /*ih=*/true);
      });
    for (int64_t t = 0; t < Tn; ++t) {
      // without norm the product is added to x W_ih^T + biases in place (xw is not saved)
      T* hw_t = NORM == kNormNone ? xw_all.data_ptr<T>() + t * B * GH
                                  : hw_all.data_ptr<T>() + (hw_all.dim() == 3 ? t * B * GH : 0);
      team.each([&](int64_t m) {
        input_rows(t, m, 0, B);  // a team of one (input_in_loop)
        gemm[m].run(hp, hw_t, /*accumulate=*/NORM == kNormNone);
        if (fl.fgr) gemm_fgr[m].run(ap, arp);
        // the columns this member just computed: no barrier between product and statistics
        if (NORM == kNormBatch) bn_stats(t, m, gemm[m].lo(), gemm[m].hi(), /*ih=*/false);
      });
      team.barrier();
      team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) {
        rows_a(t, m, lo, hi);
      });
      team.barrier();
      if (P) {  // h_t = m_t W_hr^T by columns of W_hr's rows
        team.each([&](int64_t m) {
          gemm_hr[m].run(p.ms + t * B * H, p.y + t * B * P);
          project(t, 0, B, gemm_hr[m].lo(), gemm_hr[m].hi());
        });
        team.barrier();
      }
      if (NORM == kNormBatch) {
        T* st = p.stats + t * SW;
        const int64_t slot = std::min<int64_t>(p.t0 + t, p.bn_slots - 1);
        team.each_part(H, [&](int64_t m, int64_t lo, int64_t hi) {
          bn_column_stats_run<T>(static_cast<const T*>(p.cs + t * B * H), B, H, lo, hi, L, t, p.training,
                          p.rm_cell + slot * H, p.rv_cell + slot * H, st + 2 * GH, st + NB + 2 * GH,
                          bn_acc.data_ptr<A>() + m * 2 * GH);
          rstd_row_run<T>(hi - lo, static_cast<const T*>(st + NB + 2 * GH + lo), p.eps, bn_rstd.data() + 2 * GH + lo);
        });
        team.barrier();
        team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) {
          rows_b(t, m, lo, hi);
        });
        team.barrier();
      }
    }
  });
  for (int64_t b = 0; b < B; ++b) std::copy_n(hp + b * ldh, R, p.h_n + b * R);
  std::copy(cp, cp + B * H, p.c_n);
  if (fl.fgr) std::copy(ap, ap + B * 3 * H, p.a_n);
}

struct LstmArgs {
  at::Tensor x;
  c10::optional<at::Tensor> lengths;
  at::Tensor h0, c0;
  c10::optional<at::Tensor> a0;
  at::Tensor w_ih, w_hh;
  c10::optional<at::Tensor> b_ih, b_hh, w_peep, w_fgr, g_ih, g_hh, g_cell, b_cell, g_gates, b_gates;
  c10::optional<at::Tensor> w_hr;
  bool projected() const { return w_hr.has_value() && w_hr->defined(); }
};

// Validates every argument against x and the variant/norm; returns H.
int64_t check_lstm(const char* op, const LstmArgs& a, const LstmFlags& fl, int64_t norm, int64_t variant) {
  TORCH_CHECK(variant >= 0 && variant <= kFGR, op, ": variant must be in [0, 8], got ", variant);
  TORCH_CHECK(norm >= 0 && norm <= kNormBatch, op, ": norm must be in [0, 3], got ", norm);
  const bool proj = a.projected();
  if (proj) {
    TORCH_CHECK(variant == kVanilla && norm == kNormNone, op, ": w_hr (proj_size) is supported for the vanilla "
                "LSTM without norm only (as torch.nn.LSTM), got variant ", variant, " norm ", norm);
    TORCH_CHECK(a.w_hr->dim() == 2 && a.w_hr->size(0) >= 1, op, ": w_hr must be [P, H] with P >= 1, got shape ",
                a.w_hr->sizes());
  }
  const int64_t H = check_recurrence(op, a.x, a.lengths, a.h0, a.w_ih, a.w_hh, fl.num_gates,
                                     proj ? a.w_hr->size(1) : -1);
  const int64_t B = a.x.size(1), GH = fl.num_gates * H;
  auto dt = a.x.scalar_type();
  if (proj) {
    check_tensor(op, "w_hr", *a.w_hr, dt, {a.w_hr->size(0), H});
    check_tensor(op, "w_hh", a.w_hh, dt, {GH, a.w_hr->size(0)});
  }
  check_tensor(op, "c0", a.c0, dt, {B, H});
  check_opt(op, "a0", a.a0, dt, {B, 3 * H}, fl.fgr);
  TORCH_CHECK(!(a.b_ih.has_value() && a.b_ih->defined()) == !(a.b_hh.has_value() && a.b_hh->defined()), op,
              ": b_ih and b_hh must be given together");
  check_opt(op, "b_ih", a.b_ih, dt, {GH}, false);
  check_opt(op, "b_hh", a.b_hh, dt, {GH}, false);
  check_opt(op, "w_peep", a.w_peep, dt, {fl.num_peep, H}, fl.num_peep > 0);
  check_opt(op, "w_fgr", a.w_fgr, dt, {3 * H, 3 * H}, fl.fgr);
  bool two = norm == kNormLayer || norm == kNormBatch;
  check_opt(op, "g_ih", a.g_ih, dt, {GH}, two);
  check_opt(op, "g_hh", a.g_hh, dt, {GH}, two);
  check_opt(op, "g_cell", a.g_cell, dt, {H}, norm != kNormNone);
  check_opt(op, "b_cell", a.b_cell, dt, {H}, norm != kNormNone);
  check_opt(op, "g_gates", a.g_gates, dt, {GH}, norm == kNormLayerPerGate);
  check_opt(op, "b_gates", a.b_gates, dt, {GH}, norm == kNormLayerPerGate);
  return H;
}

template <typename T>
void fill_common(LstmFwdParams<T>& p, const LstmArgs& a, const LstmFlags& fl, int64_t norm, double eps) {
  p.steps = a.x.size(0); p.batch = a.x.size(1); p.input = a.x.size(2);
  p.proj = a.projected() ? a.w_hr->size(0) : 0;
  p.hidden = p.proj ? a.w_hr->size(1) : a.w_hh.size(1); p.gates = fl.num_gates;
  p.w_hr = ptr<T>(a.w_hr);
  p.flags = fl; p.norm = norm; p.eps = eps;
  p.x = a.x.data_ptr<T>(); p.lengths = len_ptr(a.lengths);
  p.h0 = a.h0.data_ptr<T>(); p.c0 = a.c0.data_ptr<T>(); p.a0 = ptr<T>(a.a0);
  p.w_ih = a.w_ih.data_ptr<T>(); p.w_hh = a.w_hh.data_ptr<T>();
  p.b_ih = ptr<T>(a.b_ih); p.b_hh = ptr<T>(a.b_hh); p.w_peep = ptr<T>(a.w_peep); p.w_fgr = ptr<T>(a.w_fgr);
  p.g_ih = ptr<T>(a.g_ih); p.g_hh = ptr<T>(a.g_hh); p.g_cell = ptr<T>(a.g_cell); p.b_cell = ptr<T>(a.b_cell);
  p.g_gates = ptr<T>(a.g_gates); p.b_gates = ptr<T>(a.b_gates);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
lstm_fwd_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& lengths, const at::Tensor& h0,
             const at::Tensor& c0, const c10::optional<at::Tensor>& a0, const at::Tensor& w_ih,
             const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
             const c10::optional<at::Tensor>& w_peep, const c10::optional<at::Tensor>& w_fgr,
             const c10::optional<at::Tensor>& g_ih, const c10::optional<at::Tensor>& g_hh,
             const c10::optional<at::Tensor>& g_cell, const c10::optional<at::Tensor>& b_cell,
             const c10::optional<at::Tensor>& g_gates, const c10::optional<at::Tensor>& b_gates,
             const c10::optional<at::Tensor>& rm_ih, const c10::optional<at::Tensor>& rv_ih,
             const c10::optional<at::Tensor>& rm_hh, const c10::optional<at::Tensor>& rv_hh,
             const c10::optional<at::Tensor>& rm_cell, const c10::optional<at::Tensor>& rv_cell,
             int64_t variant, int64_t norm, bool training, int64_t t0, double eps,
             const c10::optional<at::Tensor>& w_hr, int64_t /*cuda_path: the CUDA kernels' choice*/) {
  refresh_simd_level();
  LstmArgs args{x, lengths, h0, c0, a0, w_ih, w_hh, b_ih, b_hh, w_peep, w_fgr, g_ih, g_hh, g_cell, b_cell,
                g_gates, b_gates, w_hr};
  TORCH_CHECK(variant >= 0 && variant <= kFGR, kFwd, ": variant must be in [0, 8], got ", variant);
  const LstmFlags fl = lstm_flags(static_cast<int>(variant));
  const int64_t H = check_lstm(kFwd, args, fl, norm, variant);
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), G = fl.num_gates, GH = G * H;
  const int64_t R = w_hh.size(1);  // H, or P with a projection
  auto dt = x.scalar_type();
  int64_t S = 0;
  if (norm == kNormBatch) {
    TORCH_CHECK(rm_ih.has_value() && rm_ih->defined(), kFwd, ": batch norm needs the running statistics");
    S = rm_ih->size(0);
    TORCH_CHECK(S >= 1, kFwd, ": running statistics need at least one slot, got ", rm_ih->sizes());
    check_opt(kFwd, "rm_ih", rm_ih, dt, {S, GH}, true);
    check_opt(kFwd, "rv_ih", rv_ih, dt, {S, GH}, true);
    check_opt(kFwd, "rm_hh", rm_hh, dt, {S, GH}, true);
    check_opt(kFwd, "rv_hh", rv_hh, dt, {S, GH}, true);
    check_opt(kFwd, "rm_cell", rm_cell, dt, {S, H}, true);
    check_opt(kFwd, "rv_cell", rv_cell, dt, {S, H}, true);
  }
  TORCH_CHECK(t0 >= 0, kFwd, ": t0 must be >= 0, got ", t0);
  auto opts = x.options();
  // x W_ih^T for all steps; without norm the biases are added here once (the recurrent
  // products are then added in place, see lstm_forward), else after normalization. Or none:
  // the input projection joins the recurrent product, whose weight is then W_x.
  const LstmTeam plan = lstm_team(B, w_hh, w_hr);
  const bool has_bias = b_ih.has_value() && b_ih->defined();
  const at::Tensor w_in = input_in_loop(norm, plan, w_ih) ? w_ih : at::Tensor();  // W_ih for the loop
  at::Tensor xw, w_rec = w_hh;
  if (joins_input(norm, args.projected(), plan)) {
    w_rec = has_bias ? at::cat({w_ih, (*b_ih + *b_hh).unsqueeze(1), w_hh}, 1) : at::cat({w_ih, w_hh}, 1);
  } else if (norm == kNormNone && has_bias) {
    xw = cached_empty({T * B, GH}, opts);
    const at::Tensor bias = *b_ih + *b_hh;
    gemm_out(xw, x.reshape({T * B, I}), w_ih.t(), &bias);
    xw = xw.view({T, B, GH});
  } else if (w_in.defined()) {
    xw = cached_empty({T, B, GH}, opts);  // filled step by step by lstm_forward
  } else {
    xw = cached_mm(x.reshape({T * B, I}), w_ih.t()).view({T, B, GH});
  }
  bool two = norm == kNormLayer || norm == kNormBatch;
  at::Tensor hw = two ? cached_empty({T, B, GH}, opts) : cached_empty({B, GH}, opts);
  at::Tensor y = cached_empty({T, B, R}, opts), h_n = cached_empty({B, R}, opts), c_n = cached_empty({B, H}, opts);
  at::Tensor ms = args.projected() ? cached_empty({T, B, H}, opts) : at::Tensor();  // m_t, returned as hw
  at::Tensor a_n = fl.fgr ? cached_empty({B, 3 * H}, opts) : none_like(x);
  at::Tensor acts = cached_empty({T, B, GH}, opts), cs = cached_empty({T, B, H}, opts);
  at::Tensor stats = norm == kNormNone ? none_like(x)
                     : norm == kNormBatch ? cached_empty({T, 2, 2 * GH + H}, opts)
                                          : cached_empty({T, B, stats_width(norm, G, H)}, opts);
  AT_DISPATCH_FLOATING_TYPES(dt, "lstm_fwd_cpu", [&] {
    LstmFwdParams<scalar_t> p{};
    fill_common(p, args, fl, norm, eps);
    p.bn_slots = static_cast<int>(S);
    p.training = training;
    // slot min(t0 + t, S - 1) == min(min(t0, S - 1) + t, S - 1): clamp before narrowing to int
    p.t0 = static_cast<int>(std::min<int64_t>(t0, std::max<int64_t>(S - 1, 0)));
    p.rm_ih = ptr<scalar_t>(rm_ih); p.rv_ih = ptr<scalar_t>(rv_ih);
    p.rm_hh = ptr<scalar_t>(rm_hh); p.rv_hh = ptr<scalar_t>(rv_hh);
    p.rm_cell = ptr<scalar_t>(rm_cell); p.rv_cell = ptr<scalar_t>(rv_cell);
    p.y = y.data_ptr<scalar_t>(); p.h_n = h_n.data_ptr<scalar_t>(); p.c_n = c_n.data_ptr<scalar_t>();
    p.a_n = fl.fgr ? a_n.data_ptr<scalar_t>() : nullptr;
    p.acts = acts.data_ptr<scalar_t>(); p.cs = cs.data_ptr<scalar_t>();
    p.stats = norm == kNormNone ? nullptr : stats.data_ptr<scalar_t>();
    p.ms = ms.defined() ? ms.data_ptr<scalar_t>() : nullptr;
    switch (norm) {
      case kNormNone: lstm_forward<scalar_t, kNormNone>(p, xw, hw, w_rec, w_fgr, w_hr, plan, w_in); break;
      case kNormLayer: lstm_forward<scalar_t, kNormLayer>(p, xw, hw, w_rec, w_fgr, w_hr, plan, w_in); break;
      case kNormLayerPerGate:
        lstm_forward<scalar_t, kNormLayerPerGate>(p, xw, hw, w_rec, w_fgr, w_hr, plan, w_in);
        break;
      default: lstm_forward<scalar_t, kNormBatch>(p, xw, hw, w_rec, w_fgr, w_hr, plan, w_in); break;
    }
  });
  // Save only what backward reads: no projections without norm, one sum for layer_per_gate;
  // with a projection (norm none) the hw slot carries m_t.
  if (norm == kNormNone) xw = none_like(x);
  if (!two) hw = ms.defined() ? ms : none_like(x);
  return {y, h_n, c_n, a_n, acts, cs, xw, hw, stats};
}

// ----------------------------------------------------------------------------- backward

// Which gate-gradient buffers hold every step ([T, B, GH]), not one ([B, GH]).
struct DgSteps {
  bool dpre = true, dxw = true, dhw = true;
};

// Where members own rows (owns_rows), the backward computes dx = dxw W_ih in its loop, each
// member from its rows' dxw_t right after they are written (and still in its cache), instead of
// one GEMM after the loop that reads dxw [T, B, 4H] back; batch norm's ih part then runs in the
// loop too. Measured fwd+bwd, one process alternating with a temporary switch to the GEMM after
// the loop, median of 21: pixel MNIST LSTM / LN-LSTM 127.1 / 182.4 ms against 132.4 / 191.9; row
// MNIST within 0.1-0.2 ms (17.3 / 21.4-21.7, a loaded hour). BN-LSTM (its ih part and dx in the
// loop against both after it), median of 31: pixel MNIST 210.0 against 226.1 ms, row MNIST 17.3
// against 17.7; one thread (a team of one) 333.6 / 29.7 against 337.3 / 29.7.
// dx: [T, B, I], filled in the loop (owns_rows), or undefined; wg: the weight gradients
// accumulated in the loop (members own rows, float32 on the AVX-512 kernel), or null.
template <typename T, int NORM>
void lstm_backward(const LstmBwdParams<T>& p, const DgSteps& all, const at::Tensor& w_hh,
                   const c10::optional<at::Tensor>& w_fgr, const c10::optional<at::Tensor>& w_hr,
                   ThreadAcc& acc_bias, ThreadAcc& acc_peep, ThreadAcc& acc_gates, at::Tensor& dg_ih,
                   at::Tensor& dg_hh, at::Tensor& dg_cell, at::Tensor& db_cell, const LstmTeam& plan,
                   const at::Tensor& w_ih, at::Tensor& dx, StepWeightGrads* wg) {
  const int64_t Tn = p.steps, B = p.batch, H = p.hidden, G = p.gates, GH = G * H;
  const int64_t P = p.proj, R = P ? P : H;
  const LstmFlags fl = p.flags;
  const int64_t* L = p.lengths;
  auto opts = w_hh.options();
  const int64_t SW = stats_width(NORM, G, H), NB = 2 * GH + H;
  // step t's gate gradients: its own rows of buffers that keep every step, else the one step's
  auto dpre_at = [&](int64_t t) { return p.dpre + (all.dpre ? t * B * GH : 0); };
  auto dxw_at = [&](int64_t t) { return p.dxw + (all.dxw ? t * B * GH : 0); };
  auto dhw_at = [&](int64_t t) { return p.dhw + (all.dhw ? t * B * GH : 0); };
  // carried gradients
  T* dh = p.dh0;
  T* dc = p.dc0;
  T* da = p.da0;
  std::copy(p.dh_n, p.dh_n + B * R, dh);
  std::copy(p.dc_n, p.dc_n + B * H, dc);
  if (fl.fgr) std::copy(p.da_n, p.da_n + B * 3 * H, da);
  at::Tensor d_o = cached_empty({B, H}, opts), d_cn = cached_empty({B, H}, opts), dh_new = cached_empty({B, R}, opts);
  // projection: this step's d m_t = (dh_t + dy_t) W_hr, and zeros standing in for dy in pass 1
  at::Tensor d_m = P ? cached_empty({B, H}, opts) : at::Tensor();
  T* dmp = P ? d_m.data_ptr<T>() : nullptr;
  const std::vector<T> zeros(P ? H : 0, T(0));
  at::Tensor da_new = fl.fgr ? cached_empty({B, 3 * H}, opts) : at::Tensor();
  at::Tensor dpre_ifo = fl.fgr ? cached_empty({B, 3 * H}, opts) : at::Tensor();
  T* dop = d_o.data_ptr<T>();
  T* dcnp = d_cn.data_ptr<T>();
  T* dhn = dh_new.data_ptr<T>();
  T* dan = fl.fgr ? da_new.data_ptr<T>() : nullptr;
  T* difo = fl.fgr ? dpre_ifo.data_ptr<T>() : nullptr;
  // batch norm: the rstd of every step's columns, computed before the time loop
  std::vector<T> bn_rstd(NORM == kNormBatch ? Tn * NB : 0);
  // the team (see lstm_forward), one member per accumulator row: member m owns columns of dh
  // (W_hh columns, packed once), rows of the row passes, BN columns, and row m of the accumulators
  const int64_t n = plan.n;
  const TeamSplit how = plan.how;
  TORCH_CHECK(acc_gates.rows() == n, "fusedrnn: lstm_backward: one accumulator row per team member");
  const bool dx_loop = dx.defined();
  auto gemm_dx = dx_loop ? member_gemms<T>(w_ih, B, /*transposed=*/false, n, how) : std::vector<RecurrentGemm<T>>();
  const int64_t I = p.input;
  T* dxp = dx_loop ? dx.data_ptr<T>() : nullptr;
  auto gemm_bwd = member_gemms<T>(w_hh, B, /*transposed=*/false, n, how);
  auto gemm_fgr =
      fl.fgr ? member_gemms<T>(*w_fgr, B, /*transposed=*/false, n, how) : std::vector<RecurrentGemm<T>>();
  auto gemm_hr = P ? member_gemms<T>(*w_hr, B, /*transposed=*/false, n, how) : std::vector<RecurrentGemm<T>>();
  at::Tensor scratch = cached_empty({n, H}, opts);  // per member: cn [H]
  at::Tensor bn_acc = cached_empty({NORM == kNormBatch ? n : 0, 2 * GH}, opts.dtype(at::kDouble));
  T* dgc = dg_cell.defined() && dg_cell.numel() ? dg_cell.data_ptr<T>() : nullptr;
  T* dbc = db_cell.defined() && db_cell.numel() ? db_cell.data_ptr<T>() : nullptr;

  // Pass 1 (rows): dh -> d_o, d_cn; for norm none / layer norm of c also dc through the norm.
  auto pass1 = [&](int64_t t, int64_t m, int64_t b0, int64_t b1) {
    const T* acts_t = p.acts + t * B * GH;
    const T* cs_t = p.cs + t * B * H;
    const T* dy_t = P ? nullptr : p.dy + t * B * H;  // with a projection dh + dy is in d_m
    const T* st = p.stats ? p.stats + (NORM == kNormBatch ? t * SW : t * B * SW) : nullptr;
    T* cn = scratch.data_ptr<T>() + m * H;
    T* dgc_row = (NORM == kNormLayer || NORM == kNormLayerPerGate) ? acc_gates.row<T>(m) : nullptr;
    for (int64_t b = b0; b < b1; ++b) {
      if (!active(L, b, t)) continue;
      const T* acts_b = acts_t + b * GH;
      const T* cs_b = cs_t + b * H;
      if (NORM == kNormNone) {
        for (int64_t j = 0; j < H; ++j) cn[j] = cs_b[j];
      } else if (NORM == kNormBatch) {
        bn_apply_row_run<T>(H, cs_b, static_cast<const T*>(st + 2 * GH),
                            static_cast<const T*>(bn_rstd.data() + t * NB + 2 * GH), p.g_cell, p.b_cell, cn);
      } else {
        const T* sb = st + b * SW + SW - 2;
        for (int64_t j = 0; j < H; ++j) cn[j] = norm_apply(cs_b[j], sb[0], sb[1], p.g_cell[j], p.b_cell[j]);
      }
      units_out_bwd_run<T>(fl, H, static_cast<const T*>(P ? dmp + b * H : dh + b * H),
                           P ? zeros.data() : dy_t + b * H, acts_b, static_cast<const T*>(cn), dop + b * H,
                           dcnp + b * H);
      if (NORM == kNormLayer || NORM == kNormLayerPerGate) {
        // dgc_row layout: [dg_cell H | db_cell H | dg_ih/dg_gates GH | dg_hh/db_gates GH]
        const T* sb = st + b * SW + SW - 2;
        ln_row_bwd<T>(cs_b, dcnp + b * H, H, p.g_cell, sb[0], sb[1], dcnp + b * H, dgc_row,
                                 dgc_row + H);
      }
    }
  };
  // Pass 2 (rows): gates backward -> dpre, dc carry, peepholes; row norms of the gates.
  auto pass2 = [&](int64_t t, int64_t m, int64_t b0, int64_t b1) {
    const T* acts_t = p.acts + t * B * GH;
    const T* cs_t = p.cs + t * B * H;
    const T* st = p.stats ? p.stats + (NORM == kNormBatch ? t * SW : t * B * SW) : nullptr;
    T* dpre_t = dpre_at(t);
    T* dpeep = fl.num_peep ? acc_peep.row<T>(m) : nullptr;
    T* dbias = p.b_ih ? acc_bias.row<T>(m) : nullptr;
    T* dgr = (NORM == kNormLayer || NORM == kNormLayerPerGate) ? acc_gates.row<T>(m) + 2 * H : nullptr;
    for (int64_t b = b0; b < b1; ++b) {
      if (!active(L, b, t)) {  // finished sequence: no gradient into this step's weights or inputs
        std::fill(dpre_t + b * GH, dpre_t + (b + 1) * GH, T(0));
        if (p.dxw != p.dpre) std::fill_n(dxw_at(t) + b * GH, GH, T(0));
        if (p.dhw != p.dxw) std::fill_n(dhw_at(t) + b * GH, GH, T(0));
        if (fl.fgr) std::fill(difo + b * 3 * H, difo + (b + 1) * 3 * H, T(0));
        continue;
      }
      const T* acts_b = acts_t + b * GH;
      const T* cs_b = cs_t + b * H;
      const T* cprev = t > 0 ? p.cs + (t - 1) * B * H + b * H : p.c0 + b * H;
      T* dpre_b = dpre_t + b * GH;
      units_bwd_run<T>(fl, H, static_cast<const T*>(dop + b * H), static_cast<const T*>(dcnp + b * H),
                       dc + b * H, fl.fgr ? static_cast<const T*>(da + b * 3 * H) : static_cast<const T*>(nullptr),
                       acts_b, cprev, cs_b, p.w_peep, dpre_b, dpeep);
      if (dbias) add_row_run<T>(GH, dbias, static_cast<const T*>(dpre_b), static_cast<const T*>(nullptr),
                                static_cast<const T*>(nullptr));
      if (fl.fgr) {  // the FGR gates' gradients, gathered for da_{t-1} = dpre_ifo W_fgr
        std::copy(dpre_b + fl.gi * H, dpre_b + fl.gi * H + H, difo + b * 3 * H);
        std::copy(dpre_b + fl.gf * H, dpre_b + fl.gf * H + H, difo + b * 3 * H + H);
        std::copy(dpre_b + fl.go * H, dpre_b + fl.go * H + H, difo + b * 3 * H + 2 * H);
      }
      const T* sb = st ? st + b * SW : nullptr;
      if (NORM == kNormLayer) {
        const T* xr = p.xw + (t * B + b) * GH;
        const T* hr = p.hw + (t * B + b) * GH;
        ln_rows2_bwd<T>(xr, hr, dpre_b, dpre_b, GH, p.g_ih, p.g_hh, sb, dxw_at(t) + b * GH, dhw_at(t) + b * GH,
                        dgr, dgr + GH);
      } else if (NORM == kNormLayerPerGate) {
        const T* vr = p.xw + (t * B + b) * GH;
        T* dv = dxw_at(t) + b * GH;
        for (int64_t g = 0; g < G; ++g)
          ln_row_bwd<T>(vr + g * H, dpre_b + g * H, H, p.g_gates + g * H, sb[2 * g], sb[2 * g + 1],
                                   dv + g * H, dgr + g * H, dgr + GH + g * H);
      }
    }
  };

  // dW_ih += dxw_t^T x_t and dW_hh += dhw_t^T h_{t-1} for member m's rows [lo, hi) (wg).
  // Where dhw is dxw, one product dxw_t^T [x_t | h_{t-1}] (xh_rows: the member's rows of it).
  const bool shared_dg = p.dhw == p.dxw;
  at::Tensor xh_rows = wg && shared_dg ? cached_empty({n, wg->max_rows() * (I + R)}, opts) : at::Tensor();
  auto weight_step = [&](int64_t t, int64_t m, int64_t lo, int64_t hi) {
    if constexpr (std::is_same<T, float>::value) {
      const int64_t rows = hi - lo;
      const float* x_t = p.x + (t * B + lo) * I;
      const float* hprev = t > 0 ? p.y + ((t - 1) * B + lo) * R : p.h0 + lo * R;
      if (shared_dg) {
        float* xh = xh_rows.data_ptr<float>() + m * xh_rows.size(1);
        for (int64_t r = 0; r < rows; ++r) {
          std::copy_n(x_t + r * I, I, xh + r * (I + R));
          std::copy_n(hprev + r * R, R, xh + r * (I + R) + I);
        }
        wg->add(m, 0, dxw_at(t) + lo * GH, GH, xh, I + R, rows);
        return;
      }
      wg->add(m, 0, dxw_at(t) + lo * GH, GH, x_t, I, rows);
      wg->add(m, 1, dhw_at(t) + lo * GH, GH, hprev, R, rows);
    }
  };

  // Batch norm backward of the columns [lo, hi) of step t: the hh part (in the loop: dh_{t-1}
  // needs it) or, ih = true, the ih part (after the loop, from the kept dpre of every step); the
  // column split's (the row split runs both in its loop: bn_partial / bn_apply).
  auto bn_bwd = [&](int64_t t, int64_t m, int64_t lo, int64_t hi, bool ih) {
    const T* st = p.stats + t * SW + (ih ? 0 : GH);
    const T* v = (ih ? p.xw : p.hw) + t * B * GH;
    T* dv = ih ? dxw_at(t) : dhw_at(t);
    bn_column_bwd_run<T>(v, static_cast<const T*>(dpre_at(t)), dv, B, GH, lo, hi, L, t, p.training, st,
                         static_cast<const T*>(bn_rstd.data() + t * NB + (ih ? 0 : GH)), ih ? p.g_ih : p.g_hh,
                         (ih ? dg_ih : dg_hh).data_ptr<T>(), static_cast<T*>(nullptr),
                         bn_acc.data_ptr<A>() + m * 2 * GH);
  };

  // dh_{t-1} (and FGR's da_{t-1}) of rows [lo, hi), carried into step t - 1 for the rows still
  // active at t.
  auto carry = [&](int64_t t, int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      if (!active(L, b, t)) continue;
      std::copy(dhn + b * R, dhn + (b + 1) * R, dh + b * R);
      if (fl.fgr) std::copy(dan + b * 3 * H, dan + (b + 1) * 3 * H, da + b * 3 * H);
    }
  };
  // Projection: dh_t + dy_t of rows [lo, hi) (zero where finished), kept for dW_hr.
  auto proj_grad = [&](int64_t t, int64_t lo, int64_t hi) {
    const T* dy_t = p.dy + t * B * P;
    T* g_t = p.dhy + t * B * P;
    for (int64_t b = lo; b < hi; ++b) {
      if (active(L, b, t))
        for (int64_t k = 0; k < P; ++k) g_t[b * P + k] = dh[b * P + k] + dy_t[b * P + k];
      else
        std::fill(g_t + b * P, g_t + (b + 1) * P, T(0));
    }
  };

  // Batch norm under the row split: per member its rows' partial sums of the backward
  // [cell s1 H | cell s2 H | hh s1 GH | hh s2 GH | ih s1 GH | ih s2 GH], its gain gradients
  // [dg_cell H | db_cell H | dg_hh GH | dg_ih GH] (summed after the loop) and scratch for the
  // apply's coefficients. All three norms of a step run in the loop: the ih part's sums come from
  // the same rows of dpre_t as the hh part's, so they share its barrier, and dxw_t is then
  // written while dpre_t is in the member's cache (and dx can follow, as without batch norm).
  const bool bn_rows = NORM == kNormBatch && owns_rows(plan);
  const int64_t QW = 2 * (2 * GH + H);
  std::vector<double> bn_q(bn_rows ? n * QW : 0);
  std::vector<T> bn_scr(bn_rows ? n * 3 * GH : 0);
  ThreadAcc bn_dg(n, bn_rows ? 2 * H + 2 * GH : 0, opts);
  enum BnPart { kBnCell, kBnHh, kBnIh };
  // Row split: member m's partial sums over its rows of one norm (in bn_q at the norm's offset).
  auto bn_partial = [&](int64_t t, int64_t m, int64_t lo, int64_t hi, BnPart part) {
    const T* st = p.stats + t * SW;
    T* dg = bn_dg.row<T>(m);
    double* q = bn_q.data() + m * QW;
    if (part == kBnCell) {
      bn_partial_bwd_run<T>(p.cs + t * B * H, static_cast<const T*>(dcnp), H, lo, hi, int64_t(0), H, L, t,
                            st + 2 * GH, static_cast<const T*>(bn_rstd.data() + t * NB + 2 * GH), p.g_cell, q, dg,
                            dg + H);
      return;
    }
    const bool ih = part == kBnIh;
    bn_partial_bwd_run<T>((ih ? p.xw : p.hw) + t * B * GH, static_cast<const T*>(dpre_at(t)), GH, lo, hi,
                          int64_t(0), GH, L, t, st + (ih ? 0 : GH),
                          static_cast<const T*>(bn_rstd.data() + t * NB + (ih ? 0 : GH)), ih ? p.g_ih : p.g_hh,
                          q + 2 * H + (ih ? 2 * GH : 0), dg + 2 * H + (ih ? GH : 0), static_cast<T*>(nullptr));
  };
  // Row split: one norm's backward of member m's rows: the cell's in place on d_cn, the hh
  // part's dpre -> dhw, the ih part's dpre -> dxw (in place unless FGR keeps dpre; after hh).
  auto bn_apply = [&](int64_t t, int64_t m, int64_t lo, int64_t hi, BnPart part) {
    const T* st = p.stats + t * SW;
    T* scr = bn_scr.data() + m * 3 * GH;
    if (part == kBnCell) {
      bn_apply_bwd_run<T>(p.cs + t * B * H, static_cast<const T*>(dcnp), dcnp, B, lo, hi, H, L, t, p.training,
                          st + 2 * GH, static_cast<const T*>(bn_rstd.data() + t * NB + 2 * GH), p.g_cell,
                          static_cast<const double*>(bn_q.data()), n, QW, scr);
      return;
    }
    const bool ih = part == kBnIh;
    bn_apply_bwd_run<T>((ih ? p.xw : p.hw) + t * B * GH, static_cast<const T*>(dpre_at(t)),
                        ih ? dxw_at(t) : dhw_at(t), B, lo, hi, GH, L, t, p.training, st + (ih ? 0 : GH),
                        static_cast<const T*>(bn_rstd.data() + t * NB + (ih ? 0 : GH)), ih ? p.g_ih : p.g_hh,
                        static_cast<const double*>(bn_q.data() + 2 * H + (ih ? 2 * GH : 0)), n, QW, scr);
  };

  run_team(n, [&](Team& team) {
    if (NORM == kNormBatch) {
      team.each_part(Tn * NB, [&](int64_t m, int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi;) {  // step by step: each step's variances are contiguous
          const int64_t t = i / NB, c = i % NB, n = std::min(hi - i, NB - c);
          rstd_row_run<T>(n, static_cast<const T*>(p.stats + t * SW + NB + c), p.eps, bn_rstd.data() + i);
          i += n;
        }
      });
      team.barrier();
    }
    if (bn_rows) {  // members own rows; the norms' sums are combined after one barrier each
      for (int64_t t = Tn - 1; t >= 0; --t) {
        team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) {
          pass1(t, m, lo, hi);
          bn_partial(t, m, lo, hi, kBnCell);
        });
        team.barrier();
        team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) {
          bn_apply(t, m, lo, hi, kBnCell);
          pass2(t, m, lo, hi);
          bn_partial(t, m, lo, hi, kBnHh);
          bn_partial(t, m, lo, hi, kBnIh);
        });
        team.barrier();
        team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) {
          bn_apply(t, m, lo, hi, kBnHh);
          bn_apply(t, m, lo, hi, kBnIh);
          if (wg) weight_step(t, m, lo, hi);
          if (dx_loop) gemm_dx[m].run(dxw_at(t) + lo * GH, dxp + (t * B + lo) * I);
          gemm_bwd[m].run(dhw_at(t) + lo * GH, dhn + lo * R);
          if (fl.fgr) gemm_fgr[m].run(difo + lo * 3 * H, dan + lo * 3 * H);
          carry(t, lo, hi);
        });
      }
      return;
    }
    if (dx_loop) {  // members own rows: each its rows through every step, no barrier
      team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) {
        for (int64_t t = Tn - 1; t >= 0; --t) {
          if (P) {
            proj_grad(t, lo, hi);
            gemm_hr[m].run(p.dhy + (t * B + lo) * P, dmp + lo * H);
          }
          pass1(t, m, lo, hi);
          pass2(t, m, lo, hi);
          if (wg) weight_step(t, m, lo, hi);
          if (dx_loop) gemm_dx[m].run(dxw_at(t) + lo * GH, dxp + (t * B + lo) * I);
          gemm_bwd[m].run(dhw_at(t) + lo * GH, dhn + lo * R);
          if (fl.fgr) gemm_fgr[m].run(difo + lo * 3 * H, dan + lo * 3 * H);
          carry(t, lo, hi);
        }
      });
      return;
    }
    for (int64_t t = Tn - 1; t >= 0; --t) {
      const T* cs_t = p.cs + t * B * H;
      const T* st = p.stats ? p.stats + (NORM == kNormBatch ? t * SW : t * B * SW) : nullptr;
      if (P) {  // d m_t by columns of W_hr, from every row's dh_t + dy_t (each member's carried rows)
        team.each_part(B, [&](int64_t, int64_t lo, int64_t hi) { proj_grad(t, lo, hi); });
        team.barrier();
        team.each([&](int64_t m) { gemm_hr[m].run(p.dhy + t * B * P, dmp); });
        team.barrier();
      }
      team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) {
        pass1(t, m, lo, hi);
      });
      if (NORM == kNormBatch) {  // d_cn -> dc through BN(c), by columns
        team.barrier();
        team.each_part(H, [&](int64_t m, int64_t lo, int64_t hi) {
          bn_column_bwd_run<T>(cs_t, static_cast<const T*>(dcnp), dcnp, B, H, lo, hi, L, t, p.training,
                               st + 2 * GH, static_cast<const T*>(bn_rstd.data() + t * NB + 2 * GH), p.g_cell, dgc,
                               dbc, bn_acc.data_ptr<A>() + m * 2 * GH);
        });
        team.barrier();
      }
      team.each_part(B, [&](int64_t m, int64_t lo, int64_t hi) {
        pass2(t, m, lo, hi);
      });
      team.barrier();
      if (NORM == kNormBatch) {
        team.each_part(GH, [&](int64_t m, int64_t lo, int64_t hi) { bn_bwd(t, m, lo, hi, /*ih=*/false); });
        team.barrier();
      }
      // Recurrent gradients: dh_{t-1} = dhw_t W_hh, da_{t-1} = dpre_ifo W_fgr, by columns.
      team.each([&](int64_t m) {
        gemm_bwd[m].run(dhw_at(t), dhn);
        if (fl.fgr) gemm_fgr[m].run(difo, dan);
      });
      team.barrier();
      // carried into step t - 1 (the rows of the next row pass)
      team.each_part(B, [&](int64_t, int64_t lo, int64_t hi) { carry(t, lo, hi); });
    }
    if (NORM == kNormBatch)  // same steps' order as in the loop, for dg_ih's sums
      team.each_part(GH, [&](int64_t m, int64_t lo, int64_t hi) {
        for (int64_t t = Tn - 1; t >= 0; --t) bn_bwd(t, m, lo, hi, /*ih=*/true);
      });
  });
  if (bn_rows) {
    at::Tensor tot = bn_dg.total();
    dg_cell.add_(tot.narrow(0, 0, H));
    db_cell.add_(tot.narrow(0, H, H));
    dg_hh.add_(tot.narrow(0, 2 * H, GH));
    dg_ih.add_(tot.narrow(0, 2 * H + GH, GH));
  }
}

using T17 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                       at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                       at::Tensor, at::Tensor, at::Tensor>;

T17 lstm_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n, const at::Tensor& grad_a_n,
    const at::Tensor& x, const c10::optional<at::Tensor>& lengths, const at::Tensor& h0, const at::Tensor& c0,
    const c10::optional<at::Tensor>& a0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& w_peep, const c10::optional<at::Tensor>& w_fgr,
    const c10::optional<at::Tensor>& g_ih, const c10::optional<at::Tensor>& g_hh,
    const c10::optional<at::Tensor>& g_cell, const c10::optional<at::Tensor>& b_cell,
    const c10::optional<at::Tensor>& g_gates, const c10::optional<at::Tensor>& b_gates, const at::Tensor& y,
    const at::Tensor& acts, const at::Tensor& cs, const at::Tensor& xw, const at::Tensor& hw,
    const at::Tensor& stats, int64_t variant, int64_t norm, bool training, double eps,
    const c10::optional<at::Tensor>& w_hr, int64_t /*cuda_path: the CUDA kernels' choice*/) {
  refresh_simd_level();
  LstmArgs args{x, lengths, h0, c0, a0, w_ih, w_hh, b_ih, b_hh, w_peep, w_fgr, g_ih, g_hh, g_cell, b_cell,
                g_gates, b_gates, w_hr};
  TORCH_CHECK(variant >= 0 && variant <= kFGR, kBwd, ": variant must be in [0, 8], got ", variant);
  const LstmFlags fl = lstm_flags(static_cast<int>(variant));
  const int64_t H = check_lstm(kBwd, args, fl, norm, variant);
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), G = fl.num_gates, GH = G * H;
  const int64_t R = w_hh.size(1), P = args.projected() ? R : 0;  // R: width of h, P with a projection
  auto dt = x.scalar_type();
  bool two = norm == kNormLayer || norm == kNormBatch;
  check_tensor(kBwd, "grad_y", grad_y, dt, {T, B, R});
  check_tensor(kBwd, "grad_h_n", grad_h_n, dt, {B, R});
  check_tensor(kBwd, "grad_c_n", grad_c_n, dt, {B, H});
  if (fl.fgr) check_tensor(kBwd, "grad_a_n", grad_a_n, dt, {B, 3 * H});
  check_tensor(kBwd, "y", y, dt, {T, B, R});
  check_tensor(kBwd, "acts", acts, dt, {T, B, GH});
  check_tensor(kBwd, "cs", cs, dt, {T, B, H});
  if (norm != kNormNone) check_tensor(kBwd, "xw", xw, dt, {T, B, GH});
  if (two) check_tensor(kBwd, "hw", hw, dt, {T, B, GH});
  if (P) check_tensor(kBwd, "hw (m_t of the projected LSTM)", hw, dt, {T, B, H});
  if (norm != kNormNone)
    check_tensor(kBwd, "stats", stats, dt,
                 norm == kNormBatch ? std::vector<int64_t>{T, 2, 2 * GH + H}
                                    : std::vector<int64_t>{T, B, stats_width(norm, G, H)});
  auto opts = x.options();
  at::Tensor dh0 = cached_empty({B, R}, opts), dc0 = cached_empty({B, H}, opts);
  at::Tensor dhy = P ? cached_empty({T, B, P}, opts) : at::Tensor();
  at::Tensor da0 = fl.fgr ? cached_empty({B, 3 * H}, opts) : none_like(x);
  const bool has_bias = b_ih.has_value() && b_ih->defined();
  const LstmTeam plan = lstm_team(B, w_hh, w_hr);
  const int64_t members = plan.n;
  // Where members own rows the loop computes dx step by step, and with float32 on the AVX-512
  // kernel or the AMX tiles dW_ih and dW_hh too where StepWeightGrads::chosen says.
  at::Tensor dx = owns_rows(plan) ? cached_empty({T, B, I}, opts) : at::Tensor();
  std::optional<StepWeightGrads> wg;
  int64_t most = 0;  // a member's rows
  for (int64_t m = 0; m < members; ++m) {
    const auto [lo, hi] = split(B, members, m);
    most = std::max(most, hi - lo);
  }
  const bool weights_in_loop =
      owns_rows(plan) && StepWeightGrads::chosen(dt, (two ? 2 : 1) * T * B * GH * x.element_size(), most, two);
  // Every row of the gate gradients is written by the backward loop (zeros at finished steps).
  // They keep every step only where something after the loop reads them (dW_ih and dW_hh, unless
  // weights_in_loop; under the column split dx and batch norm's ih part; FGR's dW_fgr reads
  // dpre); otherwise one step's buffer is reused. dxw is dpre without norm, and for batch norm,
  // whose ih part writes it in place, unless FGR keeps dpre; dhw is dxw unless norm is LN or BN.
  const bool xw_is_dpre = norm == kNormNone || (norm == kNormBatch && !fl.fgr);
  DgSteps all;
  all.dxw = !weights_in_loop || (norm == kNormNone && fl.fgr);
  all.dpre = xw_is_dpre ? all.dxw : fl.fgr;
  all.dhw = two ? !weights_in_loop : all.dxw;
  auto gate_grads = [&](bool every_step) {
    return every_step ? cached_empty({T, B, GH}, opts) : cached_empty({B, GH}, opts);
  };
  at::Tensor dpre = gate_grads(all.dpre);
  at::Tensor dxw = xw_is_dpre ? dpre : gate_grads(all.dxw);
  at::Tensor dhw = two ? gate_grads(all.dhw) : dxw;
  if (weights_in_loop) {
    wg.emplace(members, GH, two ? std::vector<int64_t>{I, R} : std::vector<int64_t>{I + R}, most, opts);
  }
  ThreadAcc acc_bias(members, has_bias ? GH : 0, opts), acc_peep(members, fl.num_peep * H, opts),
      acc_gates(members, 2 * H + 2 * GH, opts);
  at::Tensor dg_ih = norm == kNormBatch ? at::zeros({GH}, opts) : at::Tensor();
  at::Tensor dg_hh = norm == kNormBatch ? at::zeros({GH}, opts) : at::Tensor();
  at::Tensor dg_cell = norm == kNormBatch ? at::zeros({H}, opts) : at::Tensor();
  at::Tensor db_cell = norm == kNormBatch ? at::zeros({H}, opts) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(dt, "lstm_bwd_cpu", [&] {
    LstmBwdParams<scalar_t> p{};
    fill_common(p, args, fl, norm, eps);
    p.training = training;
    p.y = const_cast<scalar_t*>(y.data_ptr<scalar_t>());
    p.acts = acts.data_ptr<scalar_t>(); p.cs = cs.data_ptr<scalar_t>();
    p.xw = norm != kNormNone ? xw.data_ptr<scalar_t>() : nullptr;
    p.hw = two ? hw.data_ptr<scalar_t>() : nullptr;
    p.stats = norm != kNormNone ? stats.data_ptr<scalar_t>() : nullptr;
    p.dy = grad_y.data_ptr<scalar_t>(); p.dh_n = grad_h_n.data_ptr<scalar_t>();
    p.dc_n = grad_c_n.data_ptr<scalar_t>(); p.da_n = fl.fgr ? grad_a_n.data_ptr<scalar_t>() : nullptr;
    p.dh0 = dh0.data_ptr<scalar_t>(); p.dc0 = dc0.data_ptr<scalar_t>();
    p.da0 = fl.fgr ? da0.data_ptr<scalar_t>() : nullptr;
    p.dpre = dpre.data_ptr<scalar_t>(); p.dxw = dxw.data_ptr<scalar_t>(); p.dhw = dhw.data_ptr<scalar_t>();
    p.ms = P ? const_cast<scalar_t*>(hw.data_ptr<scalar_t>()) : nullptr;
    p.dhy = P ? dhy.data_ptr<scalar_t>() : nullptr;
    auto bwd = [&](auto kernel) {
      kernel(p, all, w_hh, w_fgr, w_hr, acc_bias, acc_peep, acc_gates, dg_ih, dg_hh, dg_cell, db_cell, plan,
             w_ih, dx, wg ? &*wg : nullptr);
    };
    switch (norm) {
      case kNormNone: bwd(&lstm_backward<scalar_t, kNormNone>); break;
      case kNormLayer: bwd(&lstm_backward<scalar_t, kNormLayer>); break;
      case kNormLayerPerGate: bwd(&lstm_backward<scalar_t, kNormLayerPerGate>); break;
      default: bwd(&lstm_backward<scalar_t, kNormBatch>); break;
    }
  });
  // Hoisted GEMMs and reductions over all steps.
  if (!dx.defined()) dx = cached_mm(dxw.view({T * B, GH}), w_ih).view({T, B, I});
  at::Tensor dw_ih, dw_hh;
  if (!wg) {
    std::tie(dw_ih, dw_hh) = weight_grads(dxw.view({T * B, GH}), dhw.view({T * B, GH}), x, h0, y);
  } else if (!two) {
    dw_ih = wg->total(0, 0, I);
    dw_hh = wg->total(0, I, R);
  } else {
    dw_ih = wg->total(0);
    dw_hh = wg->total(1);
  }
  at::Tensor db = has_bias ? acc_bias.total() : none_like(x);
  at::Tensor dw_fgr = none_like(x);
  if (fl.fgr) {
    auto ifo = [&](const at::Tensor& v) {
      return at::cat({v.narrow(2, fl.gi * H, H), v.narrow(2, fl.gf * H, H), v.narrow(2, fl.go * H, H)}, 2);
    };
    at::Tensor a_prev = at::cat({a0->unsqueeze(0), ifo(acts.narrow(0, 0, T - 1))}, 0).view({T * B, 3 * H});
    dw_fgr = at::mm(ifo(dpre).view({T * B, 3 * H}).t(), a_prev);
  }
  at::Tensor dw_peep = fl.num_peep ? acc_peep.total().view({fl.num_peep, H}) : none_like(x);
  at::Tensor dw_hr = P ? at::mm(dhy.view({T * B, P}).t(), hw.reshape({T * B, H})) : none_like(x);
  // every result is its own tensor (outputs of an op must not alias each other)
  at::Tensor r_dg_ih = none_like(x), r_dg_hh = none_like(x), r_dg_cell = none_like(x), r_db_cell = none_like(x),
             r_dg_gates = none_like(x), r_db_gates = none_like(x);
  if (norm == kNormBatch) {
    r_dg_ih = dg_ih; r_dg_hh = dg_hh; r_dg_cell = dg_cell; r_db_cell = db_cell;
  } else if (norm != kNormNone) {
    at::Tensor tot = acc_gates.total();
    r_dg_cell = tot.narrow(0, 0, H).clone();
    r_db_cell = tot.narrow(0, H, H).clone();
    if (norm == kNormLayer) {
      r_dg_ih = tot.narrow(0, 2 * H, GH).clone();
      r_dg_hh = tot.narrow(0, 2 * H + GH, GH).clone();
    } else {
      r_dg_gates = tot.narrow(0, 2 * H, GH).clone();
      r_db_gates = tot.narrow(0, 2 * H + GH, GH).clone();
    }
  }
  return T17{dx, dh0, dc0, da0, dw_ih, dw_hh, db, has_bias ? db.clone() : none_like(x), dw_peep, dw_fgr,
             r_dg_ih, r_dg_hh, r_dg_cell, r_db_cell, r_dg_gates, r_db_gates, dw_hr};
}

// ----------------------------------------------------------------------------- BN running stats

void bn_update_cpu(at::Tensor& rm_ih, at::Tensor& rv_ih, at::Tensor& rm_hh, at::Tensor& rv_hh, at::Tensor& rm_cell,
                   at::Tensor& rv_cell, const at::Tensor& stats, const c10::optional<at::Tensor>& lengths,
                   int64_t batch, int64_t t0, double momentum) {
  const char* op = "fusedrnn::bn_update_";
  TORCH_CHECK(stats.dim() == 3 && stats.size(1) == 2, op, ": stats must be [T, 2, 2GH + H], got ", stats.sizes());
  TORCH_CHECK(rm_ih.dim() == 2 && rm_cell.dim() == 2, op, ": running statistics must be [S, GH] / [S, H]");
  const int64_t T = stats.size(0), S = rm_ih.size(0), GH = rm_ih.size(1), H = rm_cell.size(1);
  auto dt = stats.scalar_type();
  check_tensor(op, "stats", stats, dt, {T, 2, 2 * GH + H});
  check_tensor(op, "rm_ih", rm_ih, dt, {S, GH});
  check_tensor(op, "rv_ih", rv_ih, dt, {S, GH});
  check_tensor(op, "rm_hh", rm_hh, dt, {S, GH});
  check_tensor(op, "rv_hh", rv_hh, dt, {S, GH});
  check_tensor(op, "rm_cell", rm_cell, dt, {S, H});
  check_tensor(op, "rv_cell", rv_cell, dt, {S, H});
  check_lengths(op, lengths, batch, T);
  const int64_t* L = len_ptr(lengths);
  AT_DISPATCH_FLOATING_TYPES(dt, "bn_update_cpu", [&] {
    using T_ = scalar_t;
    const T_* st = stats.data_ptr<T_>();
    T_* rm[3] = {rm_ih.data_ptr<T_>(), rm_hh.data_ptr<T_>(), rm_cell.data_ptr<T_>()};
    T_* rv[3] = {rv_ih.data_ptr<T_>(), rv_hh.data_ptr<T_>(), rv_cell.data_ptr<T_>()};
    const int64_t width[3] = {GH, GH, H}, off[3] = {0, GH, 2 * GH};
    const int64_t NB = 2 * GH + H;
    const T_ m = T_(momentum);
    for (int64_t t = 0; t < T; ++t) {
      int64_t n = 0;
      for (int64_t b = 0; b < batch; ++b) n += active(L, b, t);
      if (n <= 1) continue;  // a single active sequence normalizes but does not update
      const int64_t slot = std::min<int64_t>(t0 + t, S - 1);
      const T_ unbias = T_(double(n) / double(n - 1));
      for (int w = 0; w < 3; ++w) {
        const T_* mean = st + t * 2 * NB + off[w];
        const T_* var = mean + NB;
        T_* rmw = rm[w] + slot * width[w];
        T_* rvw = rv[w] + slot * width[w];
        for (int64_t k = 0; k < width[w]; ++k) {
          rmw[k] = (T_(1) - m) * rmw[k] + m * mean[k];
          rvw[k] = (T_(1) - m) * rvw[k] + m * (var[k] * unbias);
        }
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("lstm_fwd", &lstm_fwd_cpu);
  m.impl("lstm_bwd", &lstm_bwd_cpu);
  m.impl("bn_update_", &bn_update_cpu);
}

}  // namespace cpu
}  // namespace fusedrnn
