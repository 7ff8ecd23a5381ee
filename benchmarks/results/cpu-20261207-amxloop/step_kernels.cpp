// The step products' kernels alone, one thread, hot caches: fusedrnn's AVX-512 packed kernel
// (packed_gemm.h; B packed once) and the AMX tiles (amx_gemm.h; a packed every call, as a step
// does), best of 7 runs of 2000 calls. Build (from the repository root, torch's headers):
//   INC=$(python -c "import torch.utils.cpp_extension as c; print(' '.join('-I'+p for p in c.include_paths()))")
//   L=$(python -c "import torch, os; print(os.path.dirname(torch.__file__) + '/lib')")
//   g++ -O3 -std=c++17 $INC -Icsrc/cpu benchmarks/results/cpu-20261207-amxloop/step_kernels.cpp \
//       -o /tmp/step_kernels -L$L -lc10 -ltorch_cpu -Wl,-rpath,$L && /tmp/step_kernels
#include "amx_gemm.h"
#include "packed_gemm.h"

#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

using namespace fusedrnn::cpu;

static void avx512_kernel() {
  struct S { int M, K, N; } shapes[] = {{50,128,512},{50,157,512},{50,512,128},{50,28,512},{50,512,28},{32,256,1024},{100,128,512}};
  std::mt19937 g(0); std::uniform_real_distribution<float> u(-1,1);
  for (auto s : shapes) {
    std::vector<float> a(s.M * s.K), w(s.K * s.N), c(s.M * s.N);
    for (auto& x : a) x = u(g); for (auto& x : w) x = u(g);
    std::vector<float> packed(avx512::panels(s.N) * avx512::kNR * s.K);
    avx512::pack(w.data(), s.N, 1, s.K, s.N, 0, avx512::panels(s.N), packed.data());
    double best = 1e9;
    for (int rep = 0; rep < 7; ++rep) {
      const int iters = 2000;
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i)
        avx512::gemm(a.data(), s.K, s.M, 0, avx512::row_tiles(s.M), packed.data(), s.K, 0, s.N, c.data(), s.N, false);
      auto t1 = std::chrono::steady_clock::now();
      best = std::min(best, std::chrono::duration<double>(t1 - t0).count() / iters);
    }
    double gf = 2.0 * s.M * s.K * s.N / best / 1e9;
    printf("M=%d K=%d N=%d: %.2f us  %.1f GFLOP/s (%.0f%% of 166)\n", s.M, s.K, s.N, best * 1e6, gf, gf / 166.4 * 100);
  }
}

static void amx_tiles() {
  if (!amx::usable()) { printf("no AMX\n"); return; }
  struct S { int M, K, N; } shapes[] = {{64,128,512},{50,128,512},{50,512,128},{50,28,512},{64,128,512},{100,128,512},{128,128,512},{50,160,512}};
  std::mt19937 g(0); std::uniform_real_distribution<float> u(-1,1);
  for (auto s : shapes) {
    std::vector<float> a(s.M * s.K), w(s.K * s.N), c(s.M * s.N);
    for (auto& x : a) x = u(g); for (auto& x : w) x = u(g);
    const int64_t KB = amx::blocks32(s.K);
    std::vector<amx::bf16> pb(amx::packed_elems(s.N, s.K)), pa(amx::packed_elems(s.M, s.K));
    amx::pack_b(w.data(), s.N, 1, s.K, s.N, 0, amx::blocks32(s.N), pb.data());
    double best = 1e9, bestg = 1e9;
    for (int rep = 0; rep < 7; ++rep) {
      const int iters = 2000;
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) {
        amx::pack_a(a.data(), s.K, 1, s.M, s.K, 0, amx::blocks32(s.M), pa.data());
        amx::with_tiles([&] { amx::gemm({pa.data(), KB}, {pb.data(), KB}, KB, s.M, s.N, 0, amx::blocks32(s.M), 0, amx::blocks32(s.N), c.data(), s.N, nullptr, false); });
      }
      auto t1 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) {
        amx::with_tiles([&] { amx::gemm({pa.data(), KB}, {pb.data(), KB}, KB, s.M, s.N, 0, amx::blocks32(s.M), 0, amx::blocks32(s.N), c.data(), s.N, nullptr, false); });
      }
      auto t2 = std::chrono::steady_clock::now();
      best = std::min(best, std::chrono::duration<double>(t1 - t0).count() / iters);
      bestg = std::min(bestg, std::chrono::duration<double>(t2 - t1).count() / iters);
    }
    double gf = 2.0 * s.M * s.K * s.N / best / 1e9;
    printf("AMX M=%d K=%d N=%d: pack+gemm %.2f us (%.1f GFLOP/s), gemm alone %.2f us\n", s.M, s.K, s.N, best * 1e6, gf, bestg*1e6);
  }
}

int main() {
  avx512_kernel();
  amx_tiles();
}
