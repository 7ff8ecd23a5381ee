"""What the benchmark measures: the cells, the shapes (T, B, I, H) and the suites that combine them.

Shapes are the workloads fusedrnn is for (issue 6): pixel and row sequential MNIST, a character
LM, a PTB-like word LM and a generic mid-size layer, plus sweeps over T, B and H that the plot
draws. A suite is a list of entries; each entry crosses some cells with some shapes and may
restrict the candidates (the slow ones: eager reference, torch.compile, TorchScript) so that a
suite stays within its time budget.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from fusedrnn.spec import CellSpec

# name -> (spec, human label). Order is the order of the tables.
CELLS = {
    "vanilla": (CellSpec("lstm", "vanilla"), "LSTM"),
    "peephole": (CellSpec("lstm", "peephole"), "LSTM peephole (Greff V)"),
    "nig": (CellSpec("lstm", "nig"), "LSTM no input gate"),
    "nfg": (CellSpec("lstm", "nfg"), "LSTM no forget gate"),
    "nog": (CellSpec("lstm", "nog"), "LSTM no output gate"),
    "niaf": (CellSpec("lstm", "niaf"), "LSTM no input activation"),
    "noaf": (CellSpec("lstm", "noaf"), "LSTM no output activation"),
    "cifg": (CellSpec("lstm", "cifg"), "LSTM coupled input-forget"),
    "fgr": (CellSpec("lstm", "fgr"), "LSTM full gate recurrence"),
    "ln": (CellSpec("lstm", "vanilla", "layer"), "LayerNorm LSTM"),
    "ln_per_gate": (CellSpec("lstm", "vanilla", "layer_per_gate"), "LayerNorm-per-gate LSTM"),
    "bn": (CellSpec("lstm", "vanilla", "batch"), "BatchNorm LSTM"),
    "gru": (CellSpec("gru"), "GRU"),
    "ln_gru": (CellSpec("gru", norm="layer"), "LayerNorm GRU"),
    "rnn_tanh": (CellSpec("rnn_tanh"), "tanh RNN"),
    "proj": (CellSpec("lstm", proj_size=1), "LSTM with projection (torch.nn.LSTM's proj_size = H / 4)"),
}


def cell_spec(cell: str, H: int) -> CellSpec:
    """The spec of `cell` at hidden size H: the projected LSTM projects to H // 4 (at least 1)."""
    spec = CELLS[cell][0]
    return replace(spec, proj_size=max(1, H // 4)) if spec.proj_size else spec


@dataclass(frozen=True)
class Shape:
    """One layer workload: T steps, B batch, I input size, H hidden size."""

    name: str
    T: int
    B: int
    I: int  # noqa: E741
    H: int
    # (sweep id, axis) pairs this shape belongs to, e.g. (("cpu-B", "B"),): drawn in the plot.
    sweeps: tuple = field(default=(), compare=False)

    @property
    def dims(self) -> tuple:
        return (self.T, self.B, self.I, self.H)

    def describe(self) -> str:
        return f"{self.name} (T={self.T}, B={self.B}, I={self.I}, H={self.H})"


NAMED_SHAPES = {
    "smnist": Shape("smnist", 784, 64, 1, 100),      # pixel-by-pixel sequential MNIST
    "rowmnist": Shape("rowmnist", 28, 100, 28, 128),  # row-by-row MNIST
    "charlm": Shape("charlm", 80, 32, 512, 512),     # character-level LM
    "ptb": Shape("ptb", 35, 20, 650, 650),           # PTB-like word LM (medium, Zaremba et al.)
    "generic": Shape("generic", 100, 32, 256, 256),
}


def parse_shape(text: str) -> Shape:
    """A named shape ("charlm") or an explicit "TxBxIxH" ("100x32x256x256")."""
    if text in NAMED_SHAPES:
        return NAMED_SHAPES[text]
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"shape must be one of {sorted(NAMED_SHAPES)} or 'TxBxIxH' with positive ints, "
                         f"got {text!r}")
    T, B, I, H = (int(p) for p in parts)  # noqa: E741
    return Shape(f"{T}x{B}x{I}x{H}", T, B, I, H)


def sweep(sweep_id: str, axis: str, values, T: int, B: int, I: int, H: int, *, input_follows_hidden=False):  # noqa: E741
    """Shapes varying one axis ("T", "B" or "H") around (T, B, I, H); with input_follows_hidden, I = H."""
    out = []
    for v in values:
        dims = {"T": T, "B": B, "I": I, "H": H}
        dims[axis] = v
        if input_follows_hidden and axis == "H":
            dims["I"] = v
        t, b, i, h = dims["T"], dims["B"], dims["I"], dims["H"]
        out.append(Shape(f"{t}x{b}x{i}x{h}", t, b, i, h, sweeps=((sweep_id, axis),)))
    return out


@dataclass(frozen=True)
class Entry:
    """Cells x shapes, optionally restricted to some candidates (None: all)."""

    cells: tuple
    shapes: tuple
    candidates: tuple | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    entries: tuple
    dtypes: tuple = ("float32",)


ALL_CELLS = tuple(CELLS)
NAMED = tuple(NAMED_SHAPES.values())
FAST = ("fused", "nn", "floor")  # candidates cheap enough for every shape of a sweep


def _cpu_default() -> Suite:
    core = ("vanilla", "ln", "bn", "gru")
    sweeps = (sweep("cpu-T", "T", (25, 50, 100), T=0, B=32, I=128, H=128)
              + sweep("cpu-B", "B", (8, 32, 128), T=50, B=0, I=128, H=128)
              + sweep("cpu-H", "H", (64, 128, 256), T=50, B=32, I=0, H=0, input_follows_hidden=True))
    named = (NAMED_SHAPES["rowmnist"], NAMED_SHAPES["generic"])
    return Suite(
        "default",
        "CPU default (meant for about a minute on 2 idle cores plus torch.compile time; 280 s with --threads 1 "
        "on the busy shared 2-core machine, compile included): LSTM, LN-LSTM, BN-LSTM, GRU on row "
        "MNIST and the generic shape (torch.compile for LSTM and LN-LSTM only), and small T/B/H sweeps "
        "(LSTM and LN-LSTM, every candidate but torch.compile) for the plot",
        (Entry(core, named, ("fused", "reference", "script", "nn", "floor")),
         Entry(("vanilla", "ln"), named, ("compile",)),
         Entry(("vanilla", "ln"), tuple(sweeps), ("fused", "reference", "script", "nn", "floor"))),
    )


def _cpu_full() -> Suite:
    sweeps = (sweep("full-T", "T", (25, 50, 100, 200, 400, 800), T=0, B=32, I=256, H=256)
              + sweep("full-B", "B", (1, 8, 32, 64, 128, 256), T=100, B=0, I=256, H=256)
              + sweep("full-H", "H", (64, 128, 256, 512, 1024), T=100, B=32, I=0, H=0,
                      input_follows_hidden=True))
    return Suite(
        "full",
        "every cell on the five workload shapes with every candidate, plus T/B/H sweeps of "
        "LSTM, LN-LSTM, BN-LSTM and GRU (every candidate but torch.compile)",
        (Entry(ALL_CELLS, NAMED),
         Entry(("vanilla", "ln", "bn", "gru"), tuple(sweeps), ("fused", "reference", "script", "nn", "floor"))),
    )


def _gpu_default() -> Suite:
    # Issue 5's grid: B in {1, 8, 32, 64, 128}, H in {128, 256, 512, 1024}, T in {100, 1000}, fp32 and bf16.
    # The fused kernel, cuDNN and the GEMM floor run every point of the three sweeps; the slow
    # Python-loop candidates run the workload shapes and the sweep centre only.
    sb = sweep("gpu-B", "B", (1, 8, 32, 64, 128), T=100, B=0, I=256, H=256)
    sh = sweep("gpu-H", "H", (128, 256, 512, 1024), T=100, B=64, I=0, H=0, input_follows_hidden=True)
    st = sweep("gpu-T", "T", (100, 1000), T=0, B=64, I=256, H=256)
    st_big = sweep("gpu-T-H1024", "T", (100, 1000), T=0, B=8, I=1024, H=1024)
    return Suite(
        "gpu",
        "GPU default (166 s of measurement on an H100 with fusedrnn-cuda, compile included): issue 5's B, H "
        "and T sweeps for LSTM, LN-LSTM, BN-LSTM and GRU "
        "(fused, cuDNN, GEMM floor), the eager reference and TorchScript on the workload shapes, "
        "torch.compile for LSTM and LN-LSTM on the generic shape; fp32 (TF32 off) and bf16",
        (Entry(("vanilla", "ln", "bn", "gru"), tuple(sb + sh + st + st_big), FAST),
         Entry(("vanilla", "ln", "bn", "gru"),
               (NAMED_SHAPES["charlm"], NAMED_SHAPES["ptb"], NAMED_SHAPES["generic"]),
               ("fused", "nn", "floor", "reference", "script")),
         Entry(("vanilla", "ln"), (NAMED_SHAPES["generic"],), ("compile",))),
        dtypes=("float32", "bfloat16"),
    )


def _tiny() -> Suite:
    """Seconds-long smoke suite (tests, quick checks)."""
    sweeps = sweep("tiny-T", "T", (3, 6), T=0, B=4, I=5, H=8) + sweep("tiny-B", "B", (2, 4), T=4, B=0, I=5, H=8)
    return Suite("tiny", "smoke test: two cells, tiny shapes",
                 (Entry(("vanilla", "ln"), tuple(sweeps)),))


SUITES = {"default": _cpu_default, "full": _cpu_full, "gpu": _gpu_default, "tiny": _tiny}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {sorted(SUITES)}")
    return SUITES[name]()
