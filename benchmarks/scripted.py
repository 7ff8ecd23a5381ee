"""TorchScript candidate: a small scriptable re-implementation of some reference cells.

fusedrnn.reference does not script (its step functions take a CellSpec dataclass and a dict of
parameters, which TorchScript cannot type), so the "torchscript" benchmark candidate runs these
functions instead: the whole time loop scripted (TorchScript compiles loops without unrolling),
the way a user would hand-write a scripted LN-LSTM (cf. pytorch's custom_lstms benchmark).
Covered cells: LSTM vanilla / peephole with norm none, layer or batch; GRU with norm none or
layer; tanh/relu RNN. Same math and conventions as fusedrnn.reference (gate order, biased
variance, per-step batch-norm slots, peepholes after the norm); tests/test_benchmarks.py
checks them against the reference.

Shapes: T steps, B batch, I input, H hidden; x [T, B, I], states [B, H], weights as torch.nn.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fusedrnn.spec import CellSpec


def _norm(v: Tensor, gain: Tensor, bias: Optional[Tensor], rm: Optional[Tensor], rv: Optional[Tensor],
          kind: int, slot: int, training: bool, momentum: float, eps: float) -> Tensor:
    """kind 1: layer norm over the last dim; kind 2: batch norm with the running slot `slot`."""
    if kind == 1:
        return F.layer_norm(v, [v.shape[-1]], gain, bias, eps)
    assert rm is not None and rv is not None
    if training and v.shape[0] == 1:  # one sequence: normalize with its (zero) variance, no update
        mean = v.mean(0)
        var = v.var(0, unbiased=False)
        out = (v - mean) * torch.rsqrt(var + eps) * gain
        return out if bias is None else out + bias
    return F.batch_norm(v, rm[slot], rv[slot], gain, bias, training, momentum, eps)


@torch.jit.script
def lstm_layer(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b: Optional[Tensor],
               w_peep: Optional[Tensor], kind: int, g_ih: Optional[Tensor], g_hh: Optional[Tensor],
               g_cell: Optional[Tensor], b_cell: Optional[Tensor], rms: List[Tensor], rvs: List[Tensor],
               training: bool, momentum: float, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """LSTM layer (gates i, f, g, o). kind 0: no norm, 1: layer norm, 2: batch norm.

    b: b_ih + b_hh [4H] or None; w_peep: [3, H] rows i, f, o or None;
    rms / rvs: batch-norm running statistics [ih, hh, cell], each [S, 4H] / [S, H] (kind 2).
    Returns y [T, B, H] and the final h, c.
    """
    xw = torch.matmul(x, w_ih.t())
    S = rms[0].shape[0] if kind == 2 else 1
    outs: List[Tensor] = []
    for t in range(x.shape[0]):
        hw = torch.mm(h, w_hh.t())
        slot = min(t, S - 1)
        if kind == 0:
            pre = xw[t] + hw
        else:
            assert g_ih is not None and g_hh is not None
            pre = (_norm(xw[t], g_ih, None, rms[0] if kind == 2 else None, rvs[0] if kind == 2 else None,
                         kind, slot, training, momentum, eps)
                   + _norm(hw, g_hh, None, rms[1] if kind == 2 else None, rvs[1] if kind == 2 else None,
                           kind, slot, training, momentum, eps))
        if b is not None:
            pre = pre + b
        gi, gf, gg, go = pre.chunk(4, 1)
        if w_peep is not None:
            gi = gi + w_peep[0] * c
            gf = gf + w_peep[1] * c
        i = torch.sigmoid(gi)
        f = torch.sigmoid(gf)
        c = f * c + i * torch.tanh(gg)
        if w_peep is not None:
            go = go + w_peep[2] * c
        o = torch.sigmoid(go)
        if kind == 0:
            cn = c
        else:
            assert g_cell is not None
            cn = _norm(c, g_cell, b_cell, rms[2] if kind == 2 else None, rvs[2] if kind == 2 else None,
                       kind, slot, training, momentum, eps)
        h = o * torch.tanh(cn)
        outs.append(h)
    return torch.stack(outs), h, c


@torch.jit.script
def gru_layer(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor], g_ih: Optional[Tensor], g_hh: Optional[Tensor],
              eps: float) -> Tuple[Tensor, Tensor]:
    """GRU layer (gates r, z, n, as torch.nn.GRU); with gains g_ih / g_hh, haste's LayerNormGRU."""
    xw_all = torch.matmul(x, w_ih.t())
    if g_ih is not None:
        xw_all = F.layer_norm(xw_all, [xw_all.shape[-1]], g_ih, None, eps)
    if b_ih is not None:
        xw_all = xw_all + b_ih
    outs: List[Tensor] = []
    for t in range(x.shape[0]):
        hw = torch.mm(h, w_hh.t())
        if g_hh is not None:
            hw = F.layer_norm(hw, [hw.shape[-1]], g_hh, None, eps)
        if b_hh is not None:
            hw = hw + b_hh
        xr, xz, xn = xw_all[t].chunk(3, 1)
        hr, hz, hn = hw.chunk(3, 1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs), h


@torch.jit.script
def rnn_layer(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b: Optional[Tensor], relu: bool
              ) -> Tuple[Tensor, Tensor]:
    """Elman RNN layer; b = b_ih + b_hh or None."""
    xw = torch.matmul(x, w_ih.t())
    if b is not None:
        xw = xw + b
    outs: List[Tensor] = []
    for t in range(x.shape[0]):
        pre = xw[t] + torch.mm(h, w_hh.t())
        h = torch.relu(pre) if relu else torch.tanh(pre)
        outs.append(h)
    return torch.stack(outs), h


def unsupported_reason(spec: CellSpec):
    """None when the scripted re-implementation covers `spec`, else why not."""
    if spec.proj_size:
        return "benchmarks/scripted.py has no projection"
    if spec.family == "lstm" and (spec.variant not in ("vanilla", "peephole")
                                  or spec.norm not in ("none", "layer", "batch")):
        return ("benchmarks/scripted.py covers LSTM vanilla/peephole with norm none/layer/batch, "
                "GRU, LN-GRU and RNN only")
    return None


def layer_runner(spec: CellSpec, p: dict, hidden_size: int):
    """A function (x, training) -> y [T, B, H] running the scripted layer with parameters p (by role)."""
    reason = unsupported_reason(spec)
    if reason is not None:
        raise NotImplementedError(reason)
    H = hidden_size
    if spec.family == "lstm":
        kind = {"none": 0, "layer": 1, "batch": 2}[spec.norm]
        rms = [p["rm_ih"], p["rm_hh"], p["rm_cell"]] if kind == 2 else []
        rvs = [p["rv_ih"], p["rv_hh"], p["rv_cell"]] if kind == 2 else []

        def run(x, training):
            b = p["b_ih"] + p["b_hh"] if "b_ih" in p else None
            B = x.shape[1]
            zeros = x.new_zeros(B, H)
            y, _, _ = lstm_layer(x, zeros, zeros, p["w_ih"], p["w_hh"], b, p.get("w_peep"), kind,
                                 p.get("g_ih"), p.get("g_hh"), p.get("g_cell"), p.get("b_cell"), rms, rvs,
                                 training, float(spec.bn_momentum), float(spec.eps))
            return y
        return run
    if spec.family == "gru":
        def run(x, training):
            y, _ = gru_layer(x, x.new_zeros(x.shape[1], H), p["w_ih"], p["w_hh"], p.get("b_ih"),
                             p.get("b_hh"), p.get("g_ih"), p.get("g_hh"), float(spec.eps))
            return y
        return run

    def run(x, training):
        b = p["b_ih"] + p["b_hh"] if "b_ih" in p else None
        y, _ = rnn_layer(x, x.new_zeros(x.shape[1], H), p["w_ih"], p["w_hh"], b, spec.family == "rnn_relu")
        return y
    return run


def reference_script_error() -> str:
    """Why torch.jit.script(fusedrnn.reference.lstm_step) fails (first line of the error), or ''."""
    from fusedrnn import reference
    try:
        torch.jit.script(reference.lstm_step)
    except Exception as e:  # reported to the user as the reason, not ignored
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        return f"{type(e).__name__}: {lines[0] if lines else ''}"[:200]
    return ""
