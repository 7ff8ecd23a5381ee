"""The implementations compared side by side, each wrapped as forward / forward+backward callables.

Modes (the same for every candidate):
  fwd     inference: module in eval mode, under torch.no_grad();
  fwdbwd  training: module in train mode, forward with autograd (x requires grad), then
          y.backward(dy) with a fixed random dy; .grad is cleared before each call, untimed.
All candidates of one cell and shape share the same parameter values; fwd outputs are checked
against the eager reference (max |difference|) so that a fast wrong answer shows.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

import fusedrnn
from fusedrnn import reference
from fusedrnn.spec import CellSpec

from . import scripted
from .timing import GemmFloor

MODES = ("fwd", "fwdbwd")
CANDIDATES = ("reference", "fused", "compile", "script", "nn", "floor")


class Unavailable(Exception):
    """The candidate cannot run this cell / shape here; the message says why."""


def first_line(e: BaseException, limit: int = 160) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:limit]


def make_module(spec: CellSpec, I: int, H: int, backend: str, dtype, device):  # noqa: E741
    """The fusedrnn module for spec (one layer, unidirectional)."""
    kw = {"dtype": dtype, "device": device, "backend": backend}
    if spec.family == "lstm":
        return fusedrnn.LSTM(I, H, variant=spec.variant, norm=spec.norm, max_bn_steps=spec.max_bn_steps,
                             bn_momentum=spec.bn_momentum, eps=spec.eps, proj_size=spec.proj_size, **kw)
    if spec.family == "gru":
        return fusedrnn.GRU(I, H, norm=spec.norm, eps=spec.eps, **kw)
    return fusedrnn.RNN(I, H, nonlinearity=spec.family[4:], **kw)


NN_BASELINE = {"lstm": (CellSpec("lstm"), "torch.nn.LSTM"), "gru": (CellSpec("gru"), "torch.nn.GRU"),
               "rnn_tanh": (CellSpec("rnn_tanh"), "torch.nn.RNN"), "rnn_relu": (CellSpec("rnn_relu"), "torch.nn.RNN")}


class Workload:
    """One cell on one shape and dtype: the reference module, its parameters, inputs and dy."""

    def __init__(self, cell: str, spec: CellSpec, shape, dtype, device, seed: int = 0):
        torch.manual_seed(seed)
        self.cell, self.spec, self.shape, self.dtype, self.device = cell, spec, shape, dtype, device
        T, B, I, H = shape.dims  # noqa: E741
        self.module = make_module(spec, I, H, "reference", dtype, device)
        self.p = self.module.layer_parameters()[0][0]
        self.x = torch.randn(T, B, I, dtype=dtype, device=device)
        self.x_rg = self.x.clone().requires_grad_(True)
        self.dy = torch.randn(T, B, spec.state_sizes(H)[0], dtype=dtype, device=device)
        # The fwd output every candidate is checked against: the eager reference's own output, except
        # for half types, where the reference itself rounds (layer norm in bf16 drifts by O(1) over
        # 100 steps), so the check is against the reference run in float32 on the same weights.
        self.y_ref = None
        if dtype in (torch.float16, torch.bfloat16):
            m32 = make_module(spec, I, H, "reference", torch.float32, device)
            m32.load_state_dict({k: v.float() for k, v in self.module.state_dict().items()})
            m32.eval()
            with torch.no_grad():
                self.y_ref = m32(self.x.float())[0]
        self._buffers = {k: b.clone() for k, b in self.module.named_buffers()}

    def restore_buffers(self):
        """Batch-norm running statistics back to their initial values (training runs update them in place),
        so that every candidate's eval-mode forward sees the same statistics as the reference's."""
        with torch.no_grad():
            for k, b in self.module.named_buffers():
                b.copy_(self._buffers[k])


class Runner:
    """forward(x, training) -> y, the tensors whose .grad to clear, and a train/eval switch."""

    def __init__(self, forward, grads, set_training=lambda training: None, after_first=None):
        self.forward, self.grads, self.set_training, self.after_first = forward, grads, set_training, after_first

    def callables(self, mode: str, w: Workload):
        """(fn, setup) for the timer; fn returns y."""
        if mode == "fwd":
            self.set_training(False)

            def fn():
                with torch.no_grad():
                    return self.forward(w.x, False)
            return fn, None
        self.set_training(True)
        grads = list(self.grads) + [w.x_rg]

        def setup():
            for t in grads:
                t.grad = None

        def fn():
            y = self.forward(w.x_rg, True)
            y.backward(w.dy)
            return y
        return fn, setup


def _module_runner(module) -> Runner:
    return Runner(lambda x, training: module(x)[0], list(module.parameters()), module.train)


class Candidate:
    key = ""
    label = ""

    def available(self, device) -> str | None:
        """None when the candidate can run on device, else why not (checked once per run)."""
        return None

    def start_cell(self, cell: str, spec: CellSpec, dtype) -> None:
        """Called when the benchmark moves to a new cell (dynamo caches are reset just before)."""

    def prepare(self, w: Workload) -> Runner:
        raise NotImplementedError


class ReferenceCandidate(Candidate):
    key, label = "reference", "eager reference"

    def prepare(self, w):
        return _module_runner(w.module)


class FusedCandidate(Candidate):
    key = "fused"

    def __init__(self, device):
        self.backend = device.type  # "cpu" or "cuda"
        self.label = f"fusedrnn-{self.backend}"

    def available(self, device):
        from fusedrnn import _ops
        try:
            _ops.select(self.backend, torch.zeros(1, 1, 1, device=device))
        except Exception as e:  # the backend is not built / not loadable: reported as the reason
            return first_line(e)
        return None

    def prepare(self, w):
        T, B, I, H = w.shape.dims  # noqa: E741
        m = make_module(w.spec, I, H, self.backend, w.dtype, w.device)
        m.load_state_dict(w.module.state_dict())
        runner = _module_runner(m)

        def after_first():
            if m.last_backend != self.backend:
                raise Unavailable(f"module ran backend {m.last_backend!r}, not {self.backend!r}")
        runner.after_first = after_first
        return runner


class CompileCandidate(Candidate):
    """torch.compile of the reference's per-step cell function; the time loop and the input GEMM stay eager."""

    key, label = "compile", "torch.compile(step)"

    def __init__(self, mode: str | None = None):
        self.mode = mode
        self.step = None

    def start_cell(self, cell, spec, dtype):
        step_fn = reference.STEPS[spec.family]

        def step(xw_t, state, p, t: int, training: bool):
            return step_fn(spec, p, xw_t, state, t, training)
        self.step = torch.compile(step, mode=self.mode)

    def prepare(self, w):
        spec, p, step = w.spec, w.p, self.step
        H = w.shape.H
        bn = spec.norm == "batch"  # only batch norm reads t (its statistics slot)

        def forward(x, training):
            xw = x @ p["w_ih"].t()
            state = tuple(x.new_zeros(x.shape[1], n) for n in spec.state_sizes(H))
            outs = []
            for t in range(x.shape[0]):
                state, out = step(xw[t], state, p, t if bn else 0, training)
                outs.append(out)
            return torch.stack(outs)
        return Runner(forward, list(w.module.parameters()))


class ScriptCandidate(Candidate):
    key, label = "script", "TorchScript*"

    def prepare(self, w):
        reason = scripted.unsupported_reason(w.spec)
        if reason is not None:
            raise Unavailable(reason)
        return Runner(scripted.layer_runner(w.spec, w.p, w.shape.H), list(w.module.parameters()))


class NNCandidate(Candidate):
    """torch.nn.LSTM / GRU / RNN (oneDNN LSTM on CPU, cuDNN on GPU) with the same weights.

    For a cell torch.nn does not have (a variant, a norm) it runs the family's plain cell, the
    baseline the speed targets compare with; the result row says so.
    """

    key, label = "nn", "torch.nn"

    def prepare(self, w):
        spec = w.spec
        T, B, I, H = w.shape.dims  # noqa: E741
        base_spec, name = NN_BASELINE[spec.family]
        cls = {"lstm": nn.LSTM, "gru": nn.GRU}.get(spec.family)
        if cls is None:
            m = nn.RNN(I, H, nonlinearity=spec.family[4:], dtype=w.dtype, device=w.device)
        else:
            proj = {"proj_size": spec.proj_size} if spec.proj_size else {}
            m = cls(I, H, dtype=w.dtype, device=w.device, **proj)
        if self.same_cell(spec):
            m.load_state_dict(w.module.state_dict())
        m.flatten_parameters()  # cuDNN wants the weights in one buffer (else it compacts them every call)
        return _module_runner(m)

    @staticmethod
    def same_cell(spec: CellSpec) -> bool:
        return replace(spec, proj_size=0) == NN_BASELINE[spec.family][0]  # torch.nn.LSTM projects too

    @staticmethod
    def baseline_name(spec: CellSpec) -> str:
        return NN_BASELINE[spec.family][1]


class FloorCandidate(Candidate):
    key, label = "floor", "GEMM floor"

    def prepare(self, w):
        T, B, I, H = w.shape.dims  # noqa: E741
        if w.spec.proj_size:
            raise Unavailable("the GEMM floor does not model the projection")
        g = GemmFloor(T, B, I, H, w.spec.num_gates, w.spec.full_gate_recurrence, w.dtype, w.device)

        class _FloorRunner(Runner):
            def callables(self, mode, w):
                return g.callable(mode), None
        return _FloorRunner(None, [])


def build(keys, device, compile_mode=None):
    """Candidate objects for keys, in CANDIDATES order."""
    make = {"reference": ReferenceCandidate, "fused": lambda: FusedCandidate(device),
            "compile": lambda: CompileCandidate(compile_mode), "script": ScriptCandidate,
            "nn": NNCandidate, "floor": FloorCandidate}
    return [make[k]() for k in CANDIDATES if k in keys]
