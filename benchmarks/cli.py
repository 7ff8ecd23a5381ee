"""python -m benchmarks: fusedrnn against every alternative, side by side, in one run.

Candidates (--candidates, keys in brackets):
  [fused]     fusedrnn's kernels for the device (backend="cpu" or "cuda"), when built;
  [reference] the eager pure-PyTorch reference (backend="reference");
  [compile]   torch.compile of the reference's per-step cell function (the time loop stays in
              Python; compiling the unrolled loop would take minutes); first-call time reported;
  [script]    TorchScript of a scriptable re-implementation (benchmarks/scripted.py), because the
              reference itself does not script;
  [nn]        torch.nn.LSTM / GRU / RNN (oneDNN LSTM on CPU, cuDNN on GPU); for cells torch.nn does
              not have, the family's plain cell (the baseline of the speed targets), marked as such;
  [floor]     the GEMMs alone (input projection, T recurrent products, backward GEMMs).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time

import torch

from . import report, scripted
from .candidates import CANDIDATES, MODES, NNCandidate, Unavailable, Workload, build, first_line
from .suites import CELLS, NAMED_SHAPES, SUITES, cell_spec, get_suite, parse_shape
from .timing import Timer, peak_memory_mib

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64, "fp64": torch.float64}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _csv(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark fusedrnn against the eager reference, torch.compile, TorchScript, "
                    "torch.nn (oneDNN / cuDNN) and the GEMM-only floor; forward and forward+backward.",
        epilog=f"suites: {', '.join(f'{k}' for k in SUITES)}; cells: {', '.join(CELLS)}; "
               f"named shapes: {', '.join(f'{k}={v.T}x{v.B}x{v.I}x{v.H}' for k, v in NAMED_SHAPES.items())}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available, else cpu)")
    ap.add_argument("--suite", default=None, choices=sorted(SUITES),
                    help="default: 'default' on CPU (a few minutes on 2 cores), 'gpu' on CUDA (~3 min on an H100); "
                         "'full': every cell on every workload shape (long); 'tiny': smoke test")
    ap.add_argument("--cells", default=None, help=f"comma list replacing the suite's cells ({', '.join(CELLS)})")
    ap.add_argument("--shapes", default=None,
                    help="comma list replacing the suite's shapes: named shapes or TxBxIxH (e.g. 100x32x256x256)")
    ap.add_argument("--candidates", default=None,
                    help=f"comma list of candidates to run (default all: {', '.join(CANDIDATES)})")
    ap.add_argument("--modes", default="fwd,fwdbwd", help="fwd (inference), fwdbwd (training), or both")
    ap.add_argument("--dtype", default=None,
                    help="comma list (float32, bfloat16, float16, float64); default: the suite's (GPU: float32,bfloat16)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 7 CPU, 10 GPU)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed calls first, the first includes compilation (default 2 CPU, 3 GPU)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds of timed calls per measurement; fewer repeats (min 3) for slow ones; 0: off "
                         "(default 1.0 CPU, 2.0 GPU)")
    ap.add_argument("--side-by-side", type=int, default=5, metavar="ROUNDS",
                    help="rounds of fused and torch.nn forward+backward timed again alternately, after the "
                         "other candidates of a cell and shape (their ratio sets the torch.nn speed targets; "
                         "default 5, 0: off)")
    ap.add_argument("--malloc", default="reuse", choices=("reuse", "default"),
                    help="reuse (default): the command re-runs itself with GLIBC_TUNABLES set so that glibc's "
                         "malloc keeps large blocks in its heap (MALLOC_REUSE), as jemalloc / tcmalloc would; "
                         "default: glibc as the environment has it, which maps and page-faults large blocks "
                         "(oneDNN's LSTM buffers) on every call")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 on GPU (default off: true fp32)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory call")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's default)")
    ap.add_argument("--out", default=None,
                    help="output directory (default benchmarks/results/local/<device>-<utc time>)")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def plan(args, device):
    """[(dtype name, cell, [(Shape, candidate keys)])] in run order: dtype, cell, shape."""
    suite = get_suite(args.suite)
    cand_filter = set(_csv(args.candidates)) if args.candidates else set(CANDIDATES)
    bad = cand_filter - set(CANDIDATES)
    if bad:
        raise SystemExit(f"unknown candidates {sorted(bad)}; choose from {CANDIDATES}")
    cells_override = _csv(args.cells) if args.cells else None
    if cells_override:
        bad = [c for c in cells_override if c not in CELLS]
        if bad:
            raise SystemExit(f"unknown cells {bad}; choose from {list(CELLS)}")
    entries = []
    if args.shapes:
        try:
            shapes = tuple(parse_shape(s) for s in _csv(args.shapes))
        except ValueError as e:
            raise SystemExit(str(e))
        cells = cells_override or list(dict.fromkeys(c for e in suite.entries for c in e.cells))
        entries.append((cells, shapes, set(CANDIDATES)))
    else:
        for e in suite.entries:
            entries.append((cells_override or e.cells, e.shapes, set(e.candidates or CANDIDATES)))
    dtypes = _csv(args.dtype) if args.dtype else list(suite.dtypes)
    for d in dtypes:
        if d not in DTYPES:
            raise SystemExit(f"unknown dtype {d!r}; choose from {sorted(DTYPES)}")
    if device.type == "cpu":
        dropped = [d for d in dtypes if DTYPES[d] in (torch.bfloat16, torch.float16)]
        if dropped and not args.dtype:
            dtypes = [d for d in dtypes if d not in dropped]
    out = []
    for d in dtypes:
        for cell in CELLS:
            merged = {}  # dims -> [Shape, sweeps, candidates]
            for cells, shapes, cands in entries:
                if cell not in cells:
                    continue
                for s in shapes:
                    m = merged.setdefault(s.dims, [s, set(), set()])
                    if s.name in NAMED_SHAPES:
                        m[0] = s
                    m[1].update(s.sweeps)
                    m[2].update(cands & cand_filter)
            todo = [(s, tuple(sorted(sw)), cands) for s, sw, cands in merged.values() if cands]
            if todo:
                out.append((d, cell, todo))
    return suite, dtypes, out


def cpu_kernels_note(ran: bool) -> str:
    """Which CPU kernels fusedrnn's float32 products run here (fusedrnn.cpu_gemm_info), for the
    report's fused_backend line."""
    if not ran:
        return ""
    import fusedrnn

    info = fusedrnn.cpu_gemm_info()
    return f" (CPU kernels: recurrent {info['recurrent']}, large GEMMs {info['large']}, row loops {info['units']})"


def git_commit():
    """HEAD of the checkout (+ whether fusedrnn/csrc/benchmarks have uncommitted changes); outside a
    checkout (e.g. a copied tree on a GPU machine) the FUSEDRNN_COMMIT environment variable, if set."""
    if os.environ.get("FUSEDRNN_COMMIT"):
        return os.environ["FUSEDRNN_COMMIT"] + " (from FUSEDRNN_COMMIT)"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "fusedrnn", "csrc",
                                "benchmarks"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({first_line(e)})"


def device_name(device):
    if device.type == "cuda":
        return (f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, "
                f"cuDNN {torch.backends.cudnn.version()})")
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {platform.machine()}"


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _load1() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def _load_text() -> str:
    try:
        return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


class Progress:
    """tqdm when installed, else one line per cell on stderr."""

    def __init__(self, total, quiet):
        self.bar = None
        self.quiet = quiet
        self.done, self.total = 0, total
        if quiet:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            print("(tqdm not installed: printing progress per cell)", file=sys.stderr)
            return
        self.bar = tqdm(total=total, file=sys.stderr, unit="meas", dynamic_ncols=True)

    def describe(self, text):
        if self.bar is not None:
            self.bar.set_description(text)
        elif not self.quiet:
            print(f"[{self.done}/{self.total}] {text}", file=sys.stderr, flush=True)

    def step(self, n=1):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu or cuda, got {args.device!r}")
    gpu = device.type == "cuda"
    if args.suite is None:
        args.suite = "gpu" if gpu else "default"
    repeats = args.repeats or (10 if gpu else 7)
    if args.warmup is None:
        args.warmup = 3 if gpu else 2
    budget = args.budget if args.budget is not None else (2.0 if gpu else 1.0)
    modes = _csv(args.modes)
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"--modes must be a comma list of {MODES}, got {args.modes!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)

    suite, dtypes, work = plan(args, device)
    stamp = datetime.datetime.now(datetime.timezone.utc)
    out_dir = args.out or os.path.join(REPO, "benchmarks", "results", "local",
                                       f"{device.type}-{stamp.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(out_dir, exist_ok=True)

    cands = build({k for _, _, todo in work for _, _, c in todo for k in c}, device, args.compile_mode)
    labels = {c.key: c.label for c in cands}
    unavailable = {c.key: c.available(device) for c in cands}
    fused = next((c for c in cands if c.key == "fused"), None)
    script_reason = scripted.reference_script_error()
    meta = {
        "command": " ".join(["python -m benchmarks"] + list(args.argv)),
        "suite": f"{suite.name}: {suite.description}" + (" (cells/shapes/candidates overridden on the command line)"
                                                        if (args.cells or args.shapes or args.candidates) else ""),
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "dtype_note": ", ".join(dtypes) + ("; TF32 " + ("allowed" if args.tf32 else "off (matmul and cuDNN)")
                                           if gpu else ""),
        "fused_backend": ("not requested" if fused is None else
                          f"{fused.label}: " + ("available" if unavailable["fused"] is None
                                                else f"unavailable ({unavailable['fused']})")
                          + cpu_kernels_note(fused is not None and unavailable["fused"] is None and not gpu)),
        "reference_torchscript": ("the reference scripts" if not script_reason else
                                  f"the reference does not script ({script_reason}); the TorchScript* column "
                                  "runs benchmarks/scripted.py, a scriptable re-implementation of some cells"),
        "timing": (f"median of up to {repeats} timed calls (fewer, min 3, when they exceed {budget:g} s) after "
                   f"{args.warmup} warm-up calls; " + ("CUDA events, synchronized" if gpu else "time.perf_counter")
                   + "; fwd = inference (eval, no_grad); fwdbwd = training (train mode, autograd, y.backward(dy))"),
        "memory": ("off" if args.no_memory else
                   "peak bytes allocated during one call above the allocation before it: " +
                   ("torch.cuda.max_memory_allocated" if gpu else
                    "CPU allocator events from torch.profiler (ATen tensors; not oneDNN-internal buffers)")),
        "floor": "GEMMs alone with ATen mm into preallocated outputs: fwd = input projection + T recurrent "
                 "products; fwdbwd adds T dh products and the dW_hh, dW_ih, dx GEMMs" +
                 ("; replayed from a CUDA graph (no launch overhead)" if gpu else
                  "; per-call overhead included, so fused kernels with packed weights can beat it"),
        "nn_note": "for cells torch.nn lacks, the torch.nn column is the family's plain cell (nn.LSTM / nn.GRU) "
                   "on the same shape, marked with a note; measured once per shape",
        "side_by_side": (f"fused/nn side by side: fused and torch.nn forward+backward timed again in {args.side_by_side} "
                         "alternating rounds (order reversed every other round, one untimed call per block) after "
                         "each cell's other candidates; ratio of those medians; the torch.nn targets use it"
                         if args.side_by_side > 0 else "off"),
        "check": "max abs diff vs ref: max |y - y_reference| of the fwd output; for bfloat16/float16 the "
                 "reference runs in float32 on the same weights",
        "compile_note": "torch.compile of reference.STEPS[family] (one step), loop and input GEMM eager; "
                        "'1st call s' includes compilation; dynamo caches reset per cell",
        "utc": stamp.strftime("%Y-%m-%d %H:%M:%S"),
        "load": _load_text(),
        "malloc": malloc_note(),
        "modes": modes,
        "repeats": repeats,
        "warmup": args.warmup,
        "budget_s": budget,
    }

    busy = not gpu and _load1() > (os.cpu_count() or 1)
    if busy:
        print(f"warning: load average {_load1():.1f} > {os.cpu_count()} cores: other processes compete for the "
              "CPU; multi-threaded timings will be inflated and noisy", file=sys.stderr)
    timer = Timer(device, repeats, args.warmup, budget)
    total = sum(len(c) for _, _, todo in work for _, _, c in todo) * len(modes)
    progress = Progress(total, args.quiet)
    rows, cache = [], {}
    t_start = time.time()
    partial = os.path.join(out_dir, "results.partial.jsonl")  # one line per row, written after each shape
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with open(partial, "w") as log:
            for dname, cell, todo in work:
                dtype = DTYPES[dname]
                spec = CELLS[cell][0]
                torch._dynamo.reset()
                for c in cands:
                    c.start_cell(cell, spec, dtype)
                for shape, sweeps, keys in todo:
                    w = Workload(cell, cell_spec(cell, shape.H), shape, dtype, device)
                    base = {"dtype": dname, "shape": shape.name, "T": shape.T, "B": shape.B, "I": shape.I,
                            "H": shape.H, "sweeps": ";".join(f"{a}:{b}" for a, b in sweeps), "cell": cell}
                    shape_rows = []
                    for c in cands:
                        if c.key not in keys:
                            continue
                        progress.describe(f"{dname} {cell} {shape.name} {c.key}")
                        new_rows = _measure_candidate(c, w, modes, base, timer, unavailable.get(c.key), cache,
                                                      not args.no_memory, progress)
                        rows += new_rows  # kept if interrupted
                        shape_rows += new_rows
                    progress.describe(f"{dname} {cell} {shape.name} fused and nn side by side")
                    _side_by_side(cands, w, shape_rows, timer, args.side_by_side)
                    for r in shape_rows:
                        log.write(json.dumps(r) + "\n")
                    log.flush()
                    del w
    except KeyboardInterrupt:  # Ctrl-C or a time limit: keep and report what was measured
        meta["interrupted"] = f"stopped after {len(rows)} of {total} rows; the tables are partial"
        print(f"\ninterrupted: writing the {len(rows)} rows measured so far", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous_term)
    progress.close()
    meta["wall_s"] = round(time.time() - t_start, 1)
    meta["load"] += f" at start; {_load_text()} at the end"
    if busy:
        meta["load"] += (f"; BUSY MACHINE: more runnable processes than cores, timings with {meta['threads']} "
                         "threads are inflated and noisy (see IQR)")
    report.add_ratios(rows)

    paths = {"json": os.path.join(out_dir, "results.json"), "csv": os.path.join(out_dir, "results.csv"),
             "md": os.path.join(out_dir, "results.md")}
    report.write_json(paths["json"], meta, rows)  # tables first, plots last: a time limit loses only plots
    report.write_csv(paths["csv"], rows)
    report.write_markdown(paths["md"], meta, rows, labels)
    if "interrupted" not in meta:
        os.remove(partial)
    print("\n".join(["# fusedrnn benchmark", ""] + report.meta_lines(meta) + [""]
                    + report.summary_tables(rows, labels) + ["Speed targets (forward+backward):"]
                    + report.target_lines(rows, device.type)))
    plots = []
    if not args.no_plot:
        try:
            plots = report.write_plots(out_dir, meta, rows, labels)
        except ImportError as e:
            meta["plot"] = f"not drawn: {first_line(e)}"
        meta["plots"] = [os.path.basename(p) for p in plots]
        report.write_json(paths["json"], meta, rows)
    print(f"wall time {meta['wall_s']} s; wrote {', '.join(list(paths.values()) + plots)}")
    return {"meta": meta, "rows": rows, "paths": paths, "plots": plots, "out_dir": out_dir}


def _measure_candidate(c, w, modes, base, timer, unavailable, cache, memory, progress):
    """Rows for candidate c on workload w, one per mode."""
    spec = w.spec
    rows = []
    cache_key = None
    note = None
    if c.key == "nn":
        cache_key = ("nn", spec.family, spec.proj_size, w.shape.dims, w.dtype)
        if not NNCandidate.same_cell(spec):
            note = f"{NNCandidate.baseline_name(spec)}: plain {spec.family} cell (torch.nn has no '{w.cell}')"
    elif c.key == "floor":
        cache_key = ("floor", spec.num_gates, spec.full_gate_recurrence, w.shape.dims, w.dtype)

    def row(mode, **kw):
        r = dict(base, mode=mode, candidate=c.key, label=c.label, status="ok", reason=None, note=note,
                 median_ms=None, iqr_ms=None, q1_ms=None, q3_ms=None, min_ms=None, repeats=None,
                 first_call_s=None, peak_mib=None, max_abs_diff=None)
        r.update(kw)
        return r

    if unavailable is not None:
        progress.step(len(modes))
        return [row(m, status="n/a", reason=unavailable) for m in modes]
    w.restore_buffers()
    runner = None
    try:
        runner = c.prepare(w)
    except Unavailable as e:
        progress.step(len(modes))
        return [row(m, status="n/a", reason=str(e)) for m in modes]
    except Exception as e:  # reported in the table, not ignored
        progress.step(len(modes))
        return [row(m, status="error", reason=first_line(e)) for m in modes]
    for mode in modes:
        key = cache_key + (mode,) if cache_key else None
        if key and key in cache:  # torch.nn baseline / floor measured for another cell on this shape
            rows.append(row(mode, **dict(cache[key], max_abs_diff=None if note else cache[key].get("max_abs_diff"))))
            progress.step()
            continue
        fn, setup = runner.callables(mode, w)
        first = {}

        def on_first(y):
            if runner.after_first is not None:
                runner.after_first()
            if mode == "fwd" and y is not None:
                if c.key == "reference" and w.y_ref is None:
                    w.y_ref = y.detach()
                elif w.y_ref is not None and not (c.key == "nn" and note):
                    first["max_abs_diff"] = (y.detach().double() - w.y_ref.double()).abs().max().item()
        try:
            res = timer.measure(fn, setup, on_first)
            res.update(first)
            if memory:
                res["peak_mib"], _ = peak_memory_mib(fn, timer.device, setup)
        except Unavailable as e:
            rows.append(row(mode, status="n/a", reason=str(e)))
            progress.step()
            continue
        except Exception as e:  # e.g. a compile failure or BN training with B=1: reported, not ignored
            rows.append(row(mode, status="error", reason=first_line(e)))
            progress.step()
            continue
        if key:
            cache[key] = res
        rows.append(row(mode, **res))
        progress.step()
    return rows


def _side_by_side(cands, w, shape_rows, timer, rounds):
    """fused and torch.nn forward+backward on workload w timed again, alternating (Timer.side_by_side),
    when both were measured: the fused row gets paired_fused_ms, paired_nn_ms and paired_calls.

    The torch.nn column itself is measured once per shape and reused by the shape's other cells
    (LN-, BN-LSTM compare with the plain nn.LSTM), minutes apart from their fused times on a
    machine whose speed drifts; these paired medians are seconds apart and interleaved. Each block
    has up to 4 timed calls, fewer so that the rounds take about the timer's budget.
    """
    got = {(r["candidate"], r["mode"]): r for r in shape_rows}
    fused, nn = got.get(("fused", "fwdbwd")), got.get(("nn", "fwdbwd"))
    if rounds <= 0 or not (fused and nn and fused["status"] == nn["status"] == "ok"):
        return
    pair_s = (fused["median_ms"] + nn["median_ms"]) / 1e3
    per_block = max(1, min(4, int(timer.budget_s / (rounds * pair_s)) - 1)) if timer.budget_s > 0 else 4
    calls = {}
    try:
        for c in cands:
            if c.key in ("fused", "nn"):
                w.restore_buffers()
                calls[c.key] = c.prepare(w).callables("fwdbwd", w)
        res = timer.side_by_side(calls, rounds, per_block)
    except Exception as e:  # both ran just before; if this fails anyway, the row says so and the run goes on
        fused["side_by_side_error"] = first_line(e)
        return
    fused.update(paired_fused_ms=res["fused"]["median_ms"], paired_nn_ms=res["nn"]["median_ms"],
                 paired_calls=rounds * per_block)


# glibc's malloc serves a block of 128 KiB or more (its threshold adapts, up to 32 MiB) with its own
# mmap and unmaps it on free, and returns the heap's free top to the system past a trim threshold:
# a call that allocates large buffers then page-faults them in on every call. fusedrnn's CPU
# kernels keep theirs (csrc/cpu/pool.h); torch.nn.LSTM's oneDNN buffers and the eager candidates'
# tensors go through malloc. With these tunables every block comes from the heap and stays there,
# as with jemalloc / tcmalloc. Measured (fwd+bwd, 2 threads, fresh processes): nn.LSTM pixel MNIST
# (784,64,1,100) 184 -> 102 ms, (100,32,256,256) 47.5-49.6 -> 37.5-38.1 ms, row MNIST unchanged;
# fusedrnn unchanged. Without them nn.LSTM also moved 22-98 ms at one shape within one process.
MALLOC_REUSE = "glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295"


def malloc_note() -> str:
    """The allocator settings this process runs with, for the report."""
    tun, pre = os.environ.get("GLIBC_TUNABLES"), os.environ.get("LD_PRELOAD")
    text = f"GLIBC_TUNABLES={tun}" if tun else "glibc malloc defaults (GLIBC_TUNABLES unset)"
    if tun and MALLOC_REUSE in tun:
        text += " (--malloc reuse: large blocks kept in malloc's heap)"
    return text + (f"; LD_PRELOAD={pre}" if pre else "")


def main(argv=None):
    command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if command_line and args.malloc == "reuse" and MALLOC_REUSE not in tunables:
        # glibc reads its tunables at process start: run again with them (once: the child has them)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks"] + argv,
                  dict(os.environ, GLIBC_TUNABLES=f"{tunables}:{MALLOC_REUSE}" if tunables else MALLOC_REUSE))
    return run(args)
