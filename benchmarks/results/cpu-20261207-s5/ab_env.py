"""An environment knob's A/B in one process: blocks of fwd+bwd calls with the knob unset (A) and set
(B), alternating, the order swapped every round (8 rounds x 10 timed calls a block after 2
untimed); prints each cell's medians and B/A. The knobs are read per call (FUSEDRNN_WEIGHT_GRADS,
FUSEDRNN_PACKED_GEMM, or a temporary switch of a build under test).

    python benchmarks/results/cpu-20261207-s5/ab_env.py 28x100x28x128 FUSEDRNN_WEIGHT_GRADS loop \
        [none,layer,batch,gru,lngru]
    THREADS=1 python ...   (torch.set_num_threads(1) first)
"""
import os
import statistics
import sys
import time

import torch

import fusedrnn


def module(cell: str, I: int, H: int):  # noqa: E741
    if cell == "gru":
        return fusedrnn.GRU(I, H)
    if cell == "lngru":
        return fusedrnn.GRU(I, H, norm="layer")
    return fusedrnn.LSTM(I, H, norm=cell)


def main():
    torch.manual_seed(0)
    if os.environ.get("THREADS"):
        torch.set_num_threads(int(os.environ["THREADS"]))
    T, B, I, H = map(int, sys.argv[1].split("x"))  # noqa: E741
    var, val = sys.argv[2], sys.argv[3]
    cells = sys.argv[4].split(",") if len(sys.argv) > 4 else ["none", "layer", "batch"]
    x = torch.randn(T, B, I, requires_grad=True)
    dy = torch.randn(T, B, H)
    for cell in cells:
        m = module(cell, I, H)
        res = {"A": [], "B": []}
        for rnd in range(8):
            for lab in ("A", "B") if rnd % 2 == 0 else ("B", "A"):
                if lab == "B":
                    os.environ[var] = val
                else:
                    os.environ.pop(var, None)
                for r in range(12):
                    x.grad = None
                    for p in m.parameters():
                        p.grad = None
                    t0 = time.perf_counter()
                    m(x)[0].backward(dy)
                    if r >= 2:
                        res[lab].append(time.perf_counter() - t0)
        os.environ.pop(var, None)
        a, b = statistics.median(res["A"]) * 1e3, statistics.median(res["B"]) * 1e3
        print(f"{sys.argv[1]} {cell:6s} A(unset) {a:7.3f}  B({var}={val}) {b:7.3f}  B/A {b / a:.3f}", flush=True)


if __name__ == "__main__":
    main()
