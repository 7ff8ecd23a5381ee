"""LSTM variant study after Greff et al. 2017 ("LSTM: A Search Space Odyssey"), on the char LM.

Each variant is trained with the same budget (epochs, model size, optimizer, seed) by
char_lm.train_cell on the same text, and scored by validation bits per character.
Greff's names, all relative to the peephole LSTM "V" (the baseline):
  V     peephole   vanilla LSTM with peepholes (p_i, p_f on c_{t-1}, p_o on c_t)
  NIG   nig        no input gate           NFG   nfg   no forget gate
  NOG   nog        no output gate          NIAF  niaf  no input activation function
  NOAF  noaf       no output activation    NP    np    no peepholes (= torch.nn.LSTM)
  CIFG  cifg       coupled input and forget gate (f = 1 - i)
  FGR   fgr        full gate recurrence (i, f, o see the previous i, f, o; state (h, c, a))

Expected result (measured, see examples/results/README.md): with the default budget
(1 layer x 128, 5 epochs over Macbeth, seed 1) V reaches 2.76 validation bpc; NIG, NOG,
NIAF and CIFG land within 0.11 bpc of it, NP and FGR 0.10-0.15 worse, NFG clearly worse
(+0.63), and NOAF diverges (h = o * c is unbounded) -- the ordering of the top group is
within seed noise; Greff et al. needed hundreds of trials to separate them.
Outputs in --out: metrics.json, table.md, variants.png and a checkpoint per variant.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("fusedrnn") is None:  # running from a clone without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import char_lm
from _util import environment, require_extras, write_json

# Greff's name -> fusedrnn LSTM variant, baseline first.
VARIANTS = {"V": "peephole", "NIG": "nig", "NFG": "nfg", "NOG": "nog", "NIAF": "niaf", "NOAF": "noaf",
            "NP": "np", "CIFG": "cifg", "FGR": "fgr"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    char_lm.add_training_args(p, epochs=5, hidden=128, layers=1)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma list of Greff names (default: all: {','.join(VARIANTS)})")
    p.add_argument("--out", type=Path, default=Path("runs/variant_study"), help="output folder")
    args = p.parse_args(argv)
    args.variants = [v.strip().upper() for v in args.variants.split(",") if v.strip()]
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"--variants: unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    return args


def plot(path: Path, runs: dict, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    final = [runs[n]["val_bpc"][-1] for n in names]
    # a diverged variant (NOAF can: h = o * c is unbounded) would flatten every other bar: cap the
    # axes at the ordinary runs and print the off-scale values
    ordinary = sorted(final)[:max(len(final) - 1, 1)] if len(final) > 2 else final
    top = max(ordinary) + 0.5 if max(final) > max(ordinary) + 1.0 else max(final) + 0.1
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for name, h in runs.items():
        axes[0].plot(h["epoch"], h["val_bpc"], marker="o", markersize=3, label=name,
                     linewidth=2.5 if name == "V" else 1.2)
    axes[0].set_ylim(min(min(h["val_bpc"]) for h in runs.values()) - 0.1,
                     max(max(v for v in h["val_bpc"] if v <= top) for h in runs.values() if min(h["val_bpc"]) <= top)
                     + 0.1)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("validation bits / char")
    axes[0].legend(fontsize=8, ncol=2)
    colors = ["tab:red" if n == "V" else "tab:blue" for n in names]
    axes[1].bar(names, [min(f, top) for f in final], color=colors)
    for i, f in enumerate(final):
        if f > top:
            axes[1].text(i, top - 0.05, f"{f:.1f}\n(off scale)", ha="center", va="top", fontsize=7, color="white")
    axes[1].set_ylim(min(final) - 0.15, top)
    axes[1].set_ylabel("final validation bits / char (lower is better)")
    if "V" in runs:
        axes[1].axhline(runs["V"]["val_bpc"][-1], color="tab:red", linewidth=0.8, linestyle="--")
    med = [sorted(runs[n]["epoch_time_s"])[len(runs[n]["epoch_time_s"]) // 2] for n in names]
    axes[2].bar(names, med, color=colors)
    axes[2].set_ylabel("seconds / epoch (median; shared CPU, noisy)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    require_extras()
    cfg = parse_args(argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    corpus = char_lm.Corpus(char_lm.load_text(cfg.data), cfg.val_fraction)
    print(f"{cfg.data}: {len(corpus.train)} train / {len(corpus.val)} validation characters; "
          f"variants {cfg.variants}, {cfg.epochs} epochs each, backend {cfg.backend}", flush=True)
    cfg.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name in cfg.variants:
        cell = f"lstm:{VARIANTS[name]}"
        model, hist = char_lm.train_cell(cfg, cell, corpus, cfg.backend, bar=not cfg.no_bar)
        runs[name] = hist
        char_lm.save_checkpoint(cfg.out / f"checkpoint_{name}.pt", model, corpus, cell, cfg, hist)
    base = runs["V"]["val_bpc"][-1] if "V" in runs else None
    rows = []
    for name, h in runs.items():
        times = sorted(h["epoch_time_s"])
        rows.append({"variant": name, "fusedrnn_variant": VARIANTS[name], "ran": h["last_backend"],
                     "val_bpc": h["val_bpc"][-1], "delta_vs_V": None if base is None else h["val_bpc"][-1] - base,
                     "median_epoch_s": times[len(times) // 2]})
    lines = ["| variant | fusedrnn variant | backend (ran) | val bpc | vs V | s / epoch (median) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        delta = "-" if r["delta_vs_V"] is None else f"{r['delta_vs_V']:+.3f}"
        lines.append(f"| {r['variant']} | {r['fusedrnn_variant']} | {cfg.backend} ({r['ran']}) | "
                     f"{r['val_bpc']:.3f} | {delta} | {r['median_epoch_s']:.2f} |")
    table = "\n".join(lines)
    print(table)
    (cfg.out / "table.md").write_text(table + "\n")
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(cfg).items()}
    write_json(cfg.out / "metrics.json", {"task": "LSTM variant study (char LM)", "config": config,
                                          "environment": environment(), "summary": rows, "runs": runs})
    plot(cfg.out / "variants.png", runs,
         f"Greff et al. variants, char LM on {cfg.data.name}: {cfg.layers} x {cfg.hidden}, "
         f"{cfg.epochs} epochs, seed {cfg.seed}")
    print(f"wrote {cfg.out}/metrics.json, table.md, variants.png, checkpoint_*.pt")
    return runs


if __name__ == "__main__":
    main()
