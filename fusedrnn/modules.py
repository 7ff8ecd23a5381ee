"""Drop-in torch.nn modules: LSTM, GRU, RNN and their single-step Cell counterparts.

Constructor and forward signatures, return values and parameter names follow torch.nn,
so a torch.nn.LSTM/GRU/RNN state_dict loads unchanged. Cell options (variant, norm,
max_bn_steps, ...) are keyword-only; extra parameters have self-explaining names:

    weight_peephole_l{k}            [P, H]   peephole rows for i, f, o (those present)
    weight_gate_recurrence_l{k}     [3H, 3H] FGR: i, f, o pre-activations <- previous i, f, o
    layernorm_{ih,hh}_weight_l{k}   [GH]     gains of LN(W_ih x), LN(W_hh h)   (norm="layer")
    layernorm_gates_{weight,bias}_l{k} [GH]  per-gate LN gain and shift (norm="layer_per_gate")
    {layernorm,batchnorm}_cell_{weight,bias}_l{k} [H]  norm of c before the output activation
    batchnorm_{ih,hh}_weight_l{k}   [GH]     BN gains (norm="batch")
    batchnorm_{ih,hh,cell}_running_{mean,var}_l{k}  buffers [S, GH] / [S, H], one row per step
and a "_reverse" suffix for the reverse direction, as torch.nn.

`backend` picks the implementation of the time loop: "reference" (pure PyTorch),
"cpu" / "cuda" (fused kernels, when built) or "auto" (kernels for the device when
available, else the reference). After a forward, `module.last_backend` says what ran.
LSTM's `cuda_path` picks how the CUDA kernels run each layer: "auto", "step" (a GEMM and a
fused kernel per step), "persistent" (one persistent kernel for all steps, where it fits, else
per step) or None (FUSEDRNN_PERSISTENT decides; unset: auto); the backward follows the forward.
"""
from __future__ import annotations

import functools
import math
import warnings

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import reference
from .spec import CUDA_PATHS, CellSpec

BACKENDS = ("auto", "reference", "cpu", "cuda")

_ROLE_NAMES = {
    "w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh",
    "w_hr": "weight_hr", "w_peep": "weight_peephole", "w_fgr": "weight_gate_recurrence",
}
_NORM_ROLE_NAMES = {
    "g_ih": "ih_weight", "g_hh": "hh_weight", "g_cell": "cell_weight", "b_cell": "cell_bias",
    "g_gates": "gates_weight", "b_gates": "gates_bias",
    "rm_ih": "ih_running_mean", "rv_ih": "ih_running_var", "rm_hh": "hh_running_mean",
    "rv_hh": "hh_running_var", "rm_cell": "cell_running_mean", "rv_cell": "cell_running_var",
}


def role_name(spec: CellSpec, role: str) -> str:
    """Module attribute name (without layer suffix) of a parameter/buffer role."""
    if role in _ROLE_NAMES:
        return _ROLE_NAMES[role]
    prefix = "batchnorm" if spec.norm == "batch" else "layernorm"
    return f"{prefix}_{_NORM_ROLE_NAMES[role]}"


def init_parameters(spec: CellSpec, params: dict, hidden_size: int, generator: torch.Generator | None = None) -> None:
    """torch.nn's uniform(-1/sqrt(H), 1/sqrt(H)) for weights and biases; norms as in the papers.
    `generator` draws the weights (default: torch's global generator, as torch.nn does)."""
    bound = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0
    H = hidden_size
    with torch.no_grad():
        for role, t in params.items():
            if role.startswith("rm_"):
                t.zero_()
            elif role.startswith("rv_"):
                t.fill_(1.0)
            elif role in ("g_ih", "g_hh", "g_cell", "g_gates"):
                t.fill_(0.1 if spec.norm == "batch" else 1.0)
            elif role in ("b_cell", "b_gates"):
                t.zero_()
            else:
                t.uniform_(-bound, bound, generator=generator)
        if spec.is_lstm and "f" in spec.gates and spec.variant != "cifg":
            f = slice(spec.gates.index("f") * H, (spec.gates.index("f") + 1) * H)
            if spec.norm == "batch" and "b_ih" in params:  # forget bias 1.0 in total
                params["b_ih"][f].fill_(1.0)
                params["b_hh"][f].zero_()
            if spec.norm == "layer_per_gate":
                params["b_gates"][f].fill_(1.0)


def _layer_runner(backend: str, x: torch.Tensor, spec: CellSpec, cuda_path: str | None = None):
    """(run_layer function, name of the backend that runs) for this input."""
    if backend == "reference":
        return reference.run_layer, "reference"
    from . import _ops  # noqa: F401  (kernels are optional until built)
    run, name = _ops.select(backend, x)
    if cuda_path is not None and run is _ops.run_layer:
        run = functools.partial(run, cuda_path=cuda_path)
    return run, name


def _register(module: nn.Module, spec: CellSpec, input_size: int, hidden_size: int, bias: bool,
              suffix: str, factory: dict) -> dict:
    """Create the parameters and buffers of one layer-direction; returns {role: attribute name}."""
    roles = {}
    for role, shape in spec.parameter_shapes(input_size, hidden_size, bias).items():
        roles[role] = role_name(spec, role) + suffix
        module.register_parameter(roles[role], nn.Parameter(torch.empty(shape, **factory)))
    for role, shape in spec.buffer_shapes(hidden_size).items():
        roles[role] = role_name(spec, role) + suffix
        module.register_buffer(roles[role], torch.empty(shape, **factory))
    return roles


def _check_packed(name: str, packed: PackedSequence) -> None:
    """A PackedSequence built by hand can be inconsistent; say how instead of failing deep inside."""
    bs, data = packed.batch_sizes, packed.data
    if bs.dim() != 1 or bs.dtype != torch.int64 or bs.device.type != "cpu":
        raise ValueError(f"{name}: PackedSequence.batch_sizes must be a 1-D int64 CPU tensor, got "
                         f"{bs.dim()}-D {bs.dtype} on {bs.device}")
    if data.dim() != 2:
        raise ValueError(f"{name}: PackedSequence.data must be 2-D [sum(lengths), input_size], got shape "
                         f"{tuple(data.shape)}")
    if bs.numel() == 0 or bool((bs <= 0).any()) or bool((bs[1:] > bs[:-1]).any()):
        raise ValueError(f"{name}: PackedSequence.batch_sizes must be positive and non-increasing (every "
                         f"length >= 1), got {bs.tolist()}")
    if int(bs.sum()) != data.shape[0]:
        raise ValueError(f"{name}: PackedSequence.data has {data.shape[0]} rows but batch_sizes sum to "
                         f"{int(bs.sum())}")


_CELL_KEY = "fusedrnn_cell"


def _cell_name(spec: CellSpec) -> str:
    return f"family={spec.family!r} variant={spec.variant!r} norm={spec.norm!r}"


def _save_cell_name(module, state_dict, prefix, local_metadata):
    """state_dict hook: record which cell the tensors belong to (in the state_dict's metadata)."""
    local_metadata[_CELL_KEY] = _cell_name(module.spec)


def _check_cell_name(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """load_state_dict pre-hook: refuse a fusedrnn checkpoint of another cell. Some variants have
    identical parameter shapes (peephole / niaf / noaf, nig / nfg), so shapes alone would load
    one into the other silently. torch.nn checkpoints carry no entry and load as before; to load
    another cell's tensors on purpose, pass a plain dict (dict(state_dict) drops the metadata)."""
    saved = local_metadata.get(_CELL_KEY)
    if saved is not None and saved != _cell_name(module.spec):
        errors.append(f"fusedrnn: the checkpoint holds a cell with {saved}, this module's cell has "
                      f"{_cell_name(module.spec)}")


def _attach_checkpoint_hooks(module: nn.Module) -> None:
    module.register_state_dict_post_hook(_save_cell_name)
    module.register_load_state_dict_pre_hook(_check_cell_name)


def _options_repr(spec: CellSpec, backend: str, cuda_path: str | None = None) -> str:
    """The fusedrnn options of a module's repr (what torch.nn has no argument for)."""
    s = ""
    if spec.family == "lstm" and spec.variant != "vanilla":
        s += f", variant={spec.variant!r}"
    if spec.norm != "none":
        s += f", norm={spec.norm!r}"
    if spec.norm == "batch":
        s += f", max_bn_steps={spec.max_bn_steps}"
    if backend != "auto":
        s += f", backend={backend!r}"
    if cuda_path is not None:
        s += f", cuda_path={cuda_path!r}"
    return s


class _RNNBase(nn.Module):
    """Shared engine of LSTM, GRU and RNN: parameters per layer-direction, input checks,
    PackedSequence / batch_first / unbatched handling; the loop itself is reference.rnn."""

    def __init__(self, spec: CellSpec, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, backend: str = "auto",
                 cuda_path: str | None = None):
        super().__init__()
        for name, value, low in (("input_size", input_size, 1), ("hidden_size", hidden_size, 1),
                                 ("num_layers", num_layers, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{type(self).__name__}: {name} must be an int >= {low}, got {value!r}")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"{type(self).__name__}: dropout must be a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero "
                          f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}")
        if backend not in BACKENDS:
            raise ValueError(f"{type(self).__name__}: backend must be one of {BACKENDS}, got {backend!r}")
        if cuda_path not in CUDA_PATHS:
            raise ValueError(f"{type(self).__name__}: cuda_path must be one of {CUDA_PATHS}, got {cuda_path!r}")
        self.spec = spec
        self.cuda_path = cuda_path
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = spec.proj_size
        if self.proj_size >= hidden_size:
            raise ValueError(f"{type(self).__name__}: proj_size must be smaller than hidden_size, "
                             f"got proj_size={self.proj_size} hidden_size={hidden_size}")
        self.backend = backend
        self.last_backend = None
        factory = {"device": device, "dtype": dtype}
        self._roles = []  # per layer-direction: {role: attribute name}
        num_dirs = 2 if bidirectional else 1
        out_size = self.proj_size or hidden_size
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else out_size * num_dirs
            for d in range(num_dirs):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                self._roles.append(_register(self, spec, layer_in, hidden_size, bias, suffix, factory))
        _attach_checkpoint_hooks(self)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for roles in self._roles:
            init_parameters(self.spec, {r: getattr(self, n) for r, n in roles.items()}, self.hidden_size)

    def flatten_parameters(self) -> None:
        """No-op, for torch.nn compatibility (fusedrnn keeps no flattened weight buffer)."""

    def layer_parameters(self) -> list:
        """L lists of D dicts {role: tensor}, the form reference.rnn and the kernels take."""
        D = 2 if self.bidirectional else 1
        dicts = [{r: getattr(self, n) for r, n in roles.items()} for roles in self._roles]
        return [dicts[layer * D:(layer + 1) * D] for layer in range(self.num_layers)]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:  # torch.nn's order: proj_size right after hidden_size
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s + _options_repr(self.spec, self.backend, self.cuda_path)

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor, batched: bool):
        name = type(self).__name__
        if not x.is_floating_point():
            raise TypeError(f"{name}: input must be a floating-point tensor, got dtype {x.dtype}")
        w = self.weight_ih_l0
        if x.dtype != w.dtype:
            raise TypeError(f"{name}: input dtype {x.dtype} does not match the parameters' dtype {w.dtype}")
        if x.device != w.device:
            raise RuntimeError(f"{name}: input is on {x.device} but the parameters are on {w.device}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{name}: input.size(-1) must be equal to input_size. "
                             f"Expected {self.input_size}, got {x.shape[-1]}")

    def _initial_state(self, hx, x: torch.Tensor, batch: int, batched: bool):
        """hx as a tuple of [L * D, B, *], zeros where not given, checked against the spec."""
        name = type(self).__name__
        spec = self.spec
        LD = self.num_layers * (2 if self.bidirectional else 1)
        sizes = spec.state_sizes(self.hidden_size)
        if hx is None:
            return tuple(torch.zeros(LD, batch, n, dtype=x.dtype, device=x.device) for n in sizes)
        entries = (hx,) if isinstance(hx, torch.Tensor) else tuple(hx)
        if len(entries) != len(sizes):
            raise ValueError(f"{name}: expected an initial state of {len(sizes)} tensor(s) "
                             f"{spec.state_names}, got {len(entries)}")
        out = []
        for label, s, n in zip(spec.state_names, entries, sizes):
            if not isinstance(s, torch.Tensor):
                raise TypeError(f"{name}: initial state {label!r} must be a Tensor, got {type(s).__name__}")
            expected = (LD, batch, n) if batched else (LD, n)
            if tuple(s.shape) != expected:
                raise ValueError(f"{name}: expected initial state {label!r} of shape {expected}, "
                                 f"got {tuple(s.shape)}")
            if s.dtype != x.dtype:
                raise TypeError(f"{name}: initial state {label!r} has dtype {s.dtype}, input has {x.dtype}")
            if s.device != x.device:
                raise RuntimeError(f"{name}: initial state {label!r} is on {s.device}, input on {x.device}")
            out.append(s if batched else s.unsqueeze(1))
        return tuple(out)

    def forward(self, input, hx=None):
        name = type(self).__name__
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:
            _check_packed(name, input)
            x, packed_lengths = pad_packed_sequence(input, batch_first=False)
            lengths = packed_lengths
            batched = True
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"{name}: input must be a Tensor or PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D (unbatched) or 3D (batched), "
                                 f"got {input.dim()}D input of shape {tuple(input.shape)}")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if self.batch_first and batched:
                x = x.transpose(0, 1)
        self._check_input(x, batched)
        T, B = x.shape[0], x.shape[1]
        state = self._initial_state(hx, x, B, batched)
        if T == 0:
            raise ValueError(f"{name}: input has zero time steps (shape {tuple(x.shape)})")
        if B == 0:  # as torch.nn: empty outputs that still require grad (all gradients are zero)
            anchor = sum(t.sum() for t in (x, *state, *self.parameters())) * 0
            out = x.new_zeros(T, 0, (self.proj_size or self.hidden_size) * (2 if self.bidirectional else 1))
            y, final = out + anchor, tuple(s + anchor for s in state)
        else:
            if self.spec.norm == "batch" and self.training and B == 1:
                raise ValueError(f"{name}: batch norm in training needs more than 1 sequence per batch "
                                 "(as torch.nn.BatchNorm1d), got batch size 1")
            if lengths is not None:
                lengths = lengths.to(x.device)
                if bool((lengths == T).all()):
                    lengths = None
            run_layer, self.last_backend = _layer_runner(self.backend, x, self.spec, self.cuda_path)
            y, final = reference.rnn(self.spec, x.contiguous(), state, self.layer_parameters(),
                                     lengths=lengths, training=self.training, dropout=self.dropout,
                                     run_layer=run_layer)
        if packed:  # back into the input's packing: sorted by length, same batch_sizes
            order = input.sorted_indices
            if order is not None:
                y = y.index_select(1, order)
                packed_lengths = packed_lengths.index_select(0, order.cpu())
            data = pack_padded_sequence(y, packed_lengths).data
            y = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        elif not batched:
            y = y.squeeze(1)
            final = tuple(s.squeeze(1) for s in final)
        elif self.batch_first:
            y = y.transpose(0, 1)
        return y, self._pack_state(final)

    def _pack_state(self, final):
        return final[0] if len(final) == 1 else final


class LSTM(_RNNBase):
    """torch.nn.LSTM drop-in with the variants, norms and backends of fusedrnn.

    Extra keyword options: variant ("vanilla"/"np", "peephole", "nig", "nfg", "nog", "niaf",
    "noaf", "cifg", "fgr"), norm ("none", "layer", "layer_per_gate", "batch"), max_bn_steps,
    bn_momentum, eps, backend, cuda_path (None, "auto", "step", "persistent": the module
    docstring). With variant="fgr" the state is (h, c, a), a = the previous i, f, o activations
    [L * D, B, 3H].
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 variant="vanilla", norm="none", max_bn_steps=1000, bn_momentum=0.1, eps=1e-5,
                 backend="auto", cuda_path=None):
        spec = CellSpec("lstm", variant, norm, max_bn_steps, bn_momentum, eps, proj_size)
        super().__init__(spec, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype, backend, cuda_path)


class GRU(_RNNBase):
    """torch.nn.GRU drop-in; norm="layer" gives the layer-normalized GRU."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, norm="none",
                 eps=1e-5, backend="auto"):
        super().__init__(CellSpec("gru", norm=norm, eps=eps), input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, device, dtype, backend)


class RNN(_RNNBase):
    """torch.nn.RNN drop-in (nonlinearity "tanh" or "relu")."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *,
                 backend="auto"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(CellSpec(f"rnn_{nonlinearity}"), input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, device, dtype, backend)
        self.nonlinearity = nonlinearity


# ---------------------------------------------------------------------------- cells


class _CellBase(nn.Module):
    """One step of a cell, torch.nn.*Cell style: input [B, I] or [I], state tensors [B, *].

    The step runs through the same engine as the sequence modules (a sequence of length 1),
    so it uses the same backend. `bn_step` selects the batch-norm statistics slot.
    """

    def __init__(self, spec, input_size, hidden_size, bias=True, device=None, dtype=None,
                 backend="auto"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"{type(self).__name__}: backend must be one of {BACKENDS}, got {backend!r}")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be an int >= 1, got {value!r}")
        self.spec, self.input_size, self.hidden_size, self.bias = spec, input_size, hidden_size, bias
        self.backend = backend
        self.last_backend = None
        self._roles = _register(self, spec, input_size, hidden_size, bias, "",
                                {"device": device, "dtype": dtype})
        _attach_checkpoint_hooks(self)
        self.reset_parameters()

    def reset_parameters(self):
        init_parameters(self.spec, {r: getattr(self, n) for r, n in self._roles.items()}, self.hidden_size)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"  # as torch.nn.*Cell, then fusedrnn's options
        if self.bias is not True:
            s += f", bias={self.bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        return s + _options_repr(self.spec, self.backend)

    def forward(self, input, hx=None, bn_step: int = 0):
        name = type(self).__name__
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D input of shape "
                             f"{tuple(input.shape)}")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if not x.is_floating_point():
            raise TypeError(f"{name}: input must be a floating-point tensor, got dtype {x.dtype}")
        if x.dtype != self.weight_ih.dtype:
            raise TypeError(f"{name}: input dtype {x.dtype} does not match the parameters' dtype "
                            f"{self.weight_ih.dtype}")
        if x.device != self.weight_ih.device:
            raise RuntimeError(f"{name}: input is on {x.device} but the parameters are on {self.weight_ih.device}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{name}: input has inconsistent input_size: got {x.shape[-1]} "
                             f"expected {self.input_size}")
        if not isinstance(bn_step, int) or bn_step < 0:
            raise ValueError(f"{name}: bn_step must be an int >= 0, got {bn_step!r}")
        B = x.shape[0]
        sizes = self.spec.state_sizes(self.hidden_size)
        if hx is None:
            state = tuple(x.new_zeros(B, n) for n in sizes)
        else:
            entries = (hx,) if isinstance(hx, torch.Tensor) else tuple(hx)
            if len(entries) != len(sizes):
                raise ValueError(f"{name}: expected a state of {len(sizes)} tensor(s) {self.spec.state_names}")
            for label, s, n in zip(self.spec.state_names, entries, sizes):
                if not isinstance(s, torch.Tensor):
                    raise TypeError(f"{name}: state {label!r} must be a Tensor, got {type(s).__name__}")
                expected = (B, n) if batched else (n,)
                if tuple(s.shape) != expected:
                    raise ValueError(f"{name}: expected state {label!r} of shape {expected}, got {tuple(s.shape)}")
                if s.dtype != x.dtype:
                    raise TypeError(f"{name}: state {label!r} has dtype {s.dtype}, input has {x.dtype}")
                if s.device != x.device:
                    raise RuntimeError(f"{name}: state {label!r} is on {s.device}, input on {x.device}")
            state = tuple(s if batched else s.unsqueeze(0) for s in entries)
        if self.spec.norm == "batch" and self.training and B == 1:
            raise ValueError(f"{name}: batch norm in training needs more than 1 sample, got batch size 1")
        params = {r: getattr(self, n) for r, n in self._roles.items()}
        run_layer, self.last_backend = _layer_runner(self.backend, x, self.spec)
        # steps beyond the last slot share it; clamping keeps t0 small for the kernels' int arithmetic
        t0 = min(bn_step, self.spec.max_bn_steps - 1)
        _, new = run_layer(self.spec, x.unsqueeze(0), state, params, training=self.training, t0=t0)
        if not batched:
            new = tuple(s.squeeze(0) for s in new)
        return new[0] if len(new) == 1 else new


class LSTMCell(_CellBase):
    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 variant="vanilla", norm="none", max_bn_steps=1000, bn_momentum=0.1, eps=1e-5,
                 backend="auto"):
        spec = CellSpec("lstm", variant, norm, max_bn_steps, bn_momentum, eps)
        super().__init__(spec, input_size, hidden_size, bias, device, dtype, backend)


class GRUCell(_CellBase):
    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, norm="none",
                 eps=1e-5, backend="auto"):
        super().__init__(CellSpec("gru", norm=norm, eps=eps), input_size, hidden_size, bias, device,
                         dtype, backend)


class RNNCell(_CellBase):
    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
                 dtype=None, *, backend="auto"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(CellSpec(f"rnn_{nonlinearity}"), input_size, hidden_size, bias, device, dtype,
                         backend)
        self.nonlinearity = nonlinearity
