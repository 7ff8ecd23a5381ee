"""The persistent LSTM kernels (csrc/cuda/persistent.cuh, persistent_bwd.cuh) executed on the CPU.

tests/simt/persistent_ops.cpp builds the CUDA backend's host code (csrc/cuda/rnn_cuda.cu) with
g++ under the SIMT emulator; FUSEDRNN_PERSISTENT=require makes lstm_fwd and lstm_bwd run the
persistent kernels (a cooperative grid of 3 emulated CTAs x 64 threads, grid syncs and all) or
fail, so every comparison below is of the persistent forward and backward (with bn_update_ on
the forward's statistics) with fusedrnn.reference.
Sizes are tiny on purpose: H = 8 splits as 3 + 3 + 2 units over the 3 CTAs.
"""
import os
import shutil
from pathlib import Path

import pytest
import torch

from fusedrnn.spec import LSTM_VARIANTS, NORMS, CellSpec
from conftest import spec_id
from test_cuda_emulated import make_case
from test_cuda_emulated_ops import check_ops, test_emulated_ops_half_precision_rule as half_precision_rule

ROOT = Path(__file__).resolve().parents[1]
LSTM_SPECS = [CellSpec("lstm", v, n) for v in LSTM_VARIANTS for n in NORMS]

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ on PATH to build the emulated ops")


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    from torch.utils.cpp_extension import load
    build = tmp_path_factory.mktemp("persistent_ops")
    os.environ.setdefault("MAX_JOBS", "2")
    load(name="fusedrnn_persistent_ops", sources=[str(ROOT / "tests" / "simt" / "persistent_ops.cpp")],
         extra_include_paths=[str(ROOT / "csrc" / "include")],
         extra_cflags=["-std=c++20", "-O1", "-g0", "-pthread"], extra_ldflags=["-pthread"],
         build_directory=str(build), is_python_module=False, verbose=False)
    return torch.ops.fusedrnn_persistent_emulated


@pytest.fixture
def persistent(monkeypatch):
    """Forces the persistent kernel (an error if it cannot run)."""
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", "require")
    monkeypatch.delenv("FUSEDRNN_PERSISTENT_SMEM", raising=False)
    monkeypatch.delenv("FUSEDRNN_PERSISTENT_CHUNK", raising=False)
    return monkeypatch


@pytest.mark.parametrize("spec", LSTM_SPECS, ids=spec_id)
def test_persistent_matches_reference_fp64(ops, persistent, spec):
    check_ops(ops, spec, T=4, B=3, I=4, H=8, dtype=torch.float64, lengths=[4, 1, 3], training=True)


@pytest.mark.parametrize("spec", [CellSpec("lstm"), CellSpec("lstm", "peephole", "layer"),
                                  CellSpec("lstm", "fgr", "batch"), CellSpec("lstm", "cifg", "layer_per_gate"),
                                  CellSpec("lstm", "noaf", "batch"), CellSpec("lstm", "nig", "layer")], ids=spec_id)
def test_persistent_fp32_full_lengths(ops, persistent, spec):
    # Batch norm in eval mode here: training-mode statistics over B = 3 rows are too ill-conditioned
    # for float32 (the per-step path misses the float32 tolerance on them too); fp64 covers training.
    check_ops(ops, spec, T=3, B=3, I=3, H=16, dtype=torch.float32, lengths=None, training=spec.norm != "batch")


@pytest.mark.parametrize("spec", [CellSpec("lstm", "vanilla", "batch", max_bn_steps=2),
                                  CellSpec("lstm", "fgr", "batch", max_bn_steps=2)], ids=spec_id)
def test_persistent_batchnorm_eval_and_late_steps(ops, persistent, spec):
    check_ops(ops, spec, T=4, B=3, I=3, H=8, dtype=torch.float64, lengths=None, training=False, t0=1)
    check_ops(ops, spec, T=4, B=3, I=3, H=8, dtype=torch.float64, lengths=[4, 2, 3], training=True, t0=1)


@pytest.mark.parametrize("spec", [CellSpec("lstm", "peephole", "layer"), CellSpec("lstm", "fgr", "none")],
                         ids=spec_id)
def test_persistent_staged_in_batch_chunks(ops, persistent, spec):
    """h_{t-1} (forward) and dhw_t (backward) staged 2 batch rows at a time: chunks of 2, 2, 1 rows."""
    persistent.setenv("FUSEDRNN_PERSISTENT_CHUNK", "2")
    check_ops(ops, spec, T=3, B=5, I=3, H=8, dtype=torch.float64, lengths=[3, 1, 2, 3, 2], training=True)


HALF_CASES = [(CellSpec("lstm", v, n), torch.bfloat16) for v in ("vanilla", "peephole", "cifg", "fgr") for n in NORMS] + \
    [(CellSpec("lstm", "vanilla", n), torch.float16) for n in NORMS]


@pytest.mark.parametrize("mma", ["0", "1"], ids=["fma", "mma"])
@pytest.mark.parametrize("spec,dtype", HALF_CASES, ids=lambda v: spec_id(v) if isinstance(v, CellSpec) else str(v))
def test_persistent_half_precision_rule(ops, persistent, spec, dtype, mma):
    """float16/bfloat16 storage with float accumulation and statistics, T=4, B=8, H=12 (3 CTAs of 4
    units): the STYLE rule (error <= 2x the same-dtype reference's), forward and backward, with the
    recurrent product on the FMA units and on the (emulated) tensor cores: K = 12 in the forward
    (one partial k-step of 16), GH = 48 in the backward."""
    persistent.setenv("FUSEDRNN_PERSISTENT_MMA", mma)
    before = ops.mma_executed()
    half_precision_rule(ops, spec, dtype)
    assert (ops.mma_executed() > before) == (mma == "1")


@pytest.mark.parametrize("n", [0, 1, 63, 64, 1023, 1024, 2053])
def test_stage_copy(ops, n):
    """persist_stage, the persistent kernels' copy into shared memory, on one CTA of 64 threads:
    batches of 16 loads per thread without bounds checks (n >= 1024 has one or more), then one
    checked batch for the rest; every element arrives, nothing past n is written (stays NaN)."""
    src = torch.arange(n, dtype=torch.float32) * 0.5 - 7
    out = ops.persist_stage(src)
    torch.testing.assert_close(out[:n], src, rtol=0, atol=0)
    assert out[n:].isnan().all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("mma", [0, 1], ids=["fma", "mma"])
@pytest.mark.parametrize("R,nb,K", [(37, 19, 41), (16, 8, 16), (3, 1, 5)])
def test_recurrent_product(ops, dtype, mma, R, nb, K):
    """persist_product, the persistent kernels' recurrent product, alone on one emulated CTA:
    out[b, r] = sum_k W[r, k] X[b, k] rounded to the storage type, for sizes that are and are not
    multiples of the tensor-core tile (16 rows x 8 batch rows x 16 k). Integer inputs make every
    sum exact, so both products must equal the float64 result rounded once, bit for bit; the
    columns between R and the output's row stride stay unwritten (NaN). The tensor-core product runs
    for the half types when asked for (one mma.sync per tile and k-step), never for float32.
    mma: PersistentLstmFwd::mma, the launcher's kind for the dtype (1 bfloat16, 2 float16)."""
    gen = torch.Generator().manual_seed(R * 1000 + nb * 10 + K)
    W = torch.randint(-8, 9, (R, K), generator=gen).to(dtype)
    X = torch.randint(-8, 9, (nb, K), generator=gen).to(dtype)
    ldo = R + 3
    before = ops.mma_executed()
    out = ops.persist_product(W, X, ldo, mma * (2 if dtype == torch.float16 else 1))
    tiles = -(-R // 16) * -(-nb // 8) * -(-K // 16)
    assert ops.mma_executed() - before == (tiles if mma and dtype != torch.float32 else 0)
    want = (X.double() @ W.double().T).to(dtype).float()
    torch.testing.assert_close(out[:, :R], want, rtol=0, atol=0)
    assert out[:, R:].isnan().all()


def test_persistent_odd_sizes(ops, persistent):
    """H smaller than the grid (2 CTAs of one unit), B = 1, T = 1; and H = 1."""
    check_ops(ops, CellSpec("lstm", "peephole", "layer"), T=1, B=1, I=2, H=2, dtype=torch.float64,
              lengths=None, training=True)
    check_ops(ops, CellSpec("lstm", "vanilla", "batch"), T=2, B=2, I=2, H=1, dtype=torch.float64,
              lengths=None, training=True)


def test_persistent_require_says_why_and_force_falls_back(ops, monkeypatch):
    spec = CellSpec("lstm", "vanilla", "none")
    x, state, p, _ = make_case(spec, 2, 2, 3, 8, torch.float64, None)
    args = (x, None, state[0], state[1], None, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], *([None] * 14), 0, 0,
            False, 0, 1e-5, None)
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_SMEM", "64")
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", "require")
    with pytest.raises(RuntimeError, match="persistent kernel cannot run: the weight slice does not fit"):
        ops.lstm_fwd(*args)
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", "1")  # forced but does not fit: per-step, same answer
    y_force = ops.lstm_fwd(*args)[0]
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", "0")
    torch.testing.assert_close(y_force, ops.lstm_fwd(*args)[0], rtol=0, atol=0)
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", "sometimes")
    with pytest.raises(RuntimeError, match="FUSEDRNN_PERSISTENT must be"):
        ops.lstm_fwd(*args)


@pytest.mark.parametrize("mode", ["auto", "1", "require"])
def test_projection_runs_per_step(ops, monkeypatch, mode):
    """The persistent kernels do not project: with proj_size auto and forced (1) run the per-step
    path and match the reference; require says why it cannot."""
    spec = CellSpec("lstm", proj_size=3)
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", mode)
    if mode != "require":
        check_ops(ops, spec, T=3, B=3, I=4, H=8, dtype=torch.float64, lengths=[3, 1, 2], training=True)
        return
    x, state, p, _ = make_case(spec, 2, 2, 3, 8, torch.float64, None)
    args = (x, None, state[0], state[1], None, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], *([None] * 14), 0, 0,
            False, 0, 1e-5, p["w_hr"])
    with pytest.raises(RuntimeError, match="FUSEDRNN_PERSISTENT=require, but the persistent kernel does not "
                                           "implement the projection"):
        ops.lstm_fwd(*args)


def test_tensor_core_switch_is_checked(ops, monkeypatch):
    """FUSEDRNN_PERSISTENT_MMA selects the tensor-core product for the half types only (sm_80+ or the
    emulator): float32 with the switch on runs the FMA product and matches the reference; anything
    but 0 / 1 is rejected."""
    spec = CellSpec("lstm")
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", "require")
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_MMA", "1")
    before = ops.mma_executed()
    check_ops(ops, spec, T=3, B=3, I=4, H=8, dtype=torch.float32, lengths=[3, 1, 2], training=True)
    assert ops.mma_executed() == before
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_MMA", "yes")
    x, state, p, _ = make_case(spec, 2, 2, 3, 8, torch.float32, None)
    args = (x, None, state[0], state[1], None, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], *([None] * 14), 0, 0,
            False, 0, 1e-5, None)
    with pytest.raises(RuntimeError, match="FUSEDRNN_PERSISTENT_MMA must be 0 or 1, got 'yes'"):
        ops.lstm_fwd(*args)


def test_persistent_backward_is_persistent(ops, monkeypatch):
    """fp64, H = 8, B = 3, U = 3 (persist_smem / persist_bwd_smem): the forward needs 9768 bytes, the
    backward at least 10192; a 10000-byte cap runs the forward persistently and makes require fail
    in the backward, so the backward of the tests above is the persistent kernel."""
    spec = CellSpec("lstm", "vanilla", "none")
    x, state, p, _ = make_case(spec, 2, 3, 3, 8, torch.float64, None)
    args = (x, None, state[0], state[1], None, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], *([None] * 8))
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", "require")
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_SMEM", "10000")
    out = ops.lstm_fwd(*args, *([None] * 6), 0, 0, False, 0, 1e-5, None)
    g = torch.ones_like(out[0]), torch.ones_like(out[1]), torch.ones_like(out[2]), x.new_zeros(0)
    with pytest.raises(RuntimeError, match=r"lstm_bwd \(CUDA, persistent\): FUSEDRNN_PERSISTENT=require"):
        ops.lstm_bwd(*g, *args, out[0], *out[4:9], 0, 0, False, 1e-5, None)


@pytest.mark.parametrize("norm,limit", [("none", 11), ("batch", 5), ("layer", 0), ("layer_per_gate", 0)])
def test_persistent_auto_threshold(ops, monkeypatch, norm, limit):
    """FUSEDRNN_PERSISTENT=auto (the default) runs persistent while the recurrent multiply-adds per
    CTA and step, 4 * U * H * B, stay within 65,536 without norm and 32,768 with batch norm, never
    with the layer norms (persistent_launch.h: H100 measurements). On the 3 emulated SMs H = 64
    gives U = 22 units per CTA, 5,632 multiply-adds per batch row: B <= 11 and B <= 5."""
    for var in ("FUSEDRNN_PERSISTENT_SMEM", "FUSEDRNN_PERSISTENT_CHUNK", "FUSEDRNN_EMULATED_SMS"):
        monkeypatch.delenv(var, raising=False)
    code = NORMS.index(norm)
    if limit == 0:
        assert ops.persist_auto_why(1, 64, code) == "layer norms run per step under auto"
        return
    above = "recurrent work per CTA above the auto threshold"
    assert ops.persist_auto_why(1, 64, code) == ""
    assert ops.persist_auto_why(limit, 64, code) == ""
    assert ops.persist_auto_why(limit + 1, 64, code) == above
    assert ops.persist_auto_why(64, 64, code) == above


@pytest.mark.parametrize("spec", [CellSpec("lstm", "vanilla", "layer"), CellSpec("lstm", "peephole", "layer_per_gate")],
                         ids=spec_id)
def test_persistent_many_ctas(ops, persistent, spec):
    """40 emulated SMs, H = 40: 40 CTAs of one unit each, so the warp-wide cross-CTA merges of the
    layer-norm statistics (forward) and row sums (backward) loop over two CTAs in lanes 0-7 -- the
    regime of a real GPU (an H100 runs H = 512 as 128 CTAs, 4 per lane), which 3 emulated CTAs
    never reach. fp64 against the reference, forward and backward, variable lengths."""
    persistent.setenv("FUSEDRNN_EMULATED_SMS", "40")
    check_ops(ops, spec, T=2, B=3, I=3, H=40, dtype=torch.float64, lengths=[2, 1, 2], training=True)


@pytest.mark.parametrize("spec", [CellSpec("lstm", "vanilla", "batch"), CellSpec("lstm", "fgr", "batch")], ids=spec_id)
def test_persistent_batchnorm_more_rows_than_lanes(ops, persistent, spec):
    """B = 70: the batch-norm column statistics and sums (a warp per column, its lanes split the
    batch rows) take three rows in lanes 0-5 and two in the others, and rows 40-69 finish early.
    fp64 against the reference, forward and backward."""
    check_ops(ops, spec, T=3, B=70, I=3, H=4, dtype=torch.float64, lengths=[3] * 40 + [2] * 20 + [1] * 10,
              training=True)


def test_cuda_path_argument_overrides_the_environment(ops, monkeypatch):
    """The ops' cuda_path argument (fusedrnn.LSTM(cuda_path=...)): 1 auto, 2 per step, 3 persistent
    where it fits, 0 (the default) FUSEDRNN_PERSISTENT's choice. Which path ran is seen through the
    emulated tensor cores: bfloat16 with FUSEDRNN_PERSISTENT_MMA=1 runs mma.sync in the persistent
    kernels only. Forward and backward alike; a bad value is an error."""
    spec = CellSpec("lstm")
    x, state, p, _ = make_case(spec, 3, 4, 3, 8, torch.bfloat16, None)
    args = (x, None, state[0], state[1], None, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], *([None] * 14), 0, 0,
            False, 0, 1e-5, None)
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_MMA", "1")
    monkeypatch.delenv("FUSEDRNN_PERSISTENT_SMEM", raising=False)

    def runs_persistent(path):
        before = ops.mma_executed()
        out = ops.lstm_fwd(*args, path) if path is not None else ops.lstm_fwd(*args)
        fwd = ops.mma_executed() > before
        g = torch.ones_like(out[0]), torch.ones_like(out[1]), torch.ones_like(out[2]), x.new_zeros(0)
        bwd_args = (*g, *args[:17], out[0], *out[4:9], 0, 0, False, 1e-5, None)
        before = ops.mma_executed()
        ops.lstm_bwd(*bwd_args, path) if path is not None else ops.lstm_bwd(*bwd_args)
        assert (ops.mma_executed() > before) == fwd, "the backward took another path than the forward"
        return fwd

    monkeypatch.setenv("FUSEDRNN_PERSISTENT", "0")  # the environment says per step ...
    assert not runs_persistent(None) and not runs_persistent(0)
    assert runs_persistent(3)  # ... the argument overrides it
    assert runs_persistent(1)  # auto: B = 4 is below the threshold
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", "require")
    assert runs_persistent(None)
    assert not runs_persistent(2)  # per step, although the environment would require the persistent kernel
    monkeypatch.setenv("FUSEDRNN_PERSISTENT_SMEM", "64")  # nothing fits: require fails, the argument falls back
    with pytest.raises(RuntimeError, match="persistent kernel cannot run"):
        runs_persistent(None)
    assert not runs_persistent(3)
    with pytest.raises(RuntimeError, match=r"cuda_path must be 0 \(FUSEDRNN_PERSISTENT decides\), 1 \(auto\), "
                                           r"2 \(per step\) or 3 \(persistent\), got 4"):
        ops.lstm_fwd(*args, 4)


@pytest.mark.parametrize("mode", ["0", "require"])
def test_batchnorm_huge_t0(ops, monkeypatch, mode):
    """t0 >= 2^31 (a long stream fed in chunks): the slot min(t0 + t, S - 1) is S - 1, as for
    t0 = S - 1 -- t0 was narrowed to int before the clamp (a negative slot, out-of-bounds reads of
    the running statistics in eval and writes in bn_update_). Per step and persistent, and bn_update_."""
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", mode)
    spec = CellSpec("lstm", "vanilla", "batch", max_bn_steps=3)
    x, state, p, lens = make_case(spec, 2, 3, 3, 8, torch.float64, [2, 1, 2])
    bn = [p[k] for k in ("rm_ih", "rv_ih", "rm_hh", "rv_hh", "rm_cell", "rv_cell")]
    args = (x, lens, state[0], state[1], None, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], None, None,
            p["g_ih"], p["g_hh"], p["g_cell"], p["b_cell"], None, None, *bn)
    S = bn[0].shape[0]
    for training in (False, True):
        ref = ops.lstm_fwd(*args, 0, 3, training, S - 1, spec.eps, None)
        big = ops.lstm_fwd(*args, 0, 3, training, 2**31 + 5, spec.eps, None)
        for a, b in zip(ref, big):
            torch.testing.assert_close(b, a, rtol=0, atol=0)
    stats = ops.lstm_fwd(*args, 0, 3, True, 0, spec.eps, None)[8]
    want, got = [t.clone() for t in bn], [t.clone() for t in bn]
    ops.bn_update_(*want, stats, lens, 3, S - 1, 0.1)
    ops.bn_update_(*got, stats, lens, 3, 2**31 + 5, 0.1)
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
