"""The reference is the oracle, so it is checked against things that are not itself:

1. torch.nn.LSTM / GRU / RNN (vanilla cells): outputs, final states and the gradients of the
   input, the initial state and every parameter, over shapes, layers, directions, batch_first,
   proj_size, packed sequences, unbatched input, float64 and float32; dropout behaviour.
2. Every LSTM variant and norm (and the GRU / RNN cells): an independent hand computation in plain
   Python floats (math.exp / math.tanh on lists), written from the definitions in issue 2, on
   tiny explicit sizes: single steps, FGR over several steps, batch-norm running statistics per
   step (slots, momentum, unbiased variance, last-slot reuse, eval, packed input, reverse
   direction).
3. torch.autograd.gradcheck in float64 for every cell of conftest.ALL_SPECS through the modules.
"""
import itertools
import math

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn
from fusedrnn import reference
from fusedrnn.spec import CellSpec

from conftest import ALL_SPECS, TOLERANCES, assert_close, spec_id

F64 = torch.float64
FAMILIES = ("lstm", "gru", "rnn_tanh", "rnn_relu")

# ============================================================================ 1. vs torch.nn


def make_pair(family, I, H, *, num_layers=1, bidirectional=False, batch_first=False, proj_size=0,
              bias=True, dropout=0.0, dtype=F64, seed=0):
    """A torch.nn module and a fusedrnn module (reference backend) holding the same weights."""
    torch.manual_seed(seed)
    kw = dict(num_layers=num_layers, bias=bias, batch_first=batch_first, dropout=dropout,
              bidirectional=bidirectional, dtype=dtype)
    if family == "lstm":
        ref = torch.nn.LSTM(I, H, proj_size=proj_size, **kw)
        ours = fusedrnn.LSTM(I, H, proj_size=proj_size, backend="reference", **kw)
    elif family == "gru":
        ref, ours = torch.nn.GRU(I, H, **kw), fusedrnn.GRU(I, H, backend="reference", **kw)
    else:
        nl = family.split("_")[1]
        ref = torch.nn.RNN(I, H, nonlinearity=nl, **kw)
        ours = fusedrnn.RNN(I, H, nonlinearity=nl, backend="reference", **kw)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    ours.load_state_dict(ref.state_dict())  # strict: same names, same shapes
    return ref, ours


def forward_backward(module, x, hx, to_input=lambda x: x):
    """Run module on to_input(x) with initial state hx (a tuple or None); return the output,
    the final states and the gradients of a fixed random projection of all of them with respect
    to x, every hx entry and every parameter (by name)."""
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else tuple(h.detach().clone().requires_grad_() for h in hx)
    hx_arg = None if hx is None else (hx[0] if len(hx) == 1 else hx)
    y, final = module(to_input(x), hx_arg)
    y = y.data if isinstance(y, PackedSequence) else y
    finals = (final,) if isinstance(final, torch.Tensor) else tuple(final)
    gen = torch.Generator().manual_seed(1234)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (y,) + finals)
    names, params = zip(*module.named_parameters())
    leaves = [x] + list(hx or ()) + list(params)
    grads = torch.autograd.grad(loss, leaves)
    labels = ["d_input"] + [f"d_hx[{k}]" for k in range(len(hx or ()))] + [f"d_{n}" for n in names]
    return y, finals, dict(zip(labels, grads))


def assert_same_as_torch(ref, ours, x, hx, to_input=lambda x: x, dtype=F64):
    y_ref, fin_ref, g_ref = forward_backward(ref, x, hx, to_input)
    y, fin, g = forward_backward(ours, x, hx, to_input)
    assert_close(y, y_ref, dtype, "output")
    assert len(fin) == len(fin_ref)
    for k, (a, b) in enumerate(zip(fin, fin_ref)):
        assert_close(a, b, dtype, f"final state {k}")
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        assert_close(g[name], g_ref[name], dtype, name)


def initial_state(family, L, D, B, H, proj_size=0, dtype=F64, unbatched=False):
    batch = () if unbatched else (B,)
    h = torch.randn(L * D, *batch, proj_size or H, dtype=dtype)
    if family == "lstm":
        return (h, torch.randn(L * D, *batch, H, dtype=dtype))
    return (h,)


@pytest.mark.parametrize("hx_given", [False, True], ids=["hx0", "hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_torch_layers_directions(family, num_layers, bidirectional, batch_first, hx_given):
    T, B, I, H = 4, 3, 5, 6
    ref, ours = make_pair(family, I, H, num_layers=num_layers, bidirectional=bidirectional,
                          batch_first=batch_first)
    x = torch.randn(B, T, I, dtype=F64) if batch_first else torch.randn(T, B, I, dtype=F64)
    D = 2 if bidirectional else 1
    hx = initial_state(family, num_layers, D, B, H) if hx_given else None
    assert_same_as_torch(ref, ours, x, hx)


SHAPES = [(1, 1, 1, 1), (1, 4, 3, 5), (6, 1, 2, 3), (4, 2, 5, 1), (7, 3, 3, 9), (3, 5, 7, 2)]


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_torch_shapes(family, shape, bidirectional):
    T, B, I, H = shape
    ref, ours = make_pair(family, I, H, num_layers=2, bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    assert_same_as_torch(ref, ours, torch.randn(T, B, I, dtype=F64), initial_state(family, 2, D, B, H))


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_torch_without_bias(family):
    ref, ours = make_pair(family, 3, 4, num_layers=2, bias=False, bidirectional=True)
    assert_same_as_torch(ref, ours, torch.randn(5, 2, 3, dtype=F64), None)


@pytest.mark.parametrize("hx_given", [False, True], ids=["hx0", "hx"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("proj_size", [1, 3])
def test_matches_torch_lstm_projection(proj_size, num_layers, bidirectional, hx_given):
    T, B, I, H = 4, 3, 2, 5
    ref, ours = make_pair("lstm", I, H, num_layers=num_layers, bidirectional=bidirectional,
                          proj_size=proj_size, batch_first=hx_given)
    D = 2 if bidirectional else 1
    hx = initial_state("lstm", num_layers, D, B, H, proj_size) if hx_given else None
    x = torch.randn(B, T, I, dtype=F64) if hx_given else torch.randn(T, B, I, dtype=F64)
    assert_same_as_torch(ref, ours, x, hx)


PACKINGS = {
    "sorted": ([5, 3, 3, 1], True),
    "unsorted": ([3, 5, 1, 3], False),
    "sorted-not-enforced": ([5, 4, 2, 2], False),
    "all-full": ([5, 5, 5, 5], True),
    "all-short": ([3, 2, 3, 1], False),  # max length < T: the padded tensor is longer than needed
}


@pytest.mark.parametrize("hx_given", [False, True], ids=["hx0", "hx"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_torch_packed(family, packing, bidirectional, hx_given):
    lengths, enforce_sorted = PACKINGS[packing]
    T, B, I, H = 5, 4, 3, 4
    ref, ours = make_pair(family, I, H, num_layers=2, bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    hx = initial_state(family, 2, D, B, H) if hx_given else None

    def pack(x):
        return pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=enforce_sorted)

    assert_same_as_torch(ref, ours, torch.randn(T, B, I, dtype=F64), hx, pack)


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_matches_torch_packed_projection(bidirectional, batch_first):
    lengths = torch.tensor([2, 4, 1])
    ref, ours = make_pair("lstm", 3, 4, num_layers=2, proj_size=2, bidirectional=bidirectional,
                          batch_first=batch_first)
    D = 2 if bidirectional else 1
    x = torch.randn(3, 4, 3, dtype=F64) if batch_first else torch.randn(4, 3, 3, dtype=F64)

    def pack(x):
        return pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)

    assert_same_as_torch(ref, ours, x, initial_state("lstm", 2, D, 3, 4, 2), pack)


@pytest.mark.parametrize("hx_given", [False, True], ids=["hx0", "hx"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_torch_unbatched(family, bidirectional, hx_given):
    T, I, H = 4, 3, 5
    ref, ours = make_pair(family, I, H, num_layers=2, bidirectional=bidirectional, batch_first=True)
    D = 2 if bidirectional else 1
    hx = initial_state(family, 2, D, None, H, unbatched=True) if hx_given else None
    y, fin, _ = forward_backward(ours, torch.randn(T, I, dtype=F64), hx)
    assert y.shape == (T, D * H) and all(s.shape[:1] == (2 * D,) and s.dim() == 2 for s in fin)
    assert_same_as_torch(ref, ours, torch.randn(T, I, dtype=F64), hx)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_torch_float32(family, bidirectional, packed):
    T, B, I, H = 6, 3, 4, 5
    ref, ours = make_pair(family, I, H, num_layers=2, bidirectional=bidirectional, dtype=torch.float32)
    D = 2 if bidirectional else 1
    hx = initial_state(family, 2, D, B, H, dtype=torch.float32)
    lengths = torch.tensor([6, 2, 4])

    def to_input(x):
        return pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x

    assert_same_as_torch(ref, ours, torch.randn(T, B, I), hx, to_input, dtype=torch.float32)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_matches_torch_lstm_projection_float32():
    ref, ours = make_pair("lstm", 4, 6, num_layers=2, proj_size=3, bidirectional=True,
                          dtype=torch.float32)
    assert_same_as_torch(ref, ours, torch.randn(5, 2, 4), None, dtype=torch.float32)


# ----------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_zero_in_training_equals_eval(family):
    _, ours = make_pair(family, 3, 4, num_layers=3, bidirectional=True, dropout=0.0)
    x = torch.randn(5, 2, 3, dtype=F64)
    ours.train()
    y_train, h_train = ours(x)
    ours.eval()
    y_eval, h_eval = ours(x)
    assert torch.equal(y_train, y_eval)


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_only_acts_in_training(family):
    """Eval ignores dropout (and equals torch.nn in eval); training with p > 0 changes the output
    of a multi-layer network, and only the layers after the first dropout."""
    ref, ours = make_pair(family, 3, 4, num_layers=2, dropout=0.5)
    x = torch.randn(6, 3, 3, dtype=F64)
    ref.eval(), ours.eval()
    y_eval, _ = ours(x)
    assert_close(y_eval, ref(x)[0])
    ours.train()
    torch.manual_seed(0)
    y_train, final = ours(x)
    assert not torch.allclose(y_train, y_eval)
    h_train = final[0] if isinstance(final, tuple) else final
    h_eval = ours.eval()(x)[1]
    h_eval = h_eval[0] if isinstance(h_eval, tuple) else h_eval
    assert torch.equal(h_train[0], h_eval[0])  # layer 0 sees no dropout
    assert not torch.allclose(h_train[1], h_eval[1])


def test_dropout_single_layer_warns_and_does_nothing():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        m = fusedrnn.LSTM(3, 4, dropout=0.5, backend="reference", dtype=F64)
    x = torch.randn(4, 2, 3, dtype=F64)
    m.train()
    a = m(x)[0]
    assert torch.equal(a, m.eval()(x)[0])


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_same_seed_matches_torch_on_padded_input(family, bidirectional):
    """Measured property (torch 2.13 CPU): torch.nn's CPU RNN applies at::dropout to each
    layer's [T, B, D*H] output, exactly what the reference engine does with F.dropout, so with
    the same seed the masks are the same and the outputs and gradients match. (With a
    PackedSequence torch drops out the packed data instead, so it consumes the generator
    differently and the masks differ; that is not a contract and is not tested.)"""
    ref, ours = make_pair(family, 3, 4, num_layers=3, bidirectional=bidirectional, dropout=0.4)
    ref.train(), ours.train()
    x = torch.randn(5, 2, 3, dtype=F64)
    torch.manual_seed(7)
    y_ref, f_ref, g_ref = forward_backward(ref, x, None)
    torch.manual_seed(7)
    y, f, g = forward_backward(ours, x, None)
    assert_close(y, y_ref)
    for name in g_ref:
        assert_close(g[name], g_ref[name], msg=name)


def test_dropout_p1_zeroes_the_input_of_the_next_layer():
    """With p = 1 layer 1 sees a zero input: its output equals a 1-layer network holding layer 1's
    weights run on zeros from layer 1's initial state."""
    torch.manual_seed(0)
    two = fusedrnn.LSTM(3, 4, num_layers=2, dropout=1.0, backend="reference", dtype=F64).train()
    one = fusedrnn.LSTM(4, 4, backend="reference", dtype=F64)
    one.load_state_dict({k.replace("_l1", "_l0"): v for k, v in two.state_dict().items() if "_l1" in k})
    x = torch.randn(5, 2, 3, dtype=F64)
    h0, c0 = torch.randn(2, 2, 4, dtype=F64), torch.randn(2, 2, 4, dtype=F64)
    y, (h, c) = two(x, (h0, c0))
    y1, (h1, c1) = one(torch.zeros(5, 2, 4, dtype=F64), (h0[1:], c0[1:]))
    assert_close(y, y1)
    assert_close(h[1:], h1)


# ============================================================================ 2. by hand
#
# Plain-Python re-statement of issue 2's definitions. Vectors are lists of floats; a batch is a
# list of rows. Nothing below calls fusedrnn.reference.

EPS = 1e-5
GATES = {"vanilla": "ifgo", "np": "ifgo", "peephole": "ifgo", "nig": "fgo", "nfg": "igo",
         "nog": "ifg", "niaf": "ifgo", "noaf": "ifgo", "cifg": "igo", "fgr": "ifgo"}
PEEPS = {"vanilla": "", "np": "", "peephole": "ifo", "nig": "fo", "nfg": "io", "nog": "if",
         "niaf": "ifo", "noaf": "ifo", "cifg": "io", "fgr": "ifo"}


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def matvec(W, v):
    return [sum(w * u for w, u in zip(row, v)) for row in W]


def vadd(*vs):
    return [sum(t) for t in zip(*vs)]


def vmul(a, b):
    return [u * w for u, w in zip(a, b)]


def hand_layer_norm(v, gain, shift=None):
    mean = sum(v) / len(v)
    var = sum((u - mean) ** 2 for u in v) / len(v)
    out = [(u - mean) / math.sqrt(var + EPS) * g for u, g in zip(v, gain)]
    return out if shift is None else vadd(out, shift)


def column_stats(rows):
    """Per-column mean, biased and unbiased variance of a list of rows."""
    n = len(rows)
    mean = [sum(col) / n for col in zip(*rows)]
    ss = [sum((u - m) ** 2 for u in col) for col, m in zip(zip(*rows), mean)]
    return mean, [s / n for s in ss], [s / (n - 1) if n > 1 else None for s in ss]


class HandBN:
    """Batch norm of one site ("ih", "hh", "cell") with per-step running statistics kept as lists
    running[slot] = (mean, var). Training normalizes with the active rows' statistics and updates
    slot min(t, S - 1) with the unbiased variance when more than one row is active."""

    def __init__(self, running_mean, running_var, momentum):
        self.rm = [list(r) for r in running_mean]
        self.rv = [list(r) for r in running_var]
        self.m = momentum

    def __call__(self, rows, active, t, gain, shift, training):
        slot = min(t, len(self.rm) - 1)
        if training:
            mean, var, uvar = column_stats([r for r, a in zip(rows, active) if a])
            if sum(active) > 1:
                self.rm[slot] = [(1 - self.m) * r + self.m * u for r, u in zip(self.rm[slot], mean)]
                self.rv[slot] = [(1 - self.m) * r + self.m * u for r, u in zip(self.rv[slot], uvar)]
        else:
            mean, var = self.rm[slot], self.rv[slot]
        out = []
        for row in rows:
            o = [(u - m) / math.sqrt(s + EPS) * g for u, m, s, g in zip(row, mean, var, gain)]
            out.append(o if shift is None else vadd(o, shift))
        return out


def split(v, names, H):
    return {g: v[k * H:(k + 1) * H] for k, g in enumerate(names)}


def hand_lstm_step(variant, norm, P, xs, hs, cs, as_, *, active, t=0, training=True, bn=None):
    """One step of a batch. P holds per-gate blocks (see lstm_blocks). Returns new (h, c, a)
    lists of rows; rows that are not active keep their state."""
    gates, peeps, H = GATES[variant], PEEPS[variant], len(cs[0])
    flat_x = [[u for g in gates for u in matvec(P["W"][g], x)] for x in xs]
    flat_h = [[u for g in gates for u in matvec(P["R"][g], h)] for h in hs]
    if norm == "layer":
        flat_x = [hand_layer_norm(v, P["g_ih"]) for v in flat_x]
        flat_h = [hand_layer_norm(v, P["g_hh"]) for v in flat_h]
    elif norm == "batch":
        flat_x = bn["ih"](flat_x, active, t, P["g_ih"], None, training)
        flat_h = bn["hh"](flat_h, active, t, P["g_hh"], None, training)
    pres = []
    for vx, vh in zip(flat_x, flat_h):
        if norm == "layer_per_gate":  # one LN (gain, shift) per gate of W_ih x + W_hh h, no biases
            s = split(vadd(vx, vh), gates, H)
            pres.append({g: hand_layer_norm(s[g], P["gg"][g], P["bg"][g]) for g in gates})
        else:
            sx, sh = split(vx, gates, H), split(vh, gates, H)
            pres.append({g: vadd(sx[g], sh[g], P["bi"][g], P["bh"][g]) for g in gates})
    new_c, ifo = [], []
    for b, pre in enumerate(pres):
        c = cs[b]
        if variant == "fgr":  # i, f, o pre-activations += R_{*<-i} i + R_{*<-f} f + R_{*<-o} o
            prev = split(as_[b], "ifo", H)
            for g in "ifo":
                pre[g] = vadd(pre[g], *[matvec(P["Rfgr"][g][k], prev[k]) for k in "ifo"])
        ones = [1.0] * H
        i = [sigmoid(u) for u in vadd(pre["i"], vmul(P["p"]["i"], c) if "i" in peeps else [0] * H)] \
            if "i" in gates else ones
        if variant == "cifg":
            f = [1.0 - u for u in i]
        elif "f" in gates:
            f = [sigmoid(u) for u in vadd(pre["f"], vmul(P["p"]["f"], c) if "f" in peeps else [0] * H)]
        else:
            f = ones
        g = pre["g"] if variant == "niaf" else [math.tanh(u) for u in pre["g"]]
        c_new = vadd(vmul(f, c), vmul(i, g))
        new_c.append(c_new)
        ifo.append((i, f, pre, c_new))
    if norm in ("layer", "layer_per_gate"):
        cn = [hand_layer_norm(c, P["g_cell"], P["b_cell"]) for c in new_c]
    elif norm == "batch":
        cn = bn["cell"](new_c, active, t, P["g_cell"], P["b_cell"], training)
    else:
        cn = new_c
    out_h, out_c, out_a = [], [], []
    for b, (i, f, pre, c_new) in enumerate(ifo):
        if "o" in gates:
            o = [sigmoid(u) for u in vadd(pre["o"], vmul(P["p"]["o"], c_new) if "o" in peeps else [0] * H)]
        else:
            o = [1.0] * H
        act = cn[b] if variant == "noaf" else [math.tanh(u) for u in cn[b]]
        h_new = vmul(o, act)
        if active[b]:
            out_h.append(h_new), out_c.append(c_new), out_a.append(i + f + o)
        else:
            out_h.append(hs[b]), out_c.append(cs[b]), out_a.append(as_[b])
    return out_h, out_c, out_a


def lstm_blocks(m, variant, norm, suffix="_l0"):
    """Per-gate blocks of a fusedrnn LSTM's parameters, following the documented layout:
    rows of weight_ih/weight_hh/biases are the present gates in i, f, g, o order, H each;
    weight_peephole rows are the present peepholes in i, f, o order; weight_gate_recurrence
    [3H, 3H] has row blocks i, f, o (target) and column blocks i, f, o (previous activation)."""
    gates, peeps, H = GATES[variant], PEEPS[variant], m.hidden_size

    def get(name):
        return getattr(m, name + suffix).detach().tolist()

    W, R = get("weight_ih"), get("weight_hh")
    P = {"W": {g: W[k * H:(k + 1) * H] for k, g in enumerate(gates)},
         "R": {g: R[k * H:(k + 1) * H] for k, g in enumerate(gates)}}
    if norm != "layer_per_gate":
        bi, bh = get("bias_ih"), get("bias_hh")
        P["bi"] = split(bi, gates, H)
        P["bh"] = split(bh, gates, H)
    if peeps:
        P["p"] = dict(zip(peeps, get("weight_peephole")))
    if variant == "fgr":
        Rf = get("weight_gate_recurrence")
        P["Rfgr"] = {g: {k: [row[c * H:(c + 1) * H] for row in Rf[r * H:(r + 1) * H]]
                         for c, k in enumerate("ifo")} for r, g in enumerate("ifo")}
    prefix = "batchnorm" if norm == "batch" else "layernorm"
    if norm in ("layer", "batch"):
        P["g_ih"], P["g_hh"] = get(f"{prefix}_ih_weight"), get(f"{prefix}_hh_weight")
    if norm == "layer_per_gate":
        P["gg"] = split(get("layernorm_gates_weight"), gates, H)
        P["bg"] = split(get("layernorm_gates_bias"), gates, H)
    if norm != "none":
        P["g_cell"], P["b_cell"] = get(f"{prefix}_cell_weight"), get(f"{prefix}_cell_bias")
    return P


def randomize(module, seed):
    """Explicit, non-default values for every parameter and BN buffer: weights in [-0.8, 0.8],
    gains in [0.5, 1.5], running means in [-0.5, 0.5], running variances in [0.5, 1.5]."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in itertools.chain(module.named_parameters(), module.named_buffers()):
            u = torch.rand(t.shape, generator=gen, dtype=t.dtype)
            if "running_var" in name or ("norm" in name and "weight" in name):
                t.copy_(0.5 + u)
            elif "running_mean" in name:
                t.copy_(u - 0.5)
            else:
                t.copy_(1.6 * u - 0.8)


def hand_bn_state(m, suffix="_l0"):
    return {site: HandBN(getattr(m, f"batchnorm_{site}_running_mean{suffix}").tolist(),
                         getattr(m, f"batchnorm_{site}_running_var{suffix}").tolist(),
                         m.spec.bn_momentum) for site in ("ih", "hh", "cell")}


def assert_rows(actual, expected_rows, msg=""):
    assert_close(actual, torch.tensor(expected_rows, dtype=F64), msg=msg)


STEP_NORMS = ["none", "layer", "layer_per_gate", "batch-train", "batch-eval"]


@pytest.mark.parametrize("norm_mode", STEP_NORMS)
@pytest.mark.parametrize("variant", list(GATES))
def test_lstm_single_step_by_hand(variant, norm_mode):
    norm, training = norm_mode.split("-")[0], norm_mode != "batch-eval"
    B, I, H = 3, 2, 3
    m = fusedrnn.LSTM(I, H, variant=variant, norm=norm, max_bn_steps=2, backend="reference", dtype=F64)
    randomize(m, seed=len(variant) * 7 + len(norm_mode))
    m.train(training)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(1, B, I, generator=gen, dtype=F64) * 2 - 1
    h0 = torch.rand(1, B, H, generator=gen, dtype=F64) * 2 - 1
    c0 = torch.rand(1, B, H, generator=gen, dtype=F64) * 4 - 2
    a0 = torch.rand(1, B, 3 * H, generator=gen, dtype=F64)
    hx = (h0, c0, a0) if variant == "fgr" else (h0, c0)

    P = lstm_blocks(m, variant, norm)
    bn = hand_bn_state(m) if norm == "batch" else None
    eh, ec, ea = hand_lstm_step(variant, norm, P, x[0].tolist(), h0[0].tolist(), c0[0].tolist(),
                                a0[0].tolist(), active=[True] * B, training=training, bn=bn)
    y, state = m(x, hx)
    assert_rows(y[0], eh, "y")
    assert_rows(state[0][0], eh, "h")
    assert_rows(state[1][0], ec, "c")
    if variant == "fgr":
        assert_rows(state[2][0], ea, "a = (i, f, o)")
    if norm == "batch":  # training updated slot 0 only; eval updated nothing
        for site in ("ih", "hh", "cell"):
            assert_rows(getattr(m, f"batchnorm_{site}_running_mean_l0"), bn[site].rm, f"rm_{site}")
            assert_rows(getattr(m, f"batchnorm_{site}_running_var_l0"), bn[site].rv, f"rv_{site}")


def test_hand_model_is_not_vacuous():
    """The hand model distinguishes the variants: on the same weights, every variant's single
    step differs from the peephole LSTM it is defined against (guards against a hand model
    that ignores `variant`)."""
    H = 2
    base = {g: [[0.3, -0.2], [0.5, 0.1]] for g in "ifgo"}
    P = {"W": base, "R": base, "bi": {g: [0.1, -0.1] for g in "ifgo"}, "bh": {g: [0.2, 0.0] for g in "ifgo"},
         "p": {g: [0.4, -0.3] for g in "ifo"},
         "Rfgr": {g: {k: [[0.2, 0.1], [-0.1, 0.3]] for k in "ifo"} for g in "ifo"}}
    xs, hs, cs, as_ = [[1.0, -0.5]], [[0.2, 0.4]], [[0.7, -1.1]], [[0.5] * 3 * H]
    peephole = hand_lstm_step("peephole", "none", P, xs, hs, cs, as_, active=[True])
    for v in ("nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr"):
        assert hand_lstm_step(v, "none", P, xs, hs, cs, as_, active=[True])[:2] != peephole[:2], v


@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
def test_fgr_three_steps_by_hand_and_truncated_bptt(norm):
    """FGR carries a = (i, f, o) of the previous step: zero at t = 0 when no state is given, and
    feeding the returned state back in continues the sequence exactly."""
    T, B, I, H = 3, 3, 2, 2
    m = fusedrnn.LSTM(I, H, variant="fgr", norm=norm, backend="reference", dtype=F64)
    randomize(m, seed=11)
    m.eval()  # batch norm: eval, so the split run below sees the same (running) statistics
    x = torch.rand(T, B, I, generator=torch.Generator().manual_seed(5), dtype=F64) * 2 - 1
    P = lstm_blocks(m, "fgr", norm)
    bn = hand_bn_state(m) if norm == "batch" else None
    hs, cs, as_ = [[0.0] * H] * B, [[0.0] * H] * B, [[0.0] * 3 * H] * B
    ys = []
    for t in range(T):
        hs, cs, as_ = hand_lstm_step("fgr", norm, P, x[t].tolist(), hs, cs, as_, active=[True] * B,
                                     t=t, training=False, bn=bn)
        ys.append(hs)
    y, (h, c, a) = m(x)
    assert_rows(y, ys, "y")
    assert_rows(h[0], hs), assert_rows(c[0], cs), assert_rows(a[0], as_)
    if norm != "batch":  # the BN slot of a continued sequence restarts at 0; LN/none do not care
        y1, s1 = m(x[:2])
        y2, s2 = m(x[2:], s1)
        assert_close(torch.cat([y1, y2]), y)
        for u, v in zip(s2, (h, c, a)):
            assert_close(u, v)


def run_hand_lstm(m, variant, norm, x, lengths, *, training, suffix="_l0", reverse=False):
    """The hand model over a whole (padded) sequence from zero state; outputs are zero at padded
    steps. reverse: each sequence is processed backwards within its own length, and t counts
    steps in that processing order. Returns (y rows per t, final h, final c, HandBN dict)."""
    T, B = x.shape[0], x.shape[1]
    H = m.hidden_size
    P = lstm_blocks(m, variant, norm, suffix)
    bn = hand_bn_state(m, suffix) if norm == "batch" else None
    hs, cs, as_ = [[0.0] * H for _ in range(B)], [[0.0] * H for _ in range(B)], [[0.0] * 3 * H] * B
    ys = [[None] * B for _ in range(T)]
    for t in range(T):
        active = [t < n for n in lengths]
        rows = [x[(n - 1 - t) if (reverse and t < n) else t, b].tolist() for b, n in enumerate(lengths)]
        hs, cs, as_ = hand_lstm_step(variant, norm, P, rows, hs, cs, as_, active=active, t=t,
                                     training=training, bn=bn)
        for b, n in enumerate(lengths):
            pos = (n - 1 - t) if (reverse and t < n) else t
            ys[pos][b] = hs[b] if active[b] else [0.0] * H
    return ys, hs, cs, bn


def assert_running_stats(m, bn, suffix="_l0"):
    for site in ("ih", "hh", "cell"):
        assert_rows(getattr(m, f"batchnorm_{site}_running_mean{suffix}"), bn[site].rm, f"rm_{site}{suffix}")
        assert_rows(getattr(m, f"batchnorm_{site}_running_var{suffix}"), bn[site].rv, f"rv_{site}{suffix}")


@pytest.mark.parametrize("momentum", [0.1, 0.3])
@pytest.mark.parametrize("variant", ["vanilla", "peephole", "cifg"])
def test_bn_running_statistics_per_step(variant, momentum):
    """T = 5 steps with S = 3 slots: steps 0 and 1 update slots 0 and 1 once, steps 2, 3, 4 all
    update slot 2 in turn (the last slot is reused); running var is the unbiased batch variance,
    running = (1 - m) running + m batch. Eval then normalizes step t with slot min(t, 2)."""
    T, B, I, H = 5, 4, 2, 2
    m = fusedrnn.LSTM(I, H, variant=variant, norm="batch", max_bn_steps=3, bn_momentum=momentum,
                      backend="reference", dtype=F64)
    randomize(m, seed=21)
    x = torch.rand(T, B, I, generator=torch.Generator().manual_seed(8), dtype=F64) * 2 - 1
    ys, hs, cs, bn = run_hand_lstm(m, variant, "batch", x, [T] * B, training=True)
    y, (h, c) = m.train()(x)
    assert_rows(y, ys, "train y")
    assert_rows(c[0], cs, "train c")
    assert_running_stats(m, bn)
    # eval uses the population statistics just computed, slot min(t, S - 1)
    ys, hs, cs, _ = run_hand_lstm(m, variant, "batch", x, [T] * B, training=False)
    y, (h, c) = m.eval()(x)
    assert_rows(y, ys, "eval y")
    assert_running_stats(m, bn)  # eval does not touch them


def test_bn_running_statistics_single_slot():
    T, B = 3, 2
    m = fusedrnn.LSTM(2, 2, norm="batch", max_bn_steps=1, backend="reference", dtype=F64)
    randomize(m, seed=4)
    x = torch.rand(T, B, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    ys, _, _, bn = run_hand_lstm(m, "vanilla", "batch", x, [T] * B, training=True)
    assert_rows(m.train()(x)[0], ys)
    assert_running_stats(m, bn)


def test_bn_packed_statistics_over_active_sequences_only():
    """Lengths [4, 2, 1]: step 0 uses 3 rows, step 1 uses 2, steps 2 and 3 have a single active
    sequence (normalized with its own zero-variance statistics, slot not updated); slots 4, 5
    are never reached. Padded outputs are zero; final states are those after each last step."""
    lengths = [4, 2, 1]
    T, B, I, H = 4, 3, 2, 3
    m = fusedrnn.LSTM(I, H, variant="peephole", norm="batch", max_bn_steps=6, backend="reference",
                      dtype=F64)
    randomize(m, seed=9)
    rm_before = m.batchnorm_ih_running_mean_l0.clone()
    x = torch.rand(T, B, I, generator=torch.Generator().manual_seed(2), dtype=F64) * 2 - 1
    ys, hs, cs, bn = run_hand_lstm(m, "peephole", "batch", x, lengths, training=True)
    packed = pack_padded_sequence(x, torch.tensor(lengths))
    y, (h, c) = m.train()(packed)
    expected = pack_padded_sequence(torch.tensor(ys, dtype=F64), torch.tensor(lengths)).data
    assert_close(y.data, expected, msg="y")
    assert_rows(h[0], hs, "h"), assert_rows(c[0], cs, "c")
    assert_running_stats(m, bn)
    assert torch.equal(m.batchnorm_ih_running_mean_l0[2:], rm_before[2:])
    assert not torch.equal(m.batchnorm_ih_running_mean_l0[1], rm_before[1])


def test_bn_reverse_direction_counts_steps_in_its_own_order():
    """Bidirectional, packed lengths [3, 2, 2]: the reverse direction's step 0 sees each
    sequence's last element (x[2] for the first, x[1] for the others) and its statistics go to
    slot 0 of the _reverse buffers."""
    lengths = [3, 2, 2]
    T, B, I, H = 3, 3, 2, 2
    m = fusedrnn.LSTM(I, H, norm="batch", bidirectional=True, max_bn_steps=4, backend="reference",
                      dtype=F64)
    randomize(m, seed=13)
    x = torch.rand(T, B, I, generator=torch.Generator().manual_seed(6), dtype=F64) * 2 - 1
    yf, hf, cf, bnf = run_hand_lstm(m, "vanilla", "batch", x, lengths, training=True)
    yr, hr, cr, bnr = run_hand_lstm(m, "vanilla", "batch", x, lengths, training=True,
                                    suffix="_l0_reverse", reverse=True)
    y, (h, c) = m.train()(pack_padded_sequence(x, torch.tensor(lengths)))
    ys = [[f + r for f, r in zip(yf[t], yr[t])] for t in range(T)]
    expected = pack_padded_sequence(torch.tensor(ys, dtype=F64), torch.tensor(lengths)).data
    assert_close(y.data, expected, msg="y")
    assert_rows(h[0], hf), assert_rows(h[1], hr), assert_rows(c[1], cr)
    assert_running_stats(m, bnf)
    assert_running_stats(m, bnr, "_l0_reverse")


def test_bn_training_batch_of_one_raises():
    m = fusedrnn.LSTM(2, 2, norm="batch", backend="reference", dtype=F64)
    with pytest.raises(ValueError, match="batch size 1"):
        m.train()(torch.randn(3, 1, 2, dtype=F64))
    m.eval()(torch.randn(3, 1, 2, dtype=F64))  # eval uses running statistics: fine


def test_run_layer_t0_offsets_the_bn_slot():
    """run_layer's t0 is the time step of x[0]: t0 = 2 normalizes with slot 2."""
    spec = CellSpec("lstm", norm="batch", max_bn_steps=4)
    m = fusedrnn.LSTM(2, 2, norm="batch", max_bn_steps=4, backend="reference", dtype=F64)
    randomize(m, seed=3)
    p = m.layer_parameters()[0][0]
    x = torch.rand(1, 2, 2, dtype=F64)
    state = (torch.zeros(2, 2, dtype=F64), torch.zeros(2, 2, dtype=F64))
    y2, _ = reference.run_layer(spec, x, state, p, training=False, t0=2)
    bn = hand_bn_state(m)
    eh, _, _ = hand_lstm_step("vanilla", "batch", lstm_blocks(m, "vanilla", "batch"), x[0].tolist(),
                              state[0].tolist(), state[1].tolist(), [[0.0] * 6] * 2, active=[True] * 2,
                              t=2, training=False, bn=bn)
    assert_rows(y2[0], eh)


def test_reverse_padded():
    x = torch.arange(8.0).view(4, 2, 1)  # x[t, b] = 2 t + b
    out = reference.reverse_padded(x, torch.tensor([4, 2]))
    assert out.view(4, 2).tolist() == [[6.0, 3.0], [4.0, 1.0], [2.0, 5.0], [0.0, 7.0]]
    assert torch.equal(reference.reverse_padded(x, None), x.flip(0))


# ----------------------------------------------------------------------------- GRU / RNN by hand


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("norm", ["none", "layer"])
def test_gru_single_step_by_hand(norm, bias):
    """r, z = sigmoid(N_x(W x)_{r,z} + N_h(R h)_{r,z} + b), n = tanh(N_x(W x)_n + b_in +
    r * (N_h(R h)_n + b_hn)), h' = (1 - z) n + z h; N = gain-only LN over 3H, or identity."""
    B, I, H = 2, 3, 2
    m = fusedrnn.GRU(I, H, norm=norm, bias=bias, backend="reference", dtype=F64)
    randomize(m, seed=5)
    x = torch.rand(1, B, I, generator=torch.Generator().manual_seed(1), dtype=F64) * 2 - 1
    h0 = torch.rand(1, B, H, generator=torch.Generator().manual_seed(2), dtype=F64) * 2 - 1
    W, R = m.weight_ih_l0.tolist(), m.weight_hh_l0.tolist()
    bi = m.bias_ih_l0.tolist() if bias else [0.0] * 3 * H
    bh = m.bias_hh_l0.tolist() if bias else [0.0] * 3 * H
    expected = []
    for xb, hb in zip(x[0].tolist(), h0[0].tolist()):
        vx, vh = matvec(W, xb), matvec(R, hb)
        if norm == "layer":
            vx = hand_layer_norm(vx, m.layernorm_ih_weight_l0.tolist())
            vh = hand_layer_norm(vh, m.layernorm_hh_weight_l0.tolist())
        vx, vh = vadd(vx, bi), vadd(vh, bh)
        sx, sh = split(vx, "rzn", H), split(vh, "rzn", H)
        r = [sigmoid(u) for u in vadd(sx["r"], sh["r"])]
        z = [sigmoid(u) for u in vadd(sx["z"], sh["z"])]
        n = [math.tanh(u) for u in vadd(sx["n"], vmul(r, sh["n"]))]
        expected.append([(1 - zz) * nn + zz * hh for zz, nn, hh in zip(z, n, hb)])
    y, h = m(x, h0)
    assert_rows(y[0], expected), assert_rows(h[0], expected)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_single_step_by_hand(nonlinearity):
    B, I, H = 2, 3, 4
    m = fusedrnn.RNN(I, H, nonlinearity=nonlinearity, backend="reference", dtype=F64)
    randomize(m, seed=6)
    x = torch.rand(1, B, I, generator=torch.Generator().manual_seed(1), dtype=F64) * 2 - 1
    h0 = torch.rand(1, B, H, generator=torch.Generator().manual_seed(2), dtype=F64) * 2 - 1
    act = math.tanh if nonlinearity == "tanh" else (lambda u: max(u, 0.0))
    expected = [[act(u) for u in vadd(matvec(m.weight_ih_l0.tolist(), xb), m.bias_ih_l0.tolist(),
                                      matvec(m.weight_hh_l0.tolist(), hb), m.bias_hh_l0.tolist())]
                for xb, hb in zip(x[0].tolist(), h0[0].tolist())]
    y, h = m(x, h0)
    assert_rows(y[0], expected), assert_rows(h[0], expected)
    if nonlinearity == "relu":
        assert min(min(r) for r in expected) == 0.0  # the relu branch was exercised


# ============================================================================ 3. gradcheck


def make_module(spec, I, H, **kw):
    if spec.family == "lstm":
        return fusedrnn.LSTM(I, H, variant=spec.variant, norm=spec.norm, backend="reference", dtype=F64, **kw)
    if spec.family == "gru":
        return fusedrnn.GRU(I, H, norm=spec.norm, backend="reference", dtype=F64, **kw)
    return fusedrnn.RNN(I, H, nonlinearity=spec.family.split("_")[1], backend="reference", dtype=F64, **kw)


def gradcheck_module(m, x, hx, to_input=lambda x: x):
    """gradcheck of every output and final state w.r.t. the input, the initial state and every
    parameter (passed explicitly through torch.func.functional_call)."""
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in m.named_parameters()]
    hx = tuple(h.detach().clone().requires_grad_() for h in hx)
    n = len(hx)

    def f(x, *rest):
        state = rest[:n]
        y, final = functional_call(m, dict(zip(names, rest[n:])),
                                   (to_input(x), state[0] if n == 1 else state))
        y = y.data if isinstance(y, PackedSequence) else y
        return (y,) + ((final,) if isinstance(final, torch.Tensor) else tuple(final))

    assert gradcheck(f, (x.detach().clone().requires_grad_(), *hx, *params))


def random_state(spec, LD, B, H):
    return tuple(torch.randn(LD, B, n, dtype=F64) * 0.5 for n in spec.state_sizes(H))


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_gradcheck_every_cell(spec):
    torch.manual_seed(0)
    m = make_module(spec, 2, 2)
    if spec.norm == "batch":
        randomize(m, seed=1)  # gains 0.1 would make BN gradients tiny
    m.train()
    T, B = 3, 2
    gradcheck_module(m, torch.randn(T, B, 2, dtype=F64), random_state(spec, 1, B, 2))


def test_gradcheck_batch_norm_eval():
    m = make_module(CellSpec("lstm", "peephole", "batch"), 2, 2, max_bn_steps=2)
    randomize(m, seed=2)
    m.eval()
    gradcheck_module(m, torch.randn(3, 2, 2, dtype=F64), random_state(m.spec, 1, 2, 2))


GRADCHECK_PACKED = [CellSpec("lstm"), CellSpec("lstm", "peephole", "batch"), CellSpec("lstm", "fgr", "layer"),
                    CellSpec("lstm", "cifg", "layer_per_gate"), CellSpec("gru", norm="layer"),
                    CellSpec("rnn_relu")]


@pytest.mark.parametrize("spec", GRADCHECK_PACKED, ids=spec_id)
def test_gradcheck_bidirectional_packed(spec):
    torch.manual_seed(0)
    m = make_module(spec, 2, 2, bidirectional=True)
    if spec.norm == "batch":
        randomize(m, seed=1)
    m.train()
    lengths = torch.tensor([2, 3, 1])

    def pack(x):
        return pack_padded_sequence(x, lengths, enforce_sorted=False)

    gradcheck_module(m, torch.randn(3, 3, 2, dtype=F64), random_state(spec, 2, 3, 2), pack)


def test_gradcheck_two_layers_with_projection():
    torch.manual_seed(0)
    m = fusedrnn.LSTM(2, 3, num_layers=2, proj_size=2, backend="reference", dtype=F64)
    hx = (torch.randn(2, 2, 2, dtype=F64), torch.randn(2, 2, 3, dtype=F64))
    gradcheck_module(m, torch.randn(3, 2, 2, dtype=F64), hx)
