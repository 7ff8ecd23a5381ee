"""GFLOP/s of the large GEMMs of the char-LM / PTB / generic LSTM calls: fusedrnn's large GEMM
(fusedrnn._ops.large_gemm under FUSEDRNN_LARGE_GEMM=amx, avx512) against torch.mm (MKL),
alternating call by call, median of --reps, packing included, float32. Errors against float64
relative to (|a| |b|), the largest entry.

    python benchmarks/results/cpu-20261207-amx/gemm_rates.py --threads 1 2
"""
import argparse
import os
import statistics
import time

import torch

import fusedrnn
from fusedrnn import _ops

# (name, M, K, N, a transposed, b transposed): the products as the kernels call them
SHAPES = [
    ("charlm input proj x W_ih^T", 2560, 512, 2048, False, True),
    ("charlm dx = dG W_ih", 2560, 2048, 512, False, False),
    ("charlm dW_ih = dG^T x", 2048, 2560, 512, True, False),
    ("ptb input proj", 700, 650, 2600, False, True),
    ("ptb dW_ih", 2600, 700, 650, True, False),
    ("generic input proj", 3200, 256, 1024, False, True),
    ("generic dW_ih", 1024, 3200, 256, True, False),
]


def operands(M, K, N, a_t, b_t):
    a = torch.randn(K, M).t() if a_t else torch.randn(M, K)
    b = torch.randn(N, K).t() if b_t else torch.randn(K, N)
    return a, b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--modes", default="amx,avx512")
    args = ap.parse_args()
    modes = args.modes.split(",")
    print("torch", torch.__version__, "| fusedrnn", fusedrnn.cpu_gemm_info())
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s): GFLOP/s, median of {args.reps} (error vs float64 / (|a||b|))")
        for name, M, K, N, a_t, b_t in SHAPES:
            a, b = operands(M, K, N, a_t, b_t)
            exact = a.double() @ b.double()
            scale = a.double().abs() @ b.double().abs()
            runs = {m: [] for m in modes + ["torch.mm"]}
            errs = {}
            for _ in range(args.reps):
                for m in runs:
                    if m != "torch.mm":
                        os.environ["FUSEDRNN_LARGE_GEMM"] = m
                    t0 = time.perf_counter()
                    c = a @ b if m == "torch.mm" else _ops.large_gemm(a, b)
                    runs[m].append(time.perf_counter() - t0)
                    errs[m] = ((c.double() - exact).abs() / scale).max().item()
            flops = 2.0 * M * K * N
            cols = "  ".join(f"{m} {flops / statistics.median(t) / 1e9:6.1f} ({errs[m]:.1e})" for m, t in runs.items())
            print(f"  {name:28s} {M:5d} x {K:5d} x {N:5d}  {cols}")


if __name__ == "__main__":
    main()
