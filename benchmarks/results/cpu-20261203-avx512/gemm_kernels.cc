// One-thread GFLOP/s of fusedrnn's AVX-512 packed GEMM (csrc/cpu/packed_gemm.h) on the products
// of the CPU kernels; the numbers quoted in packed_gemm.h and the README of this folder.
// Build and run (header-only use of the kernel; torch's headers, no torch library):
//   bash benchmarks/results/cpu-20261203-avx512/gemm_kernels.sh
// Each line: M x K x N, whether a is dG^T (columns contiguous: packed by row tiles first, the
// pack timed too), GFLOP/s of the median of 21 calls.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../../../csrc/cpu/packed_gemm.h"

using namespace fusedrnn::cpu;

static void measure(int64_t M, int64_t K, int64_t N, bool a_transposed) {
  std::vector<float> a(M * K), b(K * N), c(M * N), apk(M * K);
  for (auto& v : a) v = float(rand()) / RAND_MAX;
  for (auto& v : b) v = float(rand()) / RAND_MAX;
  const int64_t P = avx512::panels(N), tiles = avx512::row_tiles(M);
  std::vector<float> pk(P * avx512::kNR * K);
  avx512::pack(b.data(), N, 1, K, N, 0, P, pk.data());  // b row-major [K, N]
  auto run = [&] {
    if (a_transposed) {  // a(i, k) = a[k * M + i]
      avx512::pack_a(a.data(), 1, M, M, K, 0, tiles, apk.data());
      avx512::gemm(apk.data(), 0, M, 0, tiles, pk.data(), K, 0, N, c.data(), N, false);
    } else {
      avx512::gemm(a.data(), K, M, 0, tiles, pk.data(), K, 0, N, c.data(), N, false);
    }
  };
  std::vector<double> t;
  for (int i = 0; i < 24; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    run();
    if (i >= 3) t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  printf("%5ld x %5ld x %5ld  a %-10s %6.1f GFLOP/s\n", long(M), long(K), long(N),
         a_transposed ? "dG^T" : "row-major", 2.0 * M * K * N / t[t.size() / 2] / 1e9);
}

// With arguments "M,K,N" or "M,K,N,t" (t: a = dG^T), those products instead of the list below
// (../cpu-20261207-mklgemm/gemm_vs_mkl.sh: the char-LM and PTB large GEMMs).
int main(int argc, char** argv) {
  if (cpu_simd_max() != kSimdAvx512) {
    printf("this CPU has no AVX-512 (F, VL, BW, DQ): fusedrnn uses MKL's packed GEMM here\n");
    return 0;
  }
  for (int i = 1; i < argc; ++i) {
    long m = 0, k = 0, n = 0;
    char t = 0;
    if (sscanf(argv[i], "%ld,%ld,%ld,%c", &m, &k, &n, &t) < 3) {
      printf("bad shape '%s' (want M,K,N or M,K,N,t)\n", argv[i]);
      return 1;
    }
    measure(m, k, n, t == 't');
  }
  if (argc > 1) return 0;
  measure(20, 650, 1300, false);   // PTB-like step (S4), one member's columns
  measure(32, 512, 1024, false);   // char-LM step (S3), one member's columns
  measure(100, 128, 512, false);   // row-MNIST step (S5), whole batch
  measure(32, 256, 512, false);    // generic step (S1), one member's columns
  measure(2800, 28, 512, false);   // row-MNIST input projection (K = I = 28)
  measure(2800, 512, 28, false);   // row-MNIST dx (N = I = 28)
  measure(512, 2800, 156, true);   // row-MNIST weight gradients dG^T [x | h]
  measure(1024, 3200, 512, true);  // generic weight gradients
  measure(3200, 256, 1024, false); // generic input projection
}
