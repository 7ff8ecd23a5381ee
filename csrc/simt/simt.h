// simt.h: one kernel source for nvcc (real CUDA) and g++ (CPU execution in tests).
//
// Under nvcc this header is a thin layer over CUDA: the shared-memory macros become
// __shared__ declarations and simt::launch / simt::launch_cooperative become <<<>>> and
// cudaLaunchCooperativeKernel.
//
// Under a host compiler (no __CUDACC__) it emulates the CUDA execution model:
//   * every thread of the grid is a std::thread; threadIdx/blockIdx/blockDim/gridDim are
//     thread_local; __global__/__device__/__host__ are no-ops;
//   * __syncthreads() is a per-block barrier, cooperative_groups::this_grid().sync() a
//     grid-wide one (only inside simt::launch_cooperative), warp shuffles and __syncwarp go
//     through a per-warp exchange buffer, atomicAdd through std::atomic_ref; the tensor-core
//     mma.sync m16n8k16 (bfloat16 / float16 in, float out) through shuffles (simt::mma_m16n8k16),
//     with the bfloat16 / float16 types and conversions it needs;
//   * shared memory is declared with SIMT_SHARED(type, name, count) (static) or
//     SIMT_DYNAMIC_SHARED(type, name) (the launch's dynamic bytes); plain __shared__ is a
//     compile error. Fresh shared memory is filled with 0xFF bytes (NaN for float/double)
//     so a kernel that reads before it writes produces NaN instead of a lucky zero;
//   * misuse is an error, never a hang: a thread that exits while others of its block wait at
//     __syncthreads(), a barrier reached after some threads exited, grid sync without a
//     cooperative launch, a shuffle whose mask names lanes that exited, do not exist, or do
//     not arrive, lanes that disagree on the mask, and any state in which every live thread
//     waits and no barrier can complete. simt::launch then throws std::runtime_error.
// Barriers and warp ops go through one mutex per launch, so ThreadSanitizer sees each of them
// as a happens-before edge and reports the races a missing barrier leaves; nothing else
// (shared-memory lookup, thread exit) orders one thread's kernel code before another's.
// The emulator needs C++20 (std::atomic_ref) and -pthread. It is for tests: small grids
// (a few blocks of 32-64 threads), not speed.
#pragma once

#if defined(__CUDACC__)

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <tuple>
#include <utility>

#define SIMT_SHARED(type, name, count) __shared__ type name[count]
#define SIMT_DYNAMIC_SHARED(type, name)                                  \
  extern __shared__ __align__(16) unsigned char simt_dynamic_smem_[];    \
  type* name = reinterpret_cast<type*>(simt_dynamic_smem_)

namespace simt {
inline constexpr bool kEmulated = false;

// kernel<<<grid, block, smem, stream>>>(args...); check with cudaGetLastError /
// C10_CUDA_KERNEL_LAUNCH_CHECK after it, as after any launch.
template <typename... KArgs, typename... Args>
inline void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, Args&&... args) {
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
}

// A cooperative launch (grid-wide sync allowed); the grid must fit on the device at once.
template <typename... KArgs, typename... Args>
inline cudaError_t launch_cooperative(void (*kernel)(KArgs...), dim3 grid, dim3 block,
                                      size_t smem, cudaStream_t stream, Args&&... args) {
  static_assert(sizeof...(KArgs) == sizeof...(Args), "simt::launch_cooperative: argument count");
  std::tuple<KArgs...> values(std::forward<Args>(args)...);
  void* ptrs[sizeof...(KArgs) > 0 ? sizeof...(KArgs) : 1] = {};
  std::apply([&ptrs](auto&... v) {
    int i = 0;
    ((ptrs[i++] = static_cast<void*>(&v)), ...);
  }, values);
  return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel), grid, block, ptrs, smem, stream);
}
}  // namespace simt

#else  // ------------------------------------------------------------ CPU emulation

#if __cplusplus < 202002L
#error "simt.h emulation needs C++20 (std::atomic_ref): compile with -std=c++20"
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#ifndef __global__
#define __global__
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __host__
#define __host__
#endif
#ifndef __forceinline__
#define __forceinline__ inline
#endif
#ifndef __noinline__
#define __noinline__
#endif
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __align__
#define __align__(n) alignas(n)
#endif
// __shared__ storage cannot be emulated (one object per block, not per thread or per program).
#define __shared__ static_assert(false, "simt: plain __shared__ is not emulated; use SIMT_SHARED(type, name, count) or SIMT_DYNAMIC_SHARED(type, name)");

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0 };
constexpr int warpSize = 32;

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
extern "C" void AnnotateIgnoreSyncBegin(const char* file, int line);
extern "C" void AnnotateIgnoreSyncEnd(const char* file, int line);
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
extern "C" void AnnotateIgnoreWritesBegin(const char* file, int line);
extern "C" void AnnotateIgnoreWritesEnd(const char* file, int line);
#endif

namespace simt {
inline constexpr bool kEmulated = true;

namespace detail {

// ThreadSanitizer sees only the happens-before edges of the emulated barriers: the launch lock
// itself is hidden from it (IgnoreSync), each barrier releases into a sync object of its
// generation on arrival and acquires it on leaving.
#if defined(__SANITIZE_THREAD__)
// The emulator's own state is guarded by the launch lock, which TSan no longer sees: its
// accesses are hidden too. tsan_release / tsan_acquire step out of the hidden region.
inline void tsan_hide_begin() {
  AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
  AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
  AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
}
inline void tsan_hide_end() {
  AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
  AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
  AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
}
struct TsanHideSync {
  TsanHideSync() { tsan_hide_begin(); }
  ~TsanHideSync() { tsan_hide_end(); }
};
inline void tsan_release(void* a) { tsan_hide_end(); __tsan_release(a); tsan_hide_begin(); }
inline void tsan_acquire(void* a) { tsan_hide_end(); __tsan_acquire(a); tsan_hide_begin(); }
#else
struct TsanHideSync {};
inline void tsan_release(void*) {}
inline void tsan_acquire(void*) {}
#endif

struct Abort {};  // unwinds an emulated thread after the launch failed

struct Block {
  std::condition_variable cv;
  std::mutex smem_mu;  // own lock: taking the launch lock here would order unrelated threads for TSan
  int nthreads = 0, exited = 0, waiting = 0;
  unsigned long gen = 0;
  char tsan_sync[2] = {};
  std::vector<std::max_align_t> dynamic_smem;
  std::vector<std::pair<const void*, std::vector<std::max_align_t>>> statics;
};

struct Warp {
  std::condition_variable cv;
  int lanes = 0;  // lanes that exist (the last warp of a block may be partial)
  unsigned arrived = 0, mask = 0, exited = 0;
  unsigned long gen = 0;
  uint64_t value[32] = {}, result[32] = {};
  int source[32] = {};
  char tsan_sync[2] = {};
};

struct Launch {
  std::mutex mu;
  std::condition_variable grid_cv;
  dim3 grid, block;
  bool cooperative = false;
  int threads_per_block = 0, warps_per_block = 0, total = 0, alive = 0, blocked = 0;
  int grid_waiting = 0;
  unsigned long grid_gen = 0;
  char tsan_grid_sync[2] = {};
  std::unique_ptr<Block[]> blocks;
  std::unique_ptr<Warp[]> warps;
  bool failed = false;
  std::string error;
};

struct ThreadState {
  Launch* launch = nullptr;
  int block = 0, tid = 0, warp = 0, lane = 0;  // warp: index into Launch::warps
};
inline thread_local ThreadState self;

inline Launch& current() {
  if (self.launch == nullptr)
    throw std::runtime_error("simt: a device function was called outside simt::launch");
  return *self.launch;
}

inline std::string where() {
  std::ostringstream s;
  s << "block (" << blockIdx.x << "," << blockIdx.y << "," << blockIdx.z << ") thread ("
    << threadIdx.x << "," << threadIdx.y << "," << threadIdx.z << ")";
  return s.str();
}

// Records the first error and wakes every waiter; the caller then throws Abort (or returns).
inline void fail(Launch& L, const std::string& msg) {
  if (!L.failed) {
    L.failed = true;
    L.error = msg;
  }
  L.grid_cv.notify_all();
  for (int b = 0; b < L.total / L.threads_per_block; ++b) L.blocks[b].cv.notify_all();
  for (int w = 0; w < L.total / L.threads_per_block * L.warps_per_block; ++w) L.warps[w].cv.notify_all();
}

// Called with the lock held whenever a thread blocks or exits: if every live thread waits on a
// barrier that cannot complete, nothing will ever wake them.
inline void check_progress(Launch& L) {
  if (L.failed || L.alive == 0 || L.blocked < L.alive) return;
  std::ostringstream s;
  s << "simt: deadlock: all " << L.alive << " live threads wait and no barrier can complete (";
  const int nblocks = L.total / L.threads_per_block;
  for (int b = 0; b < nblocks; ++b)
    if (L.blocks[b].waiting || L.blocks[b].exited)
      s << "block " << b << ": " << L.blocks[b].waiting << " at __syncthreads, "
        << L.blocks[b].exited << " exited; ";
  if (L.grid_waiting) s << L.grid_waiting << " at grid sync; ";
  for (int w = 0; w < nblocks * L.warps_per_block; ++w)
    if (L.warps[w].arrived) s << "warp " << w << ": lanes " << std::hex << L.warps[w].arrived
                              << " of mask " << L.warps[w].mask << std::dec << " at a warp op; ";
  s << "divergent barriers?)";
  fail(L, s.str());
}

template <typename Pred>
inline void wait_on(Launch& L, std::condition_variable& cv, std::unique_lock<std::mutex>& lk, Pred done) {
  ++L.blocked;
  check_progress(L);
  cv.wait(lk, [&] { return L.failed || done(); });
  if (L.failed) throw Abort{};
}

inline void block_sync() {
  Launch& L = current();
  TsanHideSync hide;
  std::unique_lock<std::mutex> lk(L.mu);
  if (L.failed) throw Abort{};
  Block& B = L.blocks[self.block];
  if (B.exited) {
    fail(L, "simt: __syncthreads() reached by " + where() + " after " + std::to_string(B.exited) +
                " thread(s) of its block exited (divergent barrier)");
    throw Abort{};
  }
  const unsigned long gen = B.gen;
  tsan_release(&B.tsan_sync[gen & 1]);
  if (++B.waiting == B.nthreads) {
    L.blocked -= B.waiting - 1;  // the waiters are released now, not when they wake
    B.waiting = 0;
    ++B.gen;
    B.cv.notify_all();
  } else {
    wait_on(L, B.cv, lk, [&] { return B.gen != gen; });
  }
  tsan_acquire(&B.tsan_sync[gen & 1]);
}

inline void grid_sync() {
  Launch& L = current();
  TsanHideSync hide;
  std::unique_lock<std::mutex> lk(L.mu);
  if (L.failed) throw Abort{};
  if (!L.cooperative) {
    fail(L, "simt: grid.sync() in " + where() + " but the kernel was not started with simt::launch_cooperative");
    throw Abort{};
  }
  if (L.alive != L.total) {
    fail(L, "simt: grid.sync() reached by " + where() + " after some threads of the grid exited (divergent barrier)");
    throw Abort{};
  }
  const unsigned long gen = L.grid_gen;
  tsan_release(&L.tsan_grid_sync[gen & 1]);
  if (++L.grid_waiting == L.total) {
    L.blocked -= L.grid_waiting - 1;
    L.grid_waiting = 0;
    ++L.grid_gen;
    L.grid_cv.notify_all();
  } else {
    wait_on(L, L.grid_cv, lk, [&] { return L.grid_gen != gen; });
  }
  tsan_acquire(&L.tsan_grid_sync[gen & 1]);
}

// One warp collective: every lane of `mask` deposits `bits` and names the lane it reads from
// (src < 0: none). The last lane to arrive routes the values; each lane returns what it asked for.
inline uint64_t warp_collective(unsigned mask, uint64_t bits, int src, const char* op) {
  Launch& L = current();
  TsanHideSync hide;
  std::unique_lock<std::mutex> lk(L.mu);
  if (L.failed) throw Abort{};
  Warp& W = L.warps[self.warp];
  const unsigned me = 1u << self.lane;
  const unsigned existing = W.lanes == 32 ? 0xffffffffu : ((1u << W.lanes) - 1u);
  auto bad = [&](const std::string& why) {
    fail(L, std::string("simt: ") + op + " in " + where() + ": " + why);
    throw Abort{};
  };
  if (!(mask & me)) bad("the mask does not include the calling lane");
  if (mask & ~existing) bad("the mask names lanes that do not exist in this (partial) warp");
  if (mask & W.exited) bad("the mask names lanes that already exited: only part of the warp reaches it");
  if (W.arrived && W.mask != mask) bad("lanes disagree on the mask (divergent warp op)");
  if (src >= 0 && !(mask & (1u << src))) bad("reads lane " + std::to_string(src) + ", which is not in the mask");
  W.mask = mask;
  W.value[self.lane] = bits;
  W.source[self.lane] = src;
  W.arrived |= me;
  const unsigned long gen = W.gen;
  tsan_release(&W.tsan_sync[gen & 1]);
  if (W.arrived == mask) {
    for (int l = 0; l < 32; ++l)
      if (mask & (1u << l)) W.result[l] = W.source[l] >= 0 ? W.value[W.source[l]] : 0;
    L.blocked -= __builtin_popcount(mask) - 1;
    W.arrived = 0;
    ++W.gen;
    W.cv.notify_all();
  } else {
    wait_on(L, W.cv, lk, [&] { return W.gen != gen; });
  }
  tsan_acquire(&W.tsan_sync[gen & 1]);
  return W.result[self.lane];
}

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "simt: shuffle of a type wider than 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// Static shared memory: one allocation per (block, declaration site), made by the first thread
// of the block that reaches the declaration.
inline void* static_shared(const void* key, size_t bytes) {
  Block& B = current().blocks[self.block];
  std::lock_guard<std::mutex> lk(B.smem_mu);
  for (auto& [k, mem] : B.statics)
    if (k == key) return mem.data();
  const size_t n = (bytes + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t);
  B.statics.emplace_back(key, std::vector<std::max_align_t>(std::max<size_t>(n, 1)));
  std::memset(B.statics.back().second.data(), 0xFF, n * sizeof(std::max_align_t));
  return B.statics.back().second.data();
}

inline void* dynamic_shared() {
  Block& B = current().blocks[self.block];
  return B.dynamic_smem.empty() ? nullptr : B.dynamic_smem.data();
}

inline void thread_exit(Launch& L) {
  TsanHideSync hide;
  std::unique_lock<std::mutex> lk(L.mu);
  Block& B = L.blocks[self.block];
  ++B.exited;
  --L.alive;
  L.warps[self.warp].exited |= 1u << self.lane;
  if (L.failed) return;
  if (B.waiting)
    return fail(L, "simt: " + where() + " exited while " + std::to_string(B.waiting) +
                       " thread(s) of its block wait at __syncthreads() (divergent barrier)");
  if (L.grid_waiting)
    return fail(L, "simt: " + where() + " exited while threads wait at grid.sync() (divergent barrier)");
  if (L.warps[self.warp].arrived && (L.warps[self.warp].mask & (1u << self.lane)))
    return fail(L, "simt: " + where() + " exited while its warp waits for it in a warp op");
  check_progress(L);
}

template <typename... KArgs, typename... Args>
inline void run(bool cooperative, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                Args&&... args) {
  static_assert(sizeof...(KArgs) == sizeof...(Args), "simt::launch: argument count does not match the kernel");
  const int tpb = int(block.x * block.y * block.z), nblocks = int(grid.x * grid.y * grid.z);
  if (tpb <= 0 || tpb > 1024 || nblocks <= 0)
    throw std::runtime_error("simt::launch: invalid launch configuration (threads per block " +
                             std::to_string(tpb) + ", blocks " + std::to_string(nblocks) + ")");
  Launch L;
  L.grid = grid;
  L.block = block;
  L.cooperative = cooperative;
  L.threads_per_block = tpb;
  L.warps_per_block = (tpb + 31) / 32;
  L.total = L.alive = tpb * nblocks;
  L.blocks.reset(new Block[nblocks]);
  L.warps.reset(new Warp[nblocks * L.warps_per_block]);
  for (int b = 0; b < nblocks; ++b) {
    L.blocks[b].nthreads = tpb;
    const size_t n = (smem + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t);
    L.blocks[b].dynamic_smem.resize(n);
    if (n) std::memset(L.blocks[b].dynamic_smem.data(), 0xFF, n * sizeof(std::max_align_t));
    for (int w = 0; w < L.warps_per_block; ++w)
      L.warps[b * L.warps_per_block + w].lanes = std::min(32, tpb - 32 * w);
  }
  const std::tuple<std::decay_t<KArgs>...> params(std::forward<Args>(args)...);
  std::vector<std::thread> threads;
  threads.reserve(L.total);
  for (int b = 0; b < nblocks; ++b) {
    for (int t = 0; t < tpb; ++t) {
      threads.emplace_back([&L, &params, kernel, grid, block, b, t] {
        blockIdx = {unsigned(b) % grid.x, unsigned(b) / grid.x % grid.y, unsigned(b) / (grid.x * grid.y)};
        threadIdx = {unsigned(t) % block.x, unsigned(t) / block.x % block.y, unsigned(t) / (block.x * block.y)};
        blockDim = block;
        gridDim = grid;
        self = {&L, b, t, b * L.warps_per_block + t / 32, t % 32};
        try {
          std::apply(kernel, params);
        } catch (Abort&) {
        } catch (std::exception& e) {
          std::lock_guard<std::mutex> lk(L.mu);
          fail(L, std::string("simt: exception in ") + where() + ": " + e.what());
        }
        thread_exit(L);
        self = {};
      });
    }
  }
  for (auto& th : threads) th.join();
  if (L.failed) throw std::runtime_error(L.error);
}

}  // namespace detail

// Same signature as the CUDA side; the stream is ignored (everything is synchronous).
template <typename... KArgs, typename... Args>
inline void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
                   Args&&... args) {
  detail::run(false, kernel, grid, block, smem, std::forward<Args>(args)...);
}

template <typename... KArgs, typename... Args>
inline cudaError_t launch_cooperative(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                      cudaStream_t, Args&&... args) {
  detail::run(true, kernel, grid, block, smem, std::forward<Args>(args)...);
  return cudaSuccess;
}

}  // namespace simt

#define SIMT_SHARED(type, name, count)           \
  static const char simt_shared_key_##name = 0;  \
  type* name = static_cast<type*>(::simt::detail::static_shared(&simt_shared_key_##name, sizeof(type) * (count)))
#define SIMT_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::simt::detail::dynamic_shared())

// ------------------------------------------------------------------ device API subset
inline void __syncthreads() { simt::detail::block_sync(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { simt::detail::warp_collective(mask, 0, -1, "__syncwarp"); }

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = warpSize) {
  const int lane = simt::detail::self.lane, base = lane - lane % width;
  return simt::detail::from_bits<T>(
      simt::detail::warp_collective(mask, simt::detail::to_bits(v), base + ((src % width) + width) % width, "__shfl_sync"));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
  const int lane = simt::detail::self.lane, base = lane - lane % width, s = lane ^ lane_mask;
  return simt::detail::from_bits<T>(simt::detail::warp_collective(
      mask, simt::detail::to_bits(v), (s >= base + width || s < base) ? lane : s, "__shfl_xor_sync"));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  const int lane = simt::detail::self.lane;
  const int s = (lane % width) + int(delta) < width ? lane + int(delta) : lane;
  return simt::detail::from_bits<T>(simt::detail::warp_collective(mask, simt::detail::to_bits(v), s, "__shfl_down_sync"));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  const int lane = simt::detail::self.lane;
  const int s = (lane % width) >= int(delta) ? lane - int(delta) : lane;
  return simt::detail::from_bits<T>(simt::detail::warp_collective(mask, simt::detail::to_bits(v), s, "__shfl_up_sync"));
}

template <typename T>
inline T atomicAdd(T* address, T v) {
  return std::atomic_ref<T>(*address).fetch_add(v);
}
template <typename T>
inline T atomicExch(T* address, T v) {
  return std::atomic_ref<T>(*address).exchange(v);
}
template <typename T>
inline T atomicCAS(T* address, T expected, T desired) {
  std::atomic_ref<T>(*address).compare_exchange_strong(expected, desired);
  return expected;
}
template <typename T>
inline T atomicMax(T* address, T v) {
  std::atomic_ref<T> a(*address);
  T old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <typename T>
inline T __ldg(const T* p) { return *p; }

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __saturatef(float x) { return std::min(1.0f, std::max(0.0f, x)); }

// bfloat16 / float16 (the cuda_bf16.h / cuda_fp16.h subset the kernels use). The _rn conversions
// round to nearest even, as on the GPU; a pair holds `x` in its low 16 bits.
struct __nv_bfloat16 {
  uint16_t x;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
struct __half {
  uint16_t x;
};
struct __half2 {
  __half x, y;
};
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40u)};  // NaN stays a (quiet) NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return {uint16_t(u >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 v) {
  const uint32_t u = uint32_t(v.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)}; }
inline __half __float2half_rn(float v) {
  const _Float16 h = static_cast<_Float16>(v);
  __half r;
  std::memcpy(&r.x, &h, 2);
  return r;
}
inline float __half2float(__half v) {
  _Float16 h;
  std::memcpy(&h, &v.x, 2);
  return float(h);
}
inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half_rn(lo), __float2half_rn(hi)}; }

namespace simt {
// Warp-level tensor-core products executed so far (each counted once per warp): tests read it to
// tell which product a kernel ran.
inline std::atomic<long> mma_executed{0};

// mma.sync.aligned.m16n8k16.row.col.f32.X.X.f32 d, a, b, d with X = bf16 (KIND 1) or f16 (KIND 2):
// D (16 x 8) += A (16 x 16) B (16 x 8), called by all 32 lanes with their fragments. With
// g = lane / 4, q = lane % 4 (PTX ISA, "Matrix fragments for mma.m16n8k16 with floating point type"):
//   A: register j of lane 4g + q holds A[g + 8 (j & 1)][2q + 8 (j >> 1) + {0, 1}] (low half first);
//   B: register j of lane 4g + q holds B[2q + 8j + {0, 1}][g];
//   D: element e of lane 4g + q is D[g + 8 (e >> 1)][2q + (e & 1)].
// Each lane gathers the two rows of A and two columns of B its results need through shuffles. The
// products are exact in float; they are summed in double and rounded once (the hardware's order and
// intermediate precision are unspecified).
template <int KIND>
inline void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b) {
  static_assert(KIND == 1 || KIND == 2, "simt::mma_m16n8k16: KIND 1 (bfloat16) or 2 (float16)");
  const int lane = detail::self.lane, g = lane >> 2, q = lane & 3;
  auto value = [](uint32_t bits, int half) {
    const uint16_t h = uint16_t(bits >> (16 * half));
    return KIND == 1 ? __bfloat162float({h}) : __half2float({h});
  };
  float rows[2][16], cols[2][16];  // A rows g, g + 8; B columns 2q, 2q + 1
  for (int j = 0; j < 4; ++j)
    for (int s = 0; s < 4; ++s) {
      const uint32_t v = __shfl_sync(0xffffffffu, a[j], 4 * g + s);
      for (int h = 0; h < 2; ++h) rows[j & 1][2 * s + 8 * (j >> 1) + h] = value(v, h);
    }
  for (int n = 0; n < 2; ++n)
    for (int j = 0; j < 2; ++j)
      for (int s = 0; s < 4; ++s) {
        const uint32_t v = __shfl_sync(0xffffffffu, b[j], 4 * (2 * q + n) + s);
        for (int h = 0; h < 2; ++h) cols[n][2 * s + 8 * j + h] = value(v, h);
      }
  for (int e = 0; e < 4; ++e) {
    double s = d[e];
    for (int k = 0; k < 16; ++k) s += double(rows[e >> 1][k]) * double(cols[e & 1][k]);
    d[e] = float(s);
  }
  if (lane == 0) mma_executed.fetch_add(1);
}
}  // namespace simt

namespace cooperative_groups {
struct grid_group {
  void sync() const { simt::detail::grid_sync(); }
  unsigned long long size() const {
    return 1ull * gridDim.x * gridDim.y * gridDim.z * blockDim.x * blockDim.y * blockDim.z;
  }
  unsigned long long thread_rank() const {
    const unsigned long long tpb = 1ull * blockDim.x * blockDim.y * blockDim.z;
    return (blockIdx.x + 1ull * gridDim.x * (blockIdx.y + 1ull * gridDim.y * blockIdx.z)) * tpb +
           threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  }
  bool is_valid() const { return simt::detail::current().cooperative; }
};
inline grid_group this_grid() { return {}; }
struct thread_block {
  void sync() const { __syncthreads(); }
  unsigned thread_rank() const { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
  unsigned size() const { return blockDim.x * blockDim.y * blockDim.z; }
};
inline thread_block this_thread_block() { return {}; }
}  // namespace cooperative_groups

#endif  // __CUDACC__
