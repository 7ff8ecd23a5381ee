// A kernel that needs its __syncthreads(): built twice by tests/test_simt.py with
// -fsanitize=thread, once as written and once with -DSIMT_DROP_SYNC (the barrier between the
// shared-memory write and the neighbour's read removed). ThreadSanitizer must report a data race
// for the second build only.
#include "simt/simt.h"

#include <cstdio>
#include <vector>

__global__ void neighbour_diff(const float* x, float* y) {
  SIMT_SHARED(float, buf, 64);
  const int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  buf[t] = x[i] * 2.f;
#ifndef SIMT_DROP_SYNC
  __syncthreads();
#endif
  y[i] = buf[(t + 1) % blockDim.x] - buf[t];
}

int main() {
  const int nb = 2, nt = 64;
  std::vector<float> x(nb * nt), y(nb * nt);
  for (int i = 0; i < nb * nt; ++i) x[i] = float(i % 7);
  simt::launch(neighbour_diff, dim3(nb), dim3(nt), 0, nullptr, x.data(), y.data());
  int bad = 0;
  for (int b = 0; b < nb; ++b)
    for (int t = 0; t < nt; ++t)
      bad += y[b * nt + t] != 2.f * (x[b * nt + (t + 1) % nt] - x[b * nt + t]);
  std::printf("mismatches: %d\n", bad);
  return 0;
}
