// CUDA backend of the fusedrnn ops (schemas in csrc/ops.cpp): LSTM (every variant and norm),
// GRU, Elman RNN, forward and backward, and the batch-norm running-statistics update.
//
// Per layer and direction: the input projection of all T steps is one GEMM; per step the
// recurrent GEMM (ATen -> cuBLAS, current stream) is followed by ONE fused pointwise kernel
// (cuda/pointwise.cuh); backward runs the fused pointwise backward in reverse time, carries
// the state gradient with one GEMM per step, and finishes dx, dW_ih, dW_hh (and dW_fgr) as
// large GEMMs after the loop. Parameter gradients of the pointwise parts (biases, gains,
// peepholes) accumulate per batch row in a float/double workspace summed once at the end.
//
// Compiled by nvcc for the GPU; compiled by g++ with FUSEDRNN_EMULATED for the CPU tests
// (tests/simt/emulated_ops.cpp), where tensors live on the CPU and the kernels run under the
// SIMT emulator, so this host code is executed by the test suite too.
// Shape legend: T steps, B batch, I input, H hidden, G gates, GH = G * H, S BN slots.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#define FUSEDRNN_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, TYPE, NAME, __VA_ARGS__)

#if defined(FUSEDRNN_EMULATED)
#define FUSEDRNN_DEVICE_GUARD(t)
#define FUSEDRNN_STREAM() nullptr
#define FUSEDRNN_LAUNCH_CHECK()
#else
// c10/cuda only: ATen/cuda/CUDAContext.h pulls in cuSPARSE headers, and the GEMMs go
// through ATen (current stream and cuBLAS handle) anyway.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define FUSEDRNN_DEVICE_GUARD(t) const c10::cuda::CUDAGuard fusedrnn_device_guard_((t).device())
#define FUSEDRNN_STREAM() c10::cuda::getCurrentCUDAStream().stream()
#define FUSEDRNN_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#endif

#include "pointwise.cuh"
#include "persistent_launch.h"  // issue 5: persistent forward, selected by FUSEDRNN_PERSISTENT

namespace fusedrnn {
namespace cuda {
namespace {

using OptT = c10::optional<at::Tensor>;
using at::Tensor;

#if defined(FUSEDRNN_EMULATED)
constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
#else
constexpr c10::DeviceType kDevice = c10::DeviceType::CUDA;
#endif

// ----------------------------------------------------------------------------- checks

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// t on x's device, with dtype `dtype` (x's unless given), shape `shape`, contiguous.
void check(const char* op, const char* name, const Tensor& t, const Tensor& x, at::IntArrayRef shape,
           c10::optional<at::ScalarType> dtype = c10::nullopt) {
  const at::ScalarType want = dtype.value_or(x.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on ", x.device(), " like x, got ", t.device());
  TORCH_CHECK(t.scalar_type() == want, op, ": ", name, " must have dtype ", want,
              dtype ? "" : " like x", ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// Optional role: checked when given; `required` says the cell needs it.
void check_opt(const char* op, const char* name, const OptT& t, const Tensor& x, at::IntArrayRef shape,
               bool required) {
  const bool given = t.has_value() && t->defined();
  TORCH_CHECK(given || !required, op, ": ", name, " of shape ", shape, " is required by this cell, got None");
  if (given) check(op, name, *t, x, shape);
}

void check_x(const char* op, const Tensor& x) {
  TORCH_CHECK(x.device().type() == kDevice, op, ": expected tensors on ", kDevice, ", got x on ", x.device());
  TORCH_CHECK(x.dim() == 3, op, ": x must be [T, B, I], got ", x.sizes());
  TORCH_CHECK(x.size(0) >= 1 && x.size(1) >= 1, op, ": x needs at least one step and one sequence, got ",
              x.sizes());
  TORCH_CHECK(x.is_contiguous(), op, ": x must be contiguous");
}

const int64_t* lengths_ptr(const char* op, const OptT& lengths, const Tensor& x) {
  if (!lengths.has_value() || !lengths->defined()) return nullptr;
  const Tensor& l = *lengths;
  TORCH_CHECK(l.device() == x.device(), op, ": lengths must be on ", x.device(), " like x, got ", l.device());
  TORCH_CHECK(l.scalar_type() == at::kLong, op, ": lengths must be int64, got ", l.scalar_type());
  TORCH_CHECK(l.dim() == 1 && l.size(0) == x.size(1) && l.is_contiguous(), op,
              ": lengths must be a contiguous [B] = [", x.size(1), "] tensor, got ", l.sizes());
  return l.data_ptr<int64_t>();
}

template <typename T>
const T* ptr(const OptT& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

Tensor none_like(const Tensor& x) { return at::empty({0}, x.options()); }

// A fresh copy of a slice of the summed workspace, in the parameter dtype.
Tensor take(const Tensor& w, int64_t lo, int64_t hi, at::ScalarType dt) {
  return w.slice(0, lo, hi).to(dt, /*non_blocking=*/false, /*copy=*/true);
}

StepDims dims(int64_t B, int64_t H, int variant, int64_t t, bool training, double eps, const int64_t* lengths) {
  return StepDims{int(B), int(H), variant, int(t), int(training), 0, eps, lengths};
}

// Columns [lo, hi) of a [B, N] matrix: a strided view cuBLAS takes as is.
Tensor cols(const Tensor& m, int64_t lo, int64_t hi) { return m.slice(1, lo, hi); }

// Step t of a contiguous [T, ...] tensor as a raw pointer. The per-step loops take no tensor
// views where a pointer does: each view is a dispatcher call and a TensorImpl (about a microsecond
// of host time), and the per-step path is host-bound at small shapes.
template <typename P>
P* step_ptr(const Tensor& a, int64_t t) {
  return a.data_ptr<P>() + t * a.stride(0);
}

// ----------------------------------------------------------------------------- LSTM

constexpr const char* kLstmFwd = "fusedrnn::lstm_fwd (CUDA)";
constexpr const char* kLstmBwd = "fusedrnn::lstm_bwd (CUDA)";

int64_t stats_width(int64_t norm, int64_t G) { return norm == kNormLayer ? 6 : 2 * G + 2; }

bool given(const OptT& t) { return t.has_value() && t->defined(); }

// Checks every LSTM argument; returns H. With the projection w_hr [P, H] (proj_size; vanilla LSTM
// without norm) w_hh is [GH, P] and h0 [B, P].
int64_t check_lstm_params(const char* op, const Tensor& x, const Tensor& h0, const Tensor& c0, const OptT& a0,
                          const Tensor& w_ih, const Tensor& w_hh, const OptT& b_ih, const OptT& b_hh,
                          const OptT& w_peep, const OptT& w_fgr, const OptT& g_ih, const OptT& g_hh,
                          const OptT& g_cell, const OptT& b_cell, const OptT& g_gates, const OptT& b_gates,
                          int64_t variant, int64_t norm, const OptT& w_hr) {
  check_x(op, x);
  TORCH_CHECK(variant >= kVanilla && variant <= kFGR, op, ": variant must be in [0, 8], got ", variant);
  TORCH_CHECK(norm >= kNormNone && norm <= kNormBatch, op, ": norm must be in [0, 3], got ", norm);
  const bool proj = given(w_hr);
  if (proj) {
    TORCH_CHECK(variant == kVanilla && norm == kNormNone, op, ": w_hr (proj_size) is supported for the vanilla "
                "LSTM without norm only (as torch.nn.LSTM), got variant ", variant, " norm ", norm);
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(0) >= 1, op, ": w_hr must be [P, H] with P >= 1, got shape ",
                w_hr->sizes());
  }
  const LstmFlags fl = lstm_flags(int(variant));
  const int64_t B = x.size(1), I = x.size(2);
  TORCH_CHECK(w_hh.dim() == 2, op, ": w_hh must be [GH, H], got ", w_hh.sizes());
  const int64_t H = proj ? w_hr->size(1) : w_hh.size(1), R = proj ? w_hr->size(0) : H, GH = fl.num_gates * H;
  if (proj) check(op, "w_hr", *w_hr, x, {R, H});
  check(op, "w_ih", w_ih, x, {GH, I});
  check(op, "w_hh", w_hh, x, {GH, R});
  check(op, "h0", h0, x, {B, R});
  check(op, "c0", c0, x, {B, H});
  check_opt(op, "a0", a0, x, {B, 3 * H}, fl.fgr);
  check_opt(op, "b_ih", b_ih, x, {GH}, false);
  check_opt(op, "b_hh", b_hh, x, {GH}, false);
  check_opt(op, "w_peep", w_peep, x, {fl.num_peep, H}, fl.num_peep > 0);
  check_opt(op, "w_fgr", w_fgr, x, {3 * H, 3 * H}, fl.fgr);
  const bool two = norm == kNormLayer || norm == kNormBatch;
  check_opt(op, "g_ih", g_ih, x, {GH}, two);
  check_opt(op, "g_hh", g_hh, x, {GH}, two);
  check_opt(op, "g_cell", g_cell, x, {H}, norm != kNormNone);
  check_opt(op, "b_cell", b_cell, x, {H}, norm != kNormNone);
  check_opt(op, "g_gates", g_gates, x, {GH}, norm == kNormLayerPerGate);
  check_opt(op, "b_gates", b_gates, x, {GH}, norm == kNormLayerPerGate);
  return H;
}

// Projection, lengths given: [T, B, 1] bool, true where row b is active at step t.
Tensor active_mask(const OptT& lengths, int64_t T) {
  if (!given(lengths)) return Tensor();
  Tensor t = at::arange(T, lengths->options()).unsqueeze(1);
  return (t < lengths->unsqueeze(0)).unsqueeze(2);
}

// The persistent kernels do not implement the projection: it runs per step, and
// FUSEDRNN_PERSISTENT=require says so.
void check_projection_path(const char* op, bool proj, int64_t cuda_path) {
  TORCH_CHECK(!proj || persist_mode(cuda_path) != PersistMode::kRequire, op,
              ": FUSEDRNN_PERSISTENT=require, but the persistent kernel does not implement the projection "
              "(proj_size); it runs on the per-step path");
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_fwd(
    const Tensor& x, const OptT& lengths, const Tensor& h0, const Tensor& c0, const OptT& a0, const Tensor& w_ih,
    const Tensor& w_hh, const OptT& b_ih, const OptT& b_hh, const OptT& w_peep, const OptT& w_fgr,
    const OptT& g_ih, const OptT& g_hh, const OptT& g_cell, const OptT& b_cell, const OptT& g_gates,
    const OptT& b_gates, const OptT& rm_ih, const OptT& rv_ih, const OptT& rm_hh, const OptT& rv_hh,
    const OptT& rm_cell, const OptT& rv_cell, int64_t variant, int64_t norm, bool training, int64_t t0,
    double eps, const OptT& w_hr, int64_t cuda_path) {
  const char* op = kLstmFwd;
  const int64_t H = check_lstm_params(op, x, h0, c0, a0, w_ih, w_hh, b_ih, b_hh, w_peep, w_fgr, g_ih, g_hh, g_cell,
                                      b_cell, g_gates, b_gates, variant, norm, w_hr);
  FUSEDRNN_DEVICE_GUARD(x);
  const LstmFlags fl = lstm_flags(int(variant));
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), G = fl.num_gates, GH = G * H;
  const bool proj = given(w_hr);
  const int64_t R = w_hh.size(1);  // width of h: H, or P with the projection
  check_projection_path(op, proj, cuda_path);
  int64_t S = 0;
  if (norm == kNormBatch) {
    TORCH_CHECK(rm_ih.has_value() && rm_ih->dim() == 2, op, ": batch norm needs the running statistics rm_ih [S, GH]");
    S = rm_ih->size(0);
    TORCH_CHECK(S >= 1, op, ": running statistics need at least one slot, got S = ", S);
    check_opt(op, "rm_ih", rm_ih, x, {S, GH}, true);
    check_opt(op, "rv_ih", rv_ih, x, {S, GH}, true);
    check_opt(op, "rm_hh", rm_hh, x, {S, GH}, true);
    check_opt(op, "rv_hh", rv_hh, x, {S, GH}, true);
    check_opt(op, "rm_cell", rm_cell, x, {S, H}, true);
    check_opt(op, "rv_cell", rv_cell, x, {S, H}, true);
  }
  TORCH_CHECK(t0 >= 0, op, ": t0 must be >= 0, got ", t0);
  const int64_t* L = lengths_ptr(op, lengths, x);
  auto opts = x.options();
  Tensor xw = at::matmul(x.view({T * B, I}), w_ih.t()).view({T, B, GH});
  const bool two = norm == kNormLayer || norm == kNormBatch;
  Tensor hw = two ? at::empty({T, B, GH}, opts) : at::empty({B, GH}, opts);
  Tensor y = at::empty({T, B, R}, opts), acts = at::empty({T, B, GH}, opts), cs = at::empty({T, B, H}, opts);
  Tensor h_n = at::empty({B, R}, opts), a_n = fl.fgr ? at::empty({B, 3 * H}, opts) : none_like(x);
  // Projection: the pointwise kernel writes m_t = o * tanh(c_t) (0 at padded rows) into ms, its
  // own h_t into m_next (unused); then h_t = m_t W_hr^T, carried where the row is active.
  Tensor ms = proj ? at::empty({T, B, H}, opts) : Tensor(), m_next = proj ? at::empty({B, H}, opts) : Tensor();
  const Tensor active = proj ? active_mask(lengths, T) : Tensor();
  // normalization statistics in the accumulation type: float for float16/bfloat16
  const auto sopts = opts.dtype(acc_type(x.scalar_type()));
  Tensor stats = norm == kNormNone    ? none_like(x)
                 : norm == kNormBatch ? at::empty({T, 2, 2 * GH + H}, sopts)
                                      : at::empty({T, B, stats_width(norm, G)}, sopts);
  Tensor h_buf = at::empty({2, B, R}, opts), a_buf = fl.fgr ? at::empty({2, B, 3 * H}, opts) : Tensor();
  Tensor fgr = fl.fgr ? at::empty({B, 3 * H}, opts) : Tensor();
  cudaStream_t stream = FUSEDRNN_STREAM();
  // One persistent launch for all steps when selected and it fits (persistent_launch.h).
  const bool persistent = !proj && persistent_lstm_fwd(
      x, L, h0, c0, a0, w_hh, w_fgr, b_ih, b_hh, w_peep, g_ih, g_hh, g_cell, b_cell, g_gates, b_gates, rm_ih, rv_ih,
      rm_hh, rv_hh, rm_cell, rv_cell, S, variant, norm, training, t0, eps, xw, hw, y, acts, cs, h_n, a_n, stats,
      cuda_path);
  if (!persistent) FUSEDRNN_DISPATCH(x.scalar_type(), "fusedrnn_lstm_fwd_cuda", [&] {
    using T_ = scalar_t;
    Tensor h_prev = h0, a_prev = fl.fgr ? *a0 : Tensor();
    const Tensor w_hh_t = w_hh.t(), w_fgr_t = fl.fgr ? w_fgr->t() : Tensor();
    const std::vector<Tensor> h_bufs = h_buf.unbind(0), a_bufs = fl.fgr ? a_buf.unbind(0) : std::vector<Tensor>();
    for (int64_t t = 0; t < T; ++t) {
      Tensor hw_t = two ? hw[t] : hw;
      at::mm_out(hw_t, h_prev, w_hh_t);
      if (fl.fgr) at::mm_out(fgr, a_prev, w_fgr_t);
      Tensor h_next = t == T - 1 ? h_n : h_bufs[t % 2];
      Tensor a_next = !fl.fgr ? Tensor() : t == T - 1 ? a_n : a_bufs[t % 2];
      const int64_t slot = std::min<int64_t>(t0 + t, S - 1);
      const bool eval_bn = norm == kNormBatch && !training;
      auto run = [&](const OptT& r, int64_t width) { return eval_bn ? ptr<T_>(r) + slot * width : nullptr; };
      LstmStepFwd<T_> p{};
      p.d = dims(B, H, int(variant), t, training, eps, L);
      p.xw = step_ptr<T_>(xw, t);
      p.hw = hw_t.data_ptr<T_>();
      p.fgr = fl.fgr ? fgr.data_ptr<T_>() : nullptr;
      p.b_ih = ptr<T_>(b_ih); p.b_hh = ptr<T_>(b_hh); p.w_peep = ptr<T_>(w_peep);
      p.g_ih = ptr<T_>(g_ih); p.g_hh = ptr<T_>(g_hh); p.g_cell = ptr<T_>(g_cell); p.b_cell = ptr<T_>(b_cell);
      p.g_gates = ptr<T_>(g_gates); p.b_gates = ptr<T_>(b_gates);
      p.rm_ih = run(rm_ih, GH); p.rv_ih = run(rv_ih, GH); p.rm_hh = run(rm_hh, GH); p.rv_hh = run(rv_hh, GH);
      p.rm_cell = run(rm_cell, H); p.rv_cell = run(rv_cell, H);
      p.h_prev = proj ? m_next.data_ptr<T_>() : h_prev.data_ptr<T_>();
      p.c_prev = t == 0 ? c0.data_ptr<T_>() : step_ptr<T_>(cs, t - 1);
      p.a_prev = fl.fgr ? a_prev.data_ptr<T_>() : nullptr;
      p.h_next = proj ? m_next.data_ptr<T_>() : h_next.data_ptr<T_>();
      p.c_next = step_ptr<T_>(cs, t);
      p.a_next = fl.fgr ? a_next.data_ptr<T_>() : nullptr;
      p.y = step_ptr<T_>(proj ? ms : y, t);
      p.acts = step_ptr<T_>(acts, t);
      p.v_out = norm == kNormLayerPerGate ? step_ptr<T_>(xw, t) : nullptr;  // xw becomes v = xw + hw
      p.stats = norm == kNormNone ? nullptr : step_ptr<typename AccOf<T_>::type>(stats, t);
      lstm_step_fwd<T_>(p, int(norm), stream);
      FUSEDRNN_LAUNCH_CHECK();
      if (proj) {  // y_t = m_t W_hr^T (0 at padded rows: m_t is); h_t = y_t where active, else h_{t-1}
        Tensor y_t = y[t];
        at::mm_out(y_t, ms[t], w_hr->t());
        if (active.defined()) at::where_out(h_next, active[t], y_t, h_prev);
        else if (t == T - 1) h_n.copy_(y_t);
        else h_next = y_t;  // every row active: step t + 1 reads h_t from y, no copy
      }
      h_prev = h_next;
      a_prev = a_next;
    }
  });
  Tensor c_n = cs[T - 1].clone();
  if (norm == kNormNone) xw = none_like(x);
  if (!two) hw = proj ? ms : none_like(x);  // with the projection hw carries m_t for lstm_bwd
  return {y, h_n, c_n, a_n, acts, cs, xw, hw, stats};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
           Tensor, Tensor, Tensor, Tensor>
lstm_bwd(const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& grad_a_n,
         const Tensor& x, const OptT& lengths, const Tensor& h0, const Tensor& c0, const OptT& a0,
         const Tensor& w_ih, const Tensor& w_hh, const OptT& b_ih, const OptT& b_hh, const OptT& w_peep,
         const OptT& w_fgr, const OptT& g_ih, const OptT& g_hh, const OptT& g_cell, const OptT& b_cell,
         const OptT& g_gates, const OptT& b_gates, const Tensor& y, const Tensor& acts, const Tensor& cs,
         const Tensor& xw, const Tensor& hw, const Tensor& stats, int64_t variant, int64_t norm, bool training,
         double eps, const OptT& w_hr, int64_t cuda_path) {
  const char* op = kLstmBwd;
  const int64_t H = check_lstm_params(op, x, h0, c0, a0, w_ih, w_hh, b_ih, b_hh, w_peep, w_fgr, g_ih, g_hh, g_cell,
                                      b_cell, g_gates, b_gates, variant, norm, w_hr);
  FUSEDRNN_DEVICE_GUARD(x);
  const LstmFlags fl = lstm_flags(int(variant));
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), G = fl.num_gates, GH = G * H;
  const bool proj = given(w_hr);
  const int64_t R = w_hh.size(1);  // width of h: H, or P with the projection
  check_projection_path(op, proj, cuda_path);
  const bool two = norm == kNormLayer || norm == kNormBatch;
  check(op, "grad_y", grad_y, x, {T, B, R});
  check(op, "grad_h_n", grad_h_n, x, {B, R});
  check(op, "grad_c_n", grad_c_n, x, {B, H});
  if (fl.fgr) check(op, "grad_a_n", grad_a_n, x, {B, 3 * H});
  check(op, "y", y, x, {T, B, R});
  check(op, "acts", acts, x, {T, B, GH});
  check(op, "cs", cs, x, {T, B, H});
  if (norm != kNormNone) check(op, "xw", xw, x, {T, B, GH});
  if (two) check(op, "hw", hw, x, {T, B, GH});
  if (proj) check(op, "hw (m_t of the projected LSTM)", hw, x, {T, B, H});
  if (norm != kNormNone)
    check(op, "stats", stats, x,
          norm == kNormBatch ? std::vector<int64_t>{T, 2, 2 * GH + H} : std::vector<int64_t>{T, B, stats_width(norm, G)},
          acc_type(x.scalar_type()));
  const int64_t* L = lengths_ptr(op, lengths, x);
  auto opts = x.options();
  const auto dt = x.scalar_type();
  Tensor dpre = at::empty({T, B, GH}, opts);
  Tensor dxw = norm == kNormNone ? dpre : at::empty({T, B, GH}, opts);
  Tensor dhw = two ? at::empty({T, B, GH}, opts) : dxw;
  Tensor wgrad = at::zeros({B, 3 * GH + 5 * H}, opts.dtype(acc_type(dt)));
  Tensor dh = grad_h_n.clone(), dh_direct = at::empty({B, H}, opts);
  Tensor dc_buf = at::empty({2, B, H}, opts);
  // Projection: dhy_t = dh_t + dy_t (0 at padded rows, kept for dW_hr), d m_t = dhy_t W_hr goes to
  // the pointwise kernel as its dh (with dy = 0); dh_{t-1} = (padded rows: dh_t) + dhw_t W_hh.
  Tensor dhy = proj ? at::empty({T, B, R}, opts) : Tensor(), dm = proj ? at::empty({B, H}, opts) : Tensor();
  Tensor dy_zero = proj ? at::zeros({B, H}, opts) : Tensor();
  const Tensor active = proj ? active_mask(lengths, T) : Tensor();
  const Tensor finished = active.defined() ? active.logical_not() : Tensor();
  Tensor da = fl.fgr ? grad_a_n.clone() : Tensor(), da_direct = fl.fgr ? at::empty({B, 3 * H}, opts) : Tensor();
  cudaStream_t stream = FUSEDRNN_STREAM();
  Tensor dc = grad_c_n;
  // One persistent launch for all steps when selected and it fits (persistent_launch.h).
  const bool persistent = !proj && persistent_lstm_bwd(
      grad_y, grad_h_n, grad_c_n, grad_a_n, L, c0, w_hh, w_fgr, w_peep, g_ih, g_hh, g_cell, b_cell, g_gates, acts,
      cs, xw, hw, stats, variant, norm, training, eps, dpre, dxw, dhw, wgrad, dh, dc, da, cuda_path);
  if (!persistent) FUSEDRNN_DISPATCH(dt, "fusedrnn_lstm_bwd_cuda", [&] {
    using T_ = scalar_t;
    const std::vector<Tensor> dc_bufs = dc_buf.unbind(0);
    for (int64_t t = T - 1; t >= 0; --t) {
      const Tensor& dc_prev = dc_bufs[t % 2];
      LstmStepBwd<T_> p{};
      p.d = dims(B, H, int(variant), t, training, eps, L);
      p.xw = norm != kNormNone ? step_ptr<T_>(xw, t) : nullptr;
      p.hw = two ? step_ptr<T_>(hw, t) : nullptr;
      p.w_peep = ptr<T_>(w_peep);
      p.g_ih = ptr<T_>(g_ih); p.g_hh = ptr<T_>(g_hh); p.g_cell = ptr<T_>(g_cell); p.b_cell = ptr<T_>(b_cell);
      p.g_gates = ptr<T_>(g_gates); p.b_gates = ptr<T_>(b_gates);
      p.c_prev = t == 0 ? c0.data_ptr<T_>() : step_ptr<T_>(cs, t - 1);
      p.acts = step_ptr<T_>(acts, t);
      p.cs = step_ptr<T_>(cs, t);
      p.stats = norm != kNormNone ? step_ptr<typename AccOf<T_>::type>(stats, t) : nullptr;
      if (proj) {
        Tensor g = dhy[t];
        at::add_out(g, dh, grad_y[t]);
        if (active.defined()) g.masked_fill_(finished[t], 0);
        at::mm_out(dm, g, *w_hr);
      }
      p.dy = proj ? dy_zero.data_ptr<T_>() : step_ptr<T_>(grad_y, t);
      p.dh = proj ? dm.data_ptr<T_>() : dh.data_ptr<T_>();
      p.dc = dc.data_ptr<T_>();
      p.da = fl.fgr ? da.data_ptr<T_>() : nullptr;
      p.dpre = step_ptr<T_>(dpre, t);
      p.dxw = step_ptr<T_>(dxw, t);
      p.dhw = step_ptr<T_>(dhw, t);
      p.dh_direct = dh_direct.data_ptr<T_>();
      p.dc_prev = dc_prev.data_ptr<T_>();
      p.da_direct = fl.fgr ? da_direct.data_ptr<T_>() : nullptr;
      p.wgrad = wgrad.data_ptr<typename AccOf<T_>::type>();
      lstm_step_bwd<T_>(p, int(norm), stream);
      FUSEDRNN_LAUNCH_CHECK();
      if (!proj) {
        at::addmm_out(dh, dh_direct, dhw[t], w_hh);  // dh_{t-1} = direct part + dhw_t W_hh
      } else if (active.defined()) {
        dh.masked_fill_(active[t], 0);
        dh.addmm_(dhw[t], w_hh);
      } else {
        at::mm_out(dh, dhw[t], w_hh);
      }
      if (fl.fgr) {  // da_{t-1} = direct part + dpre_t[i, f, o] W_fgr
        const Tensor d = dpre[t];
        at::addmm_out(da, da_direct, cols(d, 0, 2 * H), w_fgr->slice(0, 0, 2 * H));
        da.addmm_(cols(d, 3 * H, 4 * H), w_fgr->slice(0, 2 * H, 3 * H));
      }
      dc = dc_prev;
    }
  });
  Tensor dxw2 = dxw.view({T * B, GH});
  Tensor dx = at::mm(dxw2, w_ih).view({T, B, I});
  Tensor dw_ih = at::mm(dxw2.t(), x.view({T * B, I}));
  Tensor h_prev_all = at::cat({h0.unsqueeze(0), y.slice(0, 0, T - 1)}, 0).view({T * B, R});
  Tensor dw_hh = at::mm(dhw.view({T * B, GH}).t(), h_prev_all);
  Tensor dw_fgr = none_like(x);
  if (fl.fgr) {  // rows of dpre and columns of acts for i, f, o (all four gates are present)
    Tensor a_prev_all = at::cat({a0->unsqueeze(0),
                                 at::cat({acts.slice(0, 0, T - 1).slice(2, 0, 2 * H),
                                          acts.slice(0, 0, T - 1).slice(2, 3 * H, 4 * H)}, 2)}, 0);
    Tensor d_ifo = at::cat({dpre.slice(2, 0, 2 * H), dpre.slice(2, 3 * H, 4 * H)}, 2);
    dw_fgr = at::mm(d_ifo.view({T * B, 3 * H}).t(), a_prev_all.view({T * B, 3 * H}));
  }
  Tensor w = wgrad.sum(at::IntArrayRef{0});
  const bool bias = b_ih.has_value() && b_ih->defined();
  Tensor db_ih = bias && norm != kNormLayerPerGate ? take(w, 0, GH, dt) : none_like(x);
  Tensor db_hh = bias && norm != kNormLayerPerGate ? take(w, 0, GH, dt) : none_like(x);
  Tensor dw_peep = none_like(x);
  if (fl.num_peep > 0) {
    std::vector<int64_t> rows;
    if (fl.pi >= 0) rows.push_back(0);
    if (fl.pf >= 0) rows.push_back(1);
    if (fl.po >= 0) rows.push_back(2);
    Tensor idx = at::tensor(rows, at::TensorOptions().dtype(at::kLong)).to(x.device());
    dw_peep = w.slice(0, 3 * GH, 3 * GH + 3 * H).view({3, H}).index_select(0, idx).to(dt, false, true);
  }
  Tensor dg_ih = two ? take(w, GH, 2 * GH, dt) : none_like(x);
  Tensor dg_hh = two ? take(w, 2 * GH, 3 * GH, dt) : none_like(x);
  Tensor dg_gates = norm == kNormLayerPerGate ? take(w, GH, 2 * GH, dt) : none_like(x);
  Tensor db_gates = norm == kNormLayerPerGate ? take(w, 0, GH, dt) : none_like(x);
  Tensor dg_cell = norm != kNormNone ? take(w, 3 * GH + 3 * H, 3 * GH + 4 * H, dt) : none_like(x);
  Tensor db_cell = norm != kNormNone ? take(w, 3 * GH + 4 * H, 3 * GH + 5 * H, dt) : none_like(x);
  Tensor dc0 = dc.clone();  // a [B, H] copy rather than a view of the ping-pong buffer
  return {dx, dh, dc0, fl.fgr ? da : none_like(x), dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_fgr,
          dg_ih, dg_hh, dg_cell, db_cell, dg_gates, db_gates,
          proj ? at::mm(dhy.view({T * B, R}).t(), hw.view({T * B, H})) : none_like(x)};
}

void bn_update_(Tensor& rm_ih, Tensor& rv_ih, Tensor& rm_hh, Tensor& rv_hh, Tensor& rm_cell, Tensor& rv_cell,
                const Tensor& stats, const OptT& lengths, int64_t batch, int64_t t0, double momentum) {
  const char* op = "fusedrnn::bn_update_ (CUDA)";
  TORCH_CHECK(stats.device().type() == kDevice, op, ": expected tensors on ", kDevice, ", got stats on ",
              stats.device());
  TORCH_CHECK(stats.dim() == 3 && stats.size(1) == 2, op, ": stats must be [T, 2, 2GH + H], got ", stats.sizes());
  TORCH_CHECK(rm_ih.dim() == 2 && rm_cell.dim() == 2, op, ": running statistics must be [S, GH] / [S, H], got ",
              rm_ih.sizes(), " and ", rm_cell.sizes());
  const int64_t T = stats.size(0), S = rm_ih.size(0), GH = rm_ih.size(1), H = rm_cell.size(1);
  check(op, "stats", stats, rm_ih, {T, 2, 2 * GH + H}, acc_type(rm_ih.scalar_type()));
  check(op, "rm_ih", rm_ih, rm_ih, {S, GH});
  check(op, "rv_ih", rv_ih, rm_ih, {S, GH});
  check(op, "rm_hh", rm_hh, rm_ih, {S, GH});
  check(op, "rv_hh", rv_hh, rm_ih, {S, GH});
  check(op, "rm_cell", rm_cell, rm_ih, {S, H});
  check(op, "rv_cell", rv_cell, rm_ih, {S, H});
  TORCH_CHECK(t0 >= 0 && batch >= 1, op, ": need t0 >= 0 and batch >= 1, got t0 = ", t0, ", batch = ", batch);
  TORCH_CHECK(S >= 1, op, ": running statistics need at least one slot, got S = ", S);
  const int64_t* L = nullptr;
  if (lengths.has_value() && lengths->defined()) {
    TORCH_CHECK(lengths->device() == stats.device() && lengths->scalar_type() == at::kLong &&
                    lengths->dim() == 1 && lengths->size(0) == batch && lengths->is_contiguous(),
                op, ": lengths must be a contiguous int64 [", batch, "] tensor on ", stats.device(), ", got ",
                lengths->sizes(), " ", lengths->scalar_type(), " on ", lengths->device());
    L = lengths->data_ptr<int64_t>();
  }
  FUSEDRNN_DEVICE_GUARD(stats);
  FUSEDRNN_DISPATCH(rm_ih.scalar_type(), "fusedrnn_bn_update_cuda", [&] {
    BnUpdate<scalar_t> p{};
    p.steps = int(T); p.batch = int(batch); p.slots = int(S); p.gh = int(GH); p.hidden = int(H);
    p.t0 = int(std::min<int64_t>(t0, S - 1));  // the slot min(t0 + t, S - 1) is unchanged; fits in int
    p.momentum = momentum;
    p.lengths = L;
    p.stats = stats.data_ptr<typename AccOf<scalar_t>::type>();
    p.rm_ih = rm_ih.data_ptr<scalar_t>(); p.rv_ih = rv_ih.data_ptr<scalar_t>();
    p.rm_hh = rm_hh.data_ptr<scalar_t>(); p.rv_hh = rv_hh.data_ptr<scalar_t>();
    p.rm_cell = rm_cell.data_ptr<scalar_t>(); p.rv_cell = rv_cell.data_ptr<scalar_t>();
    bn_update<scalar_t>(p, FUSEDRNN_STREAM());
    FUSEDRNN_LAUNCH_CHECK();
  });
}

// ----------------------------------------------------------------------------- GRU

void check_gru_params(const char* op, const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                      const OptT& b_ih, const OptT& b_hh, const OptT& g_ih, const OptT& g_hh, int64_t norm) {
  check_x(op, x);
  TORCH_CHECK(norm == kNormNone || norm == kNormLayer, op, ": GRU norm must be 0 (none) or 1 (layer), got ", norm);
  TORCH_CHECK(w_hh.dim() == 2, op, ": w_hh must be [3H, H], got ", w_hh.sizes());
  const int64_t B = x.size(1), I = x.size(2), H = w_hh.size(1);
  check(op, "w_ih", w_ih, x, {3 * H, I});
  check(op, "w_hh", w_hh, x, {3 * H, H});
  check(op, "h0", h0, x, {B, H});
  check_opt(op, "b_ih", b_ih, x, {3 * H}, false);
  check_opt(op, "b_hh", b_hh, x, {3 * H}, false);
  check_opt(op, "g_ih", g_ih, x, {3 * H}, norm == kNormLayer);
  check_opt(op, "g_hh", g_hh, x, {3 * H}, norm == kNormLayer);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_fwd(
    const Tensor& x, const OptT& lengths, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
    const OptT& b_ih, const OptT& b_hh, const OptT& g_ih, const OptT& g_hh, int64_t norm, double eps) {
  const char* op = "fusedrnn::gru_fwd (CUDA)";
  check_gru_params(op, x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, norm);
  FUSEDRNN_DEVICE_GUARD(x);
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1);
  const int64_t* L = lengths_ptr(op, lengths, x);
  const bool ln = norm == kNormLayer;
  auto opts = x.options();
  Tensor xw = at::matmul(x.view({T * B, I}), w_ih.t()).view({T, B, 3 * H});
  Tensor hw = ln ? at::empty({T, B, 3 * H}, opts) : at::empty({B, 3 * H}, opts);
  Tensor y = at::empty({T, B, H}, opts), acts = at::empty({T, B, 3 * H}, opts), hn = at::empty({T, B, H}, opts);
  Tensor stats = ln ? at::empty({T, B, 4}, opts.dtype(acc_type(x.scalar_type()))) : none_like(x);
  Tensor h_n = at::empty({B, H}, opts), h_buf = at::empty({2, B, H}, opts);
  cudaStream_t stream = FUSEDRNN_STREAM();
  FUSEDRNN_DISPATCH(x.scalar_type(), "fusedrnn_gru_fwd_cuda", [&] {
    using T_ = scalar_t;
    Tensor h_prev = h0;
    const Tensor w_hh_t = w_hh.t();
    const std::vector<Tensor> h_bufs = h_buf.unbind(0);
    for (int64_t t = 0; t < T; ++t) {
      Tensor hw_t = ln ? hw[t] : hw;
      at::mm_out(hw_t, h_prev, w_hh_t);
      Tensor h_next = t == T - 1 ? h_n : h_bufs[t % 2];
      GruStepFwd<T_> p{};
      p.d = dims(B, H, 0, t, false, eps, L);
      p.xw = step_ptr<T_>(xw, t); p.hw = hw_t.data_ptr<T_>();
      p.b_ih = ptr<T_>(b_ih); p.b_hh = ptr<T_>(b_hh); p.g_ih = ptr<T_>(g_ih); p.g_hh = ptr<T_>(g_hh);
      p.h_prev = h_prev.data_ptr<T_>(); p.h_next = h_next.data_ptr<T_>();
      p.y = step_ptr<T_>(y, t); p.acts = step_ptr<T_>(acts, t); p.hn = step_ptr<T_>(hn, t);
      p.stats = ln ? step_ptr<typename AccOf<T_>::type>(stats, t) : nullptr;
      gru_step_fwd<T_>(p, int(norm), stream);
      FUSEDRNN_LAUNCH_CHECK();
      h_prev = h_next;
    }
  });
  if (!ln) {
    xw = none_like(x);
    hw = none_like(x);
  }
  return {y, h_n, acts, hn, xw, hw, stats};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_bwd(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& x, const OptT& lengths, const Tensor& h0,
    const Tensor& w_ih, const Tensor& w_hh, const OptT& b_ih, const OptT& b_hh, const OptT& g_ih, const OptT& g_hh,
    const Tensor& y, const Tensor& acts, const Tensor& hn, const Tensor& xw, const Tensor& hw, const Tensor& stats,
    int64_t norm, double eps) {
  const char* op = "fusedrnn::gru_bwd (CUDA)";
  check_gru_params(op, x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, norm);
  FUSEDRNN_DEVICE_GUARD(x);
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1);
  const bool ln = norm == kNormLayer;
  check(op, "grad_y", grad_y, x, {T, B, H});
  check(op, "grad_h_n", grad_h_n, x, {B, H});
  check(op, "y", y, x, {T, B, H});
  check(op, "acts", acts, x, {T, B, 3 * H});
  check(op, "hn", hn, x, {T, B, H});
  if (ln) {
    check(op, "xw", xw, x, {T, B, 3 * H});
    check(op, "hw", hw, x, {T, B, 3 * H});
    check(op, "stats", stats, x, {T, B, 4}, acc_type(x.scalar_type()));
  }
  const int64_t* L = lengths_ptr(op, lengths, x);
  auto opts = x.options();
  const auto dt = x.scalar_type();
  Tensor dxw = at::empty({T, B, 3 * H}, opts), dhw = at::empty({T, B, 3 * H}, opts);
  Tensor wgrad = at::zeros({B, 12 * H}, opts.dtype(acc_type(dt)));
  Tensor dh = grad_h_n.clone(), dh_direct = at::empty({B, H}, opts);
  Tensor h_prev_all = at::cat({h0.unsqueeze(0), y.slice(0, 0, T - 1)}, 0);
  cudaStream_t stream = FUSEDRNN_STREAM();
  FUSEDRNN_DISPATCH(dt, "fusedrnn_gru_bwd_cuda", [&] {
    using T_ = scalar_t;
    for (int64_t t = T - 1; t >= 0; --t) {
      GruStepBwd<T_> p{};
      p.d = dims(B, H, 0, t, false, eps, L);
      p.xw = ln ? step_ptr<T_>(xw, t) : nullptr; p.hw = ln ? step_ptr<T_>(hw, t) : nullptr;
      p.g_ih = ptr<T_>(g_ih); p.g_hh = ptr<T_>(g_hh);
      p.h_prev = step_ptr<T_>(h_prev_all, t); p.acts = step_ptr<T_>(acts, t); p.hn = step_ptr<T_>(hn, t);
      p.stats = ln ? step_ptr<typename AccOf<T_>::type>(stats, t) : nullptr;
      p.dy = step_ptr<T_>(grad_y, t); p.dh = dh.data_ptr<T_>();
      p.dxw = step_ptr<T_>(dxw, t); p.dhw = step_ptr<T_>(dhw, t); p.dh_direct = dh_direct.data_ptr<T_>();
      p.wgrad = wgrad.data_ptr<typename AccOf<T_>::type>();
      gru_step_bwd<T_>(p, int(norm), stream);
      FUSEDRNN_LAUNCH_CHECK();
      at::addmm_out(dh, dh_direct, dhw[t], w_hh);
    }
  });
  Tensor dxw2 = dxw.view({T * B, 3 * H});
  Tensor dx = at::mm(dxw2, w_ih).view({T, B, I});
  Tensor dw_ih = at::mm(dxw2.t(), x.view({T * B, I}));
  Tensor dw_hh = at::mm(dhw.view({T * B, 3 * H}).t(), h_prev_all.view({T * B, H}));
  Tensor w = wgrad.sum(at::IntArrayRef{0});
  const bool bias = b_ih.has_value() && b_ih->defined();
  return {dx, dh, dw_ih, dw_hh,
          bias ? take(w, 0, 3 * H, dt) : none_like(x), bias ? take(w, 3 * H, 6 * H, dt) : none_like(x),
          ln ? take(w, 6 * H, 9 * H, dt) : none_like(x), ln ? take(w, 9 * H, 12 * H, dt) : none_like(x)};
}

// ----------------------------------------------------------------------------- Elman RNN

void check_rnn_params(const char* op, const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                      int64_t kind) {
  check_x(op, x);
  TORCH_CHECK(kind == kRnnTanh || kind == kRnnRelu, op, ": kind must be 0 (tanh) or 1 (relu), got ", kind);
  TORCH_CHECK(w_hh.dim() == 2, op, ": w_hh must be [H, H], got ", w_hh.sizes());
  const int64_t B = x.size(1), I = x.size(2), H = w_hh.size(1);
  check(op, "w_ih", w_ih, x, {H, I});
  check(op, "w_hh", w_hh, x, {H, H});
  check(op, "h0", h0, x, {B, H});
}

std::tuple<Tensor, Tensor> rnn_fwd(const Tensor& x, const OptT& lengths, const Tensor& h0, const Tensor& w_ih,
                                   const Tensor& w_hh, const OptT& b_ih, const OptT& b_hh, int64_t kind) {
  const char* op = "fusedrnn::rnn_fwd (CUDA)";
  check_rnn_params(op, x, h0, w_ih, w_hh, kind);
  FUSEDRNN_DEVICE_GUARD(x);
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1);
  check_opt(op, "b_ih", b_ih, x, {H}, false);
  check_opt(op, "b_hh", b_hh, x, {H}, false);
  const int64_t* L = lengths_ptr(op, lengths, x);
  auto opts = x.options();
  Tensor xw = at::matmul(x.view({T * B, I}), w_ih.t()).view({T, B, H});
  Tensor hw = at::empty({B, H}, opts), y = at::empty({T, B, H}, opts);
  Tensor h_n = at::empty({B, H}, opts), h_buf = at::empty({2, B, H}, opts);
  cudaStream_t stream = FUSEDRNN_STREAM();
  FUSEDRNN_DISPATCH(x.scalar_type(), "fusedrnn_rnn_fwd_cuda", [&] {
    using T_ = scalar_t;
    Tensor h_prev = h0;
    const Tensor w_hh_t = w_hh.t();
    const std::vector<Tensor> h_bufs = h_buf.unbind(0);
    for (int64_t t = 0; t < T; ++t) {
      at::mm_out(hw, h_prev, w_hh_t);
      Tensor h_next = t == T - 1 ? h_n : h_bufs[t % 2];
      RnnStepFwd<T_> p{};
      p.d = dims(B, H, int(kind), t, false, 0.0, L);
      p.xw = step_ptr<T_>(xw, t); p.hw = hw.data_ptr<T_>();
      p.b_ih = ptr<T_>(b_ih); p.b_hh = ptr<T_>(b_hh);
      p.h_prev = h_prev.data_ptr<T_>(); p.h_next = h_next.data_ptr<T_>(); p.y = step_ptr<T_>(y, t);
      rnn_step_fwd<T_>(p, stream);
      FUSEDRNN_LAUNCH_CHECK();
      h_prev = h_next;
    }
  });
  return {y, h_n};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_bwd(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& x, const OptT& lengths, const Tensor& h0,
    const Tensor& w_ih, const Tensor& w_hh, const Tensor& y, int64_t kind, bool has_bias) {
  const char* op = "fusedrnn::rnn_bwd (CUDA)";
  check_rnn_params(op, x, h0, w_ih, w_hh, kind);
  FUSEDRNN_DEVICE_GUARD(x);
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1);
  check(op, "grad_y", grad_y, x, {T, B, H});
  check(op, "grad_h_n", grad_h_n, x, {B, H});
  check(op, "y", y, x, {T, B, H});
  const int64_t* L = lengths_ptr(op, lengths, x);
  auto opts = x.options();
  Tensor dpre = at::empty({T, B, H}, opts), dh = grad_h_n.clone(), dh_direct = at::empty({B, H}, opts);
  cudaStream_t stream = FUSEDRNN_STREAM();
  FUSEDRNN_DISPATCH(x.scalar_type(), "fusedrnn_rnn_bwd_cuda", [&] {
    using T_ = scalar_t;
    for (int64_t t = T - 1; t >= 0; --t) {
      RnnStepBwd<T_> p{};
      p.d = dims(B, H, int(kind), t, false, 0.0, L);
      p.y = step_ptr<T_>(y, t); p.dy = step_ptr<T_>(grad_y, t); p.dh = dh.data_ptr<T_>();
      p.dpre = step_ptr<T_>(dpre, t); p.dh_direct = dh_direct.data_ptr<T_>();
      rnn_step_bwd<T_>(p, stream);
      FUSEDRNN_LAUNCH_CHECK();
      at::addmm_out(dh, dh_direct, dpre[t], w_hh);
    }
  });
  Tensor d2 = dpre.view({T * B, H});
  Tensor h_prev_all = at::cat({h0.unsqueeze(0), y.slice(0, 0, T - 1)}, 0).view({T * B, H});
  Tensor db = has_bias ? at::sum(d2, at::IntArrayRef{0}, /*keepdim=*/false, acc_type(x.scalar_type())) : Tensor();
  return {at::mm(d2, w_ih).view({T, B, I}), dh, at::mm(d2.t(), x.view({T * B, I})), at::mm(d2.t(), h_prev_all),
          has_bias ? db.to(x.scalar_type(), false, true) : none_like(x),
          has_bias ? db.to(x.scalar_type(), false, true) : none_like(x)};
}

}  // namespace
}  // namespace cuda
}  // namespace fusedrnn

#if defined(FUSEDRNN_EMULATED)
#include "fusedrnn/schema.h"
// tests/simt/emulated_ops.cpp registers these under its own namespace, with the real schemas.
#define FUSEDRNN_CUDA_OPS(m)                                               \
  m.def(FUSEDRNN_SCHEMA_LSTM_FWD, &fusedrnn::cuda::lstm_fwd);              \
  m.def(FUSEDRNN_SCHEMA_LSTM_BWD, &fusedrnn::cuda::lstm_bwd);              \
  m.def(FUSEDRNN_SCHEMA_BN_UPDATE, &fusedrnn::cuda::bn_update_);           \
  m.def(FUSEDRNN_SCHEMA_GRU_FWD, &fusedrnn::cuda::gru_fwd);                \
  m.def(FUSEDRNN_SCHEMA_GRU_BWD, &fusedrnn::cuda::gru_bwd);                \
  m.def(FUSEDRNN_SCHEMA_RNN_FWD, &fusedrnn::cuda::rnn_fwd);                \
  m.def(FUSEDRNN_SCHEMA_RNN_BWD, &fusedrnn::cuda::rnn_bwd)
#else
TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) {
  m.impl("lstm_fwd", &fusedrnn::cuda::lstm_fwd);
  m.impl("lstm_bwd", &fusedrnn::cuda::lstm_bwd);
  m.impl("bn_update_", &fusedrnn::cuda::bn_update_);
  m.impl("gru_fwd", &fusedrnn::cuda::gru_fwd);
  m.impl("gru_bwd", &fusedrnn::cuda::gru_bwd);
  m.impl("rnn_fwd", &fusedrnn::cuda::rnn_fwd);
  m.impl("rnn_bwd", &fusedrnn::cuda::rnn_bwd);
}
#endif
