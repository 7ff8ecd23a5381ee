"""CellSpec: validation (every invalid combination raises a clear ValueError), aliases, and the
structure each variant implies (gates, peepholes, state, parameter and buffer shapes) as defined
in issue 2. The expected tables below are written out from the issue, not read from spec.py."""
import dataclasses

import pytest

from fusedrnn.spec import LSTM_VARIANTS, NORMS, CellSpec

# Gate rows and peephole rows each variant keeps (issue 2: variants are relative to the peephole
# LSTM; a removed gate loses its rows and its peephole; NP/vanilla has no peepholes; CIFG has no
# forget rows and no forget peephole).
EXPECTED_GATES = {
    "vanilla": ("ifgo", ""), "peephole": ("ifgo", "ifo"), "nig": ("fgo", "fo"),
    "nfg": ("igo", "io"), "nog": ("ifg", "if"), "niaf": ("ifgo", "ifo"), "noaf": ("ifgo", "ifo"),
    "cifg": ("igo", "io"), "fgr": ("ifgo", "ifo"),
}


def test_expected_table_covers_every_variant():
    assert set(EXPECTED_GATES) == set(LSTM_VARIANTS)


# ----------------------------------------------------------------------------- valid specs


def test_defaults():
    s = CellSpec()
    assert (s.family, s.variant, s.norm, s.max_bn_steps, s.bn_momentum, s.eps, s.proj_size) == (
        "lstm", "vanilla", "none", 1000, 0.1, 1e-5, 0)


def test_np_is_an_alias_of_vanilla():
    s = CellSpec("lstm", "np")
    assert s.variant == "vanilla"
    assert s == CellSpec("lstm", "vanilla")
    assert s.gates == "ifgo" and s.peepholes == ""
    assert s.parameter_shapes(3, 4) == CellSpec().parameter_shapes(3, 4)


def test_v_is_an_alias_of_peephole():
    assert CellSpec("lstm", "v") == CellSpec("lstm", "peephole")


def test_rnn_is_an_alias_of_rnn_tanh():
    assert CellSpec("rnn").family == "rnn_tanh"


def test_frozen():
    s = CellSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.norm = "layer"


def test_hashable_and_equal_by_value():
    assert len({CellSpec("lstm", "np"), CellSpec("lstm", "vanilla"), CellSpec("gru")}) == 2


@pytest.mark.parametrize("variant", LSTM_VARIANTS)
@pytest.mark.parametrize("norm", NORMS)
def test_every_lstm_variant_combines_with_every_norm(variant, norm):
    s = CellSpec("lstm", variant, norm)
    assert (s.variant, s.norm) == (variant, norm)


# ----------------------------------------------------------------------------- invalid specs

INVALID = [
    # (kwargs, words the message must contain)
    (dict(family="lstmx"), ["family", "'lstmx'"]),
    (dict(family="LSTM"), ["family", "'LSTM'"]),
    (dict(family="lstm", variant="bogus"), ["variant", "'bogus'"]),
    (dict(family="lstm", variant="Peephole"), ["variant", "'Peephole'"]),
    (dict(family="gru", variant="peephole"), ["variant", "'peephole'", "gru"]),
    (dict(family="rnn_tanh", variant="cifg"), ["variant", "'cifg'", "rnn_tanh"]),
    (dict(family="lstm", norm="group"), ["norm", "'group'"]),
    (dict(family="gru", norm="batch"), ["norm", "'batch'", "gru"]),
    (dict(family="gru", norm="layer_per_gate"), ["norm", "'layer_per_gate'"]),
    (dict(family="rnn_tanh", norm="layer"), ["norm", "'layer'"]),
    (dict(family="rnn_relu", norm="batch"), ["norm", "'batch'"]),
    (dict(norm="batch", max_bn_steps=0), ["max_bn_steps", "0"]),
    (dict(norm="batch", max_bn_steps=-3), ["max_bn_steps", "-3"]),
    (dict(norm="batch", max_bn_steps=2.0), ["max_bn_steps", "2.0"]),
    (dict(max_bn_steps=0), ["max_bn_steps"]),
    (dict(bn_momentum=-0.1), ["bn_momentum", "-0.1"]),
    (dict(bn_momentum=1.5), ["bn_momentum", "1.5"]),
    (dict(bn_momentum=float("nan")), ["bn_momentum"]),
    (dict(eps=0.0), ["eps", "0.0"]),
    (dict(eps=-1e-5), ["eps"]),
    (dict(eps=float("nan")), ["eps"]),
    (dict(proj_size=-1), ["proj_size", "-1"]),
    (dict(proj_size=1.5), ["proj_size", "1.5"]),
    (dict(variant="peephole", proj_size=2), ["proj_size", "peephole"]),
    (dict(variant="np", norm="layer", proj_size=2), ["proj_size", "layer"]),
    (dict(norm="batch", proj_size=2), ["proj_size", "batch"]),
    (dict(family="gru", proj_size=2), ["proj_size", "gru"]),
    (dict(family="rnn_relu", proj_size=2), ["proj_size", "rnn_relu"]),
]


@pytest.mark.parametrize("kwargs,words", INVALID, ids=[str(k) for k, _ in INVALID])
def test_invalid_spec_raises_clear_value_error(kwargs, words):
    with pytest.raises(ValueError) as info:
        CellSpec(**kwargs)
    message = str(info.value)
    assert message.startswith("CellSpec:")
    for word in words:
        assert word in message, f"{word!r} missing from {message!r}"


def test_every_undefined_variant_norm_pair_raises():
    """The full cross product of families x variants x norms: valid iff issue 2 defines it."""
    defined_norms = {"lstm": set(NORMS), "gru": {"none", "layer"}, "rnn_tanh": {"none"},
                     "rnn_relu": {"none"}}
    for family, norms in defined_norms.items():
        for variant in LSTM_VARIANTS + ("np",):
            for norm in NORMS + ("bogus",):
                ok = norm in norms and (family == "lstm" or variant in ("vanilla", "np"))
                if ok:
                    CellSpec(family, variant, norm)
                else:
                    with pytest.raises(ValueError, match="CellSpec"):
                        CellSpec(family, variant, norm)


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("variant", LSTM_VARIANTS)
def test_gates_and_peepholes_per_variant(variant):
    s = CellSpec("lstm", variant)
    gates, peeps = EXPECTED_GATES[variant]
    assert s.gates == gates
    assert s.num_gates == len(gates)
    assert s.peepholes == peeps
    assert s.input_activation == (variant != "niaf")
    assert s.output_activation == (variant != "noaf")
    assert s.full_gate_recurrence == (variant == "fgr")
    assert s.state_names == (("h", "c", "a") if variant == "fgr" else ("h", "c"))


def test_gru_and_rnn_structure():
    g = CellSpec("gru")
    assert (g.gates, g.num_gates, g.peepholes, g.state_names) == ("rzn", 3, "", ("h",))
    for fam in ("rnn_tanh", "rnn_relu"):
        r = CellSpec(fam)
        assert (r.gates, r.num_gates, r.peepholes, r.state_names) == ("h", 1, "", ("h",))
    assert g.state_sizes(5) == (5,) and CellSpec("rnn_relu").state_sizes(5) == (5,)


def test_state_sizes():
    assert CellSpec().state_sizes(5) == (5, 5)
    assert CellSpec(proj_size=2).state_sizes(5) == (2, 5)
    assert CellSpec("lstm", "fgr").state_sizes(5) == (5, 5, 15)
    assert CellSpec("lstm", "fgr", "batch").state_sizes(1) == (1, 1, 3)


@pytest.mark.parametrize("variant", LSTM_VARIANTS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_parameter_shapes(variant, norm, bias):
    I, H = 3, 5
    gates, peeps = EXPECTED_GATES[variant]
    GH = len(gates) * H
    expected = {"w_ih": (GH, I), "w_hh": (GH, H)}
    if bias and norm != "layer_per_gate":  # layer_per_gate: the LN shifts are the biases
        expected.update(b_ih=(GH,), b_hh=(GH,))
    if peeps:
        expected["w_peep"] = (len(peeps), H)
    if variant == "fgr":
        expected["w_fgr"] = (3 * H, 3 * H)
    if norm in ("layer", "batch"):
        expected.update(g_ih=(GH,), g_hh=(GH,), g_cell=(H,), b_cell=(H,))
    if norm == "layer_per_gate":
        expected.update(g_gates=(GH,), b_gates=(GH,), g_cell=(H,), b_cell=(H,))
    assert CellSpec("lstm", variant, norm).parameter_shapes(I, H, bias) == expected


@pytest.mark.parametrize("variant", LSTM_VARIANTS)
def test_batch_norm_buffer_shapes(variant):
    H, S = 4, 7
    GH = len(EXPECTED_GATES[variant][0]) * H
    s = CellSpec("lstm", variant, "batch", max_bn_steps=S)
    assert s.buffer_shapes(H) == {"rm_ih": (S, GH), "rv_ih": (S, GH), "rm_hh": (S, GH),
                                  "rv_hh": (S, GH), "rm_cell": (S, H), "rv_cell": (S, H)}
    for norm in ("none", "layer", "layer_per_gate"):
        assert CellSpec("lstm", variant, norm).buffer_shapes(H) == {}


def test_projection_shapes():
    s = CellSpec("lstm", proj_size=2)
    assert s.parameter_shapes(3, 5) == {"w_ih": (20, 3), "w_hh": (20, 2), "b_ih": (20,),
                                        "b_hh": (20,), "w_hr": (2, 5)}
    assert s.parameter_shapes(3, 5, bias=False) == {"w_ih": (20, 3), "w_hh": (20, 2), "w_hr": (2, 5)}


def test_gru_and_rnn_parameter_shapes():
    assert CellSpec("gru").parameter_shapes(3, 4) == {"w_ih": (12, 3), "w_hh": (12, 4),
                                                      "b_ih": (12,), "b_hh": (12,)}
    assert CellSpec("gru", norm="layer").parameter_shapes(3, 4, bias=False) == {
        "w_ih": (12, 3), "w_hh": (12, 4), "g_ih": (12,), "g_hh": (12,)}
    assert CellSpec("rnn_relu").parameter_shapes(3, 4) == {"w_ih": (4, 3), "w_hh": (4, 4),
                                                           "b_ih": (4,), "b_hh": (4,)}
