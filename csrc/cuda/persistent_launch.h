// Host side of the persistent LSTM forward (persistent.cuh): path selection, planning, launch.
// Included by cuda/rnn_cuda.cu after its FUSEDRNN_* macros (stream, dispatch, launch check),
// so the same code runs on the GPU and, with FUSEDRNN_EMULATED, under the SIMT emulator.
//
// Path selection: the ops' cuda_path argument (fusedrnn.LSTM(cuda_path=...): "auto", "step",
// "persistent" = FUSEDRNN_PERSISTENT's auto, 0 and 1 below) or, where it is not given, the
// environment, read at every call:
//   FUSEDRNN_PERSISTENT=0 | step     per-step path (cuBLAS GEMM + fused pointwise kernel per step)
//   FUSEDRNN_PERSISTENT=auto         the heuristic below (the default: unset or empty)
//   FUSEDRNN_PERSISTENT=1            persistent whenever it fits, else per-step (never fails)
//   FUSEDRNN_PERSISTENT=require      persistent or a RuntimeError saying why not (tests, benchmarks)
//   FUSEDRNN_PERSISTENT_SMEM=<bytes> caps the shared memory the plan may use (tests)
//   FUSEDRNN_EMULATED_SMS=<n>        the emulated build only: SMs of the emulated device (default 3)
//   FUSEDRNN_PERSISTENT_CHUNK=<rows> caps the batch rows of h_{t-1} (forward) / dhw_t (backward)
//                                    staged in shared memory at once (tests: forces several chunks)
//   FUSEDRNN_PERSISTENT_MMA=0 | 1    bfloat16/float16: the recurrent product on the tensor cores
//                                    (persist_matmul_mma, sm_80+ and the emulator; default 0
//                                    until a GPU run has verified it)
// Heuristic (auto, the default): persistent when the dtype is float32/float16/bfloat16 (float64
// always runs per step), the device supports cooperative launches, the W_hh slice of
// U = ceil(H / SMs) units (G * U rows of H, fp32) plus the staged h fit in the opt-in shared
// memory of one SM, and the recurrent product's multiply-adds per CTA and step, 4 * U * H * B,
// are at most persist_auto_max_work(norm): 65,536 without norm, 32,768 with batch norm, none
// with the layer norms. The persistent product runs on the FMA units (no tensor cores yet), so
// its step time grows with that work while the per-step path's cuBLAS GEMM barely notices it.
// Measured on H100s (132 SMs; torch 2.11, float32, TF32 off), fwd+bwd ms, persistent vs per-step,
// T=100 (benchmarks/results/gpu-h100-20261123-*/; U = 2 at H = 256, 8 at H = 1024):
//   vanilla H=256:  B=8 3.11 vs 6.46, B=16 3.75/3.39 vs 7.68/6.43, B=32 5.56/5.41 vs 7.32/7.28,
//                   B=64 9.95 vs 6.72 (work per CTA 16k, 33k, 66k, 131k)
//   vanilla H=1024: B=32 31.0 vs 9.25 (cuDNN 8.91), B=64 85.2 vs 12.4 (1M, 2M)
//   vanilla H=512:  B=32 (T=80) 8.73 vs 7.10 (two runs; 262k)
//   BN H=256:       B=16 6.07/5.95 vs 8.15/6.39, B=32 11.0/10.8 vs 9.54/8.18
//   LN H=256:       B=8 5.36 vs 7.17, B=16 7.49/7.32 vs 6.79/6.64, B=32 12.0/11.9 vs 8.71/6.19
// (pairs: two H100 runs; in each the two paths ran one after the other, each in its own process).
// The thresholds sit at the largest measured wins; H = 512 is interpolated by the work rule
// (persistent up to B = 8 without norm). The layer norms stay per step: with their cross-CTA
// statistics (two more grid syncs per step) the persistent kernel won only at B = 8, in one run.
#pragma once

#include <cstdlib>
#include <cstring>
#include <string>

#include "persistent.cuh"
#include "persistent_bwd.cuh"

namespace fusedrnn {
namespace cuda {

// The dtypes the persistent kernels are built for: float32/float16/bfloat16 on the GPU (float64
// runs per step there); under the emulator float64 too (it gives the tests exact checks).
#if defined(FUSEDRNN_EMULATED)
#define FUSEDRNN_PERSIST_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, TYPE, NAME, __VA_ARGS__)
#else
#define FUSEDRNN_PERSIST_DISPATCH(TYPE, NAME, ...)                                      \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__)   \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)                \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))
#endif

enum class PersistMode { kStep, kAuto, kForce, kRequire };

// The path of one call: the ops' cuda_path argument (1 auto, 2 per step, 3 persistent when it
// fits), or where it is 0 (the default) FUSEDRNN_PERSISTENT.
inline PersistMode persist_mode(int64_t cuda_path) {
  switch (cuda_path) {
    case 0: break;
    case 1: return PersistMode::kAuto;
    case 2: return PersistMode::kStep;
    case 3: return PersistMode::kForce;
    default:
      TORCH_CHECK(false, "cuda_path must be 0 (FUSEDRNN_PERSISTENT decides), 1 (auto), 2 (per step) or 3 "
                  "(persistent), got ", cuda_path);
  }
  const char* e = std::getenv("FUSEDRNN_PERSISTENT");
  if (e == nullptr || !*e || !std::strcmp(e, "auto")) return PersistMode::kAuto;
  if (!std::strcmp(e, "0") || !std::strcmp(e, "step")) return PersistMode::kStep;
  if (!std::strcmp(e, "1") || !std::strcmp(e, "persistent")) return PersistMode::kForce;
  if (!std::strcmp(e, "require")) return PersistMode::kRequire;
  TORCH_CHECK(false, "FUSEDRNN_PERSISTENT must be 0, step, auto, 1, persistent or require, got '", e, "'");
  return PersistMode::kStep;
}

// The most recurrent multiply-adds per CTA and step (4 * U * H * B) `auto` runs persistent, by
// norm (see the measurements above); 0: never.
inline int64_t persist_auto_max_work(int64_t norm) {
  return norm == kNormNone ? 65536 : norm == kNormBatch ? 32768 : 0;
}

// Device limits the plan depends on.
struct PersistDevice {
  int sms = 0;
  long smem_max = 0;
  bool cooperative = false;
};

inline PersistDevice persist_device() {
  PersistDevice d;
#if defined(FUSEDRNN_EMULATED)
  d.sms = 3;  // a small grid of a few emulated CTAs
  d.smem_max = 96 * 1024;
  d.cooperative = true;
  // Tests: more emulated SMs, e.g. over 32 CTAs so the cross-CTA merges' lanes loop over several
  // CTAs each, as on a real GPU (132 SMs on an H100) -- every CTA is 64 std::threads, keep it small.
  if (const char* sms = std::getenv("FUSEDRNN_EMULATED_SMS")) {
    d.sms = std::atoi(sms);
    TORCH_CHECK(d.sms >= 1 && d.sms <= 256, "FUSEDRNN_EMULATED_SMS must be in [1, 256], got '", sms, "'");
  }
#else
  int device = 0, sms = 0, smem = 0, coop = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
  d.sms = sms;
  d.smem_max = smem;
  d.cooperative = coop != 0;
#endif
  if (const char* cap = std::getenv("FUSEDRNN_PERSISTENT_SMEM")) {
    const long c = std::atol(cap);
    TORCH_CHECK(c > 0, "FUSEDRNN_PERSISTENT_SMEM must be a positive number of bytes, got '", cap, "'");
    d.smem_max = std::min(d.smem_max, c);
  }
  return d;
}

// FUSEDRNN_PERSISTENT_MMA for dtype dt: 1 bfloat16, 2 float16 on the tensor cores, else 0.
inline int persist_mma_kind(at::ScalarType dt) {
  const char* e = std::getenv("FUSEDRNN_PERSISTENT_MMA");
  if (e == nullptr || !*e || !std::strcmp(e, "0")) return 0;
  TORCH_CHECK(!std::strcmp(e, "1"), "FUSEDRNN_PERSISTENT_MMA must be 0 or 1, got '", e, "'");
  return dt == at::ScalarType::BFloat16 ? 1 : dt == at::ScalarType::Half ? 2 : 0;
}

#if defined(FUSEDRNN_EMULATED)
constexpr int kPersistThreads = 64;
#else
constexpr int kPersistThreads = 256;
#endif

// Applies FUSEDRNN_PERSISTENT_CHUNK to a plan that fits (fewer staged rows need less shared memory).
inline void persist_cap_chunk(PersistPlan* plan) {
  if (const char* cap = std::getenv("FUSEDRNN_PERSISTENT_CHUNK")) {
    const int c = std::atoi(cap);
    TORCH_CHECK(c > 0, "FUSEDRNN_PERSISTENT_CHUNK must be a positive number of rows, got '", cap, "'");
    if (plan->fits) plan->chunk = std::min(plan->chunk, c);
  }
}

// Whether the selected mode and the plan allow the persistent kernel; `require` turns a no into an error.
inline bool persist_selected(const char* op, PersistMode mode, const PersistDevice& dev, const PersistPlan& plan,
                             at::ScalarType dt, int64_t norm, int64_t T, int64_t B, int64_t H, std::string* why) {
#if defined(FUSEDRNN_EMULATED)
  const bool dtype_ok = dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16;
#else
  const bool dtype_ok = dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16;
#endif
  if (!dtype_ok) *why = std::string("dtype ") + c10::toString(dt) + " runs per step";
  else if (!dev.cooperative) *why = "the device has no cooperative launch";
  else if (!plan.fits) *why = plan.why;
  else if (mode == PersistMode::kAuto && persist_auto_max_work(norm) == 0) *why = "layer norms run per step under auto";
  else if (mode == PersistMode::kAuto && 4 * int64_t(plan.units) * H * B > persist_auto_max_work(norm))
    *why = "recurrent work per CTA above the auto threshold";
  TORCH_CHECK(why->empty() || mode != PersistMode::kRequire, op,
              ": FUSEDRNN_PERSISTENT=require but the persistent kernel cannot run: ", *why, " (T=", T, ", B=", B,
              ", H=", H, ", dtype ", dt, ")");
  return why->empty();
}

template <typename Params, typename Kernel>
bool persist_launch(Kernel kernel, const Params& p, const PersistPlan& plan, cudaStream_t stream, std::string* why) {
#if !defined(FUSEDRNN_EMULATED)
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem_bytes)));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, plan.threads, plan.smem_bytes));
  if (per_sm < 1) {
    *why = "no CTA of the persistent kernel fits on an SM (registers or shared memory)";
    return false;
  }
#endif
  const cudaError_t err = simt::launch_cooperative(kernel, dim3(plan.blocks), dim3(plan.threads),
                                                   size_t(plan.smem_bytes), stream, p);
#if !defined(FUSEDRNN_EMULATED)
  C10_CUDA_CHECK(err);
#else
  (void)err;
#endif
  FUSEDRNN_LAUNCH_CHECK();
  return true;
}

// Runs lstm_fwd's recurrence with the persistent kernel if the selected path says so and it
// fits; returns false (nothing written) to let the caller run the per-step path. Arguments as
// in rnn_cuda.cu's lstm_fwd; xw holds x W_ih^T of every step; outputs are preallocated there.
inline bool persistent_lstm_fwd(const at::Tensor& x, const int64_t* lengths, const at::Tensor& h0,
                                const at::Tensor& c0, const c10::optional<at::Tensor>& a0, const at::Tensor& w_hh,
                                const c10::optional<at::Tensor>& w_fgr,
                                const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                                const c10::optional<at::Tensor>& w_peep, const c10::optional<at::Tensor>& g_ih,
                                const c10::optional<at::Tensor>& g_hh, const c10::optional<at::Tensor>& g_cell,
                                const c10::optional<at::Tensor>& b_cell, const c10::optional<at::Tensor>& g_gates,
                                const c10::optional<at::Tensor>& b_gates, const c10::optional<at::Tensor>& rm_ih,
                                const c10::optional<at::Tensor>& rv_ih, const c10::optional<at::Tensor>& rm_hh,
                                const c10::optional<at::Tensor>& rv_hh, const c10::optional<at::Tensor>& rm_cell,
                                const c10::optional<at::Tensor>& rv_cell, int64_t slots, int64_t variant,
                                int64_t norm, bool training, int64_t t0, double eps, at::Tensor& xw, at::Tensor& hw,
                                at::Tensor& y, at::Tensor& acts, at::Tensor& cs, at::Tensor& h_n, at::Tensor& a_n,
                                at::Tensor& stats, int64_t cuda_path) {
  const PersistMode mode = persist_mode(cuda_path);
  if (mode == PersistMode::kStep) return false;
  const char* op = "fusedrnn::lstm_fwd (CUDA, persistent)";
  const LstmFlags fl = lstm_flags(int(variant));
  const int64_t T = x.size(0), B = x.size(1), H = w_hh.size(1), G = fl.num_gates;
  const auto dt = x.scalar_type();
  const PersistDevice dev = persist_device();
  PersistPlan plan = persist_plan(int(norm), fl.fgr, int(G), int(H), int(B), dev.sms, dev.smem_max,
                                  kPersistThreads, dt == at::kDouble ? 8 : 4);
  persist_cap_chunk(&plan);
  std::string why;
  if (!persist_selected(op, mode, dev, plan, dt, norm, T, B, H, &why)) return false;
  auto opts = x.options();
  const bool row_norm = norm == kNormLayer || norm == kNormLayerPerGate;
  const int64_t nq = norm == kNormLayer ? 2 : norm == kNormLayerPerGate ? G : 0;
  at::Tensor hbuf = at::empty({2, B, H}, opts);
  at::Tensor abuf = fl.fgr ? at::empty({2, B, 3 * H}, opts) : at::Tensor();
  at::Tensor part = at::empty({row_norm ? int64_t(plan.blocks) * B * 2 * (nq + 1) : 1},
                              opts.dtype(dt == at::kDouble ? at::kDouble : at::kFloat));
  bool launched = false;
  FUSEDRNN_PERSIST_DISPATCH(dt, "fusedrnn_lstm_fwd_persistent", [&] {
    using T_ = scalar_t;
    auto ptr = [](const c10::optional<at::Tensor>& t) -> const T_* {
      return t.has_value() && t->defined() ? t->data_ptr<T_>() : nullptr;
    };
    PersistentLstmFwd<T_> p{};
    p.steps = int(T); p.batch = int(B); p.hidden = int(H); p.variant = int(variant);
    p.training = int(training); p.slots = int(slots > 0 ? slots : 1);
    // slot min(t0 + t, S - 1) == min(min(t0, S - 1) + t, S - 1): clamp before narrowing to int
    p.t0 = int(std::min<int64_t>(t0, p.slots - 1));
    p.units = plan.units; p.chunk = plan.chunk; p.eps = eps; p.lengths = lengths;
    p.mma = persist_mma_kind(dt);
    p.h0 = h0.data_ptr<T_>(); p.c0 = c0.data_ptr<T_>(); p.a0 = ptr(a0);
    p.w_hh = w_hh.data_ptr<T_>(); p.w_fgr = ptr(w_fgr);
    p.b_ih = ptr(b_ih); p.b_hh = ptr(b_hh); p.w_peep = ptr(w_peep);
    p.g_ih = ptr(g_ih); p.g_hh = ptr(g_hh); p.g_cell = ptr(g_cell); p.b_cell = ptr(b_cell);
    p.g_gates = ptr(g_gates); p.b_gates = ptr(b_gates);
    p.rm_ih = ptr(rm_ih); p.rv_ih = ptr(rv_ih); p.rm_hh = ptr(rm_hh); p.rv_hh = ptr(rv_hh);
    p.rm_cell = ptr(rm_cell); p.rv_cell = ptr(rv_cell);
    p.xw = xw.data_ptr<T_>();
    p.hw = (norm == kNormLayer || norm == kNormBatch) ? hw.data_ptr<T_>() : nullptr;
    p.hbuf = hbuf.data_ptr<T_>(); p.abuf = fl.fgr ? abuf.data_ptr<T_>() : nullptr;
    p.y = y.data_ptr<T_>(); p.acts = acts.data_ptr<T_>(); p.cs = cs.data_ptr<T_>();
    p.stats = norm == kNormNone ? nullptr : stats.data_ptr<typename AccOf<T_>::type>();
    p.part = part.data_ptr<typename AccOf<T_>::type>();
    const cudaStream_t stream = FUSEDRNN_STREAM();
    launched = with_persist_norm(norm, [&](auto N) {
      return persist_launch(persistent_lstm_fwd_kernel<T_, decltype(N)::value>, p, plan, stream, &why);
    });
  });
  if (!launched) {
    TORCH_CHECK(mode != PersistMode::kRequire, op, ": FUSEDRNN_PERSISTENT=require but the persistent kernel cannot run: ",
                why);
    return false;
  }
  h_n.copy_(hbuf[(T - 1) & 1]);
  if (fl.fgr) a_n.copy_(abuf[(T - 1) & 1]);
  return true;
}

// Runs lstm_bwd's reverse-time loop with the persistent kernel if selected and it fits; returns
// false (nothing written) to let the caller run the per-step loop. Arguments as in rnn_cuda.cu's
// lstm_bwd. Fills dpre, dxw, dhw (which may alias as there), accumulates into wgrad (zeroed by
// the caller), writes dh (dh0, preallocated), da (da0, FGR) and sets dc to a new dc0.
inline bool persistent_lstm_bwd(const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                                const at::Tensor& grad_a_n, const int64_t* lengths, const at::Tensor& c0,
                                const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_fgr,
                                const c10::optional<at::Tensor>& w_peep, const c10::optional<at::Tensor>& g_ih,
                                const c10::optional<at::Tensor>& g_hh, const c10::optional<at::Tensor>& g_cell,
                                const c10::optional<at::Tensor>& b_cell, const c10::optional<at::Tensor>& g_gates,
                                const at::Tensor& acts, const at::Tensor& cs, const at::Tensor& xw,
                                const at::Tensor& hw, const at::Tensor& stats, int64_t variant, int64_t norm,
                                bool training, double eps, at::Tensor& dpre, at::Tensor& dxw, at::Tensor& dhw,
                                at::Tensor& wgrad, at::Tensor& dh, at::Tensor& dc, at::Tensor& da,
                                int64_t cuda_path) {
  const PersistMode mode = persist_mode(cuda_path);
  if (mode == PersistMode::kStep) return false;
  const char* op = "fusedrnn::lstm_bwd (CUDA, persistent)";
  const LstmFlags fl = lstm_flags(int(variant));
  const int64_t T = grad_y.size(0), B = grad_y.size(1), H = w_hh.size(1), G = fl.num_gates;
  const auto dt = grad_y.scalar_type();
  const PersistDevice dev = persist_device();
  PersistPlan plan = persist_bwd_plan(int(norm), fl.fgr, int(G), int(H), int(B), dev.sms, dev.smem_max,
                                      kPersistThreads, dt == at::kDouble ? 8 : 4);
  persist_cap_chunk(&plan);
  std::string why;
  if (!persist_selected(op, mode, dev, plan, dt, norm, T, B, H, &why)) return false;
  const bool row_norm = norm == kNormLayer || norm == kNormLayerPerGate;
  const int64_t rw = norm == kNormLayer ? 6 : 2 + 2 * G;
  at::Tensor part = at::empty({row_norm ? int64_t(plan.blocks) * B * rw : 1},
                              grad_y.options().dtype(dt == at::kDouble ? at::kDouble : at::kFloat));
  at::Tensor dc0 = at::empty_like(grad_c_n);
  bool launched = false;
  FUSEDRNN_PERSIST_DISPATCH(dt, "fusedrnn_lstm_bwd_persistent", [&] {
    using T_ = scalar_t;
    auto ptr = [](const c10::optional<at::Tensor>& t) -> const T_* {
      return t.has_value() && t->defined() ? t->data_ptr<T_>() : nullptr;
    };
    const bool two = norm == kNormLayer || norm == kNormBatch;
    PersistentLstmBwd<T_> p{};
    p.steps = int(T); p.batch = int(B); p.hidden = int(H); p.variant = int(variant);
    p.training = int(training); p.units = plan.units; p.chunk = plan.chunk; p.eps = eps; p.lengths = lengths;
    p.mma = persist_mma_kind(dt);
    p.c0 = c0.data_ptr<T_>(); p.w_hh = w_hh.data_ptr<T_>(); p.w_fgr = ptr(w_fgr); p.w_peep = ptr(w_peep);
    p.g_ih = ptr(g_ih); p.g_hh = ptr(g_hh); p.g_cell = ptr(g_cell); p.b_cell = ptr(b_cell); p.g_gates = ptr(g_gates);
    p.xw = norm != kNormNone ? xw.data_ptr<T_>() : nullptr;
    p.hw = two ? hw.data_ptr<T_>() : nullptr;
    p.acts = acts.data_ptr<T_>(); p.cs = cs.data_ptr<T_>();
    p.stats = norm != kNormNone ? stats.data_ptr<typename AccOf<T_>::type>() : nullptr;
    p.dy = grad_y.data_ptr<T_>(); p.dh_n = grad_h_n.data_ptr<T_>(); p.dc_n = grad_c_n.data_ptr<T_>();
    p.da_n = fl.fgr ? grad_a_n.data_ptr<T_>() : nullptr;
    p.dpre = dpre.data_ptr<T_>(); p.dxw = dxw.data_ptr<T_>(); p.dhw = dhw.data_ptr<T_>();
    p.dh0 = dh.data_ptr<T_>(); p.dc0 = dc0.data_ptr<T_>(); p.da0 = fl.fgr ? da.data_ptr<T_>() : nullptr;
    p.wgrad = wgrad.data_ptr<typename AccOf<T_>::type>();
    p.part = part.data_ptr<typename AccOf<T_>::type>();
    const cudaStream_t stream = FUSEDRNN_STREAM();
    launched = with_persist_norm(norm, [&](auto N) {
      return persist_launch(persistent_lstm_bwd_kernel<T_, decltype(N)::value>, p, plan, stream, &why);
    });
  });
  if (!launched) {
    TORCH_CHECK(mode != PersistMode::kRequire, op, ": FUSEDRNN_PERSISTENT=require but the persistent kernel cannot run: ",
                why);
    return false;
  }
  dc = dc0;
  return true;
}

}  // namespace cuda
}  // namespace fusedrnn
