"""The CUDA ops' argument-error path, alone, for a debugger on a GPU machine (the H100 run of
tests/test_cuda.py::test_errors_say_expected_and_got and test_persistent_cuda_auto_and_fallback
segfaulted where lstm_fwd should raise):
    gdb -q -batch -ex run -ex bt -ex 'info sharedlibrary' --args python tests/cuda_error_path.py
Each case prints its name before it runs (flushed) and the error message it got. The same
checks built by g++ with -fsanitize=address,undefined (tests/simt/emulated_ops.cpp) raise cleanly.
"""
import os
import sys

import torch

from fusedrnn import _ops
from fusedrnn.spec import CellSpec


def lstm_args(device, dtype=torch.float32, T=3, B=2, I=2, H=3):
    spec = CellSpec("lstm")
    g = torch.Generator().manual_seed(0)
    p = {k: torch.randn(*s, generator=g) for k, s in spec.parameter_shapes(I, H).items()}
    x = torch.randn(T, B, I, generator=g)
    h0, c0 = torch.zeros(B, H), torch.zeros(B, H)
    args = [x, None, h0, c0, None, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], *([None] * 14)]
    args = [a.to(device, dtype) if isinstance(a, torch.Tensor) else a for a in args]
    return args + [0, 0, True, 0, 1e-5]


def expect_error(name, fn):
    print(f"cuda_error_path: {name} ...", flush=True)
    try:
        fn()
    except RuntimeError as e:
        print(f"cuda_error_path: {name}: RuntimeError: {str(e).splitlines()[0]}", flush=True)
        return
    sys.exit(f"cuda_error_path: {name}: no error raised")


def main():
    devices = ["cpu"] + (["cuda"] if _ops.HAS_CUDA and torch.cuda.is_available() else [])
    for dev in devices:  # the CPU kernels first: the same kind of check, another compiler
        a = lstm_args(dev)
        a[5] = a[5][:, :1].contiguous()
        expect_error(f"{dev} w_ih of the wrong shape", lambda: torch.ops.fusedrnn.lstm_fwd(*a))
        a = lstm_args(dev)
        a[2] = a[2].t().contiguous().t()
        expect_error(f"{dev} h0 not contiguous", lambda: torch.ops.fusedrnn.lstm_fwd(*a))
    if "cuda" in devices:
        a = lstm_args("cuda", torch.float64)
        os.environ["FUSEDRNN_PERSISTENT"] = "require"
        expect_error("cuda float64 with FUSEDRNN_PERSISTENT=require", lambda: torch.ops.fusedrnn.lstm_fwd(*a))
        os.environ["FUSEDRNN_PERSISTENT"] = "sometimes"
        expect_error("cuda FUSEDRNN_PERSISTENT=sometimes", lambda: torch.ops.fusedrnn.lstm_fwd(*lstm_args("cuda")))
    print("cuda_error_path: all errors raised", flush=True)


if __name__ == "__main__":
    main()
