// Self-test of the SIMT emulator (csrc/simt/simt.h): kernels with known results, and misuse
// that must be reported as an error rather than hang. Prints one line per check; exit 0 when
// all pass. Built and run by tests/test_simt.py.
#include "simt/simt.h"

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace cg = cooperative_groups;

// Block sum through static shared memory and __syncthreads (tree reduction).
__global__ void block_sum(const float* x, float* out, int n) {
  SIMT_SHARED(float, buf, 64);
  const int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  buf[t] = i < n ? x[i] : 0.f;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (t < s) buf[t] += buf[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = buf[0];
}

// Warp sums with __shfl_down_sync / __shfl_xor_sync / __shfl_sync, one atomicAdd per warp.
__global__ void warp_sums(const float* x, float* down, float* xor_all, float* bcast, float* total) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32;
  float v = x[i], w = x[i];
  for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
  for (int o = 16; o > 0; o /= 2) w += __shfl_xor_sync(0xffffffffu, w, o);
  const float first = __shfl_sync(0xffffffffu, x[i], 0);
  xor_all[i] = w;
  bcast[i] = first;
  if (lane == 0) {
    down[i / 32] = v;
    atomicAdd(total, v);
  }
}

// Dynamic shared memory: reverse the block's slice.
__global__ void reverse_dynamic(const double* x, double* y) {
  SIMT_DYNAMIC_SHARED(double, buf);
  const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
  buf[t] = x[base + t];
  __syncthreads();
  y[base + t] = buf[blockDim.x - 1 - t];
}

// Grid-wide barrier: every block publishes a partial sum, then every thread reads all of them.
__global__ void grid_total(const float* x, float* partial, float* out) {
  SIMT_SHARED(float, buf, 64);
  const int t = threadIdx.x;
  buf[t] = x[blockIdx.x * blockDim.x + t];
  __syncthreads();
  if (t == 0) {
    float s = 0;
    for (unsigned k = 0; k < blockDim.x; ++k) s += buf[k];
    partial[blockIdx.x] = s;
  }
  cg::this_grid().sync();
  float s = 0;
  for (unsigned b = 0; b < gridDim.x; ++b) s += partial[b];
  out[blockIdx.x * blockDim.x + t] = s;
}

// Reads shared memory before anything wrote it: must see the NaN fill.
__global__ void read_fresh(float* out) {
  SIMT_SHARED(float, buf, 32);
  out[blockIdx.x * blockDim.x + threadIdx.x] = buf[threadIdx.x];
}

// ---- misuse
__global__ void divergent_exit(float* out) {
  if (threadIdx.x == 3) return;  // thread 3 leaves; the others wait for it forever on a GPU
  __syncthreads();
  out[threadIdx.x] = 1.f;
}
__global__ void divergent_branches(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {  // one barrier more on this side: the first half exits while the second half waits
    out[threadIdx.x] = 1.f;
    __syncthreads();
    __syncthreads();
  }
}
__global__ void mixed_barriers(float* out) {
  if (threadIdx.x < 16)
    __syncthreads();
  else
    cg::this_grid().sync();
  out[threadIdx.x] = 1.f;
}
__global__ void grid_sync_plain(float* out) {
  cg::this_grid().sync();
  out[0] = 1.f;
}
__global__ void partial_shuffle(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x % 32 < 16) v += __shfl_xor_sync(0xffffffffu, v, 1);  // half the warp never arrives
  out[threadIdx.x] = v;
}
__global__ void shuffle_mask_missing_lanes(float* out) {  // 48 threads: warp 1 has 16 lanes
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, float(threadIdx.x), 1);
}
__global__ void shuffle_after_exit(float* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, 1.f, 0);
}

static int failures = 0;
static void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
  if (!ok) ++failures;
}
static void expect_error(const std::string& what, const std::string& needle, const std::function<void()>& f) {
  try {
    f();
    check(false, what + " (no error raised)");
  } catch (std::runtime_error& e) {
    const bool ok = std::string(e.what()).find(needle) != std::string::npos;
    check(ok, what + ": " + e.what());
  }
}

int main() {
  const int nb = 3, nt = 64, n = nb * nt - 7;
  std::vector<float> x(nb * nt);
  for (int i = 0; i < nb * nt; ++i) x[i] = 0.25f * float(i % 13) - 1.0f;

  std::vector<float> sums(nb);
  simt::launch(block_sum, dim3(nb), dim3(nt), 0, nullptr, x.data(), sums.data(), n);
  bool ok = true;
  for (int b = 0; b < nb; ++b) {
    float e = 0;
    for (int t = 0; t < nt; ++t) e += b * nt + t < n ? x[b * nt + t] : 0.f;
    ok = ok && std::fabs(e - sums[b]) < 1e-4f;
  }
  check(ok, "block_sum: shared memory + __syncthreads tree reduction");

  std::vector<float> down(nb * nt / 32), xr(nb * nt), bc(nb * nt), total(1, 0.f);
  simt::launch(warp_sums, dim3(nb), dim3(nt), 0, nullptr, x.data(), down.data(), xr.data(), bc.data(), total.data());
  ok = true;
  float all = 0;
  for (int w = 0; w < nb * nt / 32; ++w) {
    float e = 0;
    for (int l = 0; l < 32; ++l) e += x[w * 32 + l];
    all += e;
    ok = ok && std::fabs(e - down[w]) < 1e-4f;
    for (int l = 0; l < 32; ++l) ok = ok && std::fabs(e - xr[w * 32 + l]) < 1e-4f && bc[w * 32 + l] == x[w * 32];
  }
  check(ok, "warp shuffles (down, xor, broadcast)");
  check(std::fabs(all - total[0]) < 1e-3f, "atomicAdd of warp sums");

  std::vector<double> xd(2 * 40), yd(2 * 40);
  for (int i = 0; i < 80; ++i) xd[i] = i * 0.5;
  simt::launch(reverse_dynamic, dim3(2), dim3(40), 40 * sizeof(double), nullptr, xd.data(), yd.data());
  ok = true;
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 40; ++t) ok = ok && yd[b * 40 + t] == xd[b * 40 + 39 - t];
  check(ok, "dynamic shared memory");

  std::vector<float> part(4), out(4 * 32);
  simt::launch_cooperative(grid_total, dim3(4), dim3(32), 0, nullptr, x.data(), part.data(), out.data());
  float e = 0;
  for (int i = 0; i < 4 * 32; ++i) e += x[i];
  ok = true;
  for (float v : out) ok = ok && std::fabs(v - e) < 1e-3f;
  check(ok, "cooperative launch with grid sync");

  std::vector<float> fresh(2 * 32, 0.f);
  simt::launch(read_fresh, dim3(2), dim3(32), 0, nullptr, fresh.data());
  ok = true;
  for (float v : fresh) ok = ok && std::isnan(v);
  check(ok, "fresh shared memory is NaN");

  std::vector<float> junk(64);
  expect_error("thread exits while its block waits at __syncthreads", "divergent barrier",
               [&] { simt::launch(divergent_exit, dim3(2), dim3(32), 0, nullptr, junk.data()); });
  expect_error("unequal __syncthreads counts in divergent branches", "divergent barrier",
               [&] { simt::launch(divergent_branches, dim3(1), dim3(32), 0, nullptr, junk.data()); });
  expect_error("grid sync without a cooperative launch", "launch_cooperative",
               [&] { simt::launch(grid_sync_plain, dim3(2), dim3(32), 0, nullptr, junk.data()); });
  expect_error("half a block at __syncthreads, half at grid sync", "deadlock",
               [&] { simt::launch_cooperative(mixed_barriers, dim3(1), dim3(32), 0, nullptr, junk.data()); });
  expect_error("shuffle reached by half a warp", "warp op",
               [&] { simt::launch(partial_shuffle, dim3(1), dim3(32), 0, nullptr, junk.data()); });
  expect_error("full mask in a partial warp", "do not exist",
               [&] { simt::launch(shuffle_mask_missing_lanes, dim3(1), dim3(48), 0, nullptr, junk.data()); });
  expect_error("shuffle after a lane exited", "exited",
               [&] { simt::launch(shuffle_after_exit, dim3(1), dim3(32), 0, nullptr, junk.data()); });

  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
