#!/usr/bin/env bash
# fusedrnn's AVX-512 packed GEMM (../cpu-20261203-avx512/gemm_kernels.sh, one thread: its step and
# row-MNIST products, then the char-LM and PTB large GEMMs) against torch.mm (MKL) on the large
# products around the time loop, one and two threads. Needs the project's virtualenv active.
set -euo pipefail
kernels="$(cd "$(dirname "$0")" && pwd)/../cpu-20261203-avx512/gemm_kernels.sh"
bash "$kernels" 20,650,1300 32,512,1024 100,128,512 32,256,512 2800,28,512 2800,512,28 512,2800,156,t \
    1024,3200,512,t 3200,256,1024 2560,512,2048 2560,2048,512 2048,2560,512,t 700,650,2600 700,2600,650
python - <<'PY'
import statistics, time, torch
def median_s(f, n=15):
    for _ in range(3):
        f()
    t = []
    for _ in range(n):
        s = time.perf_counter(); f(); t.append(time.perf_counter() - s)
    return statistics.median(t)
for threads in (1, 2):
    torch.set_num_threads(threads)
    for M, K, N, at in [(3200, 256, 1024, False), (2560, 512, 2048, False), (2560, 2048, 512, False),
                        (2048, 2560, 512, True), (700, 650, 2600, False), (700, 2600, 650, False)]:
        a = torch.randn(K, M).t() if at else torch.randn(M, K)  # at: a = dG^T, a transposed view
        b, out = torch.randn(K, N), torch.empty(M, N)
        t = median_s(lambda: torch.mm(a, b, out=out))
        print(f"torch.mm (MKL), {threads} thread(s) {M:5d} x {K:5d} x {N:5d}  a {'dG^T' if at else 'row-major':10s}"
              f" {2 * M * K * N / t / 1e9:6.1f} GFLOP/s")
PY
