// The instruction set the CPU kernels run with, chosen at run time (the build has no -march:
// a wheel must run on any x86-64). The row loops (units.h) are compiled three times through
// function-level target attributes, baseline x86-64, AVX2+FMA and AVX-512; the packed GEMM
// (packed_gemm.h) needs AVX-512. The level is the widest the CPU (and the OS's register state,
// which __builtin_cpu_supports checks) allows, capped by FUSEDRNN_CPU_SIMD = avx512 | avx2 |
// base, read at the start of every op call (tests and comparisons run every path on one machine).
//
// Why three: the unit loops are bound by the polynomial activations' arithmetic, and the
// AVX-512 build does it in half the instructions (this machine's Zen 4 splits a 512-bit
// operation in two 256-bit halves, so not in half the time). Measured fwd+bwd, FUSEDRNN_CPU_SIMD
// alternating per call with the same products (FUSEDRNN_PACKED_GEMM=mkl), median of 15: row
// MNIST LSTM / LN / BN / GRU 19.5 / 23.2 / 26.6 / 15.5 ms against 20.3 / 24.1 / 28.2 / 15.8 with
// AVX2, the generic shape 74.6 / 80.9 / 87.6 / 60.5 against 75.9 / 83.1 / 86.8 / 61.5
// (benchmarks/results/cpu-20261203-simd). The same operations in the same order on every lane,
// so the AVX2 and AVX-512 builds give the same values (tested); the baseline build has no FMA
// and differs in the last bits.
#pragma once

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define FUSEDRNN_X86 1
#define FUSEDRNN_AVX2_TARGET __attribute__((target("avx2,fma")))
#define FUSEDRNN_AVX512_TARGET __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#else
#define FUSEDRNN_X86 0
#define FUSEDRNN_AVX2_TARGET
#define FUSEDRNN_AVX512_TARGET
#endif

namespace fusedrnn {
namespace cpu {

enum SimdLevel : int { kSimdBase = 0, kSimdAvx2 = 1, kSimdAvx512 = 2 };

inline const char* simd_name(int level) {
  return level == kSimdAvx512 ? "avx512" : level == kSimdAvx2 ? "avx2" : "base";
}

// The widest level this CPU runs.
inline SimdLevel cpu_simd_max() {
#if FUSEDRNN_X86
  static const SimdLevel v = (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                              __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
                                 ? kSimdAvx512
                             : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? kSimdAvx2
                                                                                                  : kSimdBase;
  return v;
#else
  return kSimdBase;
#endif
}

// Whether the CPU is Intel's: MKL (which torch's x86-64 wheels link) runs its AVX-512 kernels
// there and its AVX2 ones on other vendors' CPUs, which decides whose large GEMM is faster
// (gemm.h own_gemm).
inline bool cpu_is_intel() {
#if FUSEDRNN_X86
  static const bool v = __builtin_cpu_is("intel");
  return v;
#else
  return false;
#endif
}

inline std::atomic<int>& simd_level_slot() {
  static std::atomic<int> level{cpu_simd_max()};
  return level;
}

// The level in force (set by refresh_simd_level at the start of the op call).
inline SimdLevel simd_level() { return SimdLevel(simd_level_slot().load(std::memory_order_relaxed)); }

// Reads FUSEDRNN_CPU_SIMD (unset: the CPU's widest) and sets the level: the requested one or
// the CPU's widest, whichever is narrower. Called at the start of every CPU op.
inline SimdLevel refresh_simd_level() {
  int want = kSimdAvx512;
  if (const char* env = std::getenv("FUSEDRNN_CPU_SIMD")) {
    if (!std::strcmp(env, "base")) want = kSimdBase;
    else if (!std::strcmp(env, "avx2")) want = kSimdAvx2;
    else TORCH_CHECK(!std::strcmp(env, "avx512"), "FUSEDRNN_CPU_SIMD must be avx512, avx2 or base, got '", env, "'");
  }
  const int level = want < cpu_simd_max() ? want : cpu_simd_max();
  simd_level_slot().store(level, std::memory_order_relaxed);
  return SimdLevel(level);
}

}  // namespace cpu
}  // namespace fusedrnn
