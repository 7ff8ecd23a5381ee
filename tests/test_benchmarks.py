"""The benchmark CLI runs end to end and writes valid outputs; its helpers compute what they claim.

No timing assertions: speed is what the benchmark reports, not what tests check.
"""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # benchmarks/ is a top-level folder of the repository, not an installed package
    sys.path.insert(0, REPO)

from benchmarks import scripted  # noqa: E402
from benchmarks.candidates import CompileCandidate, FusedCandidate, NNCandidate, Workload  # noqa: E402
from benchmarks.cli import parse_args, plan  # noqa: E402
from benchmarks.suites import CELLS, cell_spec, parse_shape  # noqa: E402
from benchmarks.timing import GemmFloor, Timer, summarize  # noqa: E402
from conftest import assert_close  # noqa: E402
from fusedrnn import reference  # noqa: E402
CANDS = "reference,fused,script,nn,floor"


def test_cli_tiny_suite_end_to_end(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "benchmarks", "--suite", "tiny", "--device", "cpu", "--repeats", "1",
           "--warmup", "1", "--threads", "1", "--candidates", CANDS, "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fusedrnn benchmark" in proc.stdout and "median ms" in proc.stdout

    data = json.loads((out / "results.json").read_text())
    meta, rows = data["meta"], data["results"]
    for key in ("command", "device_name", "torch", "threads", "git_commit", "fused_backend"):
        assert meta[key] not in (None, ""), key
    assert meta["torch"] == torch.__version__ and meta["threads"] == 1
    # --malloc reuse (the default) re-ran the command with glibc's tunables set
    assert meta["malloc"].startswith("GLIBC_TUNABLES=") and "--malloc reuse" in meta["malloc"]
    # tiny suite: 2 cells x 4 shapes x 5 candidates x 2 modes
    assert len(rows) == 2 * 4 * 5 * 2
    assert {r["cell"] for r in rows} == {"vanilla", "ln"}
    for r in rows:
        if r["candidate"] == "fused":  # built or not: either timed, or listed with the reason
            assert r["status"] == "ok" or r["reason"], r
            continue
        assert r["status"] == "ok", r
        assert r["median_ms"] > 0 and r["repeats"] == 1 and r["peak_mib"] is not None
        if r["mode"] == "fwd" and r["candidate"] == "script":
            assert r["max_abs_diff"] < 1e-4  # the scripted cells compute what the reference computes
        if r["candidate"] == "nn" and r["cell"] == "ln":
            assert "torch.nn.LSTM" in r["note"]
    for r in rows:  # fused and torch.nn timed again side by side, forward+backward only
        if r["candidate"] == "fused" and r["mode"] == "fwdbwd" and r["status"] == "ok":
            assert r["paired_calls"] == 5 * 4 and r["paired_fused_ms"] > 0 and r["paired_nn_ms"] > 0
            assert r["vs_nn_paired"] == pytest.approx(r["paired_fused_ms"] / r["paired_nn_ms"])
        else:
            assert r.get("paired_calls") is None and r.get("vs_nn_paired") is None, r
    if any(r.get("vs_nn_paired") for r in rows):
        assert "(4 of them timed side by side)" in proc.stdout  # the vanilla cell's four shapes
    ref = [r for r in rows if r["candidate"] == "reference"]
    assert all(r["vs_reference"] == pytest.approx(1.0) for r in ref)
    assert all(r["vs_floor"] is not None and r["vs_nn"] is not None for r in ref)

    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert float(table[0]["median_ms"]) > 0 if table[0]["status"] == "ok" else True

    md = (out / "results.md").read_text()
    assert md.startswith("# fusedrnn benchmark") and "## Details" in md and "| shape (T,B,I,H)" in md
    for mode in ("fwd", "fwdbwd"):
        png = (out / f"plot-{mode}-float32.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--suite", "--cells", "--shapes", "--candidates", "--device", "--repeats", "--out"):
        assert opt in text


def test_plan_overrides():
    cpu = torch.device("cpu")
    args = parse_args(["--cells", "peephole,gru", "--shapes", "rowmnist,7x3x5x9", "--candidates", "nn,floor"])
    args.suite = "default"
    _, dtypes, work = plan(args, cpu)
    assert dtypes == ["float32"]
    assert [cell for _, cell, _ in work] == ["peephole", "gru"]
    shapes = [s.dims for s, _, _ in work[0][2]]
    assert shapes == [(28, 100, 28, 128), (7, 3, 5, 9)]
    assert all(c == {"nn", "floor"} for _, _, todo in work for _, _, c in todo)
    for bad in (["--cells", "nope"], ["--candidates", "nope"], ["--shapes", "1x2x3"]):
        args = parse_args(bad)
        args.suite = "default"
        with pytest.raises(SystemExit):
            plan(args, cpu)


def test_default_and_gpu_suites_cover_the_issue_shapes():
    cpu = torch.device("cpu")
    for suite in ("default", "full", "gpu"):
        args = parse_args(["--suite", suite])
        _, dtypes, work = plan(args, cpu)
        assert work and dtypes == ["float32"]  # bf16 is dropped on CPU unless asked for
    args = parse_args(["--suite", "full"])
    _, _, work = plan(args, cpu)
    assert {cell for _, cell, _ in work} == set(CELLS)
    dims = {s.dims for _, _, todo in work for s, _, _ in todo}
    for name in ("smnist", "rowmnist", "charlm", "ptb", "generic"):
        assert parse_shape(name).dims in dims
    args = parse_args(["--suite", "gpu", "--dtype", "float32,bfloat16"])
    _, dtypes, work = plan(args, cpu)
    assert dtypes == ["float32", "bfloat16"]
    dims = {s.dims for _, _, todo in work for s, _, _ in todo}
    assert {B for T, B, I, H in dims if T == 100 and H == 256} >= {1, 8, 32, 64, 128}
    assert {H for T, B, I, H in dims if T == 100} >= {128, 256, 512, 1024}
    assert {T for T, B, I, H in dims} >= {100, 1000}


SCRIPTED_CELLS = ["vanilla", "peephole", "ln", "bn", "gru", "ln_gru", "rnn_tanh"]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("cell", SCRIPTED_CELLS)
def test_scripted_cells_match_reference(cell, training):
    spec = CELLS[cell][0]
    assert scripted.unsupported_reason(spec) is None
    w = Workload(cell, spec, parse_shape("5x3x4x6"), torch.float64, torch.device("cpu"), seed=1)
    with torch.no_grad():
        for role, t in w.p.items():  # non-trivial gains, shifts and running statistics
            t.copy_(torch.rand_like(t) + 0.5 if role.startswith(("g_", "rv_")) else torch.randn_like(t) * 0.5)
    p_ref = {k: v.detach().clone() for k, v in w.p.items()}
    state = tuple(w.x.new_zeros(3, n) for n in spec.state_sizes(6))
    y_ref, _ = reference.run_layer(spec, w.x, state, p_ref, training=training)
    y = scripted.layer_runner(spec, w.p, 6)(w.x, training)
    assert_close(y, y_ref, msg=cell)
    for role in w.p:  # batch-norm running statistics updated the same way
        assert_close(w.p[role].detach(), p_ref[role], msg=role)


def test_scripted_reports_uncovered_cells():
    for cell in ("nig", "cifg", "fgr", "ln_per_gate"):
        assert scripted.unsupported_reason(CELLS[cell][0])
    assert scripted.reference_script_error()  # the reference itself does not script, and we say why


def test_projected_cell_runs_the_same_weights_in_every_candidate():
    """The "proj" cell projects to H / 4; the fused kernels and torch.nn.LSTM(proj_size) get the
    reference's weights (torch.nn is the same cell here, not a plain-LSTM stand-in)."""
    assert cell_spec("proj", 100).proj_size == 25 and cell_spec("proj", 2).proj_size == 1
    assert cell_spec("vanilla", 100) == CELLS["vanilla"][0]
    dev = torch.device("cpu")
    w = Workload("proj", cell_spec("proj", 8), parse_shape("5x3x4x8"), torch.float64, dev)
    assert NNCandidate.same_cell(w.spec) and not NNCandidate.same_cell(CELLS["ln"][0])
    w.module.eval()
    with torch.no_grad():
        y_ref = w.module(w.x)[0]
    assert y_ref.shape == (5, 3, 2)
    for cand in (FusedCandidate(dev), NNCandidate()):
        fn, _ = cand.prepare(w).callables("fwd", w)
        assert_close(fn(), y_ref, msg=cand.key)


@pytest.mark.parametrize("fgr", [False, True])
def test_gemm_floor_and_timer(fgr):
    g = GemmFloor(3, 2, 5, 4, 4, fgr, torch.float32, torch.device("cpu"))
    res = Timer(torch.device("cpu"), repeats=3, warmup=1).measure(g.forward_backward)
    assert res["repeats"] == 3 and res["q1_ms"] <= res["median_ms"] <= res["q3_ms"]
    s = summarize([0.001, 0.002, 0.003, 0.004], 0.5)
    assert s["median_ms"] == pytest.approx(2.5) and s["iqr_ms"] == pytest.approx(1.5)


def test_side_by_side_interleaves_blocks():
    order = []
    calls = {name: (lambda name=name: order.append(name), None) for name in ("a", "b")}
    res = Timer(torch.device("cpu"), repeats=1, warmup=1).side_by_side(calls, rounds=3, per_block=2)
    # each block: one untimed call, then two timed; the order of the blocks reversed every other round
    assert order == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3 + ["a"] * 3 + ["b"] * 3
    assert res["a"]["repeats"] == res["b"]["repeats"] == 6 and res["a"]["first_call_s"] is None


def test_side_by_side_failure_is_recorded_not_raised():
    from benchmarks.cli import _side_by_side

    class Stub:
        def __init__(self, key, fail):
            self.key, self.fail = key, fail

        def prepare(self, w):
            if self.fail:
                raise RuntimeError("boom")
            return type("R", (), {"callables": lambda self, mode, w: (lambda: None, None)})()

    w = type("W", (), {"restore_buffers": lambda self: None})()
    rows = [{"candidate": k, "mode": "fwdbwd", "status": "ok", "median_ms": 1.0} for k in ("fused", "nn")]
    _side_by_side([Stub("fused", False), Stub("nn", True)], w, rows, Timer(torch.device("cpu"), 1, 1, 1.0), 2)
    assert rows[0]["side_by_side_error"] == "RuntimeError: boom" and "paired_nn_ms" not in rows[0]


def test_targets_take_the_side_by_side_ratio():
    from benchmarks.report import add_ratios, target_lines
    base = {"mode": "fwdbwd", "dtype": "float32", "shape": "s", "T": 1, "B": 2, "I": 3, "H": 4, "status": "ok"}
    rows = [dict(base, cell="ln", candidate="nn", median_ms=10.0),
            dict(base, cell="ln", candidate="fused", median_ms=11.0, paired_fused_ms=13.0, paired_nn_ms=10.0,
                 paired_calls=20),
            dict(base, cell="bn", candidate="nn", median_ms=10.0),
            dict(base, cell="bn", candidate="fused", median_ms=13.0)]
    add_ratios(rows)
    assert rows[1]["vs_nn"] == pytest.approx(1.1) and rows[1]["vs_nn_paired"] == pytest.approx(1.3)
    line = next(t for t in target_lines(rows, "cpu") if "1.2x" in t)
    # ln: 1.1x apart but 1.3x side by side (missed); bn: not paired, its 1.3x apart (missed)
    assert "met on 0 of 2" in line and "(1 of them timed side by side)" in line
    assert "ln s float32 1.30x" in line and "bn s float32 1.30x" in line


@pytest.mark.slow
def test_compile_candidate_matches_reference():
    spec = CELLS["bn"][0]
    w = Workload("bn", spec, parse_shape("4x3x5x6"), torch.float32, torch.device("cpu"))
    torch._dynamo.reset()
    c = CompileCandidate()
    c.start_cell("bn", spec, torch.float32)
    runner = c.prepare(w)
    fn, _ = runner.callables("fwd", w)
    w.module.eval()
    with torch.no_grad():
        y_ref = w.module(w.x)[0]
    assert_close(fn(), y_ref)


def test_cli_runs_without_tqdm_and_matplotlib(tmp_path, monkeypatch, capsys):
    """The GPU machine may lack the optional packages: progress falls back to lines, the plot is skipped."""
    from benchmarks.cli import main
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `import tqdm` raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    res = main(["--suite", "tiny", "--device", "cpu", "--repeats", "1", "--warmup", "1", "--candidates",
                "nn,floor", "--no-memory", "--modes", "fwd", "--out", str(tmp_path)])
    assert res["plots"] == [] and res["meta"]["plot"].startswith("not drawn:")
    if "glibc.malloc.mmap_threshold" not in os.environ.get("GLIBC_TUNABLES", ""):
        assert "--malloc reuse" not in res["meta"]["malloc"]  # called in-process: no re-run, the process's malloc
    assert "tqdm not installed" in capsys.readouterr().err
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["results"]) == 2 * 4 * 2 and all(r["status"] == "ok" for r in data["results"])
