"""Reliability (issue 8), for every backend that is built: bad input gets a clear Python
exception naming what was expected and what was given; empty batches, non-contiguous and
batch-first inputs behave like torch.nn; NaN/inf propagate as in the reference; checkpoints
round-trip and a checkpoint that does not fit is refused clearly; T = 100,000 runs and
no_grad / inference_mode save no activations; threads and seeds give bitwise-identical
results; hypothesis property tests over random cells, shapes and packings.

What is measured for memory (no timing anywhere): tensors saved for backward, counted with
torch.autograd.graph.saved_tensors_hooks (zero under no_grad / inference_mode, a constant
number per step with grad), and the growth of the process's peak RSS (ru_maxrss) during a
T = 100,000 no-grad forward, against a generous bound.
"""
import concurrent.futures
import copy
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import _ops
from fusedrnn.spec import CellSpec

from conftest import ALL_SPECS, TOLERANCES, assert_close, spec_id

F64 = torch.float64
CPU_BUILT = bool(getattr(_ops, "HAS_CPU", False))
CPU_SKIP = ("the CPU kernels are not built (fusedrnn._ops.HAS_CPU is False"
            + (f": {_ops.LOAD_ERROR}" if getattr(_ops, "LOAD_ERROR", None) else "") + ")")
BACKENDS = ["reference", pytest.param("cpu", marks=pytest.mark.skipif(not CPU_BUILT, reason=CPU_SKIP))]


def make(spec, I, H, backend="reference", **kw):
    kw.setdefault("dtype", F64)
    if spec.family == "lstm":
        return fusedrnn.LSTM(I, H, variant=spec.variant, norm=spec.norm, max_bn_steps=spec.max_bn_steps,
                             backend=backend, **kw)
    if spec.family == "gru":
        return fusedrnn.GRU(I, H, norm=spec.norm, backend=backend, **kw)
    return fusedrnn.RNN(I, H, nonlinearity=spec.family.split("_")[1], backend=backend, **kw)


def make_cell(spec, I, H, backend="reference", **kw):
    kw.setdefault("dtype", F64)
    if spec.family == "lstm":
        return fusedrnn.LSTMCell(I, H, variant=spec.variant, norm=spec.norm, max_bn_steps=spec.max_bn_steps,
                                 backend=backend, **kw)
    if spec.family == "gru":
        return fusedrnn.GRUCell(I, H, norm=spec.norm, backend=backend, **kw)
    return fusedrnn.RNNCell(I, H, nonlinearity=spec.family.split("_")[1], backend=backend, **kw)


def randomize(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            u = torch.rand(t.shape, generator=gen, dtype=t.dtype)
            t.copy_(0.5 + u if "running_var" in name else u - 0.5)


def as_tuple(state):
    return (state,) if isinstance(state, torch.Tensor) else tuple(state)


def twin(module, backend, dtype=None):
    """A copy of module (parameters and buffers, cast to dtype if given) on another backend."""
    other = make(module.spec, module.input_size, module.hidden_size, backend, num_layers=module.num_layers,
                 bidirectional=module.bidirectional, batch_first=module.batch_first,
                 dtype=dtype or module.weight_ih_l0.dtype)
    other.load_state_dict(module.state_dict())  # load_state_dict casts to the module's dtype
    return other.train(module.training)


# ============================================================================ bad input
#
# Each fault: (id, build the module, call it, exception type, words the message must contain).

LSTM = CellSpec("lstm")


def lstm(backend, **kw):
    return fusedrnn.LSTM(3, 4, backend=backend, dtype=F64, **kw)


def x64(*shape):
    return torch.randn(*shape, dtype=F64)


def bad_packed(data, batch_sizes):
    return PackedSequence(data, torch.tensor(batch_sizes))


FORWARD_FAULTS = [
    ("rank4", lstm, lambda m: m(x64(2, 2, 2, 3)), ValueError, ["2D", "3D", "4D", "(2, 2, 2, 3)"]),
    ("rank5", lstm, lambda m: m(x64(1, 2, 2, 2, 3)), ValueError, ["5D"]),
    ("rank1", lstm, lambda m: m(x64(3)), ValueError, ["1D"]),
    ("rank0", lstm, lambda m: m(torch.tensor(1.0, dtype=F64)), ValueError, ["0D"]),
    ("not-a-tensor", lstm, lambda m: m([[1.0, 2.0, 3.0]]), TypeError, ["Tensor", "list"]),
    ("input-size", lstm, lambda m: m(x64(5, 2, 4)), ValueError, ["input_size", "Expected 3, got 4"]),
    ("input-size-batch-first", lambda b: lstm(b, batch_first=True), lambda m: m(x64(2, 5, 2)),
     ValueError, ["Expected 3, got 2"]),
    ("input-size-unbatched", lstm, lambda m: m(x64(5, 7)), ValueError, ["Expected 3, got 7"]),
    ("zero-steps", lstm, lambda m: m(x64(0, 2, 3)), ValueError, ["zero time steps", "(0, 2, 3)"]),
    ("int-input", lstm, lambda m: m(torch.ones(5, 2, 3, dtype=torch.int64)), TypeError,
     ["floating-point", "torch.int64"]),
    ("bool-input", lstm, lambda m: m(torch.ones(5, 2, 3, dtype=torch.bool)), TypeError, ["torch.bool"]),
    ("complex-input", lstm, lambda m: m(torch.ones(5, 2, 3, dtype=torch.complex128)), TypeError,
     ["torch.complex128"]),
    ("dtype-vs-weights", lstm, lambda m: m(torch.randn(5, 2, 3)), TypeError, ["torch.float32", "torch.float64"]),
    ("device-vs-weights", lstm, lambda m: m(torch.empty(5, 2, 3, dtype=F64, device="meta")), RuntimeError,
     ["meta", "cpu"]),
    ("hx-batch", lstm, lambda m: m(x64(5, 2, 3), (x64(1, 3, 4), x64(1, 2, 4))), ValueError,
     ["'h'", "(1, 2, 4)", "(1, 3, 4)"]),
    ("hx-layers", lstm, lambda m: m(x64(5, 2, 3), (x64(2, 2, 4), x64(2, 2, 4))), ValueError,
     ["(1, 2, 4)", "(2, 2, 4)"]),
    ("cx-hidden", lstm, lambda m: m(x64(5, 2, 3), (x64(1, 2, 4), x64(1, 2, 5))), ValueError,
     ["'c'", "(1, 2, 4)", "(1, 2, 5)"]),
    ("hx-bidirectional", lambda b: lstm(b, bidirectional=True), lambda m: m(x64(5, 2, 3), (x64(1, 2, 4),) * 2),
     ValueError, ["(2, 2, 4)", "(1, 2, 4)"]),
    ("hx-unbatched-3d", lstm, lambda m: m(x64(5, 3), (x64(1, 1, 4), x64(1, 1, 4))), ValueError,
     ["(1, 4)", "(1, 1, 4)"]),
    ("hx-single-tensor-for-lstm", lstm, lambda m: m(x64(5, 2, 3), x64(1, 2, 4)), ValueError,
     ["2 tensor(s)", "got 1"]),
    ("hx-fgr-missing-a", lambda b: lstm(b, variant="fgr"), lambda m: m(x64(5, 2, 3), (x64(1, 2, 4),) * 2),
     ValueError, ["3 tensor(s)", "'a'", "got 2"]),
    ("hx-fgr-a-shape", lambda b: lstm(b, variant="fgr"),
     lambda m: m(x64(5, 2, 3), (x64(1, 2, 4), x64(1, 2, 4), x64(1, 2, 4))), ValueError, ["'a'", "(1, 2, 12)"]),
    ("hx-not-tensor", lstm, lambda m: m(x64(5, 2, 3), ([[0.0]], x64(1, 2, 4))), TypeError, ["'h'", "list"]),
    ("hx-dtype", lstm, lambda m: m(x64(5, 2, 3), (torch.zeros(1, 2, 4), x64(1, 2, 4))), TypeError,
     ["torch.float32", "torch.float64"]),
    ("hx-device", lstm, lambda m: m(x64(5, 2, 3), (x64(1, 2, 4), torch.empty(1, 2, 4, dtype=F64, device="meta"))),
     RuntimeError, ["'c'", "meta", "cpu"]),
    ("gru-hx-tuple", lambda b: fusedrnn.GRU(3, 4, backend=b, dtype=F64),
     lambda m: m(x64(5, 2, 3), (x64(1, 2, 4), x64(1, 2, 4))), ValueError, ["1 tensor(s)", "got 2"]),
    ("rnn-hx-shape", lambda b: fusedrnn.RNN(3, 4, backend=b, dtype=F64), lambda m: m(x64(5, 2, 3), x64(1, 2, 3)),
     ValueError, ["(1, 2, 4)", "(1, 2, 3)"]),
    ("packed-increasing-batch-sizes", lstm, lambda m: m(bad_packed(x64(6, 3), [2, 3, 1])), ValueError,
     ["batch_sizes", "[2, 3, 1]"]),
    ("packed-zero-batch-size", lstm, lambda m: m(bad_packed(x64(6, 3), [3, 3, 0])), ValueError,
     ["batch_sizes", "[3, 3, 0]"]),
    ("packed-negative-batch-size", lstm, lambda m: m(bad_packed(x64(2, 3), [3, -1])), ValueError,
     ["batch_sizes", "[3, -1]"]),
    ("packed-data-rows", lstm, lambda m: m(bad_packed(x64(5, 3), [2, 2, 2])), ValueError, ["5 rows", "6"]),
    ("packed-data-rank", lstm, lambda m: m(bad_packed(x64(6, 1, 3), [2, 2, 2])), ValueError, ["2-D", "(6, 1, 3)"]),
    ("packed-input-size", lstm,
     lambda m: m(pack_padded_sequence(x64(4, 2, 5), torch.tensor([4, 2]))), ValueError, ["Expected 3, got 5"]),
    ("packed-dtype", lstm,
     lambda m: m(pack_padded_sequence(torch.randn(4, 2, 3), torch.tensor([4, 2]))), TypeError, ["torch.float32"]),
    ("bn-train-batch-1", lambda b: lstm(b, norm="batch").train(), lambda m: m(x64(4, 1, 3)), ValueError,
     ["batch size 1"]),
    ("bn-train-unbatched", lambda b: lstm(b, norm="batch").train(), lambda m: m(x64(4, 3)), ValueError,
     ["batch size 1"]),
]

CELL_FAULTS = [
    ("cell-rank3", lambda b: fusedrnn.LSTMCell(3, 4, backend=b, dtype=F64), lambda m: m(x64(2, 2, 3)), ValueError,
     ["1D or 2D", "3D", "(2, 2, 3)"]),
    ("cell-input-size", lambda b: fusedrnn.GRUCell(3, 4, backend=b, dtype=F64), lambda m: m(x64(2, 5)),
     ValueError, ["got 5", "expected 3"]),
    ("cell-not-tensor", lambda b: fusedrnn.RNNCell(3, 4, backend=b, dtype=F64), lambda m: m((1.0, 2.0, 3.0)),
     TypeError, ["Tensor", "tuple"]),
    ("cell-int-input", lambda b: fusedrnn.RNNCell(3, 4, backend=b, dtype=F64),
     lambda m: m(torch.ones(2, 3, dtype=torch.int32)), TypeError, ["floating-point", "torch.int32"]),
    ("cell-dtype-vs-weights", lambda b: fusedrnn.LSTMCell(3, 4, backend=b, dtype=F64),
     lambda m: m(torch.randn(2, 3)), TypeError, ["torch.float32", "torch.float64"]),
    ("cell-device-vs-weights", lambda b: fusedrnn.LSTMCell(3, 4, backend=b, dtype=F64),
     lambda m: m(torch.empty(2, 3, dtype=F64, device="meta")), RuntimeError, ["meta", "cpu"]),
    ("cell-hx-shape", lambda b: fusedrnn.LSTMCell(3, 4, backend=b, dtype=F64),
     lambda m: m(x64(2, 3), (x64(2, 4), x64(3, 4))), ValueError, ["'c'", "(2, 4)", "(3, 4)"]),
    ("cell-hx-unbatched", lambda b: fusedrnn.GRUCell(3, 4, backend=b, dtype=F64),
     lambda m: m(x64(3), x64(1, 4)), ValueError, ["(4,)", "(1, 4)"]),
    ("cell-hx-count", lambda b: fusedrnn.LSTMCell(3, 4, variant="fgr", backend=b, dtype=F64),
     lambda m: m(x64(2, 3), (x64(2, 4), x64(2, 4))), ValueError, ["3 tensor(s)"]),
    ("cell-hx-dtype", lambda b: fusedrnn.GRUCell(3, 4, backend=b, dtype=F64),
     lambda m: m(x64(2, 3), torch.zeros(2, 4)), TypeError, ["torch.float32", "torch.float64"]),
    ("cell-hx-device", lambda b: fusedrnn.GRUCell(3, 4, backend=b, dtype=F64),
     lambda m: m(x64(2, 3), torch.empty(2, 4, dtype=F64, device="meta")), RuntimeError, ["meta", "cpu"]),
    ("cell-bn-step-negative", lambda b: fusedrnn.LSTMCell(3, 4, norm="batch", backend=b, dtype=F64),
     lambda m: m(x64(2, 3), bn_step=-1), ValueError, ["bn_step", "-1"]),
    ("cell-bn-step-float", lambda b: fusedrnn.LSTMCell(3, 4, norm="batch", backend=b, dtype=F64),
     lambda m: m(x64(2, 3), bn_step=1.5), ValueError, ["bn_step", "1.5"]),
    ("cell-bn-train-batch-1", lambda b: fusedrnn.LSTMCell(3, 4, norm="batch", backend=b, dtype=F64).train(),
     lambda m: m(x64(1, 3)), ValueError, ["batch size 1"]),
]

ALL_FAULTS = FORWARD_FAULTS + CELL_FAULTS


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fault", ALL_FAULTS, ids=[f[0] for f in ALL_FAULTS])
def test_bad_input_raises_clear_error(fault, backend):
    _, build, call, exc, words = fault
    m = build(backend)
    with pytest.raises(exc) as info:
        call(m)
    message = str(info.value)
    assert message.split(":")[0] in {"LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"}, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_packing_errors_are_raised_by_torch_at_packing_time():
    """Zero lengths and unsorted lengths with enforce_sorted=True never reach fusedrnn:
    torch.nn.utils.rnn.pack_padded_sequence refuses them (torch's messages, documented here)."""
    x = x64(3, 2, 3)
    with pytest.raises(RuntimeError, match="Length of all samples has to be greater than 0"):
        pack_padded_sequence(x, torch.tensor([3, 0]))
    with pytest.raises(RuntimeError, match="must be sorted in decreasing order"):
        pack_padded_sequence(x, torch.tensor([2, 3]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lengths", [[4, 2], [5, 1], [9, 9]])
def test_lengths_longer_than_T_are_refused(lengths, backend):
    """Measured (torch 2.13): pack_padded_sequence does NOT refuse lengths > T; it returns a
    PackedSequence whose batch_sizes promise more rows than its data holds (torch.nn.LSTM then
    fails with "start (5) + length (1) exceeds dimension size (5)"). fusedrnn names the problem."""
    packed = pack_padded_sequence(x64(3, 2, 3), torch.tensor(lengths))
    with pytest.raises(ValueError, match=r"PackedSequence.data has \d+ rows but batch_sizes sum to"):
        lstm(backend)(packed)


CTOR_FAULTS = [
    ("input_size=0", lambda: fusedrnn.LSTM(0, 4), ["input_size", "0"]),
    ("input_size=-1", lambda: fusedrnn.GRU(-1, 4), ["input_size", "-1"]),
    ("input_size=2.5", lambda: fusedrnn.RNN(2.5, 4), ["input_size", "2.5"]),
    ("input_size=True", lambda: fusedrnn.LSTM(True, 4), ["input_size", "True"]),
    ("hidden_size=0", lambda: fusedrnn.LSTM(3, 0), ["hidden_size", "0"]),
    ("hidden_size=-4", lambda: fusedrnn.LSTM(3, -4), ["hidden_size", "-4"]),
    ("hidden_size='4'", lambda: fusedrnn.LSTM(3, "4"), ["hidden_size", "'4'"]),
    ("num_layers=0", lambda: fusedrnn.LSTM(3, 4, 0), ["num_layers", "0"]),
    ("dropout=-0.1", lambda: fusedrnn.LSTM(3, 4, 2, dropout=-0.1), ["dropout", "-0.1"]),
    ("dropout=1.5", lambda: fusedrnn.GRU(3, 4, 2, dropout=1.5), ["dropout", "1.5"]),
    ("dropout=True", lambda: fusedrnn.LSTM(3, 4, 2, dropout=True), ["dropout", "True"]),
    ("dropout='0.5'", lambda: fusedrnn.LSTM(3, 4, 2, dropout="0.5"), ["dropout", "'0.5'"]),
    ("max_bn_steps=0", lambda: fusedrnn.LSTM(3, 4, norm="batch", max_bn_steps=0), ["max_bn_steps", "0"]),
    ("max_bn_steps=-5", lambda: fusedrnn.LSTMCell(3, 4, norm="batch", max_bn_steps=-5), ["max_bn_steps", "-5"]),
    ("bn_momentum=2", lambda: fusedrnn.LSTM(3, 4, norm="batch", bn_momentum=2.0), ["bn_momentum", "2.0"]),
    ("eps=0", lambda: fusedrnn.LSTM(3, 4, norm="layer", eps=0.0), ["eps", "0.0"]),
    ("backend=gpu", lambda: fusedrnn.LSTM(3, 4, backend="gpu"), ["backend", "'gpu'"]),
    ("cell-backend=fused", lambda: fusedrnn.GRUCell(3, 4, backend="fused"), ["backend", "'fused'"]),
    ("variant=bogus", lambda: fusedrnn.LSTM(3, 4, variant="bogus"), ["variant", "'bogus'"]),
    ("norm=group", lambda: fusedrnn.LSTM(3, 4, norm="group"), ["norm", "'group'"]),
    ("gru-norm=batch", lambda: fusedrnn.GRU(3, 4, norm="batch"), ["norm", "'batch'"]),
    ("gru-norm=layer_per_gate", lambda: fusedrnn.GRUCell(3, 4, norm="layer_per_gate"), ["'layer_per_gate'"]),
    ("proj>=hidden", lambda: fusedrnn.LSTM(3, 4, proj_size=4), ["proj_size", "4"]),
    ("proj-peephole", lambda: fusedrnn.LSTM(3, 4, proj_size=2, variant="peephole"), ["proj_size", "peephole"]),
    ("rnn-nonlinearity", lambda: fusedrnn.RNN(3, 4, nonlinearity="gelu"), ["nonlinearity", "'gelu'"]),
    ("cell-hidden=0", lambda: fusedrnn.LSTMCell(3, 0), ["hidden_size", "0"]),
    ("cell-input=-2", lambda: fusedrnn.RNNCell(-2, 3), ["input_size", "-2"]),
]


@pytest.mark.parametrize("build,words", [f[1:] for f in CTOR_FAULTS], ids=[f[0] for f in CTOR_FAULTS])
def test_invalid_constructor_arguments(build, words):
    with pytest.raises(ValueError) as info:
        build()
    for word in words:
        assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"


# ----------------------------------------------------------------------------- op fault injection


def _record_op_calls():
    """Valid calls of every fused op (args cloned), recorded while a few cells train on packed input."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "fusedrnn":
                calls.append((func, [a.clone() if isinstance(a, torch.Tensor) else a for a in args]))
            return func(*args, **(kwargs or {}))

    for spec in (CellSpec("lstm"), CellSpec("lstm", "peephole", "batch"), CellSpec("lstm", "fgr", "layer"),
                 CellSpec("lstm", "cifg", "layer_per_gate"), CellSpec("gru", norm="layer"), CellSpec("rnn_relu")):
        m = make(spec, 3, 4, "cpu").train()
        x = x64(5, 3, 3).requires_grad_()
        with Recorder():
            y, h = m(pack_padded_sequence(x, torch.tensor([5, 3, 2])))
            (y.data.sum() + sum(s.sum() for s in as_tuple(h))).backward()
            if spec.norm == "batch":  # eval reads the running statistics at slot min(t0 + t, S - 1)
                m.eval()(x)
    return calls


def _mutations(func, args):
    """One argument at a time: shorter/longer/extra-dim/other-dtype/non-contiguous tensors, bad
    lengths, out-of-range ints and floats."""
    for i, (arg, schema_arg) in enumerate(zip(args, func._schema.arguments)):
        name = schema_arg.name
        if isinstance(arg, torch.Tensor):
            if arg.dim() >= 1 and arg.shape[0] > 1:
                yield f"{name}:shrink0", i, arg[:-1].clone()
                yield f"{name}:grow0", i, torch.cat([arg, arg[:1]])
            if arg.dim() >= 2 and arg.shape[-1] > 1:
                yield f"{name}:shrink-1", i, arg[..., :-1].clone()
            yield f"{name}:unsqueeze", i, arg.unsqueeze(0).clone()
            yield f"{name}:" + ("float32" if arg.is_floating_point() else "float64"), i, \
                (arg.float() if arg.is_floating_point() else arg.double())
            if arg.is_floating_point():
                yield f"{name}:int64", i, arg.long()
            if arg.dim() >= 1 and arg.numel() > 1:
                yield f"{name}:noncontiguous", i, torch.repeat_interleave(arg, 2, dim=-1)[..., ::2]
            if name == "lengths":
                for label, value in (("gt-T", 99), ("zero", 0), ("negative", -3)):
                    bad = arg.clone()
                    bad[-1] = value
                    yield f"{name}:{label}", i, bad
        elif isinstance(arg, int) and not isinstance(arg, bool):
            for value in (-1, 99, 2 ** 31, 2 ** 40):
                yield f"{name}={value}", i, value
        elif isinstance(arg, float):
            for value in (-1.0, float("nan")):
                yield f"{name}={value}", i, value


def wait_child(pid, timeout, poll):
    """waitpid with a deadline: the child's wait status, or None for a child still running after
    `timeout` seconds (then killed and reaped)."""
    import signal
    import time

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(poll)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def inject_op_faults():
    """Runs every mutated op call in a forked child; returns {outcome: [call labels]} with outcome
    raised (a Python exception), accepted (ran), crash (killed by a signal) or hang (> 30 s).
    Meant for a fresh single-threaded process (fork after OpenMP has started is unsafe)."""
    torch.set_num_threads(1)
    outcomes = {"raised": [], "accepted": [], "crash": [], "hang": []}
    for func, args in _record_op_calls():
        for label, i, value in _mutations(func, args):
            mutated = list(args)
            mutated[i] = value
            pid = os.fork()
            if pid == 0:  # child: exit code 0 = ran, 1 = raised
                try:
                    func(*mutated)
                except Exception:
                    os._exit(1)
                os._exit(0)
            status = wait_child(pid, timeout=30, poll=0.002)
            if status is None:
                outcome = "hang"
            elif os.WIFSIGNALED(status):
                outcome = "crash"
            else:
                outcome = "accepted" if os.WEXITSTATUS(status) == 0 else "raised"
            outcomes[outcome].append(f"{func._schema.name}[{label}]")
    return outcomes


@pytest.mark.slow
@pytest.mark.skipif(not CPU_BUILT, reason=CPU_SKIP)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_op_fault_injection_never_crashes():
    """About 1,450 single-argument faults injected into recorded valid calls of every fused op
    (lstm/gru/rnn fwd and bwd, bn_update_), each in a forked child: none may crash or hang.
    ('accepted' is allowed: e.g. a longer x than the lengths need, or a wrong dtype on an empty
    placeholder the variant does not read.) Run in a fresh interpreter, see inject_op_faults."""
    code = "import json, test_reliability as t; print(json.dumps(t.inject_op_faults()))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200,
                         cwd=os.path.dirname(os.path.abspath(__file__)), env=env)
    assert out.returncode == 0, out.stderr
    outcomes = json.loads(out.stdout.strip().splitlines()[-1])
    print({k: len(v) for k, v in outcomes.items()})
    assert outcomes["crash"] == [] and outcomes["hang"] == [], {k: outcomes[k] for k in ("crash", "hang")}
    assert len(outcomes["raised"]) > len(outcomes["accepted"])


@pytest.mark.skipif(not CPU_BUILT, reason=CPU_SKIP)
@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("readelf") is None,
                    reason="needs Linux and readelf")
def test_extension_uses_the_shared_cpp_runtime():
    """fusedrnn._C takes libstdc++ from the shared library torch runs with, never a private static
    copy. Built by the GPU image's /opt/gcc (which links libstdc++ statically) it had one, and every
    error message that formats a number segfaulted: an ostream of libc10 met the locale facets of
    the other copy. setup.py links the shared library when the compiler would not."""
    import fusedrnn._C as ext
    dynamic = subprocess.run(["readelf", "-d", ext.__file__], capture_output=True, text=True, check=True).stdout
    needed = [line.split("[", 1)[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert any(n.startswith("libstdc++.so") for n in needed), needed
    with open("/proc/self/maps") as maps:
        mapped = {line.split()[-1] for line in maps if "/libstdc++.so" in line}
    assert len({os.path.realpath(m) for m in mapped}) == 1, mapped


# ============================================================================ edge inputs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hx_given", [False, True], ids=["hx0", "hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("family", ["lstm", "gru", "rnn_tanh"])
def test_empty_batch_like_torch(family, batch_first, hx_given, backend):
    torch.manual_seed(0)
    kw = dict(num_layers=2, bidirectional=True, batch_first=batch_first, dtype=F64)
    ref = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN}[family](3, 4, **kw)
    ours = make(CellSpec(family), 3, 4, backend, **kw)
    ours.load_state_dict(ref.state_dict())
    x = x64(0, 5, 3) if batch_first else x64(5, 0, 3)
    hx = tuple(x64(4, 0, 4) for _ in range(2 if family == "lstm" else 1)) if hx_given else None
    arg = None if hx is None else (hx[0] if len(hx) == 1 else hx)
    y_ref, h_ref = ref(x, arg)
    y, h = ours(x, arg)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    assert [s.shape for s in as_tuple(h)] == [s.shape for s in as_tuple(h_ref)]
    assert y.requires_grad == y_ref.requires_grad
    (y.sum() + sum(s.sum() for s in as_tuple(h))).backward()  # a training loop's last, empty batch
    assert all(p.grad is not None and not p.grad.any() for p in ours.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", [CellSpec("lstm"), CellSpec("lstm", "peephole", "layer"), CellSpec("gru"),
                                  CellSpec("lstm", "fgr", "batch")], ids=spec_id)
def test_non_contiguous_and_batch_first_inputs(spec, backend):
    """Transposed, strided and batch-first views give the same result as a contiguous copy, and
    for the vanilla cells the same as torch.nn."""
    torch.manual_seed(0)
    m = make(spec, 3, 4, backend, num_layers=2, bidirectional=True).eval()
    mb = make(spec, 3, 4, backend, num_layers=2, bidirectional=True, batch_first=True).eval()
    mb.load_state_dict(m.state_dict())
    base = x64(3, 5, 6)  # [B, T, 2I]
    x_tm = base[..., ::2].transpose(0, 1)  # [T, B, I], strided and transposed
    assert not x_tm.is_contiguous()
    hx = tuple(x64(4, 3, 2 * n)[..., ::2] for n in spec.state_sizes(4))  # strided [4, 3, n]
    assert not any(h.is_contiguous() for h in hx)
    arg = hx[0] if len(hx) == 1 else hx
    y, fin = m(x_tm, arg)
    y_c, fin_c = m(x_tm.contiguous(), tuple(h.contiguous() for h in hx) if len(hx) > 1 else hx[0].contiguous())
    y_b, fin_b = mb(x_tm.transpose(0, 1), arg)  # batch-first view of the same data
    assert torch.equal(y, y_c) and torch.equal(y_b.transpose(0, 1), y)
    for a, b, c in zip(as_tuple(fin), as_tuple(fin_c), as_tuple(fin_b)):
        assert torch.equal(a, b) and torch.equal(a, c)
    if spec.variant == "vanilla" and spec.norm == "none":
        ref = (torch.nn.LSTM if spec.family == "lstm" else torch.nn.GRU)(3, 4, 2, bidirectional=True, dtype=F64)
        ref.load_state_dict(m.state_dict())
        assert_close(y, ref(x_tm, arg)[0])


NAN_SPECS = [CellSpec("lstm"), CellSpec("lstm", "peephole", "layer"), CellSpec("lstm", "cifg", "batch"),
             CellSpec("lstm", "fgr", "layer_per_gate"), CellSpec("gru", norm="layer"), CellSpec("rnn_relu")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("spec", NAN_SPECS, ids=spec_id)
def test_nan_and_inf_propagate_as_in_the_reference(spec, value, training, backend):
    """(Found: the CPU kernels' relu was `pre > 0 ? pre : 0`, which maps NaN to 0.)"""
    torch.manual_seed(0)
    ref = make(spec, 3, 4, "reference", num_layers=2).train(training)
    randomize(ref, 1)
    ours = twin(ref, backend)
    x = x64(5, 3, 3)
    x[2, 1, 0] = value
    y_ref, h_ref = ref(x)
    y, h = ours(x)
    rtol, atol = TOLERANCES[F64]
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol, equal_nan=True)
    for a, b in zip(as_tuple(h), as_tuple(h_ref)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True)
    assert torch.isfinite(y[:2]).all()  # steps before the bad value are untouched
    if not (training and spec.norm == "batch"):  # batch statistics mix sequences; others do not
        assert torch.isfinite(y[:, [0, 2]]).all()
    if value != value:  # NaN input: the sequence that saw it is NaN from then on
        assert torch.isnan(y[2:, 1]).all()
    if spec.family == "lstm" and spec.variant == "vanilla" and spec.norm == "none":
        nn_ref = torch.nn.LSTM(3, 4, 2, dtype=F64)
        nn_ref.load_state_dict(ref.state_dict())
        torch.testing.assert_close(y, nn_ref(x)[0], rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("kw,hx,unbatched", [(dict(), False, False),
                                              (dict(bias=False, batch_first=True), True, False),
                                              (dict(bias=False), True, True)], ids=["plain", "nobias-bf-hx", "unbatched"])
def test_projection_with_the_default_backend_runs(kw, hx, unbatched):
    """proj_size with backend='auto' works as in torch.nn (bias, batch_first, given states,
    unbatched input), through the CPU kernels when built (the reference otherwise); a projected
    layer-norm LSTM is refused at construction."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 5, 2, proj_size=2, dtype=F64, **kw)
    ours = fusedrnn.LSTM(3, 5, 2, proj_size=2, dtype=F64, **kw)
    ours.load_state_dict(ref.state_dict())
    x = x64(4, 3) if unbatched else x64(2, 4, 3) if kw.get("batch_first") else x64(4, 2, 3)
    batch = () if unbatched else (2,)
    state = (x64(2, *batch, 2), x64(2, *batch, 5)) if hx else None
    y, (h, c) = ours(x, state)
    y_ref, (h_ref, c_ref) = ref(x, state)
    for a, b in ((y, y_ref), (h, h_ref), (c, c_ref)):
        assert_close(a, b)
    assert ours.last_backend == ("cpu" if CPU_BUILT else "reference")
    with pytest.raises(ValueError, match="proj_size"):
        fusedrnn.LSTM(3, 5, proj_size=2, norm="layer")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_huge_bn_step_uses_the_last_slot(training, backend):
    """bn_step far beyond max_bn_steps (2**31 once overflowed the kernels' int t0 and crashed the
    process with a segfault) selects the last slot like any step >= max_bn_steps - 1."""
    cell = fusedrnn.LSTMCell(3, 4, norm="batch", max_bn_steps=3, backend=backend, dtype=F64).train(training)
    randomize(cell, 2)
    x = x64(2, 3)
    expected = cell(x, bn_step=2)
    for step in (2 ** 31 - 1, 2 ** 31, 2 ** 32 + 1, 2 ** 63 - 1):
        for u, v in zip(cell(x, bn_step=step), expected):
            assert_close(u, v)


def test_half_precision_on_cpu_is_clear():
    """float16 on CPU: the reference computes in float16 (as torch.nn does); the CPU kernels take
    float32/float64 only and say so rather than miscomputing."""
    m = fusedrnn.LSTM(3, 4, backend="reference").half()
    x = torch.randn(4, 2, 3).half()
    y, _ = m(x)
    ref = fusedrnn.LSTM(3, 4, backend="reference")
    ref.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    torch.testing.assert_close(y.float(), ref(x.float())[0], rtol=2e-2, atol=2e-2)
    if CPU_BUILT:
        with pytest.raises((TypeError, RuntimeError), match="float16"):
            fusedrnn.LSTM(3, 4, backend="cpu").half()(x)


# ============================================================================ checkpoints


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_checkpoint_round_trip_every_cell(spec, backend):
    """Save a trained-looking module (random weights, random per-step BN statistics) to bytes,
    load it into a fresh module on `backend`: same tensors, same outputs, same BN updates."""
    spec = CellSpec(spec.family, spec.variant, spec.norm, max_bn_steps=3)
    a = make(spec, 2, 3, "reference", num_layers=2, bidirectional=True)
    randomize(a, 7)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = make(spec, 2, 3, backend, num_layers=2, bidirectional=True)
    b.load_state_dict(torch.load(buf))
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    x = x64(4, 3, 2)
    for training in (False, True):
        a.train(training), b.train(training)
        ya, ha = a(x)
        yb, hb = b(x)
        assert_close(yb, ya)
        for u, v in zip(as_tuple(hb), as_tuple(ha)):
            assert_close(u, v)
    for (name, u), v in zip(a.named_buffers(), b.buffers()):
        assert_close(v, u, msg=name)


def saved(module):
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf)


def test_checkpoint_with_other_max_bn_steps_is_refused():
    src = fusedrnn.LSTM(3, 4, norm="batch", max_bn_steps=5)
    dst = fusedrnn.LSTM(3, 4, norm="batch", max_bn_steps=3)
    with pytest.raises(RuntimeError) as info:
        dst.load_state_dict(saved(src))
    msg = str(info.value)
    assert "size mismatch for batchnorm_ih_running_mean_l0" in msg
    assert "torch.Size([5, 16])" in msg and "torch.Size([3, 16])" in msg


@pytest.mark.parametrize("src,dst", [("peephole", "noaf"), ("niaf", "peephole"), ("nig", "nfg"),
                                     ("nfg", "cifg")])
def test_checkpoint_of_another_variant_with_the_same_shapes_is_refused(src, dst):
    """These pairs have identical parameter names and shapes, so only the cell recorded in the
    checkpoint's metadata can tell them apart."""
    a, b = fusedrnn.LSTM(3, 4, variant=src), fusedrnn.LSTM(3, 4, variant=dst)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    with pytest.raises(RuntimeError) as info:
        b.load_state_dict(saved(a))
    assert f"variant='{src}'" in str(info.value) and f"variant='{dst}'" in str(info.value)
    b.load_state_dict(dict(saved(a)))  # on purpose: a plain dict carries no metadata


def test_checkpoint_of_another_variant_or_norm_is_refused():
    with pytest.raises(RuntimeError, match="Missing key.*weight_peephole_l0"):
        fusedrnn.LSTM(3, 4, variant="peephole").load_state_dict(saved(fusedrnn.LSTM(3, 4)))
    with pytest.raises(RuntimeError, match="Unexpected key.*layernorm_ih_weight_l0"):
        fusedrnn.LSTM(3, 4, norm="batch").load_state_dict(saved(fusedrnn.LSTM(3, 4, norm="layer")))
    with pytest.raises(RuntimeError, match="norm='layer'"):
        fusedrnn.GRU(3, 4).load_state_dict(saved(fusedrnn.GRU(3, 4, norm="layer")))
    with pytest.raises(RuntimeError, match="size mismatch for weight_ih_l0"):
        fusedrnn.LSTM(3, 4).load_state_dict(saved(fusedrnn.GRU(3, 4)))
    with pytest.raises(RuntimeError, match="variant='noaf'"):
        fusedrnn.LSTMCell(3, 4, variant="peephole").load_state_dict(saved(fusedrnn.LSTMCell(3, 4, variant="noaf")))
    with pytest.raises(RuntimeError, match="rnn_relu"):
        fusedrnn.RNN(3, 4).load_state_dict(saved(fusedrnn.RNN(3, 4, nonlinearity="relu")))


def test_torch_checkpoints_still_load_both_ways():
    """torch.nn checkpoints carry no fusedrnn metadata and load unchanged; fusedrnn's metadata
    does not bother torch.nn."""
    ref = torch.nn.LSTM(3, 4, 2)
    ours = fusedrnn.LSTM(3, 4, 2)
    ours.load_state_dict(saved(ref))
    torch.nn.LSTM(3, 4, 2).load_state_dict(saved(ours))
    fusedrnn.RNNCell(3, 4).load_state_dict(saved(torch.nn.RNNCell(3, 4)))
    fusedrnn.RNN(3, 4, nonlinearity="relu").load_state_dict(saved(torch.nn.RNN(3, 4)))  # no metadata: no check


def test_whole_module_pickle_and_deepcopy():
    """torch.save(model) / copy.deepcopy keep the cell, the BN statistics and the checkpoint hooks."""
    m = fusedrnn.LSTM(3, 4, variant="noaf", norm="batch", max_bn_steps=2, backend="reference", dtype=F64)
    randomize(m, 3)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    for clone in (torch.load(buf, weights_only=False), copy.deepcopy(m)):
        assert clone.spec == m.spec and repr(clone) == repr(m)
        x = x64(3, 2, 3)
        assert torch.equal(clone.eval()(x)[0], m.eval()(x)[0])
        with pytest.raises(RuntimeError, match="variant='peephole'"):
            clone.load_state_dict(saved(fusedrnn.LSTM(3, 4, variant="peephole", norm="batch", max_bn_steps=2,
                                                      dtype=F64)))


def test_checkpoint_inside_a_parent_module():
    parent = torch.nn.Sequential(torch.nn.Linear(3, 3), fusedrnn.LSTM(3, 4, variant="nig"))
    other = torch.nn.Sequential(torch.nn.Linear(3, 3), fusedrnn.LSTM(3, 4, variant="nfg"))
    with pytest.raises(RuntimeError, match="variant='nig'"):
        other.load_state_dict(saved(parent))
    same = torch.nn.Sequential(torch.nn.Linear(3, 3), fusedrnn.LSTM(3, 4, variant="nig"))
    same.load_state_dict(saved(parent))


# ============================================================================ long sequences


class SavedTensorCounter:
    """Counts (and sums the bytes of distinct storages of) the tensors autograd saves."""

    def __init__(self):
        self.count, self.storages = 0, {}

    def pack(self, t):
        self.count += 1
        self.storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)

    @property
    def nbytes(self):
        return sum(self.storages.values())


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_t100k_forward_saves_nothing(mode, backend):
    """T = 100,000 steps (B = 2, I = 2, H = 4, float32) completes without grad; nothing is saved
    for backward; the peak RSS grows by less than 256 MiB (the output itself is 3.2 MB; saving
    the reference's activations, about 1 KiB per step here, would add about 100 MB).
    (The reference's inference_mode run uses T = 1,000: it is the same Python loop, 3 s slower.)"""
    T = 1_000 if (backend == "reference" and mode == "inference_mode") else 100_000
    m = fusedrnn.LSTM(2, 4, backend=backend)
    x = torch.randn(T, 2, 2)
    before = peak_rss_bytes()
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with SavedTensorCounter() as counter, ctx:
        y, (h, c) = m(x)
    assert counter.count == 0
    assert y.shape == (T, 2, 4) and torch.isfinite(y).all() and not y.requires_grad
    assert peak_rss_bytes() - before < 256 * 2 ** 20
    assert m.last_backend == backend


@pytest.mark.skipif(not CPU_BUILT, reason=CPU_SKIP)
@pytest.mark.parametrize("spec", [CellSpec("lstm", "peephole", "batch"), CellSpec("lstm", "fgr", "layer"),
                                  CellSpec("gru", norm="layer"), CellSpec("rnn_relu")], ids=spec_id)
def test_t100k_forward_every_family_cpu_kernels(spec):
    T = 100_000
    m = make(spec, 2, 4, "cpu", dtype=torch.float32).eval()
    with torch.inference_mode():
        y, _ = m(torch.randn(T, 2, 2))
    assert y.shape == (T, 2, 4) and torch.isfinite(y).all()


@pytest.mark.slow
@pytest.mark.parametrize("spec", [CellSpec("lstm", "peephole", "batch"), CellSpec("gru", norm="layer")], ids=spec_id)
def test_t100k_forward_reference_slow(spec):
    m = make(spec, 2, 4, "reference", dtype=torch.float32).eval()
    with torch.inference_mode():
        y, _ = m(torch.randn(100_000, 2, 2))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_saved_activations_are_linear_in_T(spec, backend):
    """With grad, the bytes saved for backward grow by the same amount for every added step
    (memory linear in T), and under no_grad nothing is saved."""
    m = make(spec, 3, 4, backend).train()
    sizes = []
    for T in (4, 8, 12):
        with SavedTensorCounter() as counter:
            y, _ = m(x64(T, 2, 3))
        sizes.append(counter.nbytes)
    assert sizes[1] - sizes[0] == sizes[2] - sizes[1] > 0
    with SavedTensorCounter() as counter, torch.no_grad():
        m(x64(8, 2, 3))
    assert counter.count == 0


# ============================================================================ concurrency, determinism

THREAD_SPECS = [CellSpec("lstm"), CellSpec("lstm", "peephole", "layer"), CellSpec("lstm", "fgr", "batch"),
                CellSpec("gru", norm="layer"), CellSpec("rnn_tanh")]


def forward_backward(m, x):
    params = list(m.parameters())
    y, h = m(x)
    loss = (y * y).sum() + sum((s * s).sum() for s in as_tuple(h))
    return [y.detach()] + list(torch.autograd.grad(loss, [x] + params))


def check_threads_give_the_serial_results(m, calls, workers, intra_op_threads):
    """`calls` forward+backward calls on the shared module m from `workers` Python threads at
    once, each with `intra_op_threads` intra-op threads, give bitwise the results of the same
    calls made serially (with as many intra-op threads)."""
    torch.manual_seed(0)
    inputs = [x64(6, 3, 3).requires_grad_() for _ in range(calls)]
    before = torch.get_num_threads()
    torch.set_num_threads(intra_op_threads)
    try:
        serial = [forward_backward(m, x) for x in inputs]

        def worker(x):
            torch.set_num_threads(intra_op_threads)  # OpenMP's thread count is per calling thread
            return forward_backward(m, x)

        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            threaded = list(pool.map(worker, inputs))
    finally:
        torch.set_num_threads(before)
    for s, t in zip(serial, threaded):
        assert all(torch.equal(a, b) for a, b in zip(s, t))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", THREAD_SPECS, ids=spec_id)
def test_threads_give_the_serial_results(spec, backend):
    """8 calls from 4 Python threads at once on one shared module (eval: batch-norm running
    statistics are not written). One intra-op thread each: 4 Python threads x torch's intra-op
    pool would oversubscribe this 2-core box, and this test is about concurrency, not scheduling."""
    torch.manual_seed(0)
    m = make(spec, 3, 5, backend, num_layers=2, bidirectional=True).eval()
    check_threads_give_the_serial_results(m, calls=8, workers=4, intra_op_threads=1)


@pytest.mark.skipif(not CPU_BUILT, reason=CPU_SKIP)
@pytest.mark.parametrize("spec", THREAD_SPECS, ids=spec_id)
def test_thread_teams_from_concurrent_threads(monkeypatch, spec):
    """The CPU kernels' thread teams (csrc/cpu/team.h, 2 members forced) started from 3 Python
    threads at once, each with 2 intra-op threads (so several OpenMP teams spin on 2 cores at
    the same time): bitwise the serial results with the same member count."""
    monkeypatch.setenv("FUSEDRNN_CPU_TEAM", "2")
    torch.manual_seed(0)
    m = make(spec, 3, 5, "cpu", num_layers=2, bidirectional=True).eval()
    check_threads_give_the_serial_results(m, calls=6, workers=3, intra_op_threads=2)
    assert m.last_backend == "cpu"


def seeded_run(backend, deterministic=False):
    """Init, dropout and batch-norm training from one seed; returns outputs and gradients."""
    torch.manual_seed(1234)
    m = fusedrnn.LSTM(3, 5, num_layers=2, dropout=0.3, bidirectional=True, variant="peephole",
                      norm="batch", backend=backend).train()
    x = torch.randn(5, 4, 3, requires_grad=True)
    lengths = torch.tensor([5, 4, 4, 2])
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic or was)
    try:
        y, (h, c) = m(pack_padded_sequence(x, lengths))
        grads = torch.autograd.grad((y.data ** 2).sum() + h.sum(), [x] + list(m.parameters()))
    finally:
        torch.use_deterministic_algorithms(was)
    return [y.data.detach(), h.detach(), c.detach(), *grads, *m.buffers()]


def digest(tensors):
    d = hashlib.sha256()
    for t in tensors:
        d.update(t.detach().contiguous().numpy().tobytes())
    return d.hexdigest()


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_is_bitwise_identical_run_to_run(backend):
    a, b = seeded_run(backend), seeded_run(backend)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    det = seeded_run(backend, deterministic=True)  # use_deterministic_algorithms(True): allowed, same
    assert all(torch.equal(u, v) for u, v in zip(a, det))


def test_same_seed_is_bitwise_identical_across_processes():
    """A fresh interpreter computes the same bytes (no dependence on process state)."""
    backends = ["reference"] + (["cpu"] if CPU_BUILT else [])
    code = textwrap.dedent(f"""
        import test_reliability as t
        print(' '.join(t.digest(t.seeded_run(b)) for b in {backends!r}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.abspath(__file__)), env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [digest(seeded_run(b)) for b in backends]


# ============================================================================ property tests


def independent_forward(m, x, lengths):
    """The module's computation re-stated one sequence at a time with the Cell classes: each
    sequence alone at its own length, each layer and direction stepped explicitly (reverse
    directions walk the sequence backwards, bn_step counting in that order). Eval mode only
    (batch-norm training statistics couple the sequences). Returns y [T, B, D*H] and finals."""
    spec, H, L = m.spec, m.hidden_size, m.num_layers
    D = 2 if m.bidirectional else 1
    sd = m.state_dict()
    cells = []
    for layer in range(L):
        for d in range(D):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            cell = make_cell(spec, m.input_size if layer == 0 else D * H, H)
            cell.load_state_dict({k[:-len(suffix)]: v for k, v in sd.items() if k.endswith(suffix)}, strict=True)
            cells.append(cell.eval())
    T, B = x.shape[0], x.shape[1]
    y = torch.zeros(T, B, D * H, dtype=x.dtype)
    finals = [torch.zeros(L * D, B, n, dtype=x.dtype) for n in spec.state_sizes(H)]
    for b in range(B):
        n = int(lengths[b])
        seq = x[:n, b]
        for layer in range(L):
            outs = []
            for d in range(D):
                cell = cells[layer * D + d]
                order = range(n) if d == 0 else range(n - 1, -1, -1)
                state, out = None, [None] * n
                for k, t in enumerate(order):
                    state = as_tuple(cell(seq[t], state, bn_step=k))
                    out[t] = state[0]
                    state = state[0] if len(state) == 1 else state
                for i, s in enumerate(as_tuple(state)):
                    finals[i][layer * D + d, b] = s
                outs.append(torch.stack(out))
            seq = torch.cat(outs, 1)
        y[:n, b] = seq
    return y, finals


@st.composite
def cases(draw):
    spec = draw(st.sampled_from(ALL_SPECS))
    T, B = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    lengths = draw(st.one_of(st.none(), st.lists(st.integers(1, T), min_size=B, max_size=B)))
    return dict(spec=spec, T=T, B=B, I=draw(st.integers(1, 4)), H=draw(st.integers(1, 5)),
                layers=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()),
                batch_first=draw(st.booleans()), lengths=lengths, training=draw(st.booleans()),
                seed=draw(st.integers(0, 2 ** 16)))


def build_case(c, backend, dtype=F64):
    torch.manual_seed(c["seed"])
    spec = CellSpec(c["spec"].family, c["spec"].variant, c["spec"].norm, max_bn_steps=3)
    m = make(spec, c["I"], c["H"], backend, num_layers=c["layers"], bidirectional=c["bidirectional"],
             batch_first=c["batch_first"], dtype=dtype)
    randomize(m, c["seed"])
    x = torch.randn(c["T"], c["B"], c["I"], dtype=dtype)  # time-major; batch-first view if asked
    lengths = torch.tensor(c["lengths"] if c["lengths"] is not None else [c["T"]] * c["B"])
    return m, x, lengths


def call(m, x, lengths, packed):
    xin = x.transpose(0, 1) if m.batch_first else x
    if packed:
        xin = pack_padded_sequence(xin, lengths, batch_first=m.batch_first, enforce_sorted=False)
    y, h = m(xin)
    if packed:
        y, _ = pad_packed_sequence(y, batch_first=m.batch_first, total_length=x.shape[0])
    return (y.transpose(0, 1) if m.batch_first else y), as_tuple(h)


PROPERTY = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(cases())
def test_property_module_equals_per_sequence_cells(c):
    """Batching, packing, batch_first, layers and directions change nothing: the module equals
    the per-sequence Cell recomputation, for every cell (eval mode)."""
    m, x, lengths = build_case(c, "reference")
    m.eval()
    packed = c["lengths"] is not None
    y, h = call(m, x, lengths, packed)
    y_ind, h_ind = independent_forward(m, x, lengths)
    assert_close(y, y_ind, msg=str(c))
    for a, b in zip(h, h_ind):
        assert_close(a, b, msg=str(c))


@PROPERTY
@given(cases())
def test_property_vanilla_equals_torch(c):
    c = {**c, "spec": CellSpec(c["spec"].family)}
    m, x, lengths = build_case(c, "reference")
    m.train(c["training"])
    kw = dict(num_layers=m.num_layers, bidirectional=m.bidirectional, batch_first=m.batch_first, dtype=F64)
    if m.spec.family == "lstm":
        ref = torch.nn.LSTM(m.input_size, m.hidden_size, **kw)
    elif m.spec.family == "gru":
        ref = torch.nn.GRU(m.input_size, m.hidden_size, **kw)
    else:
        ref = torch.nn.RNN(m.input_size, m.hidden_size, nonlinearity=m.spec.family[4:], **kw)
    ref.load_state_dict(m.state_dict())
    packed = c["lengths"] is not None
    y, h = call(m, x, lengths, packed)
    y_ref, h_ref = call(ref, x, lengths, packed)
    assert_close(y, y_ref, msg=str(c))
    for a, b in zip(h, h_ref):
        assert_close(a, b, msg=str(c))


@pytest.mark.skipif(not CPU_BUILT, reason=CPU_SKIP)
@PROPERTY
@given(cases(), st.booleans())
def test_property_cpu_kernels_equal_reference(c, hx_given):
    check_cpu_kernels_against_reference(c, hx_given, F64)


def one_ulp_perturbed(t, gen):
    """float32 values of t each moved by -1, 0 or +1 ulp at random (t keeps its dtype)."""
    v = t.detach().float()
    step = torch.randint(-1, 2, v.shape, generator=gen)
    v = torch.where(step > 0, torch.nextafter(v, torch.full_like(v, float("inf"))),
                    torch.where(step < 0, torch.nextafter(v, torch.full_like(v, float("-inf"))), v))
    return v.to(t.dtype)


NOISE_RUNS = 8


def check_cpu_kernels_against_reference(c, hx_given, dtype):
    """Fused CPU kernels vs the reference, forward (outputs, final states, BN running
    statistics) and backward (input, initial state and every parameter). float64: the table's
    tolerance. float32: per tensor, the kernel's largest distance to the float64 reference may
    be at most twice the float32 reference's own largest distance plus the table's tolerance
    (STYLE.md's rule for reduced precision; random batch-norm cases with two nearly equal rows
    are ill-conditioned, and then both float32 results are off by far more than the table).

    Where a tensor misses that bound, the case is ill-conditioned for it and one float32
    reference run is a single sample of its rounding noise: the bound becomes twice the largest
    error of NOISE_RUNS float32 reference runs on inputs and parameters moved by at most one ulp
    (an equally valid float32 computation of the same problem), plus the tolerance. A kernel
    bug, an error far above float32 noise, still fails it (see test_noise_floor_rule_catches_a_wrong_gradient)."""
    ref64, x, lengths = build_case(c, "reference", F64)
    ref64.train(c["training"] and c["B"] > 1)
    LD = ref64.num_layers * (2 if ref64.bidirectional else 1)
    hx = tuple(x64(LD, c["B"], n) for n in ref64.spec.state_sizes(ref64.hidden_size)) if hx_given else None
    if dtype == torch.float32:  # the float32 values, exactly representable in both dtypes
        ref64 = twin(twin(ref64, "reference", torch.float32), "reference", F64)
        x = x.float().double()
        hx = None if hx is None else tuple(h.float().double() for h in hx)
    packed = c["lengths"] is not None

    def run(m, x=x, hx=hx):
        xx = x.to(m.weight_ih_l0.dtype).requires_grad_()
        hh = None if hx is None else tuple(s.to(xx.dtype).requires_grad_() for s in hx)
        xin = xx.transpose(0, 1) if m.batch_first else xx
        if packed:
            xin = pack_padded_sequence(xin, lengths, batch_first=m.batch_first, enforce_sorted=False)
        y, h = m(xin, None if hh is None else (hh[0] if len(hh) == 1 else hh))
        y = y.data if packed else y
        outs = [y, *as_tuple(h)]
        gen = torch.Generator().manual_seed(0)
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=F64).to(o.dtype)).sum() for o in outs)
        grads = torch.autograd.grad(loss, [xx, *(hh or ()), *m.parameters()])
        return [o.detach().double() for o in outs + list(grads) + list(m.buffers())]

    # every copy is made before ref64 runs: training updates its BN running statistics
    ours = twin(ref64, "cpu", dtype)
    ref32 = twin(ref64, "reference", dtype) if dtype != F64 else None
    noisy = [twin(ref64, "reference", dtype) for _ in range(NOISE_RUNS)] if dtype != F64 else []
    got, exact = run(ours), run(ref64)
    if dtype == F64:
        for a, b in zip(got, exact):
            assert_close(a, b, msg=str(c))
    else:
        rtol, atol = TOLERANCES[torch.float32]
        noise = None
        for k, (a, r, b) in enumerate(zip(got, run(ref32), exact)):
            if a.numel() == 0:
                continue
            err, tol = (a - b).abs().max(), atol + rtol * b.abs().max()
            bound = 2 * (r - b).abs().max() + tol
            if err > bound:
                if noise is None:
                    noise = float32_noise_floor(noisy, run, x, hx, exact)
                bound = 2 * noise[k] + tol
            assert err <= bound, f"{c} float32 tensor {k}: error {err.item():.3g} > bound {bound.item():.3g}"
    assert ours.last_backend == "cpu"


def float32_noise_floor(models, run, x, hx, exact):
    """Per result tensor: the largest distance to `exact` over float32 reference runs (the
    models) whose parameters, input and initial state are each moved by at most one ulp."""
    gen = torch.Generator().manual_seed(1)
    floor = [torch.zeros((), dtype=F64) for _ in exact]
    for m in models:
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(one_ulp_perturbed(p, gen))
        xp = one_ulp_perturbed(x, gen)
        hp = None if hx is None else tuple(one_ulp_perturbed(h, gen) for h in hx)
        for i, (o, e) in enumerate(zip(run(m, xp, hp), exact)):
            if o.numel():
                floor[i] = torch.maximum(floor[i], (o - e).abs().max())
    return floor


BN_VAR_NEAR_EPS = dict(spec=CellSpec("lstm", "nfg", "batch"), T=1, B=3, I=1, H=1, layers=2, bidirectional=False,
                       batch_first=False, lengths=None, training=True, seed=0, hx_given=False)


@pytest.mark.skipif(not CPU_BUILT, reason=CPU_SKIP)
@pytest.mark.parametrize("case", [
    dict(spec=CellSpec("lstm", "vanilla", "layer"), T=4, B=3, I=2, H=5, layers=2, bidirectional=True,
         batch_first=False, lengths=[4, 2, 3], training=True, seed=1),
    dict(spec=CellSpec("gru", norm="layer"), T=3, B=2, I=3, H=4, layers=1, bidirectional=False,
         batch_first=True, lengths=None, training=True, seed=2),
    dict(spec=CellSpec("lstm", "fgr", "batch"), T=5, B=4, I=3, H=3, layers=1, bidirectional=True,
         batch_first=False, lengths=None, training=True, seed=3),
    # found by hypothesis: a gate's batch variance near eps (layer 1's g gate, var ~8e-6, rstd ~235)
    # makes it ill-conditioned for float32. The kernel misses the one-sample bound on bias_ih_l1
    # (5.7e-5 vs the float32 reference's 2.5e-6) while the reference has the larger error on other
    # tensors (g_ih_l1 3.1e-5 vs the kernel's 2.6e-5); the noise floor of bias_ih_l1 over 8
    # one-ulp-perturbed runs is 6.5e-5 (measured 2026-11-23), see check_cpu_kernels_against_reference.
    BN_VAR_NEAR_EPS,
], ids=["ln-lstm", "ln-gru", "bn-fgr", "bn-var-near-eps"])
def test_cpu_kernels_float32(case):
    """float32 kernels vs the float64 reference: per tensor at most twice the float32 reference's
    error plus the table's tolerance (STYLE.md's rule for reduced precision), or, where one float32
    reference run is too small a sample of an ill-conditioned tensor's rounding noise, twice its
    one-ulp noise floor (check_cpu_kernels_against_reference)."""
    check_cpu_kernels_against_reference(case, case.get("hx_given", True), torch.float32)


@pytest.mark.skipif(not CPU_BUILT, reason=CPU_SKIP)
def test_noise_floor_rule_catches_a_wrong_gradient(monkeypatch):
    """The ill-conditioned case's noise-floor bound still fails a kernel whose bias gradient is
    off by 1e-3 in one entry (the bias gradients' float32 noise floor there is ~6.5e-5)."""
    real = torch.ops.fusedrnn.lstm_bwd

    def wrong_db_ih(*args):
        grads = list(real(*args))
        grads[6] = grads[6].clone()
        grads[6].view(-1)[0] += 1e-3
        return tuple(grads)

    monkeypatch.setattr(torch.ops.fusedrnn, "lstm_bwd", wrong_db_ih)
    with pytest.raises(AssertionError, match="float32 tensor"):
        check_cpu_kernels_against_reference(BN_VAR_NEAR_EPS, False, torch.float32)
