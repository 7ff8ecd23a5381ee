"""The float32 LN-LSTM case that missed the 2x rule on the H100 (test_cuda.py::test_matches_reference
[lstm-peephole-layer-float32]), run on the CPU: the CUDA host code and kernels under the SIMT
emulator (tests/simt/emulated_ops.cpp) and the CPU kernels, each error from the float64 reference
next to the float32 reference's error. Usage (repository root, CPU torch, g++):
    python benchmarks/results/gpu-h100-20261123-s4/ln_accuracy_emulated.py [variant]
"""
import os, sys, tempfile
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests")); sys.path.insert(0, str(ROOT))
import torch
from torch.utils.cpp_extension import load
import test_cuda as tc
tc.DEV = "cpu"
from test_cuda_emulated_ops import emulated_layer
from fusedrnn import reference, _ops
from fusedrnn.spec import CellSpec
os.environ.setdefault("MAX_JOBS", "2")
load(name="fusedrnn_emulated_ops", sources=[str(ROOT / "tests" / "simt" / "emulated_ops.cpp")], extra_include_paths=[str(ROOT / "csrc" / "include")],
     extra_cflags=["-std=c++20", "-O1", "-g0", "-pthread"], extra_ldflags=["-pthread"], build_directory=tempfile.mkdtemp(), is_python_module=False)
ops = torch.ops.fusedrnn_emulated
spec = CellSpec("lstm", sys.argv[1] if len(sys.argv) > 1 else "peephole", "layer")
torch.manual_seed(0)
x, state, p = tc.make_layer(spec, 5, 8, 3, 7, torch.float32)
cases = [(None, True, 0), (torch.tensor([5, 3, 4, 1, 4, 4, 3, 2]), True, 2), (torch.tensor([2, 5, 4, 3, 5, 1, 5, 4]), False, 1)]
for lens, training, t0 in cases:
    def run_ref(dtype):
        xx, ss, pp = tc._cast(x, state, p, dtype)
        return tc._flat(tc.run_and_grad(reference.run_layer, spec, xx, ss, pp, lens, training, t0))
    truth, ref = run_ref(torch.float64), run_ref(torch.float32)
    cpu = tc._flat(tc.run_and_grad(_ops.run_layer, spec, x, state, p, lens, training, t0))
    # emulated CUDA ops: forward once for the final states, then the loss gradients
    xd, sd, pd = tc._cast(x, state, p, torch.float32)
    pd = {k: v.detach() for k, v in pd.items()}
    y0, final0, _ = emulated_layer(ops, spec, x.detach(), tuple(s.detach() for s in state), dict(pd), lens, training, t0,
                                   [torch.zeros(5, 8, 7)] + [torch.zeros(8, 7)] * 2)
    w = torch.randn(y0.shape, generator=torch.Generator().manual_seed(1))
    grads = [w] + [(k + 1) * f.cos() for k, f in enumerate(final0)]
    y, final, g = emulated_layer(ops, spec, x.detach(), tuple(s.detach() for s in state), dict(pd), lens, training, t0, grads)
    for name in ("grad x", "grad w_ih", "grad w_hh", "grad g_ih", "grad g_hh"):
        t = truth[name]
        e_ref = (ref[name].double() - t).abs().max().item()
        e_cpu = (cpu[name].double() - t).abs().max().item()
        e_emu = (g[name.split()[1]].double() - t).abs().max().item()
        print(f"lens={lens is not None} train={training} {name:10s} ref {e_ref:.3g}  cpu {e_cpu:.3g} ({e_cpu/e_ref:.2f}x)  emulated-cuda {e_emu:.3g} ({e_emu/e_ref:.2f}x)")
