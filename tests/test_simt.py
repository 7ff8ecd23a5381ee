"""The SIMT emulator (csrc/simt/simt.h): CUDA kernel source executed on the CPU.

Builds standalone C++ programs with g++ in a temp dir (no torch headers, a few seconds each):
  * tests/simt/simt_selftest.cpp: kernels with known results (shared memory, barriers, warp
    shuffles, atomics, dynamic shared memory, cooperative grid sync, NaN-filled fresh shared
    memory) and misuse that must raise instead of hang;
  * tests/simt/race.cpp under ThreadSanitizer: the kernel with its __syncthreads() removed
    must be reported as a data race, the correct kernel must not;
  * tests/simt/pointwise_tsan.cpp under ThreadSanitizer: every CUDA pointwise kernel of
    csrc/cuda/pointwise.cuh is race-free, and a copy with one real barrier removed is not;
  * tests/simt/persistent_tsan.cpp under ThreadSanitizer: the persistent LSTM forward and
    backward (csrc/cuda/persistent.cuh, persistent_bwd.cuh) on a grid of 3 CTAs are race-free
    and equal a one-CTA run; a copy without any one of their grid syncs is caught.
ThreadSanitizer runs in standalone binaries because it does not work well inside Python with
torch's OpenMP runtime.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import TOLERANCES

ROOT = Path(__file__).resolve().parents[1]
SIMT_TESTS = ROOT / "tests" / "simt"
CXX = os.environ.get("CXX", "g++")
BASE_FLAGS = ["-std=c++20", "-O1", "-pthread", f"-I{ROOT / 'csrc'}"]

pytestmark = pytest.mark.skipif(shutil.which(CXX) is None, reason=f"no C++ compiler ({CXX}) on PATH")


def build(src, out, *flags):
    cmd = [CXX, *BASE_FLAGS, *flags, str(src), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stderr[-4000:]}"
    return out


def run(exe, *args, timeout=120):
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout)


def test_emulator_selftest(tmp_path):
    exe = build(SIMT_TESTS / "simt_selftest.cpp", tmp_path / "selftest")
    res = run(exe)
    assert res.returncode == 0 and "OK: 0 failure(s)" in res.stdout, res.stdout + res.stderr
    assert "FAIL" not in res.stdout


def test_plain_shared_is_a_compile_error(tmp_path):
    src = tmp_path / "plain_shared.cpp"
    src.write_text('#include "simt/simt.h"\n'
                   "__global__ void k(float* y) { __shared__ float buf[32]; buf[threadIdx.x] = 1; y[0] = buf[0]; }\n"
                   "int main() { return 0; }\n")
    res = subprocess.run([CXX, *BASE_FLAGS, "-fsyntax-only", str(src)], capture_output=True, text=True)
    assert res.returncode != 0
    assert "plain __shared__ is not emulated" in res.stderr, res.stderr


def _tsan_available(tmp_path):
    """(available, why not): g++ builds and runs a trivial -fsanitize=thread program."""
    src = tmp_path / "tsan_probe.cpp"
    src.write_text("#include <thread>\nint main() { std::thread t([] {}); t.join(); return 0; }\n")
    exe = tmp_path / "tsan_probe"
    res = subprocess.run([CXX, "-fsanitize=thread", "-pthread", str(src), "-o", str(exe)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        return False, f"{CXX} -fsanitize=thread cannot build: {res.stderr.strip()[-300:]}"
    res = run(exe)
    if res.returncode != 0:
        return False, f"a trivial ThreadSanitizer binary does not run here: {res.stderr.strip()[-300:]}"
    return True, ""


def test_tsan_catches_missing_syncthreads(tmp_path):
    ok, why = _tsan_available(tmp_path)
    if not ok:
        pytest.skip(why)
    good = build(SIMT_TESTS / "race.cpp", tmp_path / "race_good", "-fsanitize=thread")
    broken = build(SIMT_TESTS / "race.cpp", tmp_path / "race_broken", "-fsanitize=thread", "-DSIMT_DROP_SYNC")
    res_good, res_broken = run(good), run(broken)
    assert res_good.returncode == 0, res_good.stderr[-4000:]
    assert "ThreadSanitizer" not in res_good.stderr, res_good.stderr[-4000:]
    assert "mismatches: 0" in res_good.stdout
    assert "WARNING: ThreadSanitizer: data race" in res_broken.stderr, res_broken.stdout + res_broken.stderr[-4000:]
    assert "neighbour_diff" in res_broken.stderr


POINTWISE_BARRIER = "  __syncthreads();  // below, threads read dpre columns that other threads wrote\n"


def test_tsan_pointwise_kernels_race_free_and_barrier_needed(tmp_path):
    """Every CUDA pointwise kernel under TSan: no race as written; a race once one barrier goes."""
    ok, why = _tsan_available(tmp_path)
    if not ok:
        pytest.skip(why)
    flags = ["-fsanitize=thread", f"-I{ROOT / 'csrc' / 'include'}"]
    good = build(SIMT_TESTS / "pointwise_tsan.cpp", tmp_path / "pointwise_good", *flags)
    res = run(good, timeout=300)
    assert res.returncode == 0 and "launched" in res.stdout, res.stdout + res.stderr[-4000:]
    assert "ThreadSanitizer" not in res.stderr, res.stderr[-6000:]

    # The same sources with the barrier before the LSTM backward's cross-thread dpre reads removed.
    src = (ROOT / "csrc" / "cuda" / "pointwise.cuh").read_text()
    assert src.count(POINTWISE_BARRIER) == 1, "the barrier this test removes is no longer in pointwise.cuh"
    mutant = tmp_path / "mutant"
    (mutant / "csrc" / "cuda").mkdir(parents=True)
    (mutant / "tests" / "simt").mkdir(parents=True)
    shutil.copytree(ROOT / "csrc" / "simt", mutant / "csrc" / "simt")
    (mutant / "csrc" / "cuda" / "pointwise.cuh").write_text(src.replace(POINTWISE_BARRIER, ""))
    shutil.copy(SIMT_TESTS / "pointwise_tsan.cpp", mutant / "tests" / "simt")
    broken = build(mutant / "tests" / "simt" / "pointwise_tsan.cpp", tmp_path / "pointwise_broken", *flags)
    res = run(broken, timeout=300)
    assert "WARNING: ThreadSanitizer: data race" in res.stderr, res.stdout + res.stderr[-4000:]
    assert "lstm_bwd_rows_kernel" in res.stderr or "lstm_unit_bwd" in res.stderr


# (--drop name, header); the hook's KERNEL argument is the index. The last grid.sync() of each
# header is its end-of-step sync (h_t forward, dhw_t backward to every CTA).
PERSISTENT_KERNELS = (("fwd", "persistent.cuh"), ("bwd", "persistent_bwd.cuh"))
GRID_SYNC = "grid.sync();"


def test_tsan_persistent_kernels_race_free_and_grid_syncs_needed(tmp_path):
    """The persistent LSTM kernels under TSan on 3 CTAs (tests/simt/persistent_tsan.cpp: vanilla with
    every norm, FGR, peephole; float32; T=3, B=3, H=10) against a one-CTA run: no race, no mismatch.
    Then a copy in which every grid.sync() of the two kernels can be skipped at run time
    (--drop fwd:K / bwd:K), each dropped in turn on the layer-norm case, which runs them all."""
    ok, why = _tsan_available(tmp_path)
    if not ok:
        pytest.skip(why)
    rtol, atol = TOLERANCES[torch.float32]
    tol = ["--rtol", repr(rtol), "--atol", repr(atol)]
    flags = ["-fsanitize=thread", f"-I{ROOT / 'csrc' / 'include'}"]
    good = build(SIMT_TESTS / "persistent_tsan.cpp", tmp_path / "persistent_good", *flags)
    res = run(good, *tol, timeout=300)
    assert res.returncode == 0 and "7 case(s), 0 mismatch(es)" in res.stdout, res.stdout + res.stderr[-4000:]
    assert "ThreadSanitizer" not in res.stderr, res.stderr[-6000:]

    mutant = tmp_path / "mutant"
    (mutant / "csrc" / "cuda").mkdir(parents=True)
    (mutant / "tests" / "simt").mkdir(parents=True)
    shutil.copytree(ROOT / "csrc" / "simt", mutant / "csrc" / "simt")
    shutil.copy(ROOT / "csrc" / "cuda" / "pointwise.cuh", mutant / "csrc" / "cuda")
    shutil.copy(SIMT_TESTS / "persistent_tsan.cpp", mutant / "tests" / "simt")
    sites = []
    for k, (kernel, header) in enumerate(PERSISTENT_KERNELS):
        pieces = (ROOT / "csrc" / "cuda" / header).read_text().split(GRID_SYNC)
        assert len(pieces) > 1, f"no {GRID_SYNC} left in {header}"
        hooked = "".join(f"if (!::persistent_tsan_drop({k}, {i})) {GRID_SYNC}{rest}"
                         for i, rest in enumerate(pieces[1:]))
        (mutant / "csrc" / "cuda" / header).write_text(pieces[0] + hooked)
        sites += [(kernel, i, i == len(pieces) - 2) for i in range(len(pieces) - 1)]
    broken = build(mutant / "tests" / "simt" / "persistent_tsan.cpp", tmp_path / "persistent_mutant", *flags,
                   "-DPERSISTENT_TSAN_MUTANT")
    for kernel, i, end_of_step in sites:
        # Every dropped sync must be reported by TSan as a race in that kernel (the emulator shows
        # TSan only the orderings CUDA guarantees: barriers, grid syncs and warp operations, not
        # its own launch lock; before that, TSan reported the non-end-of-step drops in only 7 to
        # 13 of 15 runs), and the run must fail.
        res = run(broken, *tol, "--case", "vanilla/layer", "--drop", f"{kernel}:{i}", "--repeat", "1", timeout=300)
        out = res.stdout + res.stderr[-4000:]
        skipped = re.search(r"skipped (\d+) time", res.stdout)
        assert skipped and int(skipped.group(1)) > 0, f"{kernel} grid sync #{i} was never reached:\n{out}"
        raced = "WARNING: ThreadSanitizer: data race" in res.stderr
        assert res.returncode != 0 and raced, f"{kernel} grid sync #{i} (end of step: {end_of_step}):\n{out}"
        assert f"persistent_lstm_{kernel}_kernel" in res.stderr, f"{kernel} grid sync #{i}:\n{out}"
