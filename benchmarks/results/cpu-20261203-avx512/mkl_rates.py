"""MKL's packed GEMM (the symbols torch's x86-64 wheel exports) on the per-step products, one
thread; torch.mm (MKL) and oneDNN's linear on the large ones at 1 and 2 threads. Run by
gemm_kernels.sh; the MKL numbers quoted in csrc/cpu/packed_gemm.h and csrc/cpu/gemm.h."""
import ctypes
import os
import statistics
import time

import numpy as np
import torch

lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
lib.cblas_sgemm_pack_get_size.restype = ctypes.c_size_t
lib.cblas_sgemm_pack_get_size.argtypes = [ctypes.c_int] * 4
lib.cblas_sgemm_pack.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
lib.cblas_sgemm_compute.argtypes = [ctypes.c_int] * 6 + [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                                          ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
ROW_MAJOR, NO_TRANS, TRANS, PACKED, B_MATRIX = 101, 111, 112, 151, 162


def median_s(f, n=21):
    for _ in range(3):
        f()
    t = []
    for _ in range(n):
        s = time.perf_counter()
        f()
        t.append(time.perf_counter() - s)
    return statistics.median(t)


one = ctypes.c_int(1)
lib.MKL_SET_NUM_THREADS_LOCAL(ctypes.byref(one))
for M, K, N in [(20, 650, 1300), (32, 512, 1024), (100, 128, 512), (32, 256, 512)]:
    w = np.random.randn(N, K).astype(np.float32)  # out = a w^T, as the forward step
    a = np.random.randn(M, K).astype(np.float32)
    c = np.zeros((M, N), np.float32)
    buf = np.empty(lib.cblas_sgemm_pack_get_size(B_MATRIX, M, N, K) // 4 + 1, np.float32)
    lib.cblas_sgemm_pack(ROW_MAJOR, B_MATRIX, TRANS, M, N, K, 1.0, w.ctypes.data, K, buf.ctypes.data)
    t = median_s(lambda: lib.cblas_sgemm_compute(ROW_MAJOR, NO_TRANS, PACKED, M, N, K, a.ctypes.data, K,
                                                 buf.ctypes.data, K, 0.0, c.ctypes.data, N), n=201)
    assert np.allclose(c, a @ w.T, atol=1e-3)
    print(f"MKL packed, 1 thread   {M:5d} x {K:5d} x {N:5d}  {2 * M * K * N / t / 1e9:6.1f} GFLOP/s")
for threads in (1, 2):
    torch.set_num_threads(threads)
    for M, K, N in [(700, 650, 2600), (3200, 256, 1024)]:
        a, b, out = torch.randn(M, K), torch.randn(N, K), torch.empty(M, N)
        t_mm = median_s(lambda: torch.mm(a, b.t(), out=out))
        am = a.to_mkldnn()
        t_dnnl = median_s(lambda: torch._C._nn.mkldnn_linear(am, b.to_mkldnn()))
        print(f"{threads} thread(s) {M:5d} x {K:5d} x {N:5d}  torch.mm (MKL) {2 * M * K * N / t_mm / 1e9:6.1f}"
              f"  oneDNN linear (weight reorder included) {2 * M * K * N / t_dnnl / 1e9:6.1f} GFLOP/s")
