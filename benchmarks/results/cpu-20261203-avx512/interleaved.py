"""fusedrnn's fused CPU cells and torch.nn's LSTM / GRU called alternately in one process.

The benchmark CLI measures one candidate after the other, so a burst of load from another tenant
of this shared machine lands on one of them; here every repetition times each contender once,
forward+backward (train mode, x requires grad, y.backward(dy)), and the medians and their ratio
come from the same stretch of time. Optionally the values of an environment knob alternate too
(the fused cells once per value): FUSEDRNN_PACKED_GEMM by default, e.g. to compare fusedrnn's
AVX-512 GEMM with MKL's, or another (--var FUSEDRNN_CPU_SIMD --gemm avx512,avx2).

    python benchmarks/results/cpu-20261203-avx512/interleaved.py --reps 15 [--gemm 1,mkl] \
        [--var FUSEDRNN_PACKED_GEMM] [--shapes rowmnist,ptb] [--cells vanilla,ln,bn,gru] [--out file.json]
"""
import argparse
import json
import os
import statistics
import time

import torch

import fusedrnn

SHAPES = {"generic": (100, 32, 256, 256), "smnist": (784, 64, 1, 100), "charlm": (80, 32, 512, 512),
          "ptb": (35, 20, 650, 650), "rowmnist": (28, 100, 28, 128)}
NORMS = {"vanilla": "none", "ln": "layer", "bn": "batch"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--cells", default="vanilla,ln,bn,gru")
    ap.add_argument("--gemm", default="1", help="values of --var to alternate (comma list)")
    ap.add_argument("--var", default="FUSEDRNN_PACKED_GEMM", help="the environment knob --gemm sets")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    out = []
    for name in args.shapes.split(","):
        T, B, I, H = SHAPES[name]  # noqa: E741
        x = torch.randn(T, B, I, requires_grad=True)
        dy = torch.randn(T, B, H)
        for cell in args.cells.split(","):
            fused = fusedrnn.GRU(I, H) if cell == "gru" else fusedrnn.LSTM(I, H, norm=NORMS[cell])
            nn = torch.nn.GRU(I, H) if cell == "gru" else torch.nn.LSTM(I, H)  # plain cell: the baseline
            times = {f"fused[{g}]": [] for g in args.gemm.split(",")}
            times["torch.nn"] = []

            def call(module):
                x.grad = None
                for p in module.parameters():
                    p.grad = None
                t = time.perf_counter()
                module(x)[0].backward(dy)
                return time.perf_counter() - t

            for r in range(args.warmup + args.reps):
                for g in args.gemm.split(","):
                    os.environ[args.var] = g
                    dt = call(fused)
                    if r >= args.warmup:
                        times[f"fused[{g}]"].append(dt)
                os.environ.pop(args.var, None)
                dt = call(nn)
                if r >= args.warmup:
                    times["torch.nn"].append(dt)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            row = {"shape": name, "T": T, "B": B, "I": I, "H": H, "cell": cell, "median_ms": med,
                   "ratio_to_nn": {k: v / med["torch.nn"] for k, v in med.items() if k != "torch.nn"}}
            out.append(row)
            print(f"{name:9s} {cell:8s} " + "  ".join(f"{k} {v:7.1f}" for k, v in med.items()) + "   "
                  + "  ".join(f"{k}/nn {v:.2f}x" for k, v in row["ratio_to_nn"].items()), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "reps": args.reps,
                       "var": args.var, "gemm_info": fusedrnn.cpu_gemm_info(), "load_end": os.getloadavg(),
                       "results": out}, f, indent=1)


if __name__ == "__main__":
    main()
