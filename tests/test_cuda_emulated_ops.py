"""The CUDA backend's host code executed on the CPU: csrc/cuda/rnn_cuda.cu built by g++.

tests/simt/emulated_ops.cpp compiles rnn_cuda.cu with FUSEDRNN_EMULATED: the same op
functions (argument checks, input-projection GEMM, per-step recurrent GEMMs, buffer
management, reverse-time backward, final GEMMs and parameter-gradient reductions) on CPU
tensors, with the pointwise kernels running under the SIMT emulator. They are registered as
torch.ops.fusedrnn_emulated.* with the argument order of the fusedrnn op schemas, and compared
here with fusedrnn.reference for every cell x variant x norm, forward and backward (and the
batch-norm running-statistics update). One C++ translation unit with ATen headers: about a
minute to build on a 2-core machine, once per session.
"""
import os
import shutil
from pathlib import Path

import pytest
import torch

from fusedrnn import reference
from fusedrnn.spec import LSTM_VARIANTS, NORMS, CellSpec
from conftest import ALL_SPECS, assert_close, spec_id
from test_cuda_emulated import make_case

ROOT = Path(__file__).resolve().parents[1]
_BN = ("rm_ih", "rv_ih", "rm_hh", "rv_hh", "rm_cell", "rv_cell")
_LSTM_ROLES = ("b_ih", "b_hh", "w_peep", "w_fgr", "g_ih", "g_hh", "g_cell", "b_cell", "g_gates", "b_gates")

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ on PATH to build the emulated ops")


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    from torch.utils.cpp_extension import load
    build = tmp_path_factory.mktemp("emulated_ops")
    os.environ.setdefault("MAX_JOBS", "2")
    load(name="fusedrnn_emulated_ops", sources=[str(ROOT / "tests" / "simt" / "emulated_ops.cpp")],
         extra_include_paths=[str(ROOT / "csrc" / "include")],
         extra_cflags=["-std=c++20", "-O1", "-g0", "-pthread"], extra_ldflags=["-pthread"],
         build_directory=str(build), is_python_module=False, verbose=False)
    return torch.ops.fusedrnn_emulated


def _c(t):
    return None if t is None else t.contiguous()


def emulated_layer(ops, spec, x, state, p, lens, training, t0, grads):
    """Forward op, bn_update_, backward op: what fusedrnn/_ops.py does around the real ops."""
    if spec.family == "lstm":
        fgr, bn = spec.full_gate_recurrence, spec.norm == "batch"
        args = (x, lens, state[0], state[1], state[2] if fgr else None, p["w_ih"], p["w_hh"],
                *(p.get(r) for r in _LSTM_ROLES))
        code = (LSTM_VARIANTS.index(spec.variant), NORMS.index(spec.norm), training)
        out = ops.lstm_fwd(*args, *(p[r] if bn else None for r in _BN), *code, t0, spec.eps, p.get("w_hr"))
        if bn and training:
            ops.bn_update_(*(p[r] for r in _BN), out[8], lens, x.shape[1], t0, spec.bn_momentum)
        ga = grads[3] if fgr else x.new_zeros(0)
        g = ops.lstm_bwd(grads[0], grads[1], grads[2], ga, *args, out[0], *out[4:9], *code, spec.eps, p.get("w_hr"))
        names = ["x", "h", "c", "a", "w_ih", "w_hh", *_LSTM_ROLES, "w_hr"]
        final = (out[1], out[2], out[3]) if fgr else (out[1], out[2])
    elif spec.family == "gru":
        norm = NORMS.index(spec.norm)
        args = (x, lens, state[0], p["w_ih"], p["w_hh"], p.get("b_ih"), p.get("b_hh"), p.get("g_ih"), p.get("g_hh"))
        out = ops.gru_fwd(*args, norm, spec.eps)
        g = ops.gru_bwd(grads[0], grads[1], *args, out[0], *out[2:7], norm, spec.eps)
        names = ["x", "h", "w_ih", "w_hh", "b_ih", "b_hh", "g_ih", "g_hh"]
        final = (out[1],)
    else:
        kind = 0 if spec.family == "rnn_tanh" else 1
        out = ops.rnn_fwd(x, lens, state[0], p["w_ih"], p["w_hh"], p.get("b_ih"), p.get("b_hh"), kind)
        g = ops.rnn_bwd(grads[0], grads[1], x, lens, state[0], p["w_ih"], p["w_hh"], out[0], kind, "b_ih" in p)
        names = ["x", "h", "w_ih", "w_hh", "b_ih", "b_hh"]
        final = (out[1],)
    return out[0], final, dict(zip(names, g))


def check_ops(ops, spec, T, B, I, H, dtype, lengths, training, t0=0):
    x, state, p, lens = make_case(spec, T, B, I, H, dtype, lengths)
    roles = [k for k in p if k not in _BN]
    rp = {k: v.clone().requires_grad_(k in roles) for k, v in p.items()}
    rx, rstate = x.clone().requires_grad_(), tuple(s.clone().requires_grad_() for s in state)
    y_ref, final_ref = reference.run_layer(spec, rx, rstate, rp, lengths=lens, training=training, t0=t0)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(y_ref.shape, generator=gen, dtype=dtype)] + \
            [torch.randn(f.shape, generator=gen, dtype=dtype) for f in final_ref]
    torch.autograd.backward([y_ref, *final_ref], grads)

    ep = {k: v.clone() for k, v in p.items()}
    y, final, g = emulated_layer(ops, spec, x, state, ep, lens, training, t0, grads)
    tag = f"{spec_id(spec)} {dtype} lengths={lengths} training={training}"
    assert_close(y, y_ref.detach(), msg=f"y {tag}")
    for k, name in enumerate(spec.state_names):
        assert_close(final[k], final_ref[k].detach(), msg=f"final {name} {tag}")
        assert_close(g[name], rstate[k].grad, msg=f"d{name}0 {tag}")
    assert_close(g["x"], rx.grad, msg=f"dx {tag}")
    for k in roles:
        assert_close(g[k], rp[k].grad, msg=f"d{k} {tag}")
    for k in _BN:
        if k in p:
            assert_close(ep[k], rp[k], msg=f"running statistic {k} {tag}")
    for k, v in g.items():  # absent roles come back as empty tensors
        if k not in roles and k not in ("x", *spec.state_names):
            assert v.numel() == 0, f"gradient of absent role {k} should be empty ({tag})"


@pytest.mark.parametrize("spec", [*ALL_SPECS, CellSpec("lstm", proj_size=2)], ids=spec_id)
def test_emulated_ops_match_reference(ops, spec):
    check_ops(ops, spec, T=3, B=3, I=4, H=5, dtype=torch.float64, lengths=[3, 1, 2], training=True)
    check_ops(ops, spec, T=2, B=2, I=3, H=33, dtype=torch.float32, lengths=None, training=False)


@pytest.mark.parametrize("spec", [CellSpec("lstm", "vanilla", "batch", max_bn_steps=2),
                                  CellSpec("lstm", "fgr", "batch", max_bn_steps=2)], ids=spec_id)
def test_emulated_ops_batchnorm_late_steps(ops, spec):
    check_ops(ops, spec, T=4, B=3, I=3, H=4, dtype=torch.float64, lengths=[4, 2, 3], training=True, t0=1)
    check_ops(ops, spec, T=4, B=3, I=3, H=4, dtype=torch.float64, lengths=None, training=False, t0=1)


def test_emulated_ops_bias_free(ops):
    for spec in (CellSpec("lstm", "peephole"), CellSpec("gru", norm="layer"), CellSpec("rnn_tanh")):
        x, state, p, lens = make_case(spec, 2, 2, 3, 4, torch.float64, None)
        p = {k: v for k, v in p.items() if k not in ("b_ih", "b_hh")}
        ref_p = {k: v.clone().requires_grad_() for k, v in p.items()}
        y_ref, _ = reference.run_layer(spec, x, state, ref_p)
        y, _, _ = emulated_layer(ops, spec, x, state, p, lens, False, 0,
                                 [torch.ones_like(y_ref)] + [torch.ones_like(s) for s in state])
        assert_close(y, y_ref.detach(), msg=f"bias-free {spec_id(spec)}")


def test_emulated_ops_check_arguments(ops):
    spec = CellSpec("lstm", "peephole", "layer")
    x, state, p, _ = make_case(spec, 2, 2, 3, 4, torch.float64, None)
    args = lambda **o: [o.get(k, v) for k, v in (  # noqa: E731
        ("x", x), ("lengths", None), ("h0", state[0]), ("c0", state[1]), ("a0", None), ("w_ih", p["w_ih"]),
        ("w_hh", p["w_hh"]), *((r, p.get(r)) for r in _LSTM_ROLES), *((r, None) for r in _BN))]
    with pytest.raises(RuntimeError, match=r"w_ih must have shape \[16, 3\], got \[16, 2\]"):
        ops.lstm_fwd(*args(w_ih=p["w_ih"][:, :2].contiguous()), 1, 1, False, 0, 1e-5, None)
    with pytest.raises(RuntimeError, match="w_peep of shape .* is required by this cell"):
        ops.lstm_fwd(*args(w_peep=None), 1, 1, False, 0, 1e-5, None)
    with pytest.raises(RuntimeError, match="must have dtype"):
        ops.lstm_fwd(*args(h0=state[0].float()), 1, 1, False, 0, 1e-5, None)
    with pytest.raises(RuntimeError, match="lengths must be int64"):
        ops.lstm_fwd(*args(lengths=torch.tensor([2, 1], dtype=torch.int32)), 1, 1, False, 0, 1e-5, None)
    with pytest.raises(RuntimeError, match="w_hr \\(proj_size\\) is supported for the vanilla LSTM without norm only"):
        ops.lstm_fwd(*args(), 1, 1, False, 0, 1e-5, torch.zeros(2, 4, dtype=torch.float64))


def half_rule_error(actual, truth):
    """Error of a tensor against the float64 truth: relative Frobenius norm ||a - t|| / ||t||.

    A norm rather than the maximum: recurrences through normalization statistics of a few rows
    (or of a nearly constant row) amplify the half-precision rounding of the *inputs* into
    entries that are noise for every implementation (measured: such single entries of the
    kernel and of the reference reach 0.05-1.3 and trade places between seeds, while the
    kernel's error on the other entries is typically 2-3x below the reference's). The maximum
    would test that noise; the norm tests the kernel.
    """
    t = truth.double()
    return ((actual.double() - t).norm() / t.norm().clamp_min(1e-30)).item()


def check_half_rule(name, kernel, ref, truth, dtype):
    """STYLE rule: error(kernel) <= 2 error(same-dtype reference) (+ one epsilon of the dtype).

    A same-dtype reference that overflows (float16 batch-norm backward: (var + eps)^-1.5 leaves
    the float16 range) has an infinite error; the kernel must still be finite.
    """
    assert torch.isfinite(kernel).all(), f"{name}: non-finite {dtype} kernel result"
    err_kernel = half_rule_error(kernel, truth)
    err_reference = half_rule_error(ref, truth) if torch.isfinite(ref).all() else float("inf")
    eps = torch.finfo(dtype).eps
    assert err_kernel <= 2 * err_reference + eps, (
        f"{name}: {dtype} kernel relative error {err_kernel:.3g} > 2 x reference error {err_reference:.3g} + {eps:.3g}")


# bfloat16 for every spec; float16 (the same kernels, another storage type) for one spec per
# kernel instantiation family, to keep the emulated suite within CI's budget.
HALF_CASES = [(s, torch.bfloat16) for s in ALL_SPECS] + [
    (s, torch.float16) for s in ALL_SPECS
    if s.variant in ("vanilla", "fgr") or s.family != "lstm"] + [
    (CellSpec("lstm", proj_size=5), torch.bfloat16), (CellSpec("lstm", proj_size=5), torch.float16)]


@pytest.mark.parametrize("spec,dtype", HALF_CASES, ids=lambda v: spec_id(v) if isinstance(v, CellSpec) else str(v))
def test_emulated_ops_half_precision_rule(ops, spec, dtype):
    """float16/bfloat16 storage, float accumulation and statistics: the STYLE rule for half types."""
    x64, state64, p64, lens = make_case(spec, 4, 8, 5, 12, torch.float64, [4, 4, 4, 4, 4, 2, 3, 4])
    grads64 = None
    results = {}
    for run_dtype in (torch.float64, dtype):
        x, state = x64.to(run_dtype), tuple(s.to(run_dtype) for s in state64)
        p = {k: v.to(run_dtype) for k, v in p64.items()}
        roles = [k for k in p if k not in _BN]
        rp = {k: v.clone().requires_grad_(k in roles) for k, v in p.items()}
        rx, rstate = x.clone().requires_grad_(), tuple(s.clone().requires_grad_() for s in state)
        y, final = reference.run_layer(spec, rx, rstate, rp, lengths=lens, training=True)
        if grads64 is None:
            gen = torch.Generator().manual_seed(1)
            grads64 = [torch.randn(y.shape, generator=gen, dtype=torch.float64)] + \
                      [torch.randn(f.shape, generator=gen, dtype=torch.float64) for f in final]
        grads = [g.to(run_dtype) for g in grads64]
        torch.autograd.backward([y, *final], grads)
        out = {"y": y.detach(), **{f"final {n}": f.detach() for n, f in zip(spec.state_names, final)},
               "dx": rx.grad, **{f"d{n}0": s.grad for n, s in zip(spec.state_names, rstate)},
               **{f"d{k}": rp[k].grad for k in roles}, **{k: rp[k] for k in _BN if k in rp}}
        results[run_dtype] = out
        if run_dtype == dtype:
            ep = {k: v.clone() for k, v in p.items()}
            ky, kfinal, kg = emulated_layer(ops, spec, x, state, ep, lens, True, 0, grads)
            kernel = {"y": ky, **{f"final {n}": f for n, f in zip(spec.state_names, kfinal)}, "dx": kg["x"],
                      **{f"d{n}0": kg[n] for n in spec.state_names}, **{f"d{k}": kg[k] for k in roles},
                      **{k: ep[k] for k in _BN if k in ep}}
    for name, t in results[torch.float64].items():
        check_half_rule(f"{spec_id(spec)} {name}", kernel[name], results[dtype][name], t, dtype)


@pytest.mark.slow
def test_emulated_ops_asan_error_path_and_half_ln(tmp_path):
    """rnn_cuda.cu's host code and the emulated kernels built with -fsanitize=address,undefined:
    the argument-error paths (an H100 run segfaulted where lstm_fwd should raise) and the
    bfloat16/float16 norm cases of tests/cuda_sanitize_ops.py, per step and persistent, raise or
    run with no sanitizer report (tests/simt/asan_error_path.py). About 7 min to build on 2 cores."""
    import subprocess
    import sys
    from torch.utils.cpp_extension import include_paths, library_paths
    # built by g++ directly: cpp_extension.load would also load it here, where the ASan runtime
    # is not preloaded (ASan then aborts the process)
    so = tmp_path / "fusedrnn_emulated_ops_asan.so"
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    cmd = ["g++", "-shared", "-fPIC", "-std=c++20", "-O1", "-g0", "-pthread", *san,
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           *(f"-I{d}" for d in [*include_paths(), str(ROOT / "csrc" / "include")]),
           str(ROOT / "tests" / "simt" / "emulated_ops.cpp"), "-o", str(so),
           *(f"-L{d}" for d in library_paths()), "-lc10", "-ltorch_cpu", "-ltorch"]
    subprocess.run(cmd, check=True, timeout=1800)
    runtimes = [subprocess.run(["g++", f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
                for lib in ("libasan.so", "libubsan.so")]
    env = dict(os.environ, LD_PRELOAD=" ".join(runtimes), ASAN_OPTIONS="detect_leaks=0:halt_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    env.pop("FUSEDRNN_PERSISTENT", None)
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "simt" / "asan_error_path.py"), str(so)], env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0 and "asan_error_path: all ok" in r.stdout, r.stdout + r.stderr[-4000:]
    assert "runtime error" not in r.stderr and "AddressSanitizer" not in r.stderr, r.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.skipif(torch.version.cuda is None or shutil.which("nvcc") is None,
                    reason="needs a CUDA build of torch (its c10_cuda/torch_cuda libraries) and nvcc")
def test_nvcc_built_error_path(tmp_path):
    """The argument-error path of the nvcc-compiled host code (tests/simt/nvcc_error_ops.cu), no GPU:
    an H100 run segfaulted where lstm_fwd should raise. Built with setup.py's nvcc flags, called on
    CPU tensors in a subprocess (a crash fails the test instead of the session). About 3 min."""
    import subprocess
    import sys
    from torch.utils.cpp_extension import include_paths, library_paths
    so = tmp_path / "nvcc_error_ops.so"
    std = "-std=c++20" if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 14) else "-std=c++17"
    cmd = ["nvcc", "-shared", "-Xcompiler", "-fPIC", "-O3", std, "-gencode", "arch=compute_90,code=sm_90",
           "--expt-relaxed-constexpr", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", "-DFUSEDRNN_WITH_CUDA",
           "-DTORCH_API_INCLUDE_EXTENSION_H", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
           "-D__CUDA_NO_HALF2_OPERATORS__", *(f"-I{d}" for d in [*include_paths(), str(ROOT / "csrc" / "include")]),
           str(ROOT / "tests" / "simt" / "nvcc_error_ops.cu"), "-o", str(so),
           *(f"-L{d}" for d in library_paths()), "-lc10", "-ltorch_cpu", "-ltorch", "-lc10_cuda", "-ltorch_cuda"]
    subprocess.run(cmd, check=True, timeout=1800)
    script = f"""
import torch
torch.ops.load_library({str(so)!r})
ops = torch.ops.fusedrnn_nvcc_errors
x, h, c = torch.randn(3, 2, 2), torch.zeros(2, 3), torch.zeros(2, 3)
calls = [lambda: ops.lstm_fwd(x, None, h, c, None, torch.randn(12, 2), torch.randn(12, 3), *([None] * 16), 0, 0,
                              True, 0, 1e-5, None),
         lambda: ops.gru_fwd(x, None, h, torch.randn(9, 2), torch.randn(9, 3), None, None, None, None, 0, 1e-5),
         lambda: ops.rnn_fwd(x, None, h, torch.randn(3, 2), torch.randn(3, 3), None, None, 0)]
for call in calls:
    try:
        call()
    except RuntimeError as e:
        assert "expected tensors on cuda, got x on cpu" in str(e), str(e)
        print("raised", flush=True)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.count("raised") == 3, (r.returncode, r.stdout, r.stderr[-3000:])
