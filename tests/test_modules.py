"""The drop-in modules: state_dict round trips (and torch.nn checkpoints both ways), parameter
names, the Cell classes (vs torch.nn cells and vs the sequence modules step by step),
initialisation conventions, device= / dtype=, flatten_parameters, proj_size errors, repr."""
import io
import math

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn.spec import CellSpec

from conftest import ALL_SPECS, assert_close, spec_id

F64 = torch.float64


def make_seq(spec, I, H, **kw):
    kw.setdefault("dtype", F64)
    kw.setdefault("backend", "reference")
    if spec.family == "lstm":
        return fusedrnn.LSTM(I, H, variant=spec.variant, norm=spec.norm, max_bn_steps=spec.max_bn_steps, **kw)
    if spec.family == "gru":
        return fusedrnn.GRU(I, H, norm=spec.norm, **kw)
    return fusedrnn.RNN(I, H, nonlinearity=spec.family.split("_")[1], **kw)


def make_cell(spec, I, H, **kw):
    kw.setdefault("dtype", F64)
    kw.setdefault("backend", "reference")
    if spec.family == "lstm":
        return fusedrnn.LSTMCell(I, H, variant=spec.variant, norm=spec.norm,
                                 max_bn_steps=spec.max_bn_steps, **kw)
    if spec.family == "gru":
        return fusedrnn.GRUCell(I, H, norm=spec.norm, **kw)
    return fusedrnn.RNNCell(I, H, nonlinearity=spec.family.split("_")[1], **kw)


def randomize(module, seed):
    """Non-default values everywhere, BN running statistics included (variances positive)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            u = torch.rand(t.shape, generator=gen, dtype=t.dtype)
            t.copy_(0.5 + u if "running_var" in name else u - 0.5)


def as_tuple(state):
    return (state,) if isinstance(state, torch.Tensor) else tuple(state)


# ----------------------------------------------------------------------------- state_dict


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_state_dict_round_trip(spec):
    """Every parameter and buffer (per-step BN running statistics included) survives
    state_dict -> torch.save -> torch.load -> load_state_dict, and the copy computes the same."""
    a = make_seq(CellSpec(spec.family, spec.variant, spec.norm, max_bn_steps=3), 2, 3,
                 num_layers=2, bidirectional=True)
    randomize(a, seed=1)
    b = make_seq(a.spec, 2, 3, num_layers=2, bidirectional=True)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(4, 3, 2, dtype=F64)
    for training in (False, True):
        a.train(training), b.train(training)
        ya, ha = a(x)
        yb, hb = b(x)
        assert torch.equal(ya, yb)
        assert all(torch.equal(u, v) for u, v in zip(as_tuple(ha), as_tuple(hb)))
    assert all(torch.equal(u, v) for u, v in zip(a.buffers(), b.buffers()))  # same BN updates


@pytest.mark.parametrize("spec", [s for s in ALL_SPECS if s.norm == "batch"][:3], ids=spec_id)
def test_cell_state_dict_round_trip(spec):
    a = make_cell(CellSpec(spec.family, spec.variant, spec.norm, max_bn_steps=3), 2, 3)
    randomize(a, seed=2)
    b = make_cell(a.spec, 2, 3)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))


TORCH_CONFIGS = [
    ("lstm", dict(num_layers=2, bidirectional=True)),
    ("lstm", dict(num_layers=2, proj_size=2, batch_first=True)),
    ("lstm", dict(bias=False)),
    ("gru", dict(num_layers=3)),
    ("gru", dict(bidirectional=True, bias=False)),
    ("rnn_tanh", dict(num_layers=2)),
    ("rnn_relu", dict(bidirectional=True)),
]


def torch_module(family, I, H, **kw):
    if family == "lstm":
        return torch.nn.LSTM(I, H, dtype=F64, **kw)
    if family == "gru":
        return torch.nn.GRU(I, H, dtype=F64, **kw)
    return torch.nn.RNN(I, H, nonlinearity=family.split("_")[1], dtype=F64, **kw)


@pytest.mark.parametrize("family,kw", TORCH_CONFIGS, ids=[f"{f}-{k}" for f, k in TORCH_CONFIGS])
def test_torch_checkpoint_into_fusedrnn_and_back(family, kw):
    torch.manual_seed(0)
    ref = torch_module(family, 3, 4, **kw)
    ours = make_seq(CellSpec(family), 3, 4, **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 3, dtype=F64) if kw.get("batch_first") else torch.randn(5, 2, 3, dtype=F64)
    assert_close(ours(x)[0], ref(x)[0])
    randomize(ours, seed=3)  # and back: torch.nn loads what fusedrnn holds
    back = torch_module(family, 3, 4, **kw)
    back.load_state_dict(ours.state_dict())
    assert all(torch.equal(u, v) for u, v in zip(back.state_dict().values(), ours.state_dict().values()))
    y_back, h_back = back(x)
    y, h = ours(x)
    assert_close(y, y_back)
    for u, v in zip(as_tuple(h), as_tuple(h_back)):
        assert_close(u, v)


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize("family,kw", TORCH_CONFIGS, ids=[f"{f}-{k}" for f, k in TORCH_CONFIGS])
def test_parameter_names_match_torch(family, kw):
    ref = torch_module(family, 3, 4, **kw)
    ours = make_seq(CellSpec(family), 3, 4, **kw)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in ref.parameters()]
    assert list(ours.buffers()) == []


def names_of(module):
    return ({n for n, _ in module.named_parameters()}, {n for n, _ in module.named_buffers()})


def test_extra_parameter_names_lstm():
    m = fusedrnn.LSTM(3, 4, bidirectional=True, variant="peephole", norm="layer")
    params, buffers = names_of(m)
    base = ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_peephole", "layernorm_ih_weight",
            "layernorm_hh_weight", "layernorm_cell_weight", "layernorm_cell_bias"]
    assert params == {b + s for b in base for s in ("_l0", "_l0_reverse")}
    assert buffers == set()
    assert m.weight_peephole_l0.shape == (3, 4)

    params, buffers = names_of(fusedrnn.LSTM(3, 4, num_layers=2, variant="fgr", norm="batch", max_bn_steps=7))
    base = ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_peephole", "weight_gate_recurrence",
            "batchnorm_ih_weight", "batchnorm_hh_weight", "batchnorm_cell_weight", "batchnorm_cell_bias"]
    assert params == {b + s for b in base for s in ("_l0", "_l1")}
    stats = [f"batchnorm_{site}_running_{k}" for site in ("ih", "hh", "cell") for k in ("mean", "var")]
    assert buffers == {b + s for b in stats for s in ("_l0", "_l1")}

    m = fusedrnn.LSTM(3, 4, variant="cifg", norm="layer_per_gate")
    params, buffers = names_of(m)
    assert params == {"weight_ih_l0", "weight_hh_l0", "weight_peephole_l0", "layernorm_gates_weight_l0",
                      "layernorm_gates_bias_l0", "layernorm_cell_weight_l0", "layernorm_cell_bias_l0"}
    assert m.layernorm_gates_weight_l0.shape == (12,) and m.weight_peephole_l0.shape == (2, 4)


def test_extra_parameter_names_gru_layer_norm_and_cells():
    assert names_of(fusedrnn.GRU(3, 4, norm="layer"))[0] == {
        "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "layernorm_ih_weight_l0",
        "layernorm_hh_weight_l0"}
    params, buffers = names_of(fusedrnn.LSTMCell(3, 4, variant="nog", norm="batch", max_bn_steps=5))
    assert params == {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_peephole", "batchnorm_ih_weight",
                      "batchnorm_hh_weight", "batchnorm_cell_weight", "batchnorm_cell_bias"}
    assert buffers == {f"batchnorm_{s}_running_{k}" for s in ("ih", "hh", "cell") for k in ("mean", "var")}
    for ours, ref in ((fusedrnn.LSTMCell(3, 4), torch.nn.LSTMCell(3, 4)),
                      (fusedrnn.GRUCell(3, 4, bias=False), torch.nn.GRUCell(3, 4, bias=False)),
                      (fusedrnn.RNNCell(3, 4), torch.nn.RNNCell(3, 4))):
        assert [(n, p.shape) for n, p in ours.named_parameters()] == \
            [(n, p.shape) for n, p in ref.named_parameters()]


# ----------------------------------------------------------------------------- cells


CELL_CASES = [("lstm", "tanh"), ("gru", "tanh"), ("rnn", "tanh"), ("rnn", "relu")]


def cell_pair(kind, nl, bias, I=3, H=4):
    torch.manual_seed(0)
    if kind == "lstm":
        return torch.nn.LSTMCell(I, H, bias, dtype=F64), fusedrnn.LSTMCell(I, H, bias, dtype=F64, backend="reference")
    if kind == "gru":
        return torch.nn.GRUCell(I, H, bias, dtype=F64), fusedrnn.GRUCell(I, H, bias, dtype=F64, backend="reference")
    return (torch.nn.RNNCell(I, H, bias, nl, dtype=F64),
            fusedrnn.RNNCell(I, H, bias, nl, dtype=F64, backend="reference"))


def cell_forward_backward(cell, x, hx):
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else tuple(h.detach().clone().requires_grad_() for h in hx)
    out = as_tuple(cell(x, None if hx is None else (hx[0] if len(hx) == 1 else hx)))
    gen = torch.Generator().manual_seed(9)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in out)
    grads = torch.autograd.grad(loss, [x, *(hx or ()), *cell.parameters()])
    return out, grads


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("hx_given", [False, True], ids=["hx0", "hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind,nl", CELL_CASES, ids=[f"{k}-{n}" for k, n in CELL_CASES])
def test_cells_match_torch_cells(kind, nl, bias, hx_given, batched):
    ref, ours = cell_pair(kind, nl, bias)
    ours.load_state_dict(ref.state_dict())
    batch = (5,) if batched else ()
    x = torch.randn(*batch, 3, dtype=F64)
    hx = tuple(torch.randn(*batch, 4, dtype=F64) for _ in range(2 if kind == "lstm" else 1)) if hx_given else None
    out_ref, g_ref = cell_forward_backward(ref, x, hx)
    out, g = cell_forward_backward(ours, x, hx)
    assert len(out) == len(out_ref)
    for a, b in zip(out, out_ref):
        assert a.shape == b.shape
        assert_close(a, b)
    for k, (a, b) in enumerate(zip(g, g_ref)):
        assert_close(a, b, msg=f"gradient {k}")
    assert ours.last_backend == "reference"


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_cell_matches_sequence_step_by_step(spec):
    """A Cell stepping through time with bn_step=t equals the 1-layer sequence module, in
    training (BN: with the same running-statistics updates, including steps beyond max_bn_steps
    that reuse the last slot) and in eval."""
    T, B, I, H = 4, 3, 2, 3
    spec = CellSpec(spec.family, spec.variant, spec.norm, max_bn_steps=2)
    seq = make_seq(spec, I, H)
    randomize(seq, seed=4)
    cell = make_cell(spec, I, H)
    cell.load_state_dict({k.removesuffix("_l0"): v.clone() for k, v in seq.state_dict().items()})
    x = torch.randn(T, B, I, dtype=F64)
    hx = tuple(torch.randn(1, B, n, dtype=F64) * 0.5 for n in spec.state_sizes(H))
    for training in (True, False):
        seq.train(training), cell.train(training)
        y, final = seq(x, hx[0] if len(hx) == 1 else hx)
        state = tuple(s[0] for s in hx)
        for t in range(T):
            state = as_tuple(cell(x[t], state[0] if len(state) == 1 else state, bn_step=t))
            assert_close(state[0], y[t], msg=f"t={t} training={training}")
        for a, b in zip(state, as_tuple(final)):
            assert_close(a, b[0])
        for name, buf in cell.named_buffers():
            assert_close(buf, getattr(seq, name + "_l0"), msg=name)


def test_cell_bn_step_selects_the_slot():
    cell = fusedrnn.LSTMCell(2, 3, norm="batch", max_bn_steps=3, backend="reference", dtype=F64)
    randomize(cell, seed=5)
    cell.eval()
    x = torch.randn(2, 2, dtype=F64)
    h = [cell(x, bn_step=t)[0] for t in range(5)]
    assert not torch.allclose(h[0], h[1]) and not torch.allclose(h[1], h[2])
    assert torch.equal(h[2], h[3]) and torch.equal(h[2], h[4])  # beyond S - 1: the last slot
    cell.train()
    before = cell.batchnorm_ih_running_mean.clone()
    cell(x, bn_step=1)
    changed = (cell.batchnorm_ih_running_mean != before).any(1)
    assert changed.tolist() == [False, True, False]
    with pytest.raises(ValueError, match="bn_step"):
        cell(x, bn_step=-1)


def test_fgr_cell_carries_gate_state():
    cell = fusedrnn.LSTMCell(2, 3, variant="fgr", backend="reference", dtype=F64)
    h, c, a = cell(torch.randn(4, 2, dtype=F64))
    assert h.shape == (4, 3) and c.shape == (4, 3) and a.shape == (4, 9)
    h2, c2, a2 = cell(torch.randn(2, dtype=F64), (h[0], c[0], a[0]))
    assert a2.shape == (9,)


# ----------------------------------------------------------------------------- init


def bound(H):
    return 1.0 / math.sqrt(H)


def assert_uniform_init(t, H):
    assert t.abs().max() <= bound(H) and t.numel() > 1 and t.std() > 0


@pytest.mark.parametrize("spec", [s for s in ALL_SPECS if s.family == "lstm"], ids=spec_id)
def test_lstm_init_conventions(spec):
    H = 5
    m = make_seq(spec, 3, H)
    p = dict(m.named_parameters())
    gates = spec.gates
    for name in ("weight_ih_l0", "weight_hh_l0", "weight_peephole_l0", "weight_gate_recurrence_l0"):
        if name in p:
            assert_uniform_init(p[name], H)
    f_rows = slice(gates.index("f") * H, (gates.index("f") + 1) * H) if "f" in gates else None
    other_rows = torch.ones(len(gates) * H, dtype=torch.bool)
    if f_rows is not None:
        other_rows[f_rows] = False
    if spec.norm == "batch":
        for site in ("ih", "hh", "cell"):
            assert torch.all(p[f"batchnorm_{site}_weight_l0"] == 0.1)
        assert torch.all(p["batchnorm_cell_bias_l0"] == 0)
        if f_rows is not None:  # forget bias 1.0 in total: bias_ih 1, bias_hh 0
            assert torch.all(p["bias_ih_l0"][f_rows] == 1.0)
            assert torch.all(p["bias_hh_l0"][f_rows] == 0.0)
        assert_uniform_init(p["bias_ih_l0"][other_rows], H)
        assert_uniform_init(p["bias_hh_l0"][other_rows], H)
        for site, n in (("ih", len(gates) * H), ("hh", len(gates) * H), ("cell", H)):
            assert torch.all(getattr(m, f"batchnorm_{site}_running_mean_l0") == 0)
            assert torch.all(getattr(m, f"batchnorm_{site}_running_var_l0") == 1)
            assert getattr(m, f"batchnorm_{site}_running_mean_l0").shape == (spec.max_bn_steps, n)
    elif spec.norm == "layer":
        assert torch.all(p["layernorm_ih_weight_l0"] == 1) and torch.all(p["layernorm_hh_weight_l0"] == 1)
        assert torch.all(p["layernorm_cell_weight_l0"] == 1) and torch.all(p["layernorm_cell_bias_l0"] == 0)
        assert_uniform_init(p["bias_ih_l0"], H)
    elif spec.norm == "layer_per_gate":
        assert "bias_ih_l0" not in p and "bias_hh_l0" not in p
        assert torch.all(p["layernorm_gates_weight_l0"] == 1)
        expected_shift = torch.zeros(len(gates) * H, dtype=F64)
        if f_rows is not None:
            expected_shift[f_rows] = 1.0
        assert torch.equal(p["layernorm_gates_bias_l0"].detach(), expected_shift)
        assert torch.all(p["layernorm_cell_weight_l0"] == 1) and torch.all(p["layernorm_cell_bias_l0"] == 0)
    else:
        assert_uniform_init(p["bias_ih_l0"], H)
        assert_uniform_init(p["bias_hh_l0"], H)


def test_gru_layer_norm_and_cell_init():
    g = fusedrnn.GRU(3, 4, norm="layer")
    assert torch.all(g.layernorm_ih_weight_l0 == 1) and torch.all(g.layernorm_hh_weight_l0 == 1)
    c = fusedrnn.LSTMCell(3, 4, norm="batch")
    assert torch.all(c.bias_ih[4:8] == 1) and torch.all(c.bias_hh[4:8] == 0)
    assert torch.all(c.batchnorm_ih_weight == 0.1)


def test_reset_parameters_reinitialises():
    m = fusedrnn.LSTM(3, 4, norm="batch", max_bn_steps=2)
    randomize(m, seed=0)
    m.reset_parameters()
    assert torch.all(m.batchnorm_ih_weight_l0 == 0.1)
    assert torch.all(m.batchnorm_ih_running_var_l0 == 1) and torch.all(m.batchnorm_cell_running_mean_l0 == 0)


def test_init_is_seeded():
    torch.manual_seed(3)
    a = fusedrnn.LSTM(3, 4, variant="fgr")
    torch.manual_seed(3)
    b = fusedrnn.LSTM(3, 4, variant="fgr")
    assert all(torch.equal(u, v) for u, v in zip(a.parameters(), b.parameters()))


# ----------------------------------------------------------------------------- factory args


@pytest.mark.parametrize("ctor", [
    lambda **f: fusedrnn.LSTM(3, 4, 2, norm="batch", max_bn_steps=3, **f),
    lambda **f: fusedrnn.LSTM(3, 4, proj_size=2, bidirectional=True, **f),
    lambda **f: fusedrnn.GRU(3, 4, norm="layer", **f),
    lambda **f: fusedrnn.RNN(3, 4, nonlinearity="relu", **f),
    lambda **f: fusedrnn.LSTMCell(3, 4, variant="fgr", norm="layer_per_gate", **f),
    lambda **f: fusedrnn.GRUCell(3, 4, **f),
    lambda **f: fusedrnn.RNNCell(3, 4, **f),
], ids=["lstm-bn", "lstm-proj", "gru-ln", "rnn", "lstmcell", "grucell", "rnncell"])
def test_device_and_dtype_arguments(ctor):
    for dtype in (torch.float64, torch.float32):
        m = ctor(dtype=dtype)
        assert all(t.dtype == dtype for t in list(m.parameters()) + list(m.buffers()))
    m = ctor(device="meta")
    assert all(t.device.type == "meta" for t in list(m.parameters()) + list(m.buffers()))
    m = ctor(device=torch.device("cpu"), dtype=torch.float64)
    assert all(t.device.type == "cpu" for t in m.parameters())
    m = ctor().double()  # .to()/.double() converts buffers too
    assert all(t.dtype == F64 for t in list(m.parameters()) + list(m.buffers()))


def test_default_dtype_is_respected():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        m = fusedrnn.LSTM(3, 4, norm="batch")
    finally:
        torch.set_default_dtype(old)
    assert m.weight_ih_l0.dtype == F64 and m.batchnorm_ih_running_mean_l0.dtype == F64


def test_flatten_parameters_is_a_no_op():
    m = fusedrnn.LSTM(3, 4, 2, variant="peephole", backend="reference", dtype=F64)
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in m.named_parameters()}
    x = torch.randn(5, 2, 3, dtype=F64)
    y0 = m(x)[0]
    assert m.flatten_parameters() is None
    assert all(p.data_ptr() == before[n][0] and torch.equal(p, before[n][1]) for n, p in m.named_parameters())
    assert torch.equal(m(x)[0], y0)


# ----------------------------------------------------------------------------- proj_size


def test_proj_size_errors():
    for kw in (dict(variant="peephole"), dict(variant="cifg"), dict(norm="layer"), dict(norm="batch"),
               dict(variant="fgr", norm="layer_per_gate")):
        with pytest.raises(ValueError, match="proj_size"):
            fusedrnn.LSTM(3, 4, proj_size=2, **kw)
    with pytest.raises(ValueError, match="proj_size must be smaller than hidden_size"):
        fusedrnn.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="proj_size"):
        fusedrnn.LSTM(3, 4, proj_size=-1)
    for cls in (fusedrnn.GRU, fusedrnn.RNN, fusedrnn.LSTMCell, fusedrnn.GRUCell, fusedrnn.RNNCell):
        with pytest.raises(TypeError, match="proj_size"):  # as torch.nn's cells: no such argument
            cls(3, 4, proj_size=2)


def test_proj_size_shapes():
    m = fusedrnn.LSTM(3, 5, num_layers=2, proj_size=2, bidirectional=True, backend="reference")
    assert m.weight_hr_l0.shape == (2, 5) and m.weight_ih_l1.shape == (20, 4) and m.weight_hh_l0.shape == (20, 2)
    y, (h, c) = m(torch.randn(6, 3, 3))
    assert y.shape == (6, 3, 4) and h.shape == (4, 3, 2) and c.shape == (4, 3, 5)


# ----------------------------------------------------------------------------- repr & misc


REPR_CASES = [
    ("LSTM", (3, 4), {}),
    ("LSTM", (3, 4, 2), dict(bias=False, batch_first=True, dropout=0.5, bidirectional=True, proj_size=2)),
    ("GRU", (3, 4), dict(num_layers=3, dropout=0.25)),
    ("RNN", (3, 4), dict(nonlinearity="relu", bidirectional=True)),
    ("LSTMCell", (3, 4), dict(bias=False)),
    ("GRUCell", (3, 4), {}),
    ("RNNCell", (3, 4), dict(nonlinearity="relu")),
]


@pytest.mark.parametrize("cls,args,kw", REPR_CASES, ids=[c for c, _, _ in REPR_CASES])
def test_repr_matches_torch(cls, args, kw):
    assert repr(getattr(fusedrnn, cls)(*args, **kw)) == repr(getattr(torch.nn, cls)(*args, **kw))


def test_repr_shows_fusedrnn_options():
    assert repr(fusedrnn.LSTM(3, 4, variant="np")) == "LSTM(3, 4)"
    assert repr(fusedrnn.LSTM(3, 4, 2, variant="peephole", norm="batch", max_bn_steps=50, backend="reference")) \
        == "LSTM(3, 4, num_layers=2, variant='peephole', norm='batch', max_bn_steps=50, backend='reference')"
    assert repr(fusedrnn.GRU(3, 4, norm="layer")) == "GRU(3, 4, norm='layer')"
    assert repr(fusedrnn.LSTMCell(3, 4, variant="cifg", norm="layer_per_gate")) == \
        "LSTMCell(3, 4, variant='cifg', norm='layer_per_gate')"


def test_cuda_path_option():
    """LSTM(cuda_path=...) picks the CUDA path of every layer (None leaves it to FUSEDRNN_PERSISTENT);
    it is checked, shown in the repr, and reaches the ops' backward as well as their forward. The
    CPU kernels ignore it: the same results with every value (the CUDA choice is tested in
    test_persistent_emulated.py and, on a GPU, test_persistent_cuda.py)."""
    with pytest.raises(ValueError, match="cuda_path must be one of"):
        fusedrnn.LSTM(3, 4, cuda_path="fast")
    assert repr(fusedrnn.LSTM(3, 4, cuda_path="step")) == "LSTM(3, 4, cuda_path='step')"
    torch.manual_seed(0)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    results = []
    for path in (None, "auto", "step", "persistent"):
        torch.manual_seed(1)
        m = fusedrnn.LSTM(3, 4, 2, norm="layer", dtype=torch.float64, cuda_path=path)
        xx = x.clone().requires_grad_()
        y, (h, c) = m(xx)
        (y.sum() + h.sum() + c.sum()).backward()
        results.append((y, xx.grad, m.weight_hh_l0.grad))
    for r in results[1:]:
        for a, b in zip(results[0], r):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_rnn_positional_nonlinearity_and_attribute():
    m = fusedrnn.RNN(3, 4, 2, "relu")
    assert m.nonlinearity == "relu" and m.num_layers == 2 and m.spec.family == "rnn_relu"
    with pytest.raises(ValueError, match="nonlinearity"):
        fusedrnn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="nonlinearity"):
        fusedrnn.RNNCell(3, 4, nonlinearity="gelu")


def test_torch_nn_attributes():
    m = fusedrnn.LSTM(3, 4, 2, bias=False, batch_first=True, dropout=0.5, bidirectional=True, proj_size=1)
    assert (m.input_size, m.hidden_size, m.num_layers, m.bias, m.batch_first, m.dropout, m.bidirectional,
            m.proj_size) == (3, 4, 2, False, True, 0.5, True, 1)


def test_last_backend_reports_what_ran():
    m = fusedrnn.LSTM(3, 4, backend="reference")
    assert m.last_backend is None
    m(torch.randn(2, 1, 3))
    assert m.last_backend == "reference"


def test_packed_output_keeps_the_input_packing():
    m = fusedrnn.GRU(2, 3, backend="reference")
    packed = pack_padded_sequence(torch.randn(4, 3, 2), torch.tensor([2, 4, 1]), enforce_sorted=False)
    y, h = m(packed)
    assert torch.equal(y.batch_sizes, packed.batch_sizes)
    assert torch.equal(y.sorted_indices, packed.sorted_indices)
    assert torch.equal(y.unsorted_indices, packed.unsorted_indices)
    assert y.data.shape == (7, 3) and h.shape == (1, 3, 3)
