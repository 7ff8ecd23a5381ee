"""The CUDA kernels (csrc/cuda/) on a GPU against the reference oracle (`pytest -m cuda`).

What the CPU kernel tests check, on CUDA tensors: every spec in float64/float32 (outputs, final
states, every gradient, batch-norm running statistics) with the tolerance table; float16 and
bfloat16 with the STYLE rule for reduced precision (the kernel's error against the float64
reference at most 2x the error of the same-precision PyTorch reference on the same inputs);
gradcheck in float64; odd shapes; modules (multi-layer, bidirectional, packed) reporting
last_backend == "cuda"; opcheck; torch.compile; argument errors. Skipped without a GPU
(conftest) or without the CUDA kernels in the build.
"""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import _ops, reference
from fusedrnn.modules import init_parameters
from fusedrnn.spec import CellSpec

from conftest import ALL_SPECS, check_close, spec_id
from test_cuda_emulated_ops import check_half_rule

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not _ops.HAS_CUDA, reason=f"fusedrnn._C has no CUDA kernels "
                                                           f"(load error: {_ops.LOAD_ERROR})")]

DEV = "cuda"
HALF = (torch.float16, torch.bfloat16)


def make_layer(spec, T, B, I, H, dtype, seed=0):
    """Random inputs, states and parameters on the GPU (norm gains/shifts perturbed from 1/0)."""
    g = torch.Generator().manual_seed(seed)
    p = {r: torch.empty(s, dtype=torch.float64) for r, s in spec.parameter_shapes(I, H).items()}
    init_parameters(spec, p, H, generator=g)  # the seed fixes every input, whatever ran before
    with torch.no_grad():
        for r, t in p.items():
            if r.startswith(("g_", "b_")):
                t.add_(0.1 * torch.randn(t.shape, generator=g, dtype=torch.float64))
    for r, s in spec.buffer_shapes(H).items():
        p[r] = (0.5 + torch.rand(s, generator=g, dtype=torch.float64)) if r.startswith("rv") else \
            0.1 * torch.randn(s, generator=g, dtype=torch.float64)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    state = tuple(0.5 * torch.randn(B, n, generator=g, dtype=torch.float64) for n in spec.state_sizes(H))

    def dev(t, grad=True):
        return t.to(DEV, dtype).requires_grad_(grad)
    return dev(x), tuple(dev(s) for s in state), {r: dev(t, not r.startswith(("rm_", "rv_"))) for r, t in p.items()}


def run_and_grad(run_layer, spec, x, state, p, lengths, training, t0):
    """Forward (on a copy of the running statistics), a weighted loss, all gradients."""
    pp = {k: (v.clone() if k.startswith(("rm_", "rv_")) else v) for k, v in p.items()}
    y, final = run_layer(spec, x, state, pp, lengths=lengths, training=training, t0=t0)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device, y.dtype)
    loss = (y * w).sum() + sum(((k + 1) * f.sin()).sum() for k, f in enumerate(final))
    names = ["x"] + [f"state{k}" for k in range(len(state))] + [r for r, v in p.items() if v.requires_grad]
    inputs = [x, *state] + [v for v in p.values() if v.requires_grad]
    grads = dict(zip(names, torch.autograd.grad(loss, inputs)))
    running = {k: v for k, v in pp.items() if k.startswith(("rm_", "rv_"))}
    return y, final, grads, running


def _cast(x, state, p, dtype):
    def c(t):
        return t.detach().to(dtype).requires_grad_(t.requires_grad)
    return c(x), tuple(c(s) for s in state), {k: c(v) for k, v in p.items()}


def _flat(result):
    y, final, grads, running = result
    out = {"y": y}
    out.update({f"final{k}": f for k, f in enumerate(final)})
    out.update({f"grad {k}": v for k, v in grads.items()})
    out.update({f"running {k}": v for k, v in running.items()})
    return out


def compare(spec, x, state, p, lengths=None, training=False, t0=0):
    ref = _flat(run_and_grad(reference.run_layer, spec, x, state, p, lengths, training, t0))
    ker = _flat(run_and_grad(_ops.run_layer, spec, x, state, p, lengths, training, t0))
    truth = _flat(run_and_grad(reference.run_layer, spec, *_cast(x, state, p, torch.float64), lengths, training,
                               t0)) if x.dtype == torch.float32 else dict.fromkeys(ref)
    assert ker.keys() == ref.keys()
    for name in ref:
        check_close(ker[name], ref[name], name, truth[name])


def compare_half(spec, x, state, p, lengths=None, training=False, t0=0):
    """STYLE rule for float16/bfloat16 (tests/test_cuda_emulated_ops.check_half_rule): per tensor,
    relative-norm error against the float64 reference <= 2x that of the same-dtype reference."""
    truth = _flat(run_and_grad(reference.run_layer, spec, *_cast(x, state, p, torch.float64), lengths, training, t0))
    ref = _flat(run_and_grad(reference.run_layer, spec, x, state, p, lengths, training, t0))
    ker = _flat(run_and_grad(_ops.run_layer, spec, x, state, p, lengths, training, t0))
    for name, t in truth.items():
        check_half_rule(f"{spec_id(spec)} {name}", ker[name], ref[name], t, x.dtype)


# ----------------------------------------------------------------------------- the matrix


# Both CUDA paths: "0" forces the per-step kernels, "auto" (the default) runs the persistent LSTM
# kernels at these small shapes for the LSTM without norm or with batch norm in float32 and the half
# types; elsewhere (float64, layer norms, GRU, RNN) auto runs per step, the "step" case again.
PATHS = pytest.mark.parametrize("path", ["0", "auto"], ids=["step", "auto"])


def use_path(monkeypatch, path, spec, dtype):
    if path == "auto" and (dtype == torch.float64 or spec.family != "lstm" or spec.norm not in ("none", "batch")):
        pytest.skip("auto runs the per-step kernels here: the [step] case")
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", path)


@PATHS
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_matches_reference(spec, dtype, path, monkeypatch):
    use_path(monkeypatch, path, spec, dtype)
    # B = 8 and lengths leaving 8, 7, 6, 4, 1 active rows at steps 0..4: batch norm over 2 (or 3)
    # active rows is ill-conditioned -- with 2 rows xhat = +-1 and the input gradient is
    # (dy_a - dy_b) / 2 * (1 - xhat^2) / sigma, a cancellation whose float32 rounding depends on
    # the order of operations, so the float32 kernel vs float32 reference comparison was luck.
    # The old inputs (B = 4, lengths [5, 3, 5, 1]: 2 active rows at steps 3, 4) failed for
    # nig/nog-batch on the H100 and intermittently on the CPU kernels (error ratio up to 6.6x the
    # allowance over seeds 0-5); these stay below 0.8x (CPU kernels, seeds 0-5, nig/nog/vanilla/
    # noaf/fgr). One row alone (step 4) is well conditioned (xhat = 0, exact zero gradient).
    x, state, p = make_layer(spec, 5, 8, 3, 7, dtype)
    compare(spec, x, state, p, training=True)
    lengths = torch.tensor([5, 3, 4, 1, 4, 4, 3, 2], device=DEV)
    compare(spec, x, state, p, lengths=lengths, training=True, t0=2)
    compare(spec, x, state, p, lengths=torch.tensor([2, 5, 4, 3, 5, 1, 5, 4], device=DEV), training=False, t0=1)


@PATHS
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_half_precision_rule(spec, dtype, path, monkeypatch):
    use_path(monkeypatch, path, spec, dtype)
    x, state, p = make_layer(spec, 6, 8, 5, 40, dtype)
    compare_half(spec, x, state, p, training=True)
    compare_half(spec, x, state, p, lengths=torch.tensor([6, 3, 6, 1, 6, 6, 5, 4], device=DEV), training=True)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_gradcheck(spec):
    x, state, p = make_layer(spec, 3, 3, 2, 2, torch.float64, seed=3)
    roles = [r for r, v in p.items() if v.requires_grad]
    lengths = torch.tensor([3, 2, 3], device=DEV)

    def fn(x, *rest):
        st, params = rest[:len(state)], dict(zip(roles, rest[len(state):]))
        params.update({r: v.clone() for r, v in p.items() if not v.requires_grad})
        y, final = _ops.run_layer(spec, x, st, params, lengths=lengths, training=True)
        return (y, *final)

    assert torch.autograd.gradcheck(fn, (x, *state, *(p[r] for r in roles)), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (1, 3, 1, 7), (4, 1, 2, 1), (3, 2, 1, 7), (3, 5, 4, 300)])
@pytest.mark.parametrize("spec", [CellSpec("lstm"), CellSpec("lstm", "fgr", "layer"), CellSpec("lstm", "cifg", "batch"),
                                  CellSpec("lstm", "nog", "layer_per_gate"), CellSpec("gru", norm="layer"),
                                  CellSpec("rnn_relu")], ids=spec_id)
def test_odd_shapes(spec, T, B, I, H):
    """T = 1, B = 1, H = 1, H not a multiple of 8, and H = 300 (strided units, several warps, >1 BN block)."""
    x, state, p = make_layer(spec, T, B, I, H, torch.float64)
    compare(spec, x, state, p, training=not (spec.norm == "batch" and B == 1))


@pytest.mark.parametrize("variant", ["vanilla", "peephole", "fgr"])
def test_batch_norm_slots(variant):
    """Steps beyond max_bn_steps reuse the last slot; t0 offsets; train then eval; in-place update."""
    spec = CellSpec("lstm", variant, "batch", max_bn_steps=3)
    x, state, p = make_layer(spec, 7, 4, 3, 5, torch.float64)
    for t0 in (0, 1, 4):
        compare(spec, x, state, p, training=True, t0=t0)
        compare(spec, x, state, p, lengths=torch.tensor([7, 1, 4, 2], device=DEV), training=True, t0=t0)
        compare(spec, x, state, p, training=False, t0=t0)
    p_ref = {k: (v.clone() if k.startswith(("rm_", "rv_")) else v) for k, v in p.items()}
    with torch.no_grad():
        reference.run_layer(spec, x, state, p_ref, training=True, t0=1)
        _ops.run_layer(spec, x, state, p, training=True, t0=1)
    for r in spec.buffer_shapes(5):
        torch.testing.assert_close(p[r], p_ref[r], rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------- modules


@pytest.mark.parametrize("cls,kwargs", [
    (fusedrnn.LSTM, dict(variant="vanilla")),
    (fusedrnn.LSTM, dict(variant="fgr", norm="layer")),
    (fusedrnn.LSTM, dict(variant="peephole", norm="batch", max_bn_steps=4)),
    (fusedrnn.LSTM, dict(variant="cifg", norm="layer_per_gate")),
    (fusedrnn.LSTM, dict(proj_size=2)),
    (fusedrnn.GRU, dict(norm="layer")),
    (fusedrnn.RNN, dict(nonlinearity="relu")),
], ids=["lstm", "lstm-fgr-layer", "lstm-peephole-batch", "lstm-cifg-lpg", "lstm-proj", "gru-layer", "rnn-relu"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_modules_bidirectional_multilayer(cls, kwargs, packed):
    torch.manual_seed(0)
    args = dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, **kwargs)
    ker = cls(**args, backend="cuda", dtype=torch.float64, device=DEV)
    ref = cls(**args, backend="reference", dtype=torch.float64, device=DEV)
    ref.load_state_dict(ker.state_dict())
    x = torch.randn(6, 4, 3, dtype=torch.float64, device=DEV)
    lengths = torch.tensor([6, 2, 5, 3])
    outs = []
    for m in (ker, ref):
        m.train()
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        y, hx = m(inp)
        y = y.data
        hx = (hx,) if isinstance(hx, torch.Tensor) else hx
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=DEV).view_as(y)).sum() + \
            sum(h.sum() for h in hx)
        grads = torch.autograd.grad(loss, list(m.parameters()))
        outs.append((y, hx, grads, [b.clone() for b in m.buffers()]))
    assert ker.last_backend == "cuda" and ref.last_backend == "reference"
    (y1, h1, g1, b1), (y2, h2, g2, b2) = outs
    check_close(y1, y2, "y")
    for a, b in zip(h1, h2):
        check_close(a, b, "final state")
    for (name, _), a, b in zip(ker.named_parameters(), g1, g2):
        check_close(a, b, f"grad {name}")
    for a, b in zip(b1, b2):
        check_close(a, b, "buffer")


def test_auto_backend_is_cuda():
    for m in (fusedrnn.LSTM(3, 4, norm="layer", device=DEV), fusedrnn.GRU(3, 4, device=DEV),
              fusedrnn.RNN(3, 4, device=DEV), fusedrnn.LSTM(3, 4, dtype=torch.bfloat16, device=DEV)):
        m(torch.randn(2, 1, 3, device=DEV, dtype=next(m.parameters()).dtype))
        assert m.last_backend == "cuda", type(m).__name__
    c = fusedrnn.LSTMCell(3, 4, norm="batch", device=DEV).eval()
    c(torch.randn(2, 3, device=DEV), bn_step=5)
    assert c.last_backend == "cuda"


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
def test_projection_matches_reference(dtype, monkeypatch):
    """proj_size on CUDA: the per-step path with one more GEMM per step (the persistent kernels do
    not project; FUSEDRNN_PERSISTENT=require says so)."""
    spec = CellSpec("lstm", proj_size=3)
    x, state, p = make_layer(spec, 5, 8, 3, 7, dtype)
    compare(spec, x, state, p, training=True)
    compare(spec, x, state, p, lengths=torch.tensor([5, 3, 4, 1, 4, 4, 3, 2], device=DEV), training=True)
    m = fusedrnn.LSTM(3, 4, proj_size=2, device=DEV)
    y, (h, c) = m(torch.randn(2, 1, 3, device=DEV))
    assert m.last_backend == "cuda" and y.shape == (2, 1, 2) and h.shape == (1, 1, 2)
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", "require")
    with pytest.raises(RuntimeError, match="persistent kernel does not implement the projection"):
        m(torch.randn(2, 1, 3, device=DEV))


def test_current_stream_and_device_guard():
    """The kernels run on the caller's current stream; the result matches the default stream's
    (to the float32 tolerance: cuBLAS may pick another algorithm on another stream)."""
    torch.manual_seed(0)
    m = fusedrnn.LSTM(3, 8, norm="layer", device=DEV)
    x = torch.randn(5, 3, 3, device=DEV)
    y0, _ = m(x)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        y1, _ = m(x)
    torch.cuda.synchronize()
    check_close(y1, y0, "y on a side stream")


def test_compile_fullgraph():
    torch.manual_seed(0)
    m = fusedrnn.LSTM(3, 4, num_layers=2, norm="layer", device=DEV)
    x = torch.randn(5, 2, 3, device=DEV)
    y_eager, _ = m(x)
    g_eager = torch.autograd.grad(y_eager.sum(), list(m.parameters()))
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y, _ = compiled(x)
    g = torch.autograd.grad(y.sum(), list(m.parameters()))
    check_close(y, y_eager, "compiled y")
    for a, b in zip(g, g_eager):
        check_close(a, b, "compiled grad")


# ----------------------------------------------------------------------------- ops


def _lstm_args(spec, training=True, dtype=torch.float64):
    x, state, p = make_layer(spec, 3, 2, 2, 3, dtype)
    bn = spec.norm == "batch"
    return (x, torch.tensor([3, 2], device=DEV), state[0], state[1], state[2] if spec.full_gate_recurrence else None,
            p["w_ih"], p["w_hh"], *(p.get(r) for r in _ops._LSTM_ROLES),
            *(p[r] if bn else None for r in _ops._BN_ROLES),
            _ops._VARIANT[spec.variant], _ops._NORM[spec.norm], training, 0, spec.eps)


@pytest.mark.parametrize("spec", [CellSpec("lstm", "peephole"), CellSpec("lstm", "fgr", "layer"),
                                  CellSpec("lstm", "cifg", "layer_per_gate"), CellSpec("lstm", "nig", "batch")],
                         ids=spec_id)
def test_opcheck_lstm(spec):
    args = _lstm_args(spec)
    torch.library.opcheck(torch.ops.fusedrnn.lstm_fwd.default, args)
    out = torch.ops.fusedrnn.lstm_fwd(*args)
    grads = tuple(torch.randn_like(t) for t in out[:4])
    saved = (*args[:17], out[0], *out[4:])
    bwd_args = tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in (*grads, *saved)) + \
        (args[-5], args[-4], args[-3], args[-1])
    torch.library.opcheck(torch.ops.fusedrnn.lstm_bwd.default, bwd_args)
    if spec.norm == "batch":
        running = tuple(t.clone() for t in args[17:23])
        torch.library.opcheck(torch.ops.fusedrnn.bn_update_.default, (*running, out[8].detach(), args[1], 2, 0, 0.1))


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_opcheck_gru(norm):
    spec = CellSpec("gru", norm=norm)
    x, (h0,), p = make_layer(spec, 3, 2, 2, 3, torch.float64)
    args = (x, torch.tensor([3, 1], device=DEV), h0, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p.get("g_ih"),
            p.get("g_hh"), _ops._NORM[norm], spec.eps)
    torch.library.opcheck(torch.ops.fusedrnn.gru_fwd.default, args)
    out = torch.ops.fusedrnn.gru_fwd(*args)
    bwd = tuple(t.detach() if isinstance(t, torch.Tensor) else t
                for t in (torch.randn_like(out[0]), torch.randn_like(out[1]), *args[:9], out[0], *out[2:]))
    torch.library.opcheck(torch.ops.fusedrnn.gru_bwd.default, bwd + (_ops._NORM[norm], spec.eps))


@pytest.mark.parametrize("family", ["rnn_tanh", "rnn_relu"])
def test_opcheck_rnn(family):
    spec = CellSpec(family)
    x, (h0,), p = make_layer(spec, 3, 2, 2, 3, torch.float64)
    args = (x, None, h0, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], _ops._RNN_KIND[family])
    torch.library.opcheck(torch.ops.fusedrnn.rnn_fwd.default, args)
    y, h = torch.ops.fusedrnn.rnn_fwd(*args)
    bwd = tuple(t.detach() if isinstance(t, torch.Tensor) else t
                for t in (torch.randn_like(y), torch.randn_like(h), x, None, h0, p["w_ih"], p["w_hh"], y))
    torch.library.opcheck(torch.ops.fusedrnn.rnn_bwd.default, bwd + (_ops._RNN_KIND[family], True))


def test_errors_say_expected_and_got():
    spec = CellSpec("lstm")
    args = list(_lstm_args(spec))
    args[5] = args[5][:, :1].contiguous()
    with pytest.raises(RuntimeError, match=r"w_ih must have shape \[12, 2\], got \[12, 1\]"):
        torch.ops.fusedrnn.lstm_fwd(*args)
    args = list(_lstm_args(spec))
    args[2] = args[2].detach().cpu()
    with pytest.raises(RuntimeError, match="h0 must be on cuda"):
        torch.ops.fusedrnn.lstm_fwd(*args)
    args = list(_lstm_args(spec))
    args[1] = args[1].cpu()
    with pytest.raises(RuntimeError, match="lengths must be on cuda"):
        torch.ops.fusedrnn.lstm_fwd(*args)
    args = list(_lstm_args(spec))
    args[2] = args[2].detach().t().contiguous().t()
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.fusedrnn.lstm_fwd(*args)
