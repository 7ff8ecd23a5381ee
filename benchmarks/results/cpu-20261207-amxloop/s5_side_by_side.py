"""torch.nn.LSTM and fusedrnn's LSTM / LN-LSTM / BN-LSTM on one shape, in one process, blocks of
calls alternating (order reversed every other round): forward and forward+backward medians and
each one's forward+backward over nn.LSTM's.

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295 \
        python s5_side_by_side.py [TxBxIxH, default 28x100x28x128]
    NB=5 SKIP=1 ROUNDS=15 python s5_side_by_side.py   (blocks of 5 calls, the first untimed)

The tunables are what `python -m benchmarks` sets by default (--malloc reuse).
"""
import os
import statistics
import sys
import time

import torch

import fusedrnn


def main():
    torch.manual_seed(0)
    calls, skip = int(os.environ.get("NB", "12")), int(os.environ.get("SKIP", "2"))
    rounds = int(os.environ.get("ROUNDS", "6"))
    T, B, I, H = map(int, (sys.argv[1] if len(sys.argv) > 1 else "28x100x28x128").split("x"))  # noqa: E741
    x = torch.randn(T, B, I, requires_grad=True)
    dy = torch.randn(T, B, H)
    mods = {"nn": torch.nn.LSTM(I, H), "none": fusedrnn.LSTM(I, H), "layer": fusedrnn.LSTM(I, H, norm="layer"),
            "batch": fusedrnn.LSTM(I, H, norm="batch")}
    res = {k: {"f": [], "fb": []} for k in mods}
    for rnd in range(rounds):
        for k in list(mods) if rnd % 2 == 0 else list(mods)[::-1]:
            m = mods[k]
            for r in range(calls):
                x.grad = None
                for p in m.parameters():
                    p.grad = None
                t0 = time.perf_counter()
                y = m(x)[0]
                t1 = time.perf_counter()
                y.backward(dy)
                t2 = time.perf_counter()
                if r >= skip:
                    res[k]["f"].append(t1 - t0)
                    res[k]["fb"].append(t2 - t0)
    nn = statistics.median(res["nn"]["fb"])
    for k, v in res.items():
        f, fb = statistics.median(v["f"]) * 1e3, statistics.median(v["fb"]) * 1e3
        print(f"{k:6s} fwd {f:7.3f} fwd+bwd {fb:7.3f}  bwd~ {fb - f:7.3f}  /nn {fb / nn / 1e3:.3f}")


if __name__ == "__main__":
    main()
