"""The CUDA pointwise kernels executed on the CPU through the SIMT emulator, against the reference.

tests/simt/emulated_pointwise.cpp compiles csrc/cuda/pointwise.cuh (the same kernel source
nvcc builds for the GPU) with g++ under csrc/simt/simt.h; every emulated CUDA thread is a
std::thread. This file drives those kernels with the host algorithm of csrc/cuda/rnn_cuda.cu
(input projection of all steps as one GEMM, per-step recurrent GEMM, one fused pointwise
launch per step, reverse-time backward, dW/dx as GEMMs after the loop), written here with
torch on the CPU, and compares outputs, final states, gradients and batch-norm running
statistics with fusedrnn.reference for every cell x variant x norm.
"""
import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from fusedrnn import reference
from fusedrnn.spec import LSTM_VARIANTS, CellSpec
from conftest import ALL_SPECS, assert_close, spec_id

ROOT = Path(__file__).resolve().parents[1]
NORM_CODE = {"none": 0, "layer": 1, "layer_per_gate": 2, "batch": 3}

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ on PATH to build the emulated kernels")


# ----------------------------------------------------------------------------- build + ABI

@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    out = tmp_path_factory.mktemp("emulated") / "emulated_pointwise.so"
    cmd = ["g++", "-std=c++20", "-O1", "-pthread", "-fPIC", "-shared", f"-I{ROOT / 'csrc' / 'include'}",
           f"-I{ROOT / 'csrc'}", str(ROOT / "tests" / "simt" / "emulated_pointwise.cpp"), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr[-4000:]}"
    return ctypes.CDLL(str(out))


class StepDims(ctypes.Structure):
    _fields_ = [("B", ctypes.c_int), ("H", ctypes.c_int), ("variant", ctypes.c_int), ("t", ctypes.c_int),
                ("training", ctypes.c_int), ("unused_", ctypes.c_int), ("eps", ctypes.c_double),
                ("lengths", ctypes.c_void_p)]


def _struct(name, pointers):
    return type(name, (ctypes.Structure,), {"_fields_": [("d", StepDims)] + [(p, ctypes.c_void_p) for p in pointers]})


# Field order of the params structs in csrc/cuda/pointwise.cuh.
LstmStepFwd = _struct("LstmStepFwd", [
    "xw", "hw", "fgr", "b_ih", "b_hh", "w_peep", "g_ih", "g_hh", "g_cell", "b_cell", "g_gates", "b_gates",
    "rm_ih", "rv_ih", "rm_hh", "rv_hh", "rm_cell", "rv_cell", "h_prev", "c_prev", "a_prev",
    "h_next", "c_next", "a_next", "y", "acts", "v_out", "stats"])
LstmStepBwd = _struct("LstmStepBwd", [
    "xw", "hw", "w_peep", "g_ih", "g_hh", "g_cell", "b_cell", "g_gates", "b_gates", "c_prev", "acts", "cs",
    "stats", "dy", "dh", "dc", "da", "dpre", "dxw", "dhw", "dh_direct", "dc_prev", "da_direct", "wgrad"])
GruStepFwd = _struct("GruStepFwd", ["xw", "hw", "b_ih", "b_hh", "g_ih", "g_hh", "h_prev", "h_next", "y", "acts",
                                    "hn", "stats"])
GruStepBwd = _struct("GruStepBwd", ["xw", "hw", "g_ih", "g_hh", "h_prev", "acts", "hn", "stats", "dy", "dh", "dxw",
                                    "dhw", "dh_direct", "wgrad"])
RnnStepFwd = _struct("RnnStepFwd", ["xw", "hw", "b_ih", "b_hh", "h_prev", "h_next", "y"])
RnnStepBwd = _struct("RnnStepBwd", ["y", "dy", "dh", "dpre", "dh_direct"])


def ptr(t):
    if t is None:
        return None
    assert t.is_contiguous()
    return t.data_ptr()


def call(lib, name, dtype, params, norm=0):
    fn = getattr(lib, f"{name}_{'f64' if dtype == torch.float64 else 'f32'}")
    err = ctypes.create_string_buffer(2048)
    rc = fn(ctypes.byref(params), ctypes.c_int(norm), err, ctypes.c_int(2048))
    assert rc == 0, f"{name}: {err.value.decode()}"


def dims(spec, B, H, t, lengths, training, variant=0):
    return StepDims(B, H, variant, t, int(training), 0, spec.eps, ptr(lengths))


# ----------------------------------------------------------------------------- host algorithm (mirrors rnn_cuda.cu)

def lstm_forward(lib, spec, x, state, p, lengths, training, t0):
    T, B, _ = x.shape
    G, H = spec.num_gates, state[1].shape[1]
    GH, dt, norm = G * H, x.dtype, NORM_CODE[spec.norm]
    variant = LSTM_VARIANTS.index(spec.variant)
    xw = (x.reshape(T * B, -1) @ p["w_ih"].t()).view(T, B, GH).contiguous()
    hw = torch.empty(T, B, GH, dtype=dt)
    y, acts, cs = torch.empty(T, B, H, dtype=dt), torch.empty(T, B, GH, dtype=dt), torch.empty(T, B, H, dtype=dt)
    sw = {"none": 0, "layer": 6, "layer_per_gate": 2 * G + 2, "batch": 0}[spec.norm]
    stats = torch.empty(T, 2, 2 * GH + H, dtype=dt) if spec.norm == "batch" else torch.empty(T, B, sw, dtype=dt)
    h, c = state[0].contiguous(), state[1].contiguous()
    a = state[2].contiguous() if spec.full_gate_recurrence else None
    S = spec.max_bn_steps
    for t in range(T):
        torch.mm(h, p["w_hh"].t(), out=hw[t])
        fgr = a @ p["w_fgr"].t() if a is not None else None
        h_next = torch.empty(B, H, dtype=dt)
        a_next = torch.empty(B, 3 * H, dtype=dt) if a is not None else None
        slot = min(t0 + t, S - 1)
        run = {k: (p[k][slot].contiguous() if spec.norm == "batch" and not training else None)
               for k in ("rm_ih", "rv_ih", "rm_hh", "rv_hh", "rm_cell", "rv_cell")}
        prm = LstmStepFwd(dims(spec, B, H, t, lengths, training, variant), ptr(xw[t]), ptr(hw[t]), ptr(fgr),
                          *[ptr(p.get(k)) for k in ("b_ih", "b_hh", "w_peep", "g_ih", "g_hh", "g_cell", "b_cell",
                                                     "g_gates", "b_gates")],
                          *[ptr(run[k]) for k in ("rm_ih", "rv_ih", "rm_hh", "rv_hh", "rm_cell", "rv_cell")],
                          ptr(h), ptr(c), ptr(a), ptr(h_next), ptr(cs[t]), ptr(a_next), ptr(y[t]), ptr(acts[t]),
                          ptr(xw[t]) if spec.norm == "layer_per_gate" else None,
                          ptr(stats[t]) if spec.norm != "none" else None)
        call(lib, "lstm_step_fwd", dt, prm, norm)
        h, c, a = h_next, cs[t], a_next
    final = (h, c, a) if a is not None else (h, c)
    return y, final, dict(xw=xw, hw=hw, acts=acts, cs=cs, stats=stats)


def bn_update(spec, p, stats, lengths, B, t0):
    """Running statistics from the forward's per-step batch statistics (the bn_update_ op)."""
    T = stats.shape[0]
    GH, H = p["rm_ih"].shape[1], p["rm_cell"].shape[1]
    m = spec.bn_momentum
    with torch.no_grad():
        for t in range(T):
            n = B if lengths is None else int((lengths > t).sum())
            if n <= 1:
                continue
            slot = min(t0 + t, spec.max_bn_steps - 1)
            for w, (lo, hi) in (("ih", (0, GH)), ("hh", (GH, 2 * GH)), ("cell", (2 * GH, 2 * GH + H))):
                p[f"rm_{w}"][slot].mul_(1 - m).add_(stats[t, 0, lo:hi], alpha=m)
                p[f"rv_{w}"][slot].mul_(1 - m).add_(stats[t, 1, lo:hi] * (n / (n - 1)), alpha=m)


def lstm_backward(lib, spec, x, state, p, lengths, training, y, saved, grads):
    T, B, I = x.shape
    G, H = spec.num_gates, state[1].shape[1]
    GH, dt, norm = G * H, x.dtype, NORM_CODE[spec.norm]
    variant = LSTM_VARIANTS.index(spec.variant)
    fgr = spec.full_gate_recurrence
    dy, dh, dc = grads[0].contiguous(), grads[1].contiguous(), grads[2].contiguous()
    da = grads[3].contiguous() if fgr else None
    dpre = torch.zeros(T, B, GH, dtype=dt)
    dxw = dpre if spec.norm == "none" else torch.zeros(T, B, GH, dtype=dt)
    dhw = dxw if spec.norm in ("none", "layer_per_gate") else torch.zeros(T, B, GH, dtype=dt)
    wgrad = torch.zeros(B, 3 * GH + 5 * H, dtype=dt)
    cs, acts = saved["cs"], saved["acts"]
    for t in reversed(range(T)):
        c_prev = cs[t - 1] if t > 0 else state[1].contiguous()
        dh_direct, dc_prev = torch.empty(B, H, dtype=dt), torch.empty(B, H, dtype=dt)
        da_direct = torch.empty(B, 3 * H, dtype=dt) if fgr else None
        prm = LstmStepBwd(dims(spec, B, H, t, lengths, training, variant),
                          ptr(saved["xw"][t]) if spec.norm != "none" else None,
                          ptr(saved["hw"][t]) if spec.norm in ("layer", "batch") else None,
                          *[ptr(p.get(k)) for k in ("w_peep", "g_ih", "g_hh", "g_cell", "b_cell", "g_gates",
                                                     "b_gates")],
                          ptr(c_prev), ptr(acts[t]), ptr(cs[t]),
                          ptr(saved["stats"][t]) if spec.norm != "none" else None,
                          ptr(dy[t]), ptr(dh), ptr(dc), ptr(da), ptr(dpre[t]), ptr(dxw[t]), ptr(dhw[t]),
                          ptr(dh_direct), ptr(dc_prev), ptr(da_direct), ptr(wgrad))
        call(lib, "lstm_step_bwd", dt, prm, norm)
        dh = dh_direct + dhw[t] @ p["w_hh"]
        dc = dc_prev
        if fgr:
            ifo = torch.cat([dpre[t, :, :H], dpre[t, :, H:2 * H], dpre[t, :, 3 * H:]], 1)
            da = da_direct + ifo @ p["w_fgr"]
    g = {"x": (dxw.reshape(T * B, GH) @ p["w_ih"]).view(T, B, I), "h": dh, "c": dc}
    if fgr:
        g["a"] = da
    g["w_ih"] = dxw.reshape(T * B, GH).t() @ x.reshape(T * B, I)
    h_prev = torch.cat([state[0].unsqueeze(0), y[:-1]], 0).reshape(T * B, H)
    g["w_hh"] = dhw.reshape(T * B, GH).t() @ h_prev
    if fgr:
        a_prev = torch.cat([state[2].unsqueeze(0), torch.cat([acts[:-1, :, :2 * H], acts[:-1, :, 3 * H:]], 2)], 0)
        ifo = torch.cat([dpre[:, :, :2 * H], dpre[:, :, 3 * H:]], 2)
        g["w_fgr"] = ifo.reshape(T * B, 3 * H).t() @ a_prev.reshape(T * B, 3 * H)
    w = wgrad.sum(0)
    cols = {"bias": w[:GH], "g1": w[GH:2 * GH], "g2": w[2 * GH:3 * GH], "peep": w[3 * GH:3 * GH + 3 * H].view(3, H),
            "g_cell": w[3 * GH + 3 * H:3 * GH + 4 * H], "b_cell": w[3 * GH + 4 * H:]}
    if "b_ih" in p:
        g["b_ih"] = g["b_hh"] = cols["bias"]
    if spec.peepholes:
        g["w_peep"] = cols["peep"][["ifo".index(k) for k in spec.peepholes]]
    if spec.norm in ("layer", "batch"):
        g["g_ih"], g["g_hh"] = cols["g1"], cols["g2"]
    if spec.norm == "layer_per_gate":
        g["g_gates"], g["b_gates"] = cols["g1"], cols["bias"]
    if spec.norm != "none":
        g["g_cell"], g["b_cell"] = cols["g_cell"], cols["b_cell"]
    return g


def gru_forward(lib, spec, x, state, p, lengths):
    T, B, _ = x.shape
    H = state[0].shape[1]
    dt, norm = x.dtype, NORM_CODE[spec.norm]
    xw = (x.reshape(T * B, -1) @ p["w_ih"].t()).view(T, B, 3 * H).contiguous()
    hw = torch.empty(T, B, 3 * H, dtype=dt)
    y, acts, hn = torch.empty(T, B, H, dtype=dt), torch.empty(T, B, 3 * H, dtype=dt), torch.empty(T, B, H, dtype=dt)
    stats = torch.empty(T, B, 4, dtype=dt)
    h = state[0].contiguous()
    for t in range(T):
        torch.mm(h, p["w_hh"].t(), out=hw[t])
        h_next = torch.empty(B, H, dtype=dt)
        prm = GruStepFwd(dims(spec, B, H, t, lengths, False), ptr(xw[t]), ptr(hw[t]), ptr(p.get("b_ih")),
                         ptr(p.get("b_hh")), ptr(p.get("g_ih")), ptr(p.get("g_hh")), ptr(h), ptr(h_next), ptr(y[t]),
                         ptr(acts[t]), ptr(hn[t]), ptr(stats[t]))
        call(lib, "gru_step_fwd", dt, prm, norm)
        h = h_next
    return y, (h,), dict(xw=xw, hw=hw, acts=acts, hn=hn, stats=stats)


def gru_backward(lib, spec, x, state, p, lengths, y, saved, grads):
    T, B, I = x.shape
    H = state[0].shape[1]
    dt, norm = x.dtype, NORM_CODE[spec.norm]
    dy, dh = grads[0].contiguous(), grads[1].contiguous()
    dxw, dhw = torch.zeros(T, B, 3 * H, dtype=dt), torch.zeros(T, B, 3 * H, dtype=dt)
    wgrad = torch.zeros(B, 12 * H, dtype=dt)
    h_prev_all = torch.cat([state[0].unsqueeze(0), y[:-1]], 0).contiguous()
    for t in reversed(range(T)):
        dh_direct = torch.empty(B, H, dtype=dt)
        prm = GruStepBwd(dims(spec, B, H, t, lengths, False), ptr(saved["xw"][t]), ptr(saved["hw"][t]),
                         ptr(p.get("g_ih")), ptr(p.get("g_hh")), ptr(h_prev_all[t]), ptr(saved["acts"][t]),
                         ptr(saved["hn"][t]), ptr(saved["stats"][t]), ptr(dy[t]), ptr(dh), ptr(dxw[t]), ptr(dhw[t]),
                         ptr(dh_direct), ptr(wgrad))
        call(lib, "gru_step_bwd", dt, prm, norm)
        dh = dh_direct + dhw[t] @ p["w_hh"]
    w = wgrad.sum(0)
    g = {"x": (dxw.reshape(T * B, -1) @ p["w_ih"]).view(T, B, I), "h": dh,
         "w_ih": dxw.reshape(T * B, -1).t() @ x.reshape(T * B, I),
         "w_hh": dhw.reshape(T * B, -1).t() @ h_prev_all.reshape(T * B, H)}
    if "b_ih" in p:
        g["b_ih"], g["b_hh"] = w[:3 * H], w[3 * H:6 * H]
    if spec.norm == "layer":
        g["g_ih"], g["g_hh"] = w[6 * H:9 * H], w[9 * H:]
    return g


def rnn_forward(lib, spec, x, state, p, lengths):
    T, B, _ = x.shape
    H = state[0].shape[1]
    dt, kind = x.dtype, 0 if spec.family == "rnn_tanh" else 1
    xw = (x.reshape(T * B, -1) @ p["w_ih"].t()).view(T, B, H).contiguous()
    y = torch.empty(T, B, H, dtype=dt)
    h = state[0].contiguous()
    for t in range(T):
        hw, h_next = h @ p["w_hh"].t(), torch.empty(B, H, dtype=dt)
        prm = RnnStepFwd(dims(spec, B, H, t, lengths, False, kind), ptr(xw[t]), ptr(hw), ptr(p.get("b_ih")),
                         ptr(p.get("b_hh")), ptr(h), ptr(h_next), ptr(y[t]))
        call(lib, "rnn_step_fwd", dt, prm)
        h = h_next
    return y, (h,), {}


def rnn_backward(lib, spec, x, state, p, lengths, y, saved, grads):
    T, B, I = x.shape
    H = state[0].shape[1]
    dt, kind = x.dtype, 0 if spec.family == "rnn_tanh" else 1
    dy, dh = grads[0].contiguous(), grads[1].contiguous()
    dpre = torch.zeros(T, B, H, dtype=dt)
    for t in reversed(range(T)):
        dh_direct = torch.empty(B, H, dtype=dt)
        prm = RnnStepBwd(dims(spec, B, H, t, lengths, False, kind), ptr(y[t]), ptr(dy[t]), ptr(dh), ptr(dpre[t]),
                         ptr(dh_direct))
        call(lib, "rnn_step_bwd", dt, prm)
        dh = dh_direct + dpre[t] @ p["w_hh"]
    h_prev_all = torch.cat([state[0].unsqueeze(0), y[:-1]], 0).reshape(T * B, H)
    d2 = dpre.reshape(T * B, H)
    g = {"x": (d2 @ p["w_ih"]).view(T, B, I), "h": dh, "w_ih": d2.t() @ x.reshape(T * B, I), "w_hh": d2.t() @ h_prev_all}
    if "b_ih" in p:
        g["b_ih"] = g["b_hh"] = d2.sum(0)
    return g


# ----------------------------------------------------------------------------- tests

def make_case(spec, T, B, I, H, dtype, lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    p = {k: rnd(*s) * 0.5 for k, s in spec.parameter_shapes(I, H).items()}
    for k in ("g_ih", "g_hh", "g_cell", "g_gates"):
        if k in p:
            p[k] = 1.0 + 0.3 * rnd(*p[k].shape)
    for k, s in spec.buffer_shapes(H).items():
        p[k] = 0.2 * rnd(*s) if k.startswith("rm") else 0.5 + torch.rand(*s, generator=gen, dtype=dtype)
    x = rnd(T, B, I)
    state = tuple(0.5 * rnd(B, n) for n in spec.state_sizes(H))
    lens = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
    return x, state, p, lens


def run_emulated(lib, spec, x, state, p, lens, training, t0, grads):
    if spec.family == "lstm":
        y, final, saved = lstm_forward(lib, spec, x, state, p, lens, training, t0)
        if spec.norm == "batch" and training:
            bn_update(spec, p, saved["stats"], lens, x.shape[1], t0)
        g = lstm_backward(lib, spec, x, state, p, lens, training, y, saved, grads)
    elif spec.family == "gru":
        y, final, saved = gru_forward(lib, spec, x, state, p, lens)
        g = gru_backward(lib, spec, x, state, p, lens, y, saved, grads)
    else:
        y, final, saved = rnn_forward(lib, spec, x, state, p, lens)
        g = rnn_backward(lib, spec, x, state, p, lens, y, saved, grads)
    return y, final, g


def check_against_reference(lib, spec, T, B, I, H, dtype, lengths, training, t0=0):
    x, state, p, lens = make_case(spec, T, B, I, H, dtype, lengths)
    # reference with autograd on its own copies (its BN running stats update in place)
    names = [k for k in p if not k.startswith(("rm_", "rv_"))]
    rp = {k: (v.clone().requires_grad_(k in names)) for k, v in p.items()}
    rx, rstate = x.clone().requires_grad_(), tuple(s.clone().requires_grad_() for s in state)
    y_ref, final_ref = reference.run_layer(spec, rx, rstate, rp, lengths=lens, training=training, t0=t0)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(y_ref.shape, generator=gen, dtype=dtype)] + \
            [torch.randn(f.shape, generator=gen, dtype=dtype) for f in final_ref]
    torch.autograd.backward([y_ref, *final_ref], grads)

    ep = {k: v.clone() for k, v in p.items()}
    y, final, g = run_emulated(lib, spec, x, state, ep, lens, training, t0, grads)
    tag = f"{spec_id(spec)} {dtype} lengths={lengths} training={training}"
    assert_close(y, y_ref.detach(), msg=f"y {tag}")
    for k, (a, b) in enumerate(zip(final, final_ref)):
        assert_close(a, b.detach(), msg=f"final state {spec.state_names[k]} {tag}")
    assert_close(g["x"], rx.grad, msg=f"dx {tag}")
    for k, name in enumerate(spec.state_names):
        assert_close(g[name], rstate[k].grad, msg=f"d{name}0 {tag}")
    for k in names:
        assert k in g, f"no gradient for {k} ({tag})"
        assert_close(g[k], rp[k].grad, msg=f"d{k} {tag}")
    for k in p:
        if k.startswith(("rm_", "rv_")):
            assert_close(ep[k], rp[k], msg=f"running statistic {k} {tag}")


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
@pytest.mark.parametrize("lengths", [None, [3, 1, 2]], ids=["full", "packed"])
def test_emulated_kernels_match_reference_fp64(lib, spec, lengths):
    check_against_reference(lib, spec, T=3, B=3, I=4, H=5, dtype=torch.float64, lengths=lengths, training=True)


@pytest.mark.parametrize("spec", [s for s in ALL_SPECS if s.norm == "batch"], ids=spec_id)
def test_emulated_batchnorm_eval_and_late_steps_fp64(lib, spec):
    """Eval mode uses the running slots; steps beyond max_bn_steps reuse the last slot."""
    spec = CellSpec(spec.family, spec.variant, spec.norm, max_bn_steps=2)
    check_against_reference(lib, spec, T=4, B=3, I=3, H=4, dtype=torch.float64, lengths=None, training=False, t0=1)
    check_against_reference(lib, spec, T=4, B=3, I=3, H=4, dtype=torch.float64, lengths=[4, 2, 3], training=True,
                            t0=1)


@pytest.mark.parametrize("spec", [CellSpec("lstm", "vanilla", "batch"), CellSpec("lstm", "fgr", "batch"),
                                  CellSpec("lstm", "cifg", "batch")], ids=spec_id)
def test_emulated_batchnorm_tiles_fp64(lib, spec):
    """Batch-norm kernels with two tiles of units (H = 37 > 32 lanes) and more rows than warps
    (B = 19 > 8): each warp's partial column statistics, combined over the warps, forward and
    backward, training (padded rows left out of the statistics) and eval."""
    lengths = [4, 4, 1, 3, 4, 2, 4, 4, 3, 1, 4, 4, 2, 4, 3, 4, 4, 1, 4]
    check_against_reference(lib, spec, T=4, B=19, I=3, H=37, dtype=torch.float64, lengths=lengths, training=True)
    check_against_reference(lib, spec, T=2, B=19, I=3, H=37, dtype=torch.float64, lengths=None, training=False)


@pytest.mark.parametrize("spec", [CellSpec("lstm"), CellSpec("lstm", "fgr", "layer"),
                                  CellSpec("lstm", "cifg", "batch"), CellSpec("lstm", "nog", "layer_per_gate"),
                                  CellSpec("gru", norm="layer"), CellSpec("rnn_relu")], ids=spec_id)
def test_emulated_kernels_fp32_and_odd_sizes(lib, spec):
    """float32 kernels; H larger than one warp (several warps per block, strided units); T=1, B=1."""
    check_against_reference(lib, spec, T=2, B=2, I=3, H=37, dtype=torch.float32, lengths=[2, 1], training=True)
    check_against_reference(lib, spec, T=1, B=2 if spec.norm == "batch" else 1, I=1, H=1, dtype=torch.float64,
                            lengths=None, training=True)
