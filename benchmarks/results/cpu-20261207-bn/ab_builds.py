"""Two builds of fusedrnn compared in alternating processes (A, B, A, B, ...).

Each process imports fusedrnn from its build's directory (PYTHONPATH), times forward+backward
of fusedrnn.LSTM for each norm and prints the median of N calls; the result is the median over
the rounds of each build's medians. Alternating processes rather than two runs in a row, because
the shared machine's speed drifts by 10-20% over minutes.

    python ab_builds.py DIR_A DIR_B --norms batch,layer,none --rounds 8 --calls 60 --shape 28,100,28,128

DIR_A / DIR_B: directories holding a built `fusedrnn` package each (e.g. a git worktree after
`python setup.py build_ext --inplace`).
"""
import argparse
import os
import statistics
import subprocess
import sys

CHILD = r'''
import sys, time, torch, fusedrnn
T, B, I, H = map(int, sys.argv[2].split(","))
for norm in sys.argv[1].split(","):
    torch.manual_seed(0)
    m = fusedrnn.LSTM(I, H, norm=norm)
    x = torch.randn(T, B, I, requires_grad=True)
    def step():
        y, _ = m(x)
        y.sum().backward()
    for _ in range(10):
        step()
    ts = []
    for _ in range(int(sys.argv[3])):
        t0 = time.perf_counter(); step(); ts.append(time.perf_counter() - t0)
    print(norm, 1e3 * statistics.median(ts), fusedrnn.__file__)
'''.replace("import sys,", "import statistics, sys,")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir_a")
    ap.add_argument("dir_b")
    ap.add_argument("--norms", default="batch,layer,none")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--shape", default="28,100,28,128", help="T,B,I,H")
    a = ap.parse_args()
    norms = a.norms.split(",")
    res = {}
    for _ in range(a.rounds):
        for tag, d in (("A", a.dir_a), ("B", a.dir_b)):
            env = {**os.environ, "PYTHONPATH": os.path.abspath(d)}
            out = subprocess.run([sys.executable, "-c", CHILD, a.norms, a.shape, str(a.calls)], env=env,
                                 capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                norm, ms, path = line.split()
                assert path.startswith(os.path.abspath(d)), f"{tag} imported {path}, not from {d}"
                res.setdefault((norm, tag), []).append(float(ms))
    print(f"shape (T,B,I,H) = {a.shape}, fwd+bwd ms, median of {a.rounds} rounds x {a.calls} calls")
    for n in norms:
        ma, mb = statistics.median(res[(n, "A")]), statistics.median(res[(n, "B")])
        print(f"{n:7s} A {ma:7.3f}  B {mb:7.3f}  B/A {mb / ma:.3f}   "
              f"A {[round(v, 2) for v in res[(n, 'A')]]}  B {[round(v, 2) for v in res[(n, 'B')]]}")


if __name__ == "__main__":
    main()
