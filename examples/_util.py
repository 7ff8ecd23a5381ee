"""Helpers shared by the example scripts: initialization, state handling, timing, output files.

The examples need the optional extras (`pip install fusedrnn[examples]`: numpy, tqdm,
matplotlib); `require_extras` says so clearly when one is missing.
"""
from __future__ import annotations

import importlib.util
import json
import math
import platform
import random
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = Path(__file__).resolve().parent


def require_extras() -> None:
    """Exit with a clear message when an optional dependency of the examples is missing."""
    missing = [m for m in ("numpy", "tqdm", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"the fusedrnn examples need {', '.join(missing)}: "
                 "pip install 'fusedrnn[examples]' (or pip install numpy tqdm matplotlib)")


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if importlib.util.find_spec("numpy") is not None:
        import numpy as np
        np.random.seed(seed)


def init_recurrent(rnn: torch.nn.Module, w_hh_init: str = "orthogonal", forget_bias: float = 1.0) -> None:
    """Re-initialize a fusedrnn LSTM/GRU/RNN as the papers do.

    w_hh_init: "orthogonal" (each gate block of W_hh orthogonal), "identity" (each gate
    block the identity, Le et al. 2015) or "default" (keep torch.nn's uniform init).
    forget_bias: total forget-gate bias (LSTM variants that have a forget gate), split as
    b_ih = forget_bias, b_hh = 0; with norm="layer_per_gate" it goes into the gate shift.
    """
    if w_hh_init not in ("orthogonal", "identity", "default"):
        raise ValueError(f"w_hh_init must be 'orthogonal', 'identity' or 'default', got {w_hh_init!r}")
    spec = rnn.spec
    H = rnn.hidden_size
    with torch.no_grad():
        for directions in rnn.layer_parameters():
            for p in directions:
                if w_hh_init != "default":
                    for block in p["w_hh"].split(H, dim=0):
                        if w_hh_init == "orthogonal":
                            torch.nn.init.orthogonal_(block)
                        else:
                            block.copy_(torch.eye(*block.shape, dtype=block.dtype))
                if spec.is_lstm and "f" in spec.gates:
                    f = slice(spec.gates.index("f") * H, (spec.gates.index("f") + 1) * H)
                    if "b_ih" in p:
                        p["b_ih"][f] = forget_bias
                        p["b_hh"][f] = 0.0
                    elif "b_gates" in p:
                        p["b_gates"][f] = forget_bias


def detach_state(state):
    """Truncated BPTT: cut the graph behind a state (a tensor or a tuple of tensors)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return tuple(s.detach() for s in state)


def environment() -> dict:
    """What the timings were measured on."""
    return {"torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def bits(nats: float) -> float:
    return nats / math.log(2.0)


def progress(iterable, **kwargs):
    """tqdm progress bar (disabled when stderr is not a terminal unless forced)."""
    from tqdm import tqdm
    return tqdm(iterable, dynamic_ncols=True, leave=False, **kwargs)


def plot_curves(path: Path, runs: dict, panels: list, title: str) -> None:
    """One PNG with one panel per (x key, y key, x label, y label); one line per run.

    runs: {label: history dict of lists}; a run whose history lacks a key is skipped in that panel.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    # one colour per model (the label before " ["), dashed lines for the reference backend
    models = list(dict.fromkeys(label.split(" [")[0] for label in runs))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    for ax, (xkey, ykey, xlabel, ylabel) in zip(axes[0], panels):
        for label, hist in runs.items():
            if hist.get(xkey) and hist.get(ykey):
                style = "--" if "[reference]" in label else "-"
                ax.plot(hist[xkey], hist[ykey], style, marker="o", markersize=3, label=label,
                        color=colors[label.split(" [")[0]])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
