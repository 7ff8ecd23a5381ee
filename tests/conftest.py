"""Shared test helpers: the one tolerance table, and the cell grid every backend is checked over."""
import pytest
import torch

from fusedrnn.spec import LSTM_VARIANTS, NORMS, CellSpec

# One table per dtype: (rtol, atol) for comparing a kernel with the reference in the same dtype.
TOLERANCES = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (1e-4, 1e-5),
}

# Every cell x variant x norm the spec defines.
ALL_SPECS = (
    [CellSpec("lstm", v, n) for v in LSTM_VARIANTS for n in NORMS]
    + [CellSpec("gru", norm=n) for n in ("none", "layer")]
    + [CellSpec("rnn_tanh"), CellSpec("rnn_relu")]
)


def spec_id(spec: CellSpec) -> str:
    return f"{spec.family}-{spec.variant}-{spec.norm}" if spec.family == "lstm" else f"{spec.family}-{spec.norm}"


def assert_close(actual, expected, dtype=None, msg=""):
    rtol, atol = TOLERANCES[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{msg}\n{m}")


@pytest.fixture(autouse=True)
def _seed_global_rng():
    """Every test starts from the same global RNG state: inputs a test draws from it (module
    initialisation, dropout) do not depend on which tests ran before it in the same process
    (pytest -k, xdist workers). Weights drawn from the global RNG made the GPU runs' inputs
    differ from run to run, which looked like a moving error."""
    torch.manual_seed(0)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: long-running; excluded from the default CI run")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
