"""Ratios, tables (stdout / Markdown), JSON, CSV and the time-vs-shape plot."""
from __future__ import annotations

import csv
import json
import os

from .candidates import CANDIDATES
from .suites import CELLS

MODE_TITLES = {"fwd": "forward (inference: eval, no_grad)",
               "fwdbwd": "forward+backward (training: train mode, autograd, y.backward(dy))"}

CSV_FIELDS = ("mode", "dtype", "shape", "T", "B", "I", "H", "sweeps", "cell", "candidate", "label", "status",
              "reason", "note", "median_ms", "iqr_ms", "q1_ms", "q3_ms", "min_ms", "repeats", "first_call_s",
              "peak_mib", "max_abs_diff", "vs_nn", "vs_reference", "vs_compile", "vs_floor", "paired_fused_ms",
              "paired_nn_ms", "paired_calls", "vs_nn_paired")

RATIO_BASES = (("vs_nn", "nn"), ("vs_reference", "reference"), ("vs_compile", "compile"), ("vs_floor", "floor"))


def _key(r):
    return (r["mode"], r["dtype"], r["T"], r["B"], r["I"], r["H"], r["cell"])


def add_ratios(rows) -> None:
    """vs_X = median / median of candidate X on the same mode, dtype, shape and cell (None if missing);
    vs_nn_paired = paired_fused_ms / paired_nn_ms on the fused rows timed side by side with torch.nn."""
    ok = {(_key(r), r["candidate"]): r["median_ms"] for r in rows if r["status"] == "ok"}
    for r in rows:
        for field, base in RATIO_BASES:
            b = ok.get((_key(r), base))
            r[field] = (r["median_ms"] / b) if (r["status"] == "ok" and b) else None
        r["vs_nn_paired"] = r["paired_fused_ms"] / r["paired_nn_ms"] if r.get("paired_nn_ms") else None


def nn_ratio(r):
    """The fused row's ratio to torch.nn for the speed targets: the side-by-side one where measured."""
    return r["vs_nn_paired"] if r.get("vs_nn_paired") is not None else r["vs_nn"]


def _ms(v):
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _x(v):
    return "-" if v is None else f"{v:.2f}x"


class Notes:
    """Footnotes for reasons, numbered in order of first use."""

    def __init__(self):
        self.items = []

    def ref(self, text: str) -> str:
        if text not in self.items:
            self.items.append(text)
        return f"[{self.items.index(text) + 1}]"

    def lines(self):
        return [f"[{i + 1}] {t}" for i, t in enumerate(self.items)]


def _table(header, rows):
    rows = [[str(c).replace("|", "/") for c in r] for r in rows]  # a "|" would split a Markdown cell
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    fmt = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows]


def _groups(rows, keys):
    out = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _cell_text(r, notes):
    if r["status"] != "ok":
        return "n/a " + notes.ref(r["reason"])
    s = _ms(r["median_ms"])
    if r.get("note"):
        s += " " + notes.ref(r["note"])
    return s


def summary_tables(rows, labels):
    """Wide tables: one per mode and dtype; rows (shape, cell); median ms per candidate; fused ratios."""
    out, notes = [], Notes()
    present = [c for c in CANDIDATES if any(r["candidate"] == c for r in rows)]
    for (mode, dtype), grp in _groups(rows, ("mode", "dtype")).items():
        by = {(r["shape"], r["cell"], r["candidate"]): r for r in grp}
        order = list(dict.fromkeys((r["shape"], r["T"], r["B"], r["I"], r["H"], r["cell"]) for r in grp))
        header = ["shape (T,B,I,H)", "cell"] + [labels[c] + " ms" for c in present]
        ratio_cols = [("fused", "vs_nn", "fused/nn"), ("fused", "vs_nn_paired", "fused/nn side by side"),
                      ("fused", "vs_reference", "fused/ref"), ("fused", "vs_compile", "fused/compile"),
                      ("fused", "vs_floor", "fused/floor"), ("reference", "vs_nn", "ref/nn")]
        bases = {"vs_nn": "nn", "vs_reference": "reference", "vs_compile": "compile", "vs_floor": "floor"}
        ratio_cols = [rc for rc in ratio_cols if rc[0] in present and bases.get(rc[1], "nn") in present
                      and (rc[1] != "vs_nn_paired" or any(r.get("vs_nn_paired") is not None for r in grp))]
        header += [rc[2] for rc in ratio_cols]
        table = []
        for shape, T, B, I, H, cell in order:  # noqa: E741
            line = [f"{shape} ({T},{B},{I},{H})", cell]
            for c in present:
                r = by.get((shape, cell, c))
                line.append("" if r is None else _cell_text(r, notes))
            for c, field, _ in ratio_cols:
                r = by.get((shape, cell, c))
                line.append(_x(r.get(field)) if r else "")
            table.append(line)
        out.append(f"### {MODE_TITLES[mode]}, {dtype}: median ms")
        out.append("")
        out += _table(header, table)
        out.append("")
    if notes.items:
        out.append("Notes:")
        out += notes.lines()
        out.append("")
    return out


def detail_tables(rows, labels):
    """Long tables, one per mode, dtype and shape: every candidate with IQR, ratios, memory, check."""
    out, notes = [], Notes()
    for (mode, dtype, shape), grp in _groups(rows, ("mode", "dtype", "shape")).items():
        r0 = grp[0]
        out.append(f"#### {mode}, {dtype}, {shape} (T={r0['T']}, B={r0['B']}, I={r0['I']}, H={r0['H']})")
        out.append("")
        header = ["cell", "candidate", "median ms", "IQR ms", "n", "x nn", "x nn side by side", "x ref", "x compile",
                  "x floor", "1st call s", "peak MiB", "max abs diff vs ref"]
        table = []
        for r in grp:
            if r["status"] != "ok":
                table.append([r["cell"], labels[r["candidate"]], "n/a " + notes.ref(r["reason"])] + [""] * 10)
                continue
            note = (" " + notes.ref(r["note"])) if r.get("note") else ""
            diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
            mem = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
            table.append([r["cell"], labels[r["candidate"]] + note, _ms(r["median_ms"]), _ms(r["iqr_ms"]),
                          r["repeats"], _x(r["vs_nn"]), _paired_text(r), _x(r["vs_reference"]), _x(r["vs_compile"]),
                          _x(r["vs_floor"]), f"{r['first_call_s']:.2f}", mem, diff])
        out += _table(header, table)
        out.append("")
    if notes.items:
        out.append("Notes:")
        out += notes.lines()
        out.append("")
    return out


def _paired_text(r):
    """'1.09x (8.1 / 7.4 ms, 20 calls each)' for a row timed side by side with torch.nn, else '-'."""
    if r.get("vs_nn_paired") is None:
        return "-"
    return (f"{r['vs_nn_paired']:.2f}x ({_ms(r['paired_fused_ms'])} / {_ms(r['paired_nn_ms'])} ms, "
            f"{r['paired_calls']} calls each)")


def meta_lines(meta):
    keys = ("command", "suite", "device_name", "torch", "python", "threads", "git_commit", "dtype_note",
            "fused_backend", "reference_torchscript", "timing", "memory", "floor", "nn_note", "side_by_side", "check",
            "compile_note", "utc", "load", "malloc", "wall_s", "interrupted")
    return [f"- {k}: {meta[k]}" for k in keys if k in meta]


# The speed targets of issue 3 (CPU) and issue 5 (GPU), on forward+backward:
# (cells, ratio field, bound, description, extra condition on the row); "vs_nn" targets take the
# side-by-side ratio where it was measured (nn_ratio).
TARGETS = {
    "cpu": [(("vanilla",), "vs_nn", 1.0, "fused <= torch.nn.LSTM", None),
            (("ln", "bn"), "vs_nn", 1.2, "fused <= 1.2x torch.nn.LSTM (plain)", None),
            (tuple(CELLS), "vs_reference", 1 / 1.5, "fused >= 1.5x faster than eager reference", None),
            (tuple(CELLS), "vs_compile", 1.0, "fused faster than torch.compile(step)", None)],
    "cuda": [(("vanilla",), "vs_nn", 1.0, "fused <= cuDNN LSTM", None),
             (("vanilla",), "vs_nn", 0.5, "fused >= 2x faster than cuDNN at B <= 16", lambda r: r["B"] <= 16),
             (("ln", "bn"), "vs_nn", 1.3, "fused <= 1.3x cuDNN LSTM (plain)", None),
             (("ln", "bn"), "vs_reference", 0.1, "fused >= 10x faster than eager reference", None)],
}


def target_lines(rows, device: str):
    """Met / missed per speed target (issues 3 and 5), from the fused rows of forward+backward."""
    out = []
    fused = [r for r in rows if r["candidate"] == "fused" and r["mode"] == "fwdbwd" and r["status"] == "ok"]
    if not fused:
        return ["No fusedrnn rows were measured: no speed target can be checked.", ""]
    for cells, field, bound, text, cond in TARGETS.get(device, []):
        ratio = nn_ratio if field == "vs_nn" else (lambda r, f=field: r[f])
        pts = [r for r in fused if r["cell"] in cells and ratio(r) is not None and (cond is None or cond(r))]
        if not pts:
            continue
        missed = [r for r in pts if ratio(r) > bound]
        line = f"- {text}: met on {len(pts) - len(missed)} of {len(pts)} (cell, shape, dtype) points"
        if field == "vs_nn":
            paired = sum(r.get("vs_nn_paired") is not None for r in pts)
            line += f" ({paired} of them timed side by side)"
        if missed:
            worst = sorted(missed, key=lambda r: -ratio(r))[:6]
            line += "; missed: " + ", ".join(f"{r['cell']} {r['shape']} {r['dtype']} {ratio(r):.2f}x" for r in worst)
            line += " ..." if len(missed) > 6 else ""
        out.append(line)
    return out + [""]


def write_markdown(path, meta, rows, labels):
    lines = ["# fusedrnn benchmark", ""] + meta_lines(meta) + ["", "## Speed targets (forward+backward)", ""]
    lines += target_lines(rows, meta.get("device", ""))
    lines += ["## Summary", ""]
    lines += summary_tables(rows, labels)
    lines += ["## Details", ""] + detail_tables(rows, labels)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_json(path, meta, rows):
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=1)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})


def write_plots(out_dir, meta, rows, labels):
    """One PNG per mode and dtype: median time vs the swept axis, a panel per (cell, sweep), a line per candidate.

    Returns the written paths, or raises ImportError when matplotlib is missing.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.ticker
    import matplotlib.pyplot as plt

    paths = []
    swept = [r for r in rows if r["sweeps"] and r["status"] == "ok"]
    styles = {"fused": ("C3", "o", "-"), "reference": ("C0", "s", "--"), "compile": ("C1", "^", "--"),
              "script": ("C2", "v", "--"), "nn": ("k", "D", "-"), "floor": ("0.5", "", ":")}
    for (mode, dtype), grp in _groups(swept, ("mode", "dtype")).items():
        sweeps = list(dict.fromkeys(s for r in grp for s in r["sweeps"].split(";")))
        cells = [c for c in CELLS if any(r["cell"] == c for r in grp)]
        fig, axes = plt.subplots(len(cells), len(sweeps), figsize=(4.2 * len(sweeps), 3.3 * len(cells)),
                                 squeeze=False)
        for i, cell in enumerate(cells):
            for j, sw in enumerate(sweeps):
                ax = axes[i][j]
                axis = sw.split(":")[1]
                pts = [r for r in grp if r["cell"] == cell and sw in r["sweeps"].split(";")]
                fixed = ""
                for cand in CANDIDATES:
                    cp = sorted((r[axis], r["median_ms"]) for r in pts if r["candidate"] == cand)
                    if not cp:
                        continue
                    color, marker, ls = styles[cand]
                    plain = cand == "nn" and any(r.get("note") for r in pts if r["candidate"] == "nn")
                    ax.plot([p[0] for p in cp], [p[1] for p in cp], color=color, marker=marker, linestyle=ls,
                            label=labels[cand] + (" (plain cell)" if plain else ""), markersize=4)
                if pts:
                    r0 = pts[0]
                    fixed = ", ".join(f"{k}={r0[k]}" for k in "TBIH" if k != axis and not (axis == "H" and k == "I"
                                                                                      and r0["I"] == r0["H"]))
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                xs = sorted({r[axis] for r in pts})
                ax.set_xticks(xs)
                ax.set_xticklabels([str(v) for v in xs])
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
                ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
                ax.set_xlabel(axis + (" (I = H)" if axis == "H" and pts and pts[0]["I"] == pts[0]["H"] else ""))
                ax.set_ylabel("median ms")
                ax.set_title(f"{cell}: time vs {axis} ({fixed})", fontsize=9)
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=7)
        fig.suptitle(f"fusedrnn benchmark, {MODE_TITLES[mode]}, {dtype}\n{meta.get('device_name', '')}, "
                     f"torch {meta.get('torch', '')}, {meta.get('threads', '')} threads", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, f"plot-{mode}-{dtype}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
