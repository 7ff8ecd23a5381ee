// The persistent LSTM kernels (csrc/cuda/persistent.cuh forward, persistent_bwd.cuh backward)
// under the SIMT emulator, for a ThreadSanitizer build (tests/test_simt.py). No torch.
//
// Each case (float32, T = 3, B = 3 with lengths 3, 1, 2 or none, H = 10) runs the forward and
// the backward as ONE CTA of 64 threads and as a cooperative grid of `--ctas` CTAs (default 3)
// x 64 threads, and compares every output of the two. The single CTA is the oracle: the same
// cell math (checked against fusedrnn.reference by tests/test_persistent_emulated.py) without
// the split that the grid syncs and the cross-CTA exchanges (h_t / a_t / dhw_t through global
// memory, the layer norms' per-CTA partials) exist for, so a missing sync shows up as a
// difference; it is also a data race that ThreadSanitizer can report. Both backward runs read
// the single-CTA forward's saved tensors, so the backward does not inherit forward differences.
// Tolerance: without a layer norm every output value is computed by the same sequence of
// operations whatever the split (the recurrent product sums k = lane, lane + 32, ... then the 32
// lanes in order; a batch-norm column belongs to one warp, whose lanes sum rows b = lane, lane + 32,
// ... and then each other in a fixed butterfly; parameter-gradient sums belong to one thread), so those
// cases must match bit for bit. The layer norms merge per-CTA (mean, M2) and partial sums, an
// order that depends on the split: they use --rtol / --atol (the float32 row of the tests'
// tolerance table, passed by tests/test_simt.py).
// Outputs start as NaN (wgrad, accumulated, as zero); a value that is not finite is a mismatch,
// so an element neither run writes is one too.
//
// Usage: persistent_tsan --rtol R --atol A [--ctas N] [--hidden H] [--case NAME]... [--repeat N]
//                        [--drop fwd:K|bwd:K]
//   --repeat runs the grid N times per case (more thread interleavings for TSan to see).
//   --drop needs the mutant build (-DPERSISTENT_TSAN_MUTANT): tests/test_simt.py rewrites every
//   `grid.sync();` of the two kernels into `if (!::persistent_tsan_drop(KERNEL, K)) grid.sync();`
//   (KERNEL 0 forward, 1 backward; K = its index in the file) and --drop skips that one.
// Prints one line per case and exits 1 on a mismatch (2 on bad arguments).
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

static int g_drop_kernel = -1, g_drop_site = -1;
static std::atomic<long> g_dropped{0};  // how often the dropped sync was skipped (relaxed: no ordering)
inline bool persistent_tsan_drop(int kernel, int site) {
  if (kernel != g_drop_kernel || site != g_drop_site) return false;
  g_dropped.fetch_add(1, std::memory_order_relaxed);
  return true;
}

#include "../../csrc/cuda/persistent_bwd.cuh"

using namespace fusedrnn;
using namespace fusedrnn::cuda;
using T = float;
using A = AccOf<T>::type;

namespace {

constexpr int kThreads = 64;  // as the emulated build of the extension (persistent_launch.h)
constexpr int kT = 3, kB = 3;
int g_hidden = 10;  // H (--hidden): 3 CTAs own 4 + 4 + 2 units, 4 CTAs 3 + 3 + 3 + 1
const int64_t kLengths[kB] = {3, 1, 2};  // row 1 is padded after step 0, row 2 after step 1

struct Case {
  const char* name;
  int variant, norm;
  bool training, lengths;
  int chunk;  // cap on the staged batch rows (0: the plan's, i.e. all B rows)
  int t0, slots;
};

// vanilla with every norm (batch in training and eval), FGR (a_t exchanged too), peephole with
// per-gate layer norm; a chunk of 2 stages B = 3 rows as 2 + 1.
const Case kCases[] = {
    {"vanilla/none", kVanilla, kNormNone, true, true, 0, 0, 1},
    {"vanilla/layer", kVanilla, kNormLayer, true, true, 0, 0, 1},
    {"vanilla/layer_per_gate", kVanilla, kNormLayerPerGate, true, true, 2, 0, 1},
    {"vanilla/batch", kVanilla, kNormBatch, true, true, 0, 0, 1},
    {"vanilla/batch-eval", kVanilla, kNormBatch, false, false, 2, 1, 2},
    {"fgr/none", kFGR, kNormNone, true, true, 2, 0, 1},
    {"peephole/layer_per_gate", kPeephole, kNormLayerPerGate, true, false, 0, 0, 1},
};

std::mt19937 rng(0);

std::vector<T> randn(size_t n, double mean, double sd) {
  std::normal_distribution<double> d(mean, sd);
  std::vector<T> v(n);
  for (auto& x : v) x = T(d(rng));
  return v;
}
template <typename V>
V nans(size_t n) {
  return V(n, std::numeric_limits<typename V::value_type>::quiet_NaN());
}

// Inputs of one case (shared by both runs).
struct Inputs {
  std::vector<T> xw, h0, c0, a0, w_hh, w_fgr, b_ih, b_hh, w_peep, g_ih, g_hh, g_cell, b_cell, g_gates, b_gates;
  std::vector<T> rm_ih, rv_ih, rm_hh, rv_hh, rm_cell, rv_cell, dy, dh_n, dc_n, da_n;
};

Inputs make_inputs(const Case& c, int G) {
  const int GH = G * g_hidden, S = c.slots;
  Inputs in;
  in.xw = randn(size_t(kT) * kB * GH, 0, 1);
  in.h0 = randn(kB * g_hidden, 0, 0.5);
  in.c0 = randn(kB * g_hidden, 0, 0.5);
  in.a0 = randn(kB * 3 * g_hidden, 0.5, 0.2);
  in.w_hh = randn(size_t(GH) * g_hidden, 0, 0.4);
  in.w_fgr = randn(size_t(3 * g_hidden) * 3 * g_hidden, 0, 0.2);
  in.b_ih = randn(GH, 0, 0.2);
  in.b_hh = randn(GH, 0, 0.2);
  in.w_peep = randn(3 * g_hidden, 0, 0.3);
  in.g_ih = randn(GH, 1, 0.2);
  in.g_hh = randn(GH, 1, 0.2);
  in.g_cell = randn(g_hidden, 1, 0.2);
  in.b_cell = randn(g_hidden, 0, 0.2);
  in.g_gates = randn(GH, 1, 0.2);
  in.b_gates = randn(GH, 0, 0.2);
  in.rm_ih = randn(size_t(S) * GH, 0, 0.3);
  in.rm_hh = randn(size_t(S) * GH, 0, 0.3);
  in.rm_cell = randn(size_t(S) * g_hidden, 0, 0.3);
  for (auto* v : {&in.rv_ih, &in.rv_hh}) *v = randn(size_t(S) * GH, 0, 1);
  in.rv_cell = randn(size_t(S) * g_hidden, 0, 1);
  for (auto* v : {&in.rv_ih, &in.rv_hh, &in.rv_cell})
    for (auto& x : *v) x = x * x + T(0.5);
  in.dy = randn(size_t(kT) * kB * g_hidden, 0, 1);
  in.dh_n = randn(kB * g_hidden, 0, 1);
  in.dc_n = randn(kB * g_hidden, 0, 1);
  in.da_n = randn(kB * 3 * g_hidden, 0, 1);
  return in;
}

struct FwdOut {
  std::vector<T> xw, hw, hbuf, abuf, y, acts, cs;
  std::vector<A> stats;
};
struct BwdOut {
  std::vector<T> dpre, dxw, dhw, dh0, dc0, da0;
  std::vector<A> wgrad;
};

PersistPlan capped(PersistPlan plan, const Case& c, const char* what, int ctas) {
  if (!plan.fits) {
    std::fprintf(stderr, "%s %s: the plan does not fit: %s\n", c.name, what, plan.why);
    std::exit(2);
  }
  if (plan.blocks != ctas) {
    std::fprintf(stderr, "%s %s: asked for %d CTAs, the plan has %d\n", c.name, what, ctas, plan.blocks);
    std::exit(2);
  }
  if (c.chunk > 0 && c.chunk < plan.chunk) plan.chunk = c.chunk;
  return plan;
}

FwdOut run_fwd(const Case& c, Inputs& in, int ctas) {
  const LstmFlags fl = lstm_flags(c.variant);
  const int G = fl.num_gates, GH = G * g_hidden, norm = c.norm;
  const PersistPlan plan =
      capped(persist_plan(norm, fl.fgr, G, g_hidden, kB, ctas, 1L << 30, kThreads, sizeof(A)), c, "forward", ctas);
  const bool row_norm = norm == kNormLayer || norm == kNormLayerPerGate;
  const long nq = norm == kNormLayer ? 2 : norm == kNormLayerPerGate ? G : 0;
  const long stats_per_step = norm == kNormBatch ? 2L * (2 * GH + g_hidden) : norm == kNormLayer ? 6L * kB
                              : norm == kNormLayerPerGate ? long(2 * G + 2) * kB : 0;
  FwdOut o;
  o.xw = in.xw;  // layer_per_gate overwrites it with xw + hw
  o.hw = nans<std::vector<T>>(size_t(kT) * kB * GH);
  o.hbuf = nans<std::vector<T>>(2 * kB * g_hidden);
  o.abuf = nans<std::vector<T>>(2 * kB * 3 * g_hidden);
  o.y = nans<std::vector<T>>(kT * kB * g_hidden);
  o.acts = nans<std::vector<T>>(size_t(kT) * kB * GH);
  o.cs = nans<std::vector<T>>(kT * kB * g_hidden);
  o.stats = nans<std::vector<A>>(std::max(1L, kT * stats_per_step));
  std::vector<A> part = nans<std::vector<A>>(row_norm ? size_t(plan.blocks) * kB * 2 * (nq + 1) : 1);
  PersistentLstmFwd<T> p{};
  p.steps = kT; p.batch = kB; p.hidden = g_hidden; p.variant = c.variant; p.training = c.training;
  p.t0 = c.t0; p.slots = c.slots; p.units = plan.units; p.chunk = plan.chunk; p.eps = 1e-5;
  p.lengths = c.lengths ? kLengths : nullptr;
  p.h0 = in.h0.data(); p.c0 = in.c0.data(); p.a0 = fl.fgr ? in.a0.data() : nullptr;
  p.w_hh = in.w_hh.data(); p.w_fgr = fl.fgr ? in.w_fgr.data() : nullptr;
  p.b_ih = in.b_ih.data(); p.b_hh = in.b_hh.data(); p.w_peep = fl.num_peep ? in.w_peep.data() : nullptr;
  p.g_ih = in.g_ih.data(); p.g_hh = in.g_hh.data(); p.g_cell = in.g_cell.data(); p.b_cell = in.b_cell.data();
  p.g_gates = in.g_gates.data(); p.b_gates = in.b_gates.data();
  p.rm_ih = in.rm_ih.data(); p.rv_ih = in.rv_ih.data(); p.rm_hh = in.rm_hh.data(); p.rv_hh = in.rv_hh.data();
  p.rm_cell = in.rm_cell.data(); p.rv_cell = in.rv_cell.data();
  p.xw = o.xw.data();
  p.hw = norm == kNormLayer || norm == kNormBatch ? o.hw.data() : nullptr;
  p.hbuf = o.hbuf.data(); p.abuf = fl.fgr ? o.abuf.data() : nullptr;
  p.y = o.y.data(); p.acts = o.acts.data(); p.cs = o.cs.data();
  p.stats = norm == kNormNone ? nullptr : o.stats.data();
  p.part = part.data();
  const dim3 grid(plan.blocks), block(plan.threads);
  const size_t smem = size_t(plan.smem_bytes);
  with_persist_norm(norm, [&](auto N) {
    simt::launch_cooperative(persistent_lstm_fwd_kernel<T, decltype(N)::value>, grid, block, smem, nullptr, p);
  });
  if (!(norm == kNormLayer || norm == kNormBatch)) o.hw.clear();  // not an output of this norm
  if (!fl.fgr) o.abuf.clear();
  if (norm == kNormNone) o.stats.clear();
  return o;
}

// The backward of the forward `f` (the single-CTA run's outputs, so both runs read the same).
BwdOut run_bwd_kernel(const Case& c, const Inputs& in, const FwdOut& f, int ctas) {
  const LstmFlags fl = lstm_flags(c.variant);
  const int G = fl.num_gates, GH = G * g_hidden, norm = c.norm;
  const PersistPlan plan =
      capped(persist_bwd_plan(norm, fl.fgr, G, g_hidden, kB, ctas, 1L << 30, kThreads, sizeof(A)), c, "backward", ctas);
  const bool row_norm = norm == kNormLayer || norm == kNormLayerPerGate;
  const bool two = norm == kNormLayer || norm == kNormBatch;
  const long rw = norm == kNormLayer ? 6 : 2 + 2 * G;
  const size_t TBG = size_t(kT) * kB * GH;
  BwdOut o;
  o.dpre = nans<std::vector<T>>(TBG);
  o.dxw = nans<std::vector<T>>(norm == kNormNone ? 0 : TBG);
  o.dhw = nans<std::vector<T>>(two ? TBG : 0);
  o.dh0 = nans<std::vector<T>>(kB * g_hidden);
  o.dc0 = nans<std::vector<T>>(kB * g_hidden);
  o.da0 = nans<std::vector<T>>(fl.fgr ? kB * 3 * g_hidden : 0);
  o.wgrad.assign(size_t(kB) * (3 * GH + 5 * g_hidden), A(0));
  std::vector<A> part = nans<std::vector<A>>(row_norm ? size_t(plan.blocks) * kB * rw : 1);
  PersistentLstmBwd<T> p{};
  p.steps = kT; p.batch = kB; p.hidden = g_hidden; p.variant = c.variant; p.training = c.training;
  p.units = plan.units; p.chunk = plan.chunk; p.eps = 1e-5; p.lengths = c.lengths ? kLengths : nullptr;
  p.c0 = in.c0.data(); p.w_hh = in.w_hh.data(); p.w_fgr = fl.fgr ? in.w_fgr.data() : nullptr;
  p.w_peep = fl.num_peep ? in.w_peep.data() : nullptr;
  p.g_ih = in.g_ih.data(); p.g_hh = in.g_hh.data(); p.g_cell = in.g_cell.data(); p.b_cell = in.b_cell.data();
  p.g_gates = in.g_gates.data();
  p.xw = norm != kNormNone ? f.xw.data() : nullptr;
  p.hw = two ? f.hw.data() : nullptr;
  p.acts = f.acts.data(); p.cs = f.cs.data();
  p.stats = norm != kNormNone ? f.stats.data() : nullptr;
  p.dy = in.dy.data(); p.dh_n = in.dh_n.data(); p.dc_n = in.dc_n.data(); p.da_n = fl.fgr ? in.da_n.data() : nullptr;
  // aliasing as in rnn_cuda.cu: dxw is dpre without a norm, dhw is dxw unless layer or batch norm
  p.dpre = o.dpre.data();
  p.dxw = norm == kNormNone ? o.dpre.data() : o.dxw.data();
  p.dhw = two ? o.dhw.data() : p.dxw;
  p.dh0 = o.dh0.data(); p.dc0 = o.dc0.data(); p.da0 = fl.fgr ? o.da0.data() : nullptr;
  p.wgrad = o.wgrad.data(); p.part = part.data();
  const dim3 grid(plan.blocks), block(plan.threads);
  const size_t smem = size_t(plan.smem_bytes);
  with_persist_norm(norm, [&](auto N) {
    simt::launch_cooperative(persistent_lstm_bwd_kernel<T, decltype(N)::value>, grid, block, smem, nullptr, p);
  });
  return o;
}

// Compares `got` (grid) with `want` (one CTA); returns the number of mismatches, prints the first.
template <typename V>
long compare(const char* cname, const char* what, const V& got, const V& want, bool exact, double rtol,
             double atol, double* max_diff) {
  long bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = double(got[i]), w = double(want[i]), d = std::fabs(g - w);
    const bool ok = std::isfinite(g) && std::isfinite(w) &&
                    (exact ? std::memcmp(&got[i], &want[i], sizeof(got[i])) == 0 : d <= atol + rtol * std::fabs(w));
    if (std::isfinite(d) && d > *max_diff) *max_diff = d;
    if (!ok && bad++ == 0)
      std::printf("  MISMATCH %s %s[%zu]: grid %.9g, one CTA %.9g\n", cname, what, i, g, w);
  }
  if (got.size() != want.size()) {
    std::printf("  MISMATCH %s %s: sizes %zu and %zu\n", cname, what, got.size(), want.size());
    ++bad;
  }
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  int ctas = 3, repeat = 1;
  double rtol = -1, atol = -1;
  std::vector<std::string> only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--ctas") ctas = std::atoi(value().c_str());
    else if (a == "--hidden") g_hidden = std::atoi(value().c_str());
    else if (a == "--case") only.push_back(value());
    else if (a == "--repeat") repeat = std::atoi(value().c_str());
    else if (a == "--rtol") rtol = std::atof(value().c_str());
    else if (a == "--atol") atol = std::atof(value().c_str());
    else if (a == "--drop") {
      const std::string v = value();
#ifndef PERSISTENT_TSAN_MUTANT
      std::fprintf(stderr, "--drop %s: this build has no drop hooks (build with -DPERSISTENT_TSAN_MUTANT from the "
                   "rewritten kernels, see tests/test_simt.py)\n", v.c_str());
      return 2;
#endif
      if (v.size() < 5 || (v.compare(0, 4, "fwd:") && v.compare(0, 4, "bwd:"))) {
        std::fprintf(stderr, "--drop takes fwd:K or bwd:K, got '%s'\n", v.c_str());
        return 2;
      }
      g_drop_kernel = v[0] == 'b';
      g_drop_site = std::atoi(v.c_str() + 4);
    } else {
      std::fprintf(stderr, "unknown argument '%s'\n", a.c_str());
      return 2;
    }
  }
  if (g_hidden < 2 || ctas < 2 || ctas > g_hidden || repeat < 1 || rtol < 0 || atol < 0) {
    std::fprintf(stderr, "need --hidden >= 2, --ctas in [2, H] (got H %d, %d CTAs), --repeat >= 1, --rtol and --atol >= 0\n",
                 g_hidden, ctas);
    return 2;
  }
  // With --drop only the kernel whose sync is dropped runs on the grid (the other one would
  // only consume or produce what the broken one reads or writes).
  const bool run_fwd_grid = g_drop_kernel != 1, run_bwd = g_drop_kernel != 0;
  long mismatches = 0;
  int ran = 0;
  for (const Case& c : kCases) {
    bool selected = only.empty();
    for (const auto& n : only) selected |= n == c.name;
    if (!selected) continue;
    ++ran;
    const LstmFlags fl = lstm_flags(c.variant);
    Inputs in = make_inputs(c, fl.num_gates);
    const FwdOut one = run_fwd(c, in, 1);
    const BwdOut bone = run_bwd ? run_bwd_kernel(c, in, one, 1) : BwdOut{};
    const bool exact = c.norm == kNormNone || c.norm == kNormBatch;
    for (int r = 0; r < repeat; ++r) {  // the grid runs `repeat` times: more interleavings for TSan
      double dmax = 0, bmax = 0;
      long bad = 0;
      if (run_fwd_grid) {
        const FwdOut many = run_fwd(c, in, ctas);
        bad += compare(c.name, "xw", many.xw, one.xw, exact, rtol, atol, &dmax);
        bad += compare(c.name, "hw", many.hw, one.hw, exact, rtol, atol, &dmax);
        bad += compare(c.name, "h slots", many.hbuf, one.hbuf, exact, rtol, atol, &dmax);
        bad += compare(c.name, "a slots", many.abuf, one.abuf, exact, rtol, atol, &dmax);
        bad += compare(c.name, "y", many.y, one.y, exact, rtol, atol, &dmax);
        bad += compare(c.name, "acts", many.acts, one.acts, exact, rtol, atol, &dmax);
        bad += compare(c.name, "cs", many.cs, one.cs, exact, rtol, atol, &dmax);
        bad += compare(c.name, "stats", many.stats, one.stats, exact, rtol, atol, &dmax);
      }
      if (run_bwd) {
        const BwdOut bmany = run_bwd_kernel(c, in, one, ctas);
        bad += compare(c.name, "dpre", bmany.dpre, bone.dpre, exact, rtol, atol, &bmax);
        bad += compare(c.name, "dxw", bmany.dxw, bone.dxw, exact, rtol, atol, &bmax);
        bad += compare(c.name, "dhw", bmany.dhw, bone.dhw, exact, rtol, atol, &bmax);
        bad += compare(c.name, "dh0", bmany.dh0, bone.dh0, exact, rtol, atol, &bmax);
        bad += compare(c.name, "dc0", bmany.dc0, bone.dc0, exact, rtol, atol, &bmax);
        bad += compare(c.name, "da0", bmany.da0, bone.da0, exact, rtol, atol, &bmax);
        bad += compare(c.name, "wgrad", bmany.wgrad, bone.wgrad, exact, rtol, atol, &bmax);
      }
      if (r == 0 || bad)
        std::printf("%-24s %d CTAs vs 1: %s, max |diff| forward %.3g backward %.3g, %ld mismatch(es)\n", c.name,
                    ctas, exact ? "bitwise" : "tolerance", dmax, bmax, bad);
      mismatches += bad;
    }
  }
  if (ran == 0) {
    std::fprintf(stderr, "no case selected\n");
    return 2;
  }
  if (g_drop_kernel >= 0)
    std::printf("dropped %s grid sync #%d: skipped %ld time(s)\n", g_drop_kernel ? "bwd" : "fwd", g_drop_site,
                g_dropped.load());
  std::printf("persistent_tsan: %d case(s), %ld mismatch(es)\n", ran, mismatches);
  return mismatches ? 1 : 0;
}
