"""CellSpec: the complete, validated name of a recurrent cell.

Every backend (reference, CPU kernels, CUDA kernels) reads the same spec, so what a
cell *is* lives here once: which gates exist, which peepholes, which activations,
which normalization and which parameters a layer of it owns.

Shape legend used throughout fusedrnn:
    T steps, B batch, I input size, H hidden size, G gates present (GH = G * H),
    P peephole rows present, S = max_bn_steps.
"""
from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("lstm", "gru", "rnn_tanh", "rnn_relu")

# Greff et al., "LSTM: A Search Space Odyssey": every variant but vanilla/np is
# defined relative to the peephole LSTM ("V").
LSTM_VARIANTS = ("vanilla", "peephole", "nig", "nfg", "nog", "niaf", "noaf", "cifg", "fgr")
VARIANT_ALIASES = {"np": "vanilla", "v": "peephole"}

NORMS = ("none", "layer", "layer_per_gate", "batch")
# How the CUDA kernels run an LSTM layer (fusedrnn.LSTM(cuda_path=...), _ops.run_layer): None
# leaves it to FUSEDRNN_PERSISTENT (unset: "auto"); "step": a GEMM and a fused kernel per step;
# "persistent": one persistent kernel for all steps where it fits (else per step).
CUDA_PATHS = (None, "auto", "step", "persistent")
NORMS_BY_FAMILY = {
    "lstm": NORMS,
    "gru": ("none", "layer"),
    "rnn_tanh": ("none",),
    "rnn_relu": ("none",),
}

# Gates present, in nn.LSTM order (i, f, g, o), and peephole rows, in (i, f, o) order.
_LSTM_GATES = {
    "vanilla": "ifgo", "peephole": "ifgo", "nig": "fgo", "nfg": "igo", "nog": "ifg",
    "niaf": "ifgo", "noaf": "ifgo", "cifg": "igo", "fgr": "ifgo",
}
_LSTM_PEEPHOLES = {
    "vanilla": "", "peephole": "ifo", "nig": "fo", "nfg": "io", "nog": "if",
    "niaf": "ifo", "noaf": "ifo", "cifg": "io", "fgr": "ifo",
}


@dataclass(frozen=True)
class CellSpec:
    """A recurrent cell, named completely and validated on construction.

    family:       "lstm", "gru", "rnn_tanh" or "rnn_relu".
    variant:      LSTM only: one of LSTM_VARIANTS ("np" is accepted as an alias of "vanilla").
    norm:         "none", "layer" (Ba et al.), "layer_per_gate" (one LN per gate, no biases)
                  or "batch" (Cooijmans et al., per-time-step statistics). GRU: "none"/"layer".
    max_bn_steps: number of per-step running-statistics slots for batch norm (S).
    bn_momentum:  running = (1 - momentum) * running + momentum * batch (PyTorch convention).
    eps:          added to the (biased) variance in every normalization.
    proj_size:    vanilla LSTM without norm only, as in torch.nn.LSTM.
    """

    family: str = "lstm"
    variant: str = "vanilla"
    norm: str = "none"
    max_bn_steps: int = 1000
    bn_momentum: float = 0.1
    eps: float = 1e-5
    proj_size: int = 0

    def __post_init__(self):
        fam = self.family
        if fam == "rnn":
            fam = "rnn_tanh"
            object.__setattr__(self, "family", fam)
        if fam not in FAMILIES:
            raise ValueError(f"CellSpec: family must be one of {FAMILIES}, got {self.family!r}")
        variant = VARIANT_ALIASES.get(self.variant, self.variant)
        if fam == "lstm":
            if variant not in LSTM_VARIANTS:
                raise ValueError(
                    f"CellSpec: LSTM variant must be one of {LSTM_VARIANTS} (or alias 'np'), "
                    f"got {self.variant!r}")
        elif variant != "vanilla":
            raise ValueError(f"CellSpec: variant {self.variant!r} is defined for family 'lstm' only, "
                             f"got family {fam!r}")
        object.__setattr__(self, "variant", variant)
        if self.norm not in NORMS_BY_FAMILY[fam]:
            raise ValueError(f"CellSpec: norm for family {fam!r} must be one of "
                             f"{NORMS_BY_FAMILY[fam]}, got {self.norm!r}")
        if not isinstance(self.max_bn_steps, int) or self.max_bn_steps < 1:
            raise ValueError(f"CellSpec: max_bn_steps must be an int >= 1, got {self.max_bn_steps!r}")
        if not 0.0 <= float(self.bn_momentum) <= 1.0:
            raise ValueError(f"CellSpec: bn_momentum must be in [0, 1], got {self.bn_momentum!r}")
        if not float(self.eps) > 0.0:
            raise ValueError(f"CellSpec: eps must be > 0, got {self.eps!r}")
        if not isinstance(self.proj_size, int) or self.proj_size < 0:
            raise ValueError(f"CellSpec: proj_size must be an int >= 0, got {self.proj_size!r}")
        if self.proj_size > 0 and not (fam == "lstm" and variant == "vanilla" and self.norm == "none"):
            raise ValueError(
                "CellSpec: proj_size > 0 is supported only for the vanilla LSTM without norm, got "
                f"family={fam!r} variant={variant!r} norm={self.norm!r}")

    # ----------------------------------------------------------------- structure
    @property
    def is_lstm(self) -> bool:
        return self.family == "lstm"

    @property
    def gates(self) -> str:
        """Gate rows present in the gate pre-activation vector, in order."""
        if self.family == "lstm":
            return _LSTM_GATES[self.variant]
        if self.family == "gru":
            return "rzn"
        return "h"

    @property
    def num_gates(self) -> int:
        return len(self.gates)

    @property
    def peepholes(self) -> str:
        """Peephole rows present (subset of "ifo", in that order); "" for none."""
        return _LSTM_PEEPHOLES[self.variant] if self.family == "lstm" else ""

    @property
    def input_activation(self) -> bool:
        """False for NIAF: the cell input g is the raw pre-activation."""
        return self.variant != "niaf"

    @property
    def output_activation(self) -> bool:
        """False for NOAF: h = o * c (or o * norm(c))."""
        return self.variant != "noaf"

    @property
    def full_gate_recurrence(self) -> bool:
        return self.family == "lstm" and self.variant == "fgr"

    @property
    def has_gate_biases(self) -> bool:
        """layer_per_gate LSTM has no b_ih / b_hh: the per-gate LN shifts are the biases."""
        return self.norm != "layer_per_gate"

    @property
    def state_names(self) -> tuple[str, ...]:
        """The carried state, in the order modules accept and return it."""
        if self.family == "lstm":
            return ("h", "c", "a") if self.full_gate_recurrence else ("h", "c")
        return ("h",)

    def state_sizes(self, hidden_size: int) -> tuple[int, ...]:
        """Width of each state entry: h is proj_size when projecting; a holds i, f, o (3H)."""
        out = hidden_size if self.proj_size == 0 else self.proj_size
        if self.family == "lstm":
            return (out, hidden_size, 3 * hidden_size) if self.full_gate_recurrence else (out, hidden_size)
        return (out,)

    # ----------------------------------------------------------------- parameters
    def parameter_shapes(self, input_size: int, hidden_size: int, bias: bool = True) -> dict:
        """Shapes of the trainable parameters of one layer-direction, keyed by role.

        Roles (module attribute names follow torch.nn, see fusedrnn.modules):
            w_ih [GH, I], w_hh [GH, H or proj], b_ih [GH], b_hh [GH], w_hr [proj, H],
            w_peep [P, H] (rows i, f, o present), w_fgr [3H, 3H] (rows: i, f, o
            pre-activations; columns: previous i, f, o activations),
            g_ih [GH], g_hh [GH] (gain of the norm of W_ih x / W_hh h),
            g_cell [H], b_cell [H] (norm of c), g_gates [GH], b_gates [GH] (layer_per_gate).
        """
        H, GH = hidden_size, self.num_gates * hidden_size
        rec = self.proj_size or H
        shapes = {"w_ih": (GH, input_size), "w_hh": (GH, rec)}
        if bias and self.has_gate_biases:
            shapes["b_ih"] = (GH,)
            shapes["b_hh"] = (GH,)
        if self.proj_size:
            shapes["w_hr"] = (self.proj_size, H)
        if self.peepholes:
            shapes["w_peep"] = (len(self.peepholes), H)
        if self.full_gate_recurrence:
            shapes["w_fgr"] = (3 * H, 3 * H)
        if self.norm in ("layer", "batch"):
            shapes["g_ih"] = (GH,)
            shapes["g_hh"] = (GH,)
        if self.norm == "layer_per_gate":
            shapes["g_gates"] = (GH,)
            shapes["b_gates"] = (GH,)
        if self.family == "lstm" and self.norm != "none":
            shapes["g_cell"] = (H,)
            shapes["b_cell"] = (H,)
        return shapes

    def buffer_shapes(self, hidden_size: int) -> dict:
        """Per-step batch-norm running statistics of one layer-direction: [S, GH] or [S, H]."""
        if self.norm != "batch":
            return {}
        S, H, GH = self.max_bn_steps, hidden_size, self.num_gates * hidden_size
        return {"rm_ih": (S, GH), "rv_ih": (S, GH), "rm_hh": (S, GH), "rv_hh": (S, GH),
                "rm_cell": (S, H), "rv_cell": (S, H)}
