"""Run by tests/test_cuda_emulated_ops.py::test_emulated_ops_asan_error_path_and_half_ln in a
process with libasan/libubsan preloaded: loads the emulated ops built with
-fsanitize=address,undefined (argv[1]) and runs the CUDA host code's argument-error paths (the
checks that segfaulted on an H100) and the per-step and persistent bfloat16/float16 norm cases of
tests/cuda_sanitize_ops.py (the case racecheck stopped on). Any sanitizer report aborts the process."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fusedrnn.spec import CellSpec  # noqa: E402
from test_cuda_emulated import make_case  # noqa: E402
from test_cuda_emulated_ops import emulated_layer  # noqa: E402

torch.ops.load_library(sys.argv[1])
ops = torch.ops.fusedrnn_emulated


def expect_error(what, args, pattern):
    try:
        ops.lstm_fwd(*args)
    except RuntimeError as e:
        assert pattern in str(e), f"{what}: {e}"
        print(f"asan_error_path: {what}: raised", flush=True)
        return
    sys.exit(f"asan_error_path: {what}: no error")


spec = CellSpec("lstm")
x, state, p, _ = make_case(spec, 3, 2, 2, 3, torch.float32, None)


def lstm_args(**over):
    a = dict(x=x, lengths=None, h0=state[0], c0=state[1], a0=None, w_ih=p["w_ih"], w_hh=p["w_hh"], b_ih=p["b_ih"],
             b_hh=p["b_hh"])
    a.update(over)
    return (*a.values(), *([None] * 14), 0, 0, True, 0, 1e-5, None)


expect_error("w_ih shape", lstm_args(w_ih=p["w_ih"][:, :1].contiguous()), "w_ih must have shape [12, 2], got [12, 1]")
expect_error("h0 strides", lstm_args(h0=state[0].t().contiguous().t()), "h0 must be contiguous")
expect_error("lengths dtype", lstm_args(lengths=torch.tensor([1.0, 2.0])), "lengths must be int64")
expect_error("b_ih shape", lstm_args(b_ih=p["b_ih"][:3].contiguous()), "b_ih must have shape [12], got [3]")
expect_error("dtype", lstm_args(x=x.double()), "must have dtype Double like x")
os.environ["FUSEDRNN_PERSISTENT"] = "require"
os.environ["FUSEDRNN_PERSISTENT_SMEM"] = "64"
expect_error("persistent require", lstm_args(), "FUSEDRNN_PERSISTENT=require but the persistent kernel cannot run")
del os.environ["FUSEDRNN_PERSISTENT_SMEM"]

for mode in ("0", "require"):
    os.environ["FUSEDRNN_PERSISTENT"] = mode
    for spec, dt in [(CellSpec("lstm", "vanilla", "layer"), torch.bfloat16), (CellSpec("lstm", "vanilla", "batch"),
                     torch.float16), (CellSpec("lstm", "cifg", "layer_per_gate"), torch.bfloat16)]:
        T, B, I, H = 4, 3, 5, 40 if mode == "0" else 10
        xx, ss, pp, lens = make_case(spec, T, B, I, H, torch.float32, [T, 2, T - 1])
        xx, ss, pp = xx.to(dt), tuple(s.to(dt) for s in ss), {k: v.to(dt) for k, v in pp.items()}
        grads = [torch.randn(T, B, H).to(dt)] + [torch.randn(s.shape).to(dt) for s in ss]
        y, final, g = emulated_layer(ops, spec, xx, ss, pp, lens, True, 0, grads)
        assert all(torch.isfinite(t.float()).all() for t in (y, *final, *(v for v in g.values() if v.numel())))
        print(f"asan_error_path: FUSEDRNN_PERSISTENT={mode} {spec.variant} {spec.norm} {dt} H={H}: ok", flush=True)
print("asan_error_path: all ok", flush=True)
