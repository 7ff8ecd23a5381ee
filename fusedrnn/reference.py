"""Readable pure-PyTorch reference: the oracle every fusedrnn kernel is tested against.

One step function per cell family, one time loop for a layer (`run_layer`) and one
stacking loop (`rnn`) for layers, directions, dropout and variable lengths. Kernels
replace `run_layer` only; everything around it is shared, so the reference and the
kernels see the same dropout masks and the same packing.

Conventions (see README, "Numerical conventions"):
  * gate order i, f, g, o (LSTM) and r, z, n (GRU), as torch.nn; variants drop rows;
  * every normalization uses the biased variance and eps (default 1e-5);
  * batch norm: statistics of the sequences active at step t; running statistics of
    step t live in slot min(t, S - 1), running_var stores the unbiased batch variance,
    running = (1 - momentum) * running + momentum * batch; a step with a single active
    sequence normalizes with its (zero) biased variance but does not update the slot;
  * peephole and full-gate-recurrence terms are added after normalization, on raw c.

Shapes: T steps, B batch, I input, H hidden, G gates present, GH = G * H.
Parameters of a layer-direction are a dict keyed by role (see CellSpec.parameter_shapes);
batch-norm running statistics are in the same dict (roles rm_*, rv_*; updated in place).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .spec import CellSpec

# ----------------------------------------------------------------------------- norms


def layer_norm(v: torch.Tensor, gain, bias, eps: float) -> torch.Tensor:
    """Normalize over the last dimension (biased variance), then gain (and bias)."""
    mean = v.mean(-1, keepdim=True)
    var = v.var(-1, unbiased=False, keepdim=True)
    out = (v - mean) * torch.rsqrt(var + eps)
    out = out * gain
    return out if bias is None else out + bias


def batch_norm(v, gain, bias, running_mean, running_var, *, training: bool, momentum: float,
               eps: float, active=None) -> torch.Tensor:
    """Batch norm of one time step. v: [B, N]; running_*: [N] slot of this step.

    Training normalizes with the statistics of the active rows and updates the slot in
    place; eval normalizes with the slot. Rows that are not active get values that the
    time loop discards.
    """
    if training:
        rows = v if active is None else v[active]
        n = rows.shape[0]
        mean = rows.mean(0)
        var = rows.var(0, unbiased=False)
        if n > 1:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                running_var.mul_(1 - momentum).add_(var.detach() * (n / (n - 1)), alpha=momentum)
    else:
        mean, var = running_mean, running_var
    out = (v - mean) * torch.rsqrt(var + eps) * gain
    return out if bias is None else out + bias


def _norm(spec: CellSpec, p: dict, which: str, v, t: int, training: bool, active):
    """Normalize v with the `which` ("ih", "hh" or "cell") norm of the layer."""
    # Only the cell norm has a shift; b_ih / b_hh are the gate biases, added once by the caller.
    gain, bias = p[f"g_{which}"], (p["b_cell"] if which == "cell" else None)
    if spec.norm == "batch":
        slot = min(t, spec.max_bn_steps - 1)
        return batch_norm(v, gain, bias, p[f"rm_{which}"][slot], p[f"rv_{which}"][slot],
                          training=training, momentum=spec.bn_momentum, eps=spec.eps, active=active)
    return layer_norm(v, gain, bias, spec.eps)


def _add_biases(v, p):
    if "b_ih" in p:
        v = v + p["b_ih"]
    if "b_hh" in p:
        v = v + p["b_hh"]
    return v


# ----------------------------------------------------------------------------- cells


def lstm_step(spec: CellSpec, p: dict, xw, state, t: int, training: bool, active=None):
    """One LSTM step, every variant and norm. xw: [B, GH] = x_t W_ih^T (hoisted).

    state: (h, c) or (h, c, a) for FGR, a = previous (i, f, o) activations [B, 3H].
    Returns (new_state, output).
    """
    h, c = state[0], state[1]
    hw = h @ p["w_hh"].t()
    if spec.norm == "none":
        pre = _add_biases(xw + hw, p)
    elif spec.norm == "layer_per_gate":
        B, GH = xw.shape
        G = spec.num_gates
        v = (xw + hw).view(B, G, GH // G)
        v = layer_norm(v, p["g_gates"].view(G, -1), p["b_gates"].view(G, -1), spec.eps)
        pre = v.reshape(B, GH)
    else:  # layer or batch: norm(W_ih x) + norm(W_hh h) + b
        pre = _add_biases(_norm(spec, p, "ih", xw, t, training, active)
                          + _norm(spec, p, "hh", hw, t, training, active), p)

    gate = dict(zip(spec.gates, pre.chunk(spec.num_gates, dim=1)))
    if spec.full_gate_recurrence:  # i, f, o pre-activations see the previous i, f, o
        rec = state[2] @ p["w_fgr"].t()
        for name, r in zip("ifo", rec.chunk(3, dim=1)):
            gate[name] = gate[name] + r
    peep = dict(zip(spec.peepholes, p["w_peep"].unbind(0))) if spec.peepholes else {}

    def pre_activation(name, cell):  # peepholes look at c_{t-1} (i, f) or c_t (o)
        return gate[name] + peep[name] * cell if name in peep else gate[name]

    one = torch.ones_like(c)
    i = torch.sigmoid(pre_activation("i", c)) if "i" in gate else one
    if spec.variant == "cifg":
        f = 1 - i
    else:
        f = torch.sigmoid(pre_activation("f", c)) if "f" in gate else one
    g = torch.tanh(gate["g"]) if spec.input_activation else gate["g"]
    c_new = f * c + i * g
    o = torch.sigmoid(pre_activation("o", c_new)) if "o" in gate else one

    cn = c_new if spec.norm == "none" else _norm(spec, p, "cell", c_new, t, training, active)
    h_new = o * (torch.tanh(cn) if spec.output_activation else cn)
    if "w_hr" in p:
        h_new = h_new @ p["w_hr"].t()
    new_state = (h_new, c_new, torch.cat([i, f, o], 1)) if spec.full_gate_recurrence else (h_new, c_new)
    return new_state, h_new


def gru_step(spec: CellSpec, p: dict, xw, state, t: int, training: bool, active=None):
    """One GRU step (torch.nn.GRU; with norm="layer", haste's LayerNormGRU placement)."""
    h = state[0]
    hw = h @ p["w_hh"].t()
    if spec.norm == "layer":
        xw = layer_norm(xw, p["g_ih"], None, spec.eps)
        hw = layer_norm(hw, p["g_hh"], None, spec.eps)
    if "b_ih" in p:
        xw = xw + p["b_ih"]
        hw = hw + p["b_hh"]
    xr, xz, xn = xw.chunk(3, dim=1)
    hr, hz, hn = hw.chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    h_new = (1 - z) * n + z * h
    return (h_new,), h_new


def rnn_step(spec: CellSpec, p: dict, xw, state, t: int, training: bool, active=None):
    """One Elman RNN step (torch.nn.RNN, tanh or relu)."""
    pre = _add_biases(xw + state[0] @ p["w_hh"].t(), p)
    h_new = torch.tanh(pre) if spec.family == "rnn_tanh" else torch.relu(pre)
    return (h_new,), h_new


STEPS = {"lstm": lstm_step, "gru": gru_step, "rnn_tanh": rnn_step, "rnn_relu": rnn_step}


# ----------------------------------------------------------------------------- loops


def run_layer(spec: CellSpec, x, state, p: dict, *, lengths=None, training: bool = False,
              t0: int = 0):
    """One layer, one direction, forward in time.

    x:       [T, B, I] input; sequence b occupies steps [0, lengths[b]).
    state:   tuple of [B, *] initial state (CellSpec.state_names).
    lengths: [B] int64 on x's device, or None when every sequence has T steps.
    t0:      time step of x[0] for the batch-norm slots (step-by-step use).
    Returns y [T, B, H_out] (zero at padded steps) and the final state tuple
    (each sequence's state after its last step).
    """
    step = STEPS[spec.family]
    xw = x @ p["w_ih"].t()  # the input projection of all steps is one GEMM
    outs = []
    for t, xw_t in enumerate(xw.unbind(0)):
        active = None if lengths is None else t < lengths
        new_state, out = step(spec, p, xw_t, state, t0 + t, training, active)
        if active is not None:
            keep = active.unsqueeze(1)
            new_state = tuple(torch.where(keep, n, s) for n, s in zip(new_state, state))
            out = out * keep
        state = new_state
        outs.append(out)
    if not outs:
        raise ValueError("fusedrnn: input has zero time steps")
    return torch.stack(outs), state


def reverse_padded(x, lengths):
    """Reverse each sequence within its own length: [T, B, *] -> [T, B, *]; padding stays put."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device).unsqueeze(1)
    idx = torch.where(t < lengths, lengths - 1 - t, t)
    idx = idx.view(T, -1, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, idx)


def rnn(spec: CellSpec, x, hx, layers, *, lengths=None, training: bool = False,
        dropout: float = 0.0, run_layer=run_layer):
    """Multi-layer, optionally bidirectional recurrence (the engine every module uses).

    x:      [T, B, I] time-major input.
    hx:     tuple of [L * D, B, *] initial states, ordered like CellSpec.state_names.
    layers: L lists of D parameter dicts (D = 2 when bidirectional, reverse second).
    lengths, training: as in run_layer; dropout: applied between layers in training.
    run_layer: the per-layer implementation (this module's, or a kernel's with the same contract).
    Returns y [T, B, D * H_out] and the final states, a tuple of [L * D, B, *].
    """
    finals = []
    num_layers = len(layers)
    for layer, directions in enumerate(layers):
        outs = []
        for d, p in enumerate(directions):
            state = tuple(s[layer * len(directions) + d] for s in hx)
            if d == 0:
                y, final = run_layer(spec, x, state, p, lengths=lengths, training=training)
            else:
                y, final = run_layer(spec, reverse_padded(x, lengths), state, p,
                                     lengths=lengths, training=training)
                y = reverse_padded(y, lengths)
            outs.append(y)
            finals.append(final)
        x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        if dropout > 0 and training and layer < num_layers - 1:
            x = F.dropout(x, dropout, training=True)
    final_states = tuple(torch.stack([f[k] for f in finals]) for k in range(len(hx)))
    return x, final_states
