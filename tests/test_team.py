"""The CPU kernels' thread team (csrc/cpu/team.h) alone: its barrier orders every member's steps,
and a member that throws ends the whole team with that member's error instead of a hang.

tests/cpu/team_check.cpp is built with g++ against torch's headers and libraries and called
through ctypes in a child python (a hang there is a timeout here, not a stuck test run). The
kernels' use of the team is tested against the reference in tests/test_cpu_kernels.py
(FUSEDRNN_CPU_TEAM=2/3)."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[1]
CXX = os.environ.get("CXX", "g++")

pytestmark = pytest.mark.skipif(shutil.which(CXX) is None, reason=f"no C++ compiler ({CXX}) on PATH")


@pytest.fixture(scope="module")
def team_lib(tmp_path_factory):
    out = tmp_path_factory.mktemp("team") / "team_check.so"
    torch_lib = Path(torch.__file__).parent / "lib"
    cmd = [CXX, "-std=c++17", "-O1", "-fPIC", "-shared", "-fopenmp",
           *(f"-I{p}" for p in cpp_extension.include_paths()), f"-I{ROOT / 'csrc' / 'cpu'}",
           f"-I{ROOT / 'csrc' / 'include'}", str(ROOT / "tests" / "cpu" / "team_check.cpp"), "-o", str(out),
           f"-L{torch_lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stderr[-4000:]}"
    return out


def in_child(lib, body, threads=2, timeout=60):
    """Runs `body` (python using `lib`, a ctypes.CDLL) in a child python with torch imported."""
    script = textwrap.dedent(f"""
        import ctypes, torch
        torch.set_num_threads({threads})
        lib = ctypes.CDLL({str(lib)!r})
        lib.team_barrier_check.restype = ctypes.c_long
        lib.team_barrier_check.argtypes = [ctypes.c_long, ctypes.c_long]
        lib.team_abort_check.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.c_long]
        """) + textwrap.dedent(body)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]
    return res.stdout


@pytest.mark.parametrize("members,threads", [(2, 2), (3, 2), (5, 2), (1, 2), (2, 1)])
def test_barrier_orders_every_step(team_lib, members, threads):
    out = in_child(team_lib, f"print('violations', lib.team_barrier_check({members}, 20000))", threads)
    assert "violations 0" in out, out


@pytest.mark.parametrize("members,fail_member,fail_step", [(2, 0, 0), (2, 1, 37), (3, 2, 99), (3, 1, 5)])
def test_a_failing_member_ends_the_team_with_its_error(team_lib, members, fail_member, fail_step):
    out = in_child(team_lib, f"""
        msg = ctypes.create_string_buffer(256)
        for _ in range(20):  # the other members are at a barrier, or still before it
            assert lib.team_abort_check({members}, {fail_member}, {fail_step}, msg, 256) == 1
            print(msg.value.decode())
        """)
    assert out.count(f"planted failure in member {fail_member}") == 20, out
