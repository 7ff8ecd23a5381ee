// The large GEMMs around the time loop: the input projection x W_ih^T before it; dx and the
// weight gradients after it, or the weight gradients step by step in it (StepWeightGrads).
//
// float32 on AVX-512 CPUs: fusedrnn's packed kernel (packed_gemm.h) on a thread team of
// single-threaded members, which pack their share of B's panels, meet at one barrier, then
// each computes its own panels (or, when B has too few panels to share, its own rows of the
// output). Measured on this 2-core EPYC, 700 x 650 x 2600 and 3200 x 256 x 1024, three runs
// (benchmarks/results/cpu-20261203-avx512/gemm_kernels.sh): MKL's sgemm (torch.mm) 71-89 GFLOP/s
// on one thread, 121-135 on two; oneDNN's 158-191 on two; the packed kernel 90-97 on one thread,
// and its members do not share anything but the packed operands. Elsewhere
// (float64, no AVX-512, FUSEDRNN_PACKED_GEMM other than 1, fewer than 16 output columns, small
// products) ATen's mm; on CPUs with AMX the AMX tiles at float32 accuracy (amx_gemm.h, for k of
// at least 64); on other Intel CPUs, where MKL runs AVX-512 code and beats the kernel, ATen's mm
// (recurrent_gemm.h large_gemm, FUSEDRNN_LARGE_GEMM).
#pragma once

#include <ATen/ATen.h>

#include "packed_gemm.h"
#include "pool.h"
#include "team.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

namespace fusedrnn {
namespace cpu {

// One product of gemm_outs: out[M, N] = a[M, K] b[K, N] (+ bias[N] on every row); b of any
// strides, out contiguous, bias (float32) [N] or null.
struct GemmPart {
  at::Tensor* out;
  const at::Tensor* b;
  const at::Tensor* bias;
};

// Whether gemm_outs runs a float32 product of a [M, K] by parts of widths N on fusedrnn's AVX-512
// kernel or the AMX tiles, whichever large_gemm picks (else ATen's mm): each part at least 16
// columns, 64k multiply-adds in all.
inline bool own_gemm(at::ScalarType dt, int64_t M, int64_t K, const std::vector<int64_t>& N) {
#if FUSEDRNN_HAS_AVX512_KERNEL
  int64_t all = 0;
  bool wide = true;
  for (int64_t n : N) {
    all += n;
    wide = wide && n >= 16;
  }
  const mkl::LargeGemm large = mkl::large_gemm();
  // AMX: k of at least 64, two k blocks per output block (row MNIST's GRU input projection, k =
  // 28 padded to 32, ran 6.5 ms fwd+bwd against 5.8 on ATen's mm)
  if (large == mkl::LargeGemm::kAmx && K < 64) return false;
  return dt == at::kFloat && large != mkl::LargeGemm::kAten && wide && K >= 1 && M >= 1 && M * K * all >= (int64_t(1) << 16);
#else
  (void)dt; (void)M; (void)K; (void)N;
  return false;
#endif
}

// The products of one gemm_outs call as the team's members read them (raw pointers: no ATen
// call on team threads): b, the output and the bias of each, and its blocks of output columns
// [first, first + blocks) of all parts' (48-column panels of the AVX-512 kernel, 32-column
// blocks of the AMX one), numbered one part after another.
struct PartViews {
  struct Part {
    const float* b;
    int64_t bk, bn, N;
    float* c;
    int64_t ldc;
    at::Tensor bias;  // contiguous, or undefined
    const float* biasp;
    int64_t first, blocks;
  };
  std::vector<Part> parts;
  int64_t blocks = 0;  // all parts'

  template <typename Blocks>
  PartViews(const std::vector<GemmPart>& gs, Blocks blocks_of) {
    for (const GemmPart& g : gs) {
      const int64_t N = g.b->size(1), nb = blocks_of(N);
      const at::Tensor bias = g.bias ? g.bias->contiguous() : at::Tensor();
      parts.push_back({g.b->data_ptr<float>(), g.b->stride(0), g.b->stride(1), N, g.out->data_ptr<float>(),
                       g.out->stride(0), bias, bias.defined() ? bias.data_ptr<float>() : nullptr, blocks, nb});
      blocks += nb;
    }
  }
  // f(part, its blocks [lo, hi)) for each part's share of all parts' blocks [q0, q1)
  template <typename F>
  void each_share(int64_t q0, int64_t q1, F&& f) const {
    for (const Part& p : parts) {
      const int64_t lo = std::max(q0, p.first) - p.first, hi = std::min(q1, p.first + p.blocks) - p.first;
      if (hi > lo) f(p, lo, hi);
    }
  }
};
using PartView = PartViews::Part;

// gemm_outs on the AMX tiles (amx_gemm.h), n members: they pack their shares of a's row blocks
// and of the parts' column blocks, meet at one barrier, then compute their shares of the 32 x 32
// output blocks: of the column blocks where there are at least 4 per member, else of the rows.
inline void amx_gemm_outs(const at::Tensor& a, const std::vector<GemmPart>& parts, int64_t n) {
#if FUSEDRNN_HAS_AMX
  const int64_t M = a.size(0), K = a.size(1), R = amx::blocks32(M);
  const PartViews ps(parts, amx::blocks32);
  const int64_t Q = ps.blocks;
  const auto i16 = a.options().dtype(at::kShort);
  const int64_t KB = amx::blocks32(K), b_stride = amx::packed_elems(32, K);  // one 32-column block
  // rows split: each member packs its own row blocks, a group of them and a chunk of k at a time
  // (about 768 KiB: kept in L2 while the group meets every column block's chunk); else the column
  // blocks are split and all of a is packed once, shared.
  const bool by_rows = R >= 4 * n;
  const int64_t chunk = std::min<int64_t>(KB, 16);  // k blocks
  const int64_t group = std::max<int64_t>(1, (int64_t(3) << 18) / (2 * 32 * 32 * chunk * 3));
  const int64_t group_elems = group * amx::packed_elems(32, 32 * chunk);
  at::Tensor a_buf = cached_empty({by_rows ? n * group_elems : amx::packed_elems(M, K)}, i16);
  at::Tensor b_buf = cached_empty({Q * b_stride}, i16);
  auto* pa = reinterpret_cast<amx::bf16*>(a_buf.data_ptr<int16_t>());
  auto* pb = reinterpret_cast<amx::bf16*>(b_buf.data_ptr<int16_t>());
  const float* ap = a.data_ptr<float>();
  const int64_t sa = a.stride(0), sk = a.stride(1);
  // row blocks [r0, r1) (packed: pa_r) by part p's column blocks [lo, hi), k blocks [k0, k0 + kn)
  auto product = [&](amx::Packed pa_r, int64_t r0, int64_t r1, const PartView& p, int64_t lo, int64_t hi,
                     int64_t k0, int64_t kn) {
    const amx::Packed b{pb + p.first * b_stride + k0 * amx::kBlockElems, KB};
    amx::gemm(pa_r, b, kn, M, p.N, r0, r1, lo, hi, p.c, p.ldc, p.biasp, k0 > 0);
  };
  run_team(n, [&](Team& team) {
    if (!by_rows) team.each_part(R, [&](int64_t, int64_t q0, int64_t q1) { amx::pack_a(ap, sa, sk, M, K, q0, q1, pa); });
    team.each_part(Q, [&](int64_t, int64_t q0, int64_t q1) {
      ps.each_share(q0, q1, [&](const PartView& p, int64_t lo, int64_t hi) {
        amx::pack_b(p.b, p.bk, p.bn, K, p.N, lo, hi, pb + p.first * b_stride);
      });
    });
    team.barrier();
    if (by_rows)
      team.each_part(R, [&](int64_t m, int64_t r0, int64_t r1) {
        amx::bf16* mine = pa + m * group_elems;
        for (int64_t g = r0; g < r1; g += group) {
          const int64_t g1 = std::min(r1, g + group);
          for (int64_t k0 = 0; k0 < KB; k0 += chunk) {
            const int64_t kn = std::min(chunk, KB - k0);
            amx::pack_a(ap + 32 * g * sa + 32 * k0 * sk, sa, sk, M - 32 * g, K - 32 * k0, 0, g1 - g, mine,
                        kn);
            amx::with_tiles([&] {
              ps.each_share(0, Q, [&](const PartView& p, int64_t lo, int64_t hi) {
                product({mine, kn}, g, g1, p, lo, hi, k0, kn);
              });
            });
          }
        }
      });
    else
      amx::with_tiles([&] {
        team.each_part(Q, [&](int64_t, int64_t q0, int64_t q1) {
          ps.each_share(q0, q1, [&](const PartView& p, int64_t lo, int64_t hi) {
            product({pa, KB}, 0, R, p, lo, hi, 0, KB);
          });
        });
      });
  });
#else
  (void)a; (void)parts; (void)n;
  TORCH_CHECK(false, "fusedrnn: built without AMX support");
#endif
}

// Products that share their left operand a (of any strides), on one thread team: a is packed
// once for all of them (the weight gradients dW_ih = dG^T x and dW_hh = dG^T h_prev of one dG
// go straight into their own contiguous outputs).
inline void gemm_outs(const at::Tensor& a, const std::vector<GemmPart>& parts) {
  const int64_t M = a.size(0), K = a.size(1);
  std::vector<int64_t> widths;
  bool f32 = true;
  for (const GemmPart& g : parts) {
    widths.push_back(g.b->size(1));
    f32 = f32 && g.out->scalar_type() == at::kFloat;
  }
  const bool own = f32 && own_gemm(a.scalar_type(), M, K, widths);
  int64_t N_all = 0;
  for (int64_t w : widths) N_all += w;
  const int64_t n = team_members(M * K * N_all);
  if (!own) {
    for (const GemmPart& g : parts) {
      if (g.bias) at::addmm_out(*g.out, *g.bias, a, *g.b);
      else at::mm_out(*g.out, a, *g.b);
    }
    return;
  }
  if (mkl::large_gemm() == mkl::LargeGemm::kAmx) return amx_gemm_outs(a, parts, n);
#if FUSEDRNN_HAS_AVX512_KERNEL
  // part j's panels are packed at pk + first * 48 K
  const PartViews ps(parts, avx512::panels);
  const int64_t P = ps.blocks;
  const int64_t tiles = avx512::row_tiles(M);
  at::Tensor packed = cached_empty({P * avx512::kNR * K}, a.options());
  float* pk = packed.data_ptr<float>();
  // a with contiguous rows is read in place; other strides (dG^T) are packed by row tiles
  const bool a_rows = a.stride(1) == 1;
  at::Tensor a_packed = a_rows ? at::Tensor() : cached_empty({M * K}, a.options());
  float* apk = a_rows ? nullptr : a_packed.data_ptr<float>();
  const float* ap = a.data_ptr<float>();
  const int64_t sa = a.stride(0), sk = a.stride(1);
  const float* a_in = a_rows ? ap : apk;
  const int64_t lda = a_rows ? sa : 0;
  // f(part, its panels [lo, hi), its packed panels) for each part's share of panels [q0, q1)
  auto each_share = [&](int64_t q0, int64_t q1, auto f) {
    ps.each_share(q0, q1, [&](const PartView& p, int64_t lo, int64_t hi) { f(p, lo, hi, pk + p.first * avx512::kNR * K); });
  };
  // row tiles [q0, q1) of part p's panels [lo, hi)
  auto product = [&](const PartView& p, int64_t q0, int64_t q1, int64_t lo, int64_t hi, const float* pkp) {
    avx512::gemm(a_in, lda, M, q0, q1, pkp, K, lo * avx512::kNR, std::min(p.N, hi * avx512::kNR), p.c, p.ldc, false,
                 p.biasp);
  };
  auto width = [&](int64_t q) {  // columns of panel q of all parts'
    int64_t w = 0;
    each_share(q, q + 1, [&](const PartView& p, int64_t lo, int64_t, float*) {
      w = std::min<int64_t>(avx512::kNR, p.N - lo * avx512::kNR);
    });
    return w;
  };
  // members take panels or row tiles, whichever split evens their work out better (a 12-column
  // tail panel costs a 16-column one): row MNIST's weight gradients, N = 156 in panels of 3, 3, 3
  // and 1 zmm, split 6 | 4 by panels, 32 | 32 tiles by rows
  auto balance = [&](int64_t count, auto weight) {
    int64_t total = 0, most = 0;
    for (int64_t m = 0; m < n; ++m) {
      const auto [lo, hi] = split(count, n, m);
      int64_t w = 0;
      for (int64_t q = lo; q < hi; ++q) w += weight(q);
      total += w;
      most = std::max(most, w);
    }
    return double(total) / double(n * std::max<int64_t>(most, 1));
  };
  const bool by_panels = balance(P, [&](int64_t q) { return (width(q) + 15) / 16; }) >=
                         balance(tiles, [&](int64_t q) { return avx512::tile_start(M, q + 1) - avx512::tile_start(M, q); });
  run_team(n, [&](Team& team) {
    team.each_part(P, [&](int64_t, int64_t q0, int64_t q1) {
      each_share(q0, q1, [&](const PartView& p, int64_t lo, int64_t hi, float* pkp) {
        avx512::pack(p.b, p.bk, p.bn, K, p.N, lo, hi, pkp);
      });
    });
    if (!a_rows)
      team.each_part(tiles, [&](int64_t, int64_t q0, int64_t q1) { avx512::pack_a(ap, sa, sk, M, K, q0, q1, apk); });
    team.barrier();
    if (by_panels) {
      team.each_part(P, [&](int64_t, int64_t q0, int64_t q1) {
        each_share(q0, q1, [&](const PartView& p, int64_t lo, int64_t hi, float* pkp) {
          product(p, 0, tiles, lo, hi, pkp);
        });
      });
    } else {
      team.each_part(tiles, [&](int64_t, int64_t q0, int64_t q1) {
        if (q1 > q0)
          each_share(0, P, [&](const PartView& p, int64_t lo, int64_t hi, float* pkp) {
            product(p, q0, q1, lo, hi, pkp);
          });
      });
    }
  });
#endif
}

// out[M, N] = a[M, K] b[K, N] (+ bias[N] on every row); a and b of any strides, out contiguous,
// bias (float32) [N].
inline void gemm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor* bias = nullptr) {
  gemm_outs(a, {{&out, &b, bias}});
}

// Weight gradients accumulated step by step inside a time loop whose members own batch rows:
// member m adds dG^T X for its rows of the step (dG [rows, M], X [rows, N_j], both row-major)
// into its own accumulators C_j [M, N_j], packing dG^T and X while dG's rows are still in its
// cache; total(j) sums the members' after the loop. float32 with fusedrnn's AVX-512 kernel only
// (available()); elsewhere the weight gradients stay GEMMs after the loop (common.h
// weight_grads). The gate gradients then need no [T, B, 4H] buffer written in the loop and read
// back (and packed, transposed) after it. Measured on the LSTM backward, fwd+bwd alternating
// with a temporary switch to the GEMMs after the loop, median of 21: row MNIST LSTM / LN / BN
// 11.88 / 15.97 / 18.78 ms against 12.15 / 16.56 / 19.27, pixel MNIST 117.4 / 171.9 / 187.5
// against 121.9 / 181.3 / 194.6.
// A member's rows of one step are a short k (row MNIST: 50), so each product is staged over
// `steps` steps (k = 128 rows where a member has fewer per step) and runs once per `steps`
// steps: each C_j tile is then read and written, and each tile call set up, half or a quarter
// as often. Measured fwd+bwd, alternating with a temporary switch (1 step / 2-4 steps / 5-8
// steps), median of 21 (pixel MNIST: 7): row MNIST LSTM / LN / BN 13.34 / 16.01 / 18.55 ms
// against 12.77 / 15.50 / 18.19 (and 13.36 / 16.57 / 18.98), pixel MNIST LSTM / BN 111.7 /
// 182.3 against 104.6 / 175.4 (and 103.6 / 179.9).
// Where the large GEMMs run on the AMX tiles (recurrent_gemm.h large_gemm), about 1.6x the
// AVX-512 kernel's rate on the weight gradients, the loop's products run on the tiles too
// (on_amx: C_j^T = X^T dG, dG packed as it lands, see init_amx); with the AVX-512 kernel's
// products in the loop the GEMMs after it won back more than the kept gate gradients cost, up to
// 32 MiB kept, and the AMX ones win on the shapes chosen() names. Measured then (AVX-512 loop) on
// the 2-core Intel Xeon with AMX, fwd+bwd, blocks of calls alternating with a temporary switch,
// after / in the loop (LSTM, LN-LSTM; B = 32 and 128: the default benchmark suite's sweep points):
// (25, 32, 128, 128) 0.72 / 0.82 (BN-LSTM 0.80), (50, 32, 128, 128) 0.84, (100, 32, 128, 128)
// 0.85 / 0.90, (50, 128, 128, 128) 0.92 / 0.99, (50, 32, 64, 64) 0.97 / 1.03; row MNIST 0.93-0.95
// / 1.00 (BN-LSTM 0.94-1.01, three runs); pixel MNIST (80 / 160 MB kept) 1.12 / 1.06.
// FUSEDRNN_WEIGHT_GRADS=loop|after forces either (tests, comparisons; loop only where available()).
class StepWeightGrads {
 public:
  static bool available(at::ScalarType dt) {
#if FUSEDRNN_HAS_AVX512_KERNEL
    return dt == at::kFloat && mkl::own_kernel_available();
#else
    (void)dt;
    return false;
#endif
  }

  // Whether the products run on the AMX tiles (where the large GEMMs do), else on the AVX-512
  // kernel.
  static bool on_amx() {
#if FUSEDRNN_HAS_AVX512_KERNEL && FUSEDRNN_HAS_AMX
    return mkl::large_gemm() == mkl::LargeGemm::kAmx;
#else
    return false;
#endif
  }

  // Whether a layer whose members own rows computes its weight gradients in the loop; kept_bytes:
  // the gate gradients of every step that the GEMMs after the loop would read instead; rows: a
  // member's rows per step; two: two gate gradients (dxw and dhw: LN, BN).
  // Where the AMX tiles run both, the loop's products (on_amx) win where the kept gate gradients
  // take 4 MiB or more and members have at least 32 rows a step or the layer two gate gradients.
  // Measured fwd+bwd, blocks of calls alternating with FUSEDRNN_WEIGHT_GRADS=loop against the
  // GEMMs after the loop (benchmarks/results/cpu-20261207-s5/ab_env.py), loop / after, LSTM /
  // LN / BN: row MNIST 0.986 / 0.990 / 0.995, (50, 128, 128, 128) 0.965 / 0.927 / 0.895,
  // (100, 32, 128, 128) 1.031 / 0.961 / 0.945, (50, 32, 128, 128) 1.060 / 0.987 / 0.979,
  // (25, 32, 128, 128) 1.119 / 1.065 / 1.061, (50, 32, 64, 64) 0.986 / 0.975 / 0.985; pixel
  // MNIST (in the loop either way) the AVX-512 kernel's products 1.022 / 1.008 / 1.008 of the
  // AMX ones.
  static bool chosen(at::ScalarType dt, int64_t kept_bytes, int64_t rows, bool two) {
    if (!available(dt)) return false;
    if (const char* env = std::getenv("FUSEDRNN_WEIGHT_GRADS")) {
      const std::string v(env);
      TORCH_CHECK(v == "loop" || v == "after" || v == "auto",
                  "FUSEDRNN_WEIGHT_GRADS must be 'loop', 'after' or 'auto', got '", v, "'");
      if (v != "auto") return v == "loop";
    }
    if (mkl::large_gemm() != mkl::LargeGemm::kAmx || kept_bytes > (int64_t(32) << 20)) return true;
    return kept_bytes >= (int64_t(4) << 20) && (rows >= 32 || two);
  }

  // M: dG's width (the gate columns); N[j]: product j's X width; max_rows: the most rows a
  // member adds per step.
  StepWeightGrads(int64_t members, int64_t M, std::vector<int64_t> N, int64_t max_rows, const at::TensorOptions& opts)
      : M_(M), N_(std::move(N)), max_rows_(max_rows), members_(members), amx_(on_amx()) {
#if FUSEDRNN_HAS_AVX512_KERNEL
    const auto f32 = opts.dtype(at::kFloat);
    const int64_t J = int64_t(N_.size());
    staged_.assign(J * members, 0);
    rows_.assign(J * members, 0);
    if (amx_) {
      init_amx(opts);
      return;
    }
    steps_ = std::max<int64_t>(1, kStageRows / std::max<int64_t>(max_rows, 1));
    const int64_t K = steps_ * max_rows;
    a_ = at::empty({J, members, M * K}, f32);
    int64_t widest = 0;
    for (int64_t n : N_) {
      acc_.push_back(at::zeros({members, M, n}, f32));
      widest = std::max(widest, avx512::panels(n) * avx512::kNR);
    }
    b_ = at::empty({J, members, widest * K}, f32);
#else
    (void)opts;
#endif
  }

  // Stages member m's rows of this step for product j: C_j[m] += dG^T X, dG(r, i) = dg[r * ldg
  // + i], X(r, k) = x[r * ldx + k], r < rows <= max_rows (the same rows at every step). The
  // products run once `steps` steps are staged (and the rest in total()): k = steps x rows per
  // product, so each C_j tile is read and written once per `steps` steps.
  void add(int64_t m, size_t j, const float* dg, int64_t ldg, const float* x, int64_t ldx, int64_t rows) {
    TORCH_CHECK(rows <= max_rows_, "fusedrnn: StepWeightGrads: ", rows, " rows, sized for ", max_rows_);
#if FUSEDRNN_HAS_AVX512_KERNEL
    if (rows == 0) return;
    const int64_t slot = int64_t(j) * members_ + m, s = staged_[slot];
    TORCH_CHECK(s == 0 || rows_[slot] == rows, "fusedrnn: StepWeightGrads: rows changed between steps");
    rows_[slot] = rows;
    if (amx_) {
      add_amx(slot, j, dg, ldg, x, ldx, rows);
    } else {
      const int64_t K = steps_ * rows;
      avx512::pack_a(dg, 1, ldg, M_, rows, 0, avx512::row_tiles(M_), a_part(m, j), s * rows, K);
      avx512::pack(x, ldx, 1, rows, N_[j], 0, avx512::panels(N_[j]), b_part(m, j), s * rows, K);
    }
    if (++staged_[slot] == steps_) flush(m, j);
#else
    (void)m; (void)j; (void)dg; (void)ldg; (void)x; (void)ldx; (void)rows;
#endif
  }

  // Columns [lo, lo + n) of product j (all of them by default) summed over the members, after
  // the loop, into a contiguous tensor (dW_ih and dW_hh straight out of one [x | h] product).
  at::Tensor total(size_t j, int64_t lo = 0, int64_t n = -1) {
    for (int64_t m = 0; m < members_; ++m) flush(m, j);
    if (n < 0) n = N_[j] - lo;
    at::Tensor out = cached_empty({M_, n}, acc_[j].options());
    if (amx_) out.copy_(at::sum(acc_[j].narrow(1, lo, n), 0).t());  // the members' C_j^T
    else at::sum_out(out, acc_[j].narrow(2, lo, n), 0);
    return out;
  }
  int64_t max_rows() const { return max_rows_; }

 private:
  // Steps' rows per product: k = 128 rows where a member has fewer per step (row MNIST: 2 steps
  // of 50, pixel MNIST: 4 of 32).
  static constexpr int64_t kStageRows = 128;

  void flush(int64_t m, size_t j) {
#if FUSEDRNN_HAS_AVX512_KERNEL
    const int64_t slot = int64_t(j) * members_ + m, s = staged_[slot];
    if (s == 0) return;
    staged_[slot] = 0;
    if (amx_) return flush_amx(m, j, s);
    const int64_t N = N_[j], rows = rows_[slot], K = steps_ * rows;
    float* a = a_part(m, j);
    float* b = b_part(m, j);
    if (s < steps_) {  // the last, partial stage (in total()): zeros in the k not staged
      const int64_t k0 = s * rows;
      for (int64_t q = 0; q < avx512::row_tiles(M_); ++q) {
        const int64_t i = avx512::tile_start(M_, q), h = avx512::tile_start(M_, q + 1) - i;
        std::fill_n(a + i * K + k0 * h, (K - k0) * h, 0.0f);
      }
      for (int64_t q = 0; q < avx512::panels(N); ++q) {
        const int64_t j0 = q * avx512::kNR, ld = 16 * ((std::min<int64_t>(avx512::kNR, N - j0) + 15) / 16);
        std::fill_n(b + j0 * K + k0 * ld, (K - k0) * ld, 0.0f);
      }
    }
    avx512::gemm(a, 0, M_, 0, avx512::row_tiles(M_), b, K, 0, N, acc_[j].data_ptr<float>() + m * M_ * N, N,
                 /*accumulate=*/true);
#else
    (void)m; (void)j;
#endif
  }

  // Member m's staged dG^T and X of product j (no ATen call: members run on team threads).
  float* a_part(int64_t m, size_t j) { return a_.data_ptr<float>() + (int64_t(j) * members_ + m) * a_.size(2); }
  float* b_part(int64_t m, size_t j) { return b_.data_ptr<float>() + (int64_t(j) * members_ + m) * b_.size(2); }

  // On the AMX tiles each member accumulates C_j^T [N_j, M] += X^T dG (amx_gemm.h): dG, the
  // wide operand, is packed as b where each step's rows land in the stage (pairs of rows, while
  // they are in the member's cache; an odd row count gets a zero row), X's rows are kept as
  // floats and packed as a (X^T) when the stage runs, about 128-192 k (kAmxStage).
  static constexpr int64_t kAmxStage = 192;

  void init_amx(const at::TensorOptions& opts) {
#if FUSEDRNN_HAS_AVX512_KERNEL && FUSEDRNN_HAS_AMX
    const int64_t J = int64_t(N_.size());
    rows2_ = max_rows_ + (max_rows_ & 1);
    // steps per stage: the least padding of k to whole 32-blocks, k at most kAmxStage
    steps_ = 1;
    auto waste = [&](int64_t s) { return double(32 * amx::blocks32(s * rows2_)) / double(s * rows2_); };
    for (int64_t s = 2; s * rows2_ <= kAmxStage; ++s)
      if (waste(s) < waste(steps_) - 1e-9) steps_ = s;
    const int64_t Ks = steps_ * rows2_;
    kb_all_ = amx::blocks32(Ks);
    int64_t widest = 0;
    for (int64_t n : N_) {
      acc_.push_back(at::zeros({members_, n, M_}, opts.dtype(at::kFloat)));
      widest = std::max(widest, n);
    }
    const auto i16 = opts.dtype(at::kShort);
    bpk_ = cached_empty({J * members_ * amx::packed_elems(M_, Ks)}, i16);
    apk_ = cached_empty({members_ * amx::packed_elems(widest, Ks)}, i16);
    xs_ = cached_empty({J * members_ * Ks * widest}, opts.dtype(at::kFloat));
#else
    (void)opts;
#endif
  }

#if FUSEDRNN_HAS_AVX512_KERNEL && FUSEDRNN_HAS_AMX
  amx::bf16* b_amx(int64_t slot) {
    return reinterpret_cast<amx::bf16*>(bpk_.data_ptr<int16_t>()) + slot * amx::packed_elems(M_, steps_ * rows2_);
  }
  float* x_stage(int64_t slot) { return xs_.data_ptr<float>() + slot * (xs_.numel() / staged_.size()); }
#endif

  void add_amx(int64_t slot, size_t j, const float* dg, int64_t ldg, const float* x, int64_t ldx, int64_t rows) {
#if FUSEDRNN_HAS_AVX512_KERNEL && FUSEDRNN_HAS_AMX
    const int64_t r2 = rows + (rows & 1), k0 = staged_[slot] * r2, N = N_[j];
    amx::pack_b_rows(dg, ldg, M_, rows, k0, r2 / 2, kb_all_, b_amx(slot));
    float* xs = x_stage(slot) + k0 * N;
    for (int64_t r = 0; r < rows; ++r) std::copy_n(x + r * ldx, N, xs + r * N);
    if (r2 > rows) std::fill_n(xs + rows * N, N, 0.0f);
#else
    (void)slot; (void)j; (void)dg; (void)ldg; (void)x; (void)ldx; (void)rows;
#endif
  }

  // The products of member m's s staged steps of product j.
  void flush_amx(int64_t m, size_t j, int64_t s) {
#if FUSEDRNN_HAS_AVX512_KERNEL && FUSEDRNN_HAS_AMX
    const int64_t slot = int64_t(j) * members_ + m, r2 = rows_[slot] + (rows_[slot] & 1), K = s * r2;
    const int64_t N = N_[j], KB = amx::blocks32(K);
    amx::bf16* pb = b_amx(slot);
    // zeros in the pairs past K to the end of its last 32-block (never written, or an earlier
    // stage's: a partial last stage, or a member with fewer rows than the widest)
    amx::pack_b_rows(nullptr, 0, M_, 0, K, 16 * KB - K / 2, kb_all_, pb);
    amx::bf16* pa = reinterpret_cast<amx::bf16*>(apk_.data_ptr<int16_t>()) + m * (apk_.numel() / members_);
    amx::pack_a(x_stage(slot), 1, N, N, K, 0, amx::blocks32(N), pa, KB);
    amx::with_tiles([&] {
      amx::gemm({pa, KB}, {pb, kb_all_}, KB, N, M_, 0, amx::blocks32(N), 0, amx::blocks32(M_),
                acc_[j].data_ptr<float>() + m * N * M_, M_, nullptr, /*accumulate=*/true);
    });
#else
    (void)m; (void)j; (void)s;
#endif
  }

  int64_t M_;
  std::vector<int64_t> N_;
  int64_t max_rows_, members_, steps_ = 1;
  bool amx_;
  at::Tensor a_, b_;
  std::vector<at::Tensor> acc_;
  std::vector<int64_t> staged_, rows_;
  int64_t rows2_ = 0, kb_all_ = 0;  // AMX: rows per step rounded up to even, k blocks of a stage
  at::Tensor bpk_, apk_, xs_;        // AMX: packed dG (b), packed X^T (a, one per member), X's rows
};

// a @ b into a cached buffer (pool.h).
inline at::Tensor cached_mm(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = cached_empty({a.size(0), b.size(1)}, a.options());
  gemm_out(out, a, b);
  return out;
}

}  // namespace cpu
}  // namespace fusedrnn
