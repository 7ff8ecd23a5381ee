# Sourced by scripts/bench.sh and scripts/test.sh: make (once) and enter a virtualenv with
# torch and fusedrnn built from this checkout. Overrides:
#   FUSEDRNN_VENV=path    where the virtualenv lives (default: .venv in the checkout)
#   FUSEDRNN_VENV=none    use the current python as it is (it must already have torch)
#   FUSEDRNN_TORCH=spec   the torch requirement (default: torch==2.13.0)
#   FUSEDRNN_EXTRAS=a,b   the extras of setup.py to install (test, bench, examples)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FUSEDRNN_VENV:-$root/.venv}"
if [ "$venv" != none ]; then
  if [ ! -x "$venv/bin/python" ]; then
    echo "[fusedrnn] creating virtualenv $venv"
    python3 -m venv "$venv"
  fi
  # shellcheck disable=SC1091
  source "$venv/bin/activate"
fi
python -m pip install -q --disable-pip-version-check "${FUSEDRNN_TORCH:-torch==2.13.0}" numpy ninja pybind11 setuptools wheel
echo "[fusedrnn] building fusedrnn (C++ kernels; the first build takes a few minutes)"
MAX_JOBS="${MAX_JOBS:-2}" python -m pip install -q --disable-pip-version-check --no-build-isolation --use-pep517 \
  -e "$root[${FUSEDRNN_EXTRAS:-test}]"
cd "$root"
