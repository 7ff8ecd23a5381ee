"""The fused CPU kernels (fusedrnn._C through fusedrnn._ops) against the reference oracle.

Every spec x {float32, float64}: outputs, final states, every gradient and the batch-norm
running statistics equal reference.run_layer's; gradcheck in float64; opcheck on every op;
odd shapes; modules (multi-layer, bidirectional, packed) with backend "cpu"; compile,
autocast, error paths.
"""
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import _ops, reference
from fusedrnn.modules import init_parameters
from fusedrnn.spec import LSTM_VARIANTS, NORMS, CellSpec

from conftest import ALL_SPECS, check_close, spec_id

pytestmark = pytest.mark.skipif(not _ops.HAS_CPU, reason=f"fusedrnn._C not built: {_ops.LOAD_ERROR}")

DTYPES = (torch.float64, torch.float32)
# The CPU kernels also run torch.nn.LSTM's projection (proj_size; vanilla LSTM without norm).
PROJECTED = CellSpec("lstm", proj_size=3)
CPU_SPECS = [*ALL_SPECS, PROJECTED]


def make_layer(spec, T, B, I, H, dtype, seed=0):
    """Random inputs, states and parameters (norm gains/shifts perturbed away from 1/0)."""
    g = torch.Generator().manual_seed(seed)
    p = {r: torch.empty(s, dtype=dtype) for r, s in spec.parameter_shapes(I, H).items()}
    init_parameters(spec, p, H, generator=g)  # the seed fixes every input, whatever ran before
    with torch.no_grad():
        for r, t in p.items():
            if r.startswith(("g_", "b_")):
                t.add_(0.1 * torch.randn(t.shape, generator=g, dtype=dtype))
    for r, s in spec.buffer_shapes(H).items():
        p[r] = (0.5 + torch.rand(s, generator=g, dtype=dtype)) if r.startswith("rv") else \
            0.1 * torch.randn(s, generator=g, dtype=dtype)
    for r, t in p.items():
        if not r.startswith(("rm_", "rv_")):
            t.requires_grad_(True)
    x = torch.randn(T, B, I, generator=g, dtype=dtype).requires_grad_(True)
    state = tuple((0.5 * torch.randn(B, n, generator=g, dtype=dtype)).requires_grad_(True)
                  for n in spec.state_sizes(H))
    return x, state, p


def run_and_grad(run_layer, spec, x, state, p, lengths, training, t0):
    """Forward (on a copy of the running statistics), a weighted loss, all gradients."""
    pp = {k: (v.clone() if k.startswith(("rm_", "rv_")) else v) for k, v in p.items()}
    y, final = run_layer(spec, x, state, pp, lengths=lengths, training=training, t0=t0)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype)
    loss = (y * w).sum() + sum(((k + 1) * f.sin()).sum() for k, f in enumerate(final))
    names = ["x"] + [f"state{k}" for k in range(len(state))] + [r for r, v in p.items() if v.requires_grad]
    inputs = [x, *state] + [v for v in p.values() if v.requires_grad]
    grads = dict(zip(names, torch.autograd.grad(loss, inputs)))
    running = {k: v for k, v in pp.items() if k.startswith(("rm_", "rv_"))}
    return y, final, grads, running


def _as_float64(x, state, p):
    def cast(t):
        return t.detach().double().requires_grad_(t.requires_grad)
    return cast(x), tuple(cast(s) for s in state), {k: cast(v) for k, v in p.items()}


def compare(spec, x, state, p, lengths=None, training=False, t0=0):
    ref = run_and_grad(reference.run_layer, spec, x, state, p, lengths, training, t0)
    ker = run_and_grad(_ops.run_layer, spec, x, state, p, lengths, training, t0)
    if x.dtype == torch.float32:
        truth = run_and_grad(reference.run_layer, spec, *_as_float64(x, state, p), lengths, training, t0)
    else:
        truth = (None, [None] * len(ref[1]), dict.fromkeys(ref[2]), dict.fromkeys(ref[3]))
    check_close(ker[0], ref[0], "y", truth[0])
    assert len(ker[1]) == len(ref[1])
    for name, a, b, c in zip(spec.state_names, ker[1], ref[1], truth[1]):
        check_close(a, b, f"final {name}", c)
    assert ker[2].keys() == ref[2].keys()
    for name in ref[2]:
        check_close(ker[2][name], ref[2][name], f"grad {name}", truth[2][name])
    for name in ref[3]:
        check_close(ker[3][name], ref[3][name], f"running {name}", truth[3][name])


# ----------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spec", CPU_SPECS, ids=spec_id)
def test_matches_reference(spec, dtype):
    # B = 8 with lengths leaving 8, 7, 6, 4 and 1 active rows at steps 0..4. Batch norm over exactly
    # 2 active rows is ill-conditioned (xhat = +-1 whatever the input, so the true input gradient is
    # ~0 and float32 results are rounding noise amplified by 1 / sigma): the earlier B = 4 inputs
    # had 2 active rows at steps 3-4 and made the float32 comparison a matter of luck (failed
    # intermittently for nog/nig-batch, here and on the H100; same change in test_cuda.py).
    x, state, p = make_layer(spec, 5, 8, 3, 7, dtype)
    compare(spec, x, state, p, training=True)
    # variable lengths (one sequence alone at the last step: BN normalizes, no update), t0 offset
    compare(spec, x, state, p, lengths=torch.tensor([5, 3, 4, 1, 4, 4, 3, 2]), training=True, t0=2)
    compare(spec, x, state, p, lengths=torch.tensor([2, 5, 4, 3, 5, 1, 5, 4]), training=False, t0=1)


@pytest.mark.parametrize("split", ["columns", "rows"])
@pytest.mark.parametrize("members", ["2", "3"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spec", [*CPU_SPECS, CellSpec("lstm", proj_size=17)], ids=spec_id)
def test_team_matches_reference(monkeypatch, spec, dtype, members, split):
    """The time loop split over a thread team (csrc/cpu/team.h): FUSEDRNN_CPU_TEAM forces the
    member count at a test-sized shape (by default a team starts above ~64k multiply-adds per
    step), FUSEDRNN_CPU_SPLIT how members share a step (column slices of the product, or batch
    rows through the whole loop; batch norm then combines the members' partial sums after a
    barrier). 3 members on this 2-thread machine also runs one thread playing two members. H = 20
    gives members column slices of different widths (16-aligned, one may be empty), B = 8 rows
    split 3/3/2 with rows finishing at different steps; a projection of 17 gives W_hr's rows two
    column slices too."""
    monkeypatch.setenv("FUSEDRNN_CPU_TEAM", members)
    monkeypatch.setenv("FUSEDRNN_CPU_SPLIT", split)
    x, state, p = make_layer(spec, 5, 8, 3, 20, dtype, seed=5)
    compare(spec, x, state, p, lengths=torch.tensor([5, 3, 4, 1, 4, 4, 3, 2]), training=True, t0=2)
    compare(spec, x, state, p, training=False)


@pytest.mark.parametrize("members", ["1", "2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spec", [CellSpec("lstm", norm="batch"), CellSpec("lstm", norm="layer")], ids=spec_id)
def test_rows_split_with_input_projection_before_the_loop(monkeypatch, spec, dtype, members):
    """With a norm where members own rows, each member computes its rows of x_t W_ih^T in the
    loop only while W_ih takes at most 512 KiB (csrc/cpu/lstm.cpp input_in_loop); I = 4200 with
    4H = 32 makes it 538 KB in float32 (1.08 MB in float64), so the projection runs as one GEMM
    before the loop and batch norm's members take their ih partial statistics from its output."""
    monkeypatch.setenv("FUSEDRNN_CPU_TEAM", members)
    monkeypatch.setenv("FUSEDRNN_CPU_SPLIT", "rows")
    x, state, p = make_layer(spec, 3, 8, 4200, 8, dtype, seed=8)
    compare(spec, x, state, p, lengths=torch.tensor([3, 2, 3, 1, 3, 3, 2, 3]), training=True)
    compare(spec, x, state, p, training=False)


@pytest.mark.parametrize("mode", ["0", "loop"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spec", [CellSpec("lstm", "fgr", "layer"), PROJECTED, CellSpec("gru"), CellSpec("rnn_tanh")],
                         ids=spec_id)
def test_recurrent_gemm_fallbacks(monkeypatch, spec, dtype, mode):
    """The recurrent products without MKL's packed GEMM: FUSEDRNN_PACKED_GEMM=0 uses BLAS ?gemm_
    every step, =loop the plain loop a torch without BLAS symbols would run (csrc/cpu/recurrent_gemm.h)."""
    monkeypatch.setenv("FUSEDRNN_PACKED_GEMM", mode)
    monkeypatch.setenv("FUSEDRNN_CPU_TEAM", "2")
    x, state, p = make_layer(spec, 4, 5, 3, 20, dtype, seed=6)
    compare(spec, x, state, p, lengths=torch.tensor([4, 2, 3, 1, 4]), training=True)


def _cpuinfo(key: str) -> str:
    """The first /proc/cpuinfo line's value for key ("" if none)."""
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == key), "")


def _cpu_flags() -> set:
    return set(_cpuinfo("flags").split())


def _cpu_simd_levels() -> list:
    """The FUSEDRNN_CPU_SIMD levels this CPU runs (csrc/cpu/simd.h)."""
    flags = _cpu_flags()
    levels = ["base"]
    if {"avx2", "fma"} <= flags:
        levels.append("avx2")
        if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= flags:
            levels.append("avx512")
    return levels


def _cpu_has_avx512() -> bool:
    return "avx512" in _cpu_simd_levels()


def _cpu_has_amx() -> bool:
    """AMX bf16 tiles and AVX512-BF16 (csrc/cpu/amx_gemm.h; Linux grants the tile state)."""
    return _cpu_has_avx512() and {"amx_tile", "amx_bf16", "avx512_bf16"} <= _cpu_flags()


needs_amx = pytest.mark.skipif(not _cpu_has_amx(), reason="the CPU has no AMX bf16 tiles")


@pytest.mark.parametrize("large", ["avx512", pytest.param("amx", marks=needs_amx)])
@pytest.mark.parametrize("where", ["loop", "after"])
@pytest.mark.parametrize("members", ["1", "2", "3"])
@pytest.mark.parametrize("spec", [CellSpec("lstm"), CellSpec("lstm", "fgr"), CellSpec("lstm", norm="layer"),
                                  CellSpec("lstm", "peephole", "batch"), CellSpec("lstm", "cifg", "layer_per_gate")],
                         ids=spec_id)
def test_weight_grads_in_and_after_the_loop(monkeypatch, spec, members, where, large):
    """float32 layers whose members own rows compute dW_ih and dW_hh step by step in the
    backward loop (csrc/cpu/gemm.h StepWeightGrads) or as GEMMs after it, whichever
    StepWeightGrads::chosen picks; FUSEDRNN_WEIGHT_GRADS forces either, so both run on every CPU
    with fusedrnn's AVX-512 kernel (elsewhere both are the GEMMs after the loop), and
    FUSEDRNN_LARGE_GEMM picks the loop's products: the AVX-512 kernel, or the AMX tiles (dG packed
    step by step, an odd row count padded with a zero row). B = 8 rows split 3/3/2, finishing at
    different steps; with three members the AMX stages hold 8 steps of 4 k (3 rows and a zero
    row; the 2-row member fills 16 of its 32 k and zeros the rest), so T = 21 runs two full
    stages and a partial one; the kernel-sized shapes test covers products past one k block."""
    monkeypatch.setenv("FUSEDRNN_WEIGHT_GRADS", where)
    monkeypatch.setenv("FUSEDRNN_LARGE_GEMM", large)
    monkeypatch.setenv("FUSEDRNN_CPU_TEAM", members)
    monkeypatch.setenv("FUSEDRNN_CPU_SPLIT", "rows")
    x, state, p = make_layer(spec, 21, 8, 3, 20, torch.float32, seed=9)
    compare(spec, x, state, p, lengths=torch.tensor([21, 3, 14, 1, 20, 9, 17, 2]), training=True, t0=1)


@pytest.mark.parametrize("large", ["avx512", pytest.param("amx", marks=needs_amx)])
@pytest.mark.parametrize("split", ["rows", "columns"])
@pytest.mark.parametrize("members", ["1", "2", "3"])
@pytest.mark.parametrize("mode", ["avx512", pytest.param("amx", marks=needs_amx), "mkl"])
@pytest.mark.parametrize("spec", [CellSpec("lstm"), CellSpec("lstm", norm="layer"), CellSpec("lstm", "peephole", "batch"),
                                  CellSpec("gru"), CellSpec("rnn_tanh"), CellSpec("lstm", proj_size=37)], ids=spec_id)
def test_packed_kernels_at_kernel_sized_shapes(monkeypatch, spec, mode, members, split, large):
    """float32 products above the size where fusedrnn's AVX-512 kernel takes the large GEMMs
    (csrc/cpu/gemm.h, 64k multiply-adds) as well as the per-step products, against MKL's
    (mode mkl). T * B = 549 puts the weight gradients' k past one 512 block; B = 61 makes the
    steps' row tiles 7 and 8 high (rows split: 20/21 rows a member, tiles of 6 and 7; the team
    tests' B = 8 split 3/3/2 gives the short ones); 4H = 488 and 3H = 366 end the
    48-column panels with 8 and 30 columns, H = 122 with 26 (one, two and two zmm); I = 40 makes
    dx one panel, split by rows of the output. FUSEDRNN_LARGE_GEMM=avx512: the large GEMMs on
    fusedrnn's kernel on every CPU (the default is AMX where the CPU has it, else ATen's mm on
    Intel CPUs); =amx: on the AMX tiles (k = 549 in two chunks of 512 and 37, 32-blocks ending
    with 5 to 25 rows or columns). FUSEDRNN_PACKED_GEMM=amx: every step product on the AMX tiles
    (the default takes them above a size, recurrent_gemm.h step_amx), avx512: none."""
    if large == "amx" and (mode == "mkl" or split == "columns"):
        pytest.skip("the large GEMMs do not depend on the step products or the loop's split")
    monkeypatch.setenv("FUSEDRNN_PACKED_GEMM", mode)
    monkeypatch.setenv("FUSEDRNN_LARGE_GEMM", large)
    monkeypatch.setenv("FUSEDRNN_CPU_TEAM", members)
    monkeypatch.setenv("FUSEDRNN_CPU_SPLIT", split)
    info = fusedrnn.cpu_gemm_info()
    if mode != "mkl" and _cpu_has_avx512():
        assert info == {"recurrent": mode, "large": large, "units": "avx512"}
    else:
        assert info["recurrent"] != "avx512" and info["large"] == "aten"
    x, state, p = make_layer(spec, 9, 61, 40, 122, torch.float32, seed=7)
    lengths = torch.tensor([9, 3, 5, 9, 1, 7] * 10 + [8])
    compare(spec, x, state, p, lengths=lengths, training=True)


def _check_forced_amx(monkeypatch, var, key, amx):
    """var=amx: cpu_gemm_info()[key] is "amx" where the CPU has AMX (and not under
    FUSEDRNN_CPU_SIMD=avx2, which turns fusedrnn's own kernels off), else an error."""
    monkeypatch.setenv(var, "amx")
    if amx:
        assert fusedrnn.cpu_gemm_info()[key] == "amx"
        monkeypatch.setenv("FUSEDRNN_CPU_SIMD", "avx2")
        assert fusedrnn.cpu_gemm_info()[key] not in ("amx", "avx512")
        monkeypatch.delenv("FUSEDRNN_CPU_SIMD")
    else:
        with pytest.raises(RuntimeError, match=f"{var}=amx: this CPU or OS runs no AMX bf16 tiles"):
            fusedrnn.cpu_gemm_info()


def test_large_gemm_choice(monkeypatch):
    """csrc/cpu/recurrent_gemm.h large_gemm: by default the large GEMMs run on the AMX tiles
    where the CPU has them, else on fusedrnn's AVX-512 kernel except on Intel CPUs with a torch
    linking MKL (MKL's AVX-512 sgemm there); FUSEDRNN_LARGE_GEMM forces each, and only where the
    kernel itself is in use; amx where the CPU has no AMX is an error."""
    monkeypatch.delenv("FUSEDRNN_LARGE_GEMM", raising=False)
    monkeypatch.delenv("FUSEDRNN_PACKED_GEMM", raising=False)
    avx512, amx = _cpu_has_avx512(), _cpu_has_amx()
    mkl_avx512 = _cpuinfo("vendor_id") == "GenuineIntel" and torch.backends.mkl.is_available()
    default = "amx" if amx else "avx512" if avx512 and not mkl_avx512 else "aten"
    assert fusedrnn.cpu_gemm_info()["large"] == default
    monkeypatch.setenv("FUSEDRNN_LARGE_GEMM", "avx512")
    assert fusedrnn.cpu_gemm_info()["large"] == ("avx512" if avx512 else "aten")
    monkeypatch.setenv("FUSEDRNN_LARGE_GEMM", "aten")
    assert fusedrnn.cpu_gemm_info()["large"] == "aten"
    _check_forced_amx(monkeypatch, "FUSEDRNN_LARGE_GEMM", "large", amx)
    for forced in ("avx512", "amx") if amx else ("avx512",):
        monkeypatch.setenv("FUSEDRNN_LARGE_GEMM", forced)
        monkeypatch.setenv("FUSEDRNN_PACKED_GEMM", "mkl")
        assert fusedrnn.cpu_gemm_info()["large"] == "aten"


def test_step_gemm_choice(monkeypatch):
    """csrc/cpu/recurrent_gemm.h: by default (FUSEDRNN_PACKED_GEMM=1) the step products run on
    the AMX tiles where the CPU has them (above a size, step_amx), else on fusedrnn's AVX-512
    kernel; avx512 and amx force either; amx where the CPU has no AMX is an error."""
    monkeypatch.delenv("FUSEDRNN_LARGE_GEMM", raising=False)
    monkeypatch.delenv("FUSEDRNN_PACKED_GEMM", raising=False)
    avx512, amx = _cpu_has_avx512(), _cpu_has_amx()
    if avx512:
        assert fusedrnn.cpu_gemm_info()["recurrent"] == ("amx" if amx else "avx512")
        monkeypatch.setenv("FUSEDRNN_PACKED_GEMM", "avx512")
        assert fusedrnn.cpu_gemm_info()["recurrent"] == "avx512"
    _check_forced_amx(monkeypatch, "FUSEDRNN_PACKED_GEMM", "recurrent", amx)


@needs_amx
@pytest.mark.parametrize("members", ["1", "2", "3"])
@pytest.mark.parametrize("M,K,N,a_t,b_t", [
    (549, 549, 488, False, False),  # k in two chunks (512 + 37); every 32-block edge partial
    (2048, 640, 64, True, False),   # a^T (dG^T of the weight gradients, gathered): rows split
    (520, 549, 40, True, False),    # a^T with a partial 16-row block, k in two chunks
    (64, 300, 1040, False, True),   # b^T (W_ih^T of the input projection); 2 row blocks: columns split
    (1, 1, 16, False, False),       # one row, one k
    (33, 31, 17, True, True),
])
def test_amx_gemm_accuracy(monkeypatch, members, M, K, N, a_t, b_t):
    """csrc/cpu/amx_gemm.h: the three-bfloat16-part products on the AMX tiles have a float32
    GEMM's error. Against float64, each entry's error relative to (|a| |b|)'s entry: at most
    twice torch.mm's (MKL float32) largest, or 4 units of float32's rounding (2^-22) where that
    is smaller; a plain bf16 or TF32 product would be off by about 2^-9 or 2^-11. The bias is
    added once, and strided operands (transposed views) are read in place."""
    monkeypatch.setenv("FUSEDRNN_LARGE_GEMM", "amx")
    monkeypatch.setenv("FUSEDRNN_CPU_TEAM", members)
    g = torch.Generator().manual_seed(M + K + N)
    a = torch.randn(K, M, generator=g).t() if a_t else torch.randn(M, K, generator=g)
    b = torch.randn(N, K, generator=g).t() if b_t else torch.randn(K, N, generator=g)
    bias = torch.randn(N, generator=g)
    for with_bias in (True, False):
        exact = a.double() @ b.double() + (bias.double() if with_bias else 0)
        scale = a.double().abs() @ b.double().abs() + (bias.double().abs() if with_bias else 0)
        out = _ops.large_gemm(a, b, bias if with_bias else None)
        mkl = torch.addmm(bias, a, b) if with_bias else a @ b
        assert fusedrnn.cpu_gemm_info()["large"] == "amx"
        assert out.shape == (M, N) and out.dtype == torch.float32
        amx_err = ((out.double() - exact).abs() / scale).max().item()
        mkl_err = ((mkl.double() - exact).abs() / scale).max().item()
        assert amx_err <= max(2 * mkl_err, 2.0 ** -22), (amx_err, mkl_err)


@pytest.mark.parametrize("var,value,message", [
    ("FUSEDRNN_PACKED_GEMM", "fast", "FUSEDRNN_PACKED_GEMM must be 1, avx512, amx, mkl, 0 or loop, got 'fast'"),
    ("FUSEDRNN_LARGE_GEMM", "mkl", "FUSEDRNN_LARGE_GEMM must be auto, amx, avx512 or aten, got 'mkl'"),
    ("FUSEDRNN_CPU_SIMD", "sse", "FUSEDRNN_CPU_SIMD must be avx512, avx2 or base, got 'sse'"),
])
def test_kernel_env_rejects_bad_value(monkeypatch, var, value, message):
    monkeypatch.setenv(var, value)
    with pytest.raises(RuntimeError, match=message):
        fusedrnn.cpu_gemm_info()
    spec = CellSpec("lstm")
    x, state, p = make_layer(spec, 2, 2, 3, 4, torch.float32)
    with pytest.raises(RuntimeError, match=message):
        _ops.run_layer(spec, x, state, p)


# The row loops (unit passes, layer/batch norms) at each instruction-set level; the rest of the
# file runs the CPU's widest. float32 runs each variant's compile-time build (units.h with_variant),
# float64 the runtime-flag one (vanilla its fixed one).
SIMD_SPECS = [*(CellSpec("lstm", v) for v in LSTM_VARIANTS), *(CellSpec("lstm", norm=n) for n in NORMS[1:]),
              CellSpec("lstm", "fgr", "batch"), CellSpec("gru"), CellSpec("gru", norm="layer"), CellSpec("rnn_tanh"),
              CellSpec("rnn_relu")]


@pytest.mark.parametrize("level", ["base", "avx2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spec", SIMD_SPECS, ids=spec_id)
def test_simd_levels_match_reference(monkeypatch, spec, dtype, level):
    if level not in _cpu_simd_levels():
        pytest.skip(f"this CPU does not run {level}")
    monkeypatch.setenv("FUSEDRNN_CPU_SIMD", level)
    monkeypatch.setenv("FUSEDRNN_CPU_TEAM", "2")
    assert fusedrnn.cpu_gemm_info()["units"] == level
    x, state, p = make_layer(spec, 5, 8, 3, 20, dtype, seed=8)
    compare(spec, x, state, p, lengths=torch.tensor([5, 3, 4, 1, 4, 4, 3, 2]), training=True, t0=1)


@pytest.mark.skipif(not _cpu_has_avx512(), reason="needs a CPU with AVX-512")
@pytest.mark.parametrize("H", [37, 46])
@pytest.mark.parametrize("spec", CPU_SPECS, ids=spec_id)
def test_simd_avx2_and_avx512_give_the_same_values(monkeypatch, spec, H):
    """csrc/cpu/simd.h: the AVX2 and AVX-512 builds of the row loops run the same operations in
    the same order on every lane, so (with the same products: MKL's for both) equal bits. The
    layer norms' backward sums take 16 values a step on AVX-512, 8 on AVX2: H = 46 leaves 8 of
    4H = 184 and 14 of H after the 16-steps (an AVX2 8-step, single values on AVX-512), H = 37 4
    and 5."""
    monkeypatch.setenv("FUSEDRNN_PACKED_GEMM", "mkl")
    x, state, p = make_layer(spec, 5, 8, 3, H, torch.float32, seed=9)
    lengths = torch.tensor([5, 3, 4, 1, 4, 4, 3, 2])
    results = []
    for level in ("avx2", "avx512"):
        monkeypatch.setenv("FUSEDRNN_CPU_SIMD", level)
        y, final, grads, running = run_and_grad(_ops.run_layer, spec, x, state, p, lengths, True, 0)
        results.append([y, *final, *grads.values(), *running.values()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_simd_level_is_capped_by_the_cpu(monkeypatch):
    widest = _cpu_simd_levels()[-1]
    assert fusedrnn.cpu_gemm_info()["units"] == widest
    monkeypatch.setenv("FUSEDRNN_CPU_SIMD", "avx512")
    assert fusedrnn.cpu_gemm_info()["units"] == widest
    monkeypatch.setenv("FUSEDRNN_CPU_SIMD", "base")
    info = fusedrnn.cpu_gemm_info()
    assert info["units"] == "base" and info["recurrent"] != "avx512" and info["large"] == "aten"


@pytest.mark.skipif(not _cpu_has_avx512(), reason="without fusedrnn's AVX-512 kernel the knob is not read")
def test_weight_grads_env_rejects_bad_value(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_WEIGHT_GRADS", "before")
    monkeypatch.setenv("FUSEDRNN_CPU_TEAM", "1")
    spec = CellSpec("lstm")
    x, state, p = make_layer(spec, 2, 2, 3, 4, torch.float32)
    y = _ops.run_layer(spec, x, state, p, training=True)[0]
    with pytest.raises(RuntimeError, match="FUSEDRNN_WEIGHT_GRADS must be 'loop', 'after' or 'auto', got 'before'"):
        y.sum().backward()


def test_team_split_env_rejects_bad_value(monkeypatch):
    spec = CellSpec("lstm")
    x, state, p = make_layer(spec, 2, 2, 3, 4, torch.float64)
    monkeypatch.setenv("FUSEDRNN_CPU_TEAM", "2")
    monkeypatch.setenv("FUSEDRNN_CPU_SPLIT", "diagonal")
    with pytest.raises(RuntimeError, match="FUSEDRNN_CPU_SPLIT must be 'rows' or 'columns', got 'diagonal'"):
        _ops.run_layer(spec, x, state, p)


def test_team_env_rejects_bad_count(monkeypatch):
    spec = CellSpec("lstm")
    x, state, p = make_layer(spec, 2, 2, 3, 4, torch.float64)
    monkeypatch.setenv("FUSEDRNN_CPU_TEAM", "0")
    with pytest.raises(RuntimeError, match="FUSEDRNN_CPU_TEAM must be a member count >= 1, got '0'"):
        _ops.run_layer(spec, x, state, p)


@pytest.mark.parametrize("spec", [*ALL_SPECS, CellSpec("lstm", proj_size=1)], ids=spec_id)
def test_gradcheck(spec):
    x, state, p = make_layer(spec, 3, 3, 2, 2, torch.float64, seed=3)
    roles = [r for r, v in p.items() if v.requires_grad]
    lengths = torch.tensor([3, 2, 3])

    def fn(x, *rest):
        st, params = rest[:len(state)], dict(zip(roles, rest[len(state):]))
        params.update({r: v.clone() for r, v in p.items() if not v.requires_grad})
        y, final = _ops.run_layer(spec, x, st, params, lengths=lengths, training=True)
        return (y, *final)

    assert torch.autograd.gradcheck(fn, (x, *state, *(p[r] for r in roles)), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (1, 3, 1, 7), (4, 1, 2, 1), (3, 2, 1, 7)])
@pytest.mark.parametrize("spec", [CellSpec("lstm"), CellSpec("lstm", "fgr", "layer"), CellSpec("lstm", "cifg", "batch"),
                                  CellSpec("lstm", "nog", "layer_per_gate"), CellSpec("gru", norm="layer"),
                                  CellSpec("rnn_relu"), CellSpec("lstm", proj_size=1)], ids=spec_id)
def test_odd_shapes(spec, T, B, I, H):
    x, state, p = make_layer(spec, T, B, I, H, torch.float64)
    # batch norm in training needs B > 1 (the modules enforce it); eval works for any B
    compare(spec, x, state, p, training=not (spec.norm == "batch" and B == 1))


# ----------------------------------------------------------------------------- buffer cache
# Large buffers (>= 1 MiB) come from csrc/cpu/pool.h's cache; [T, B, G*H] float64 at this shape
# is 5.2 MB (LSTM) and [T, B, H] 1.3 MB, so every saved activation and gate-gradient buffer goes
# through it.
CACHE_SHAPE = (40, 32, 8, 128)
MB = 1 << 20


def cache_specs():
    return [CellSpec("lstm", "vanilla"), CellSpec("lstm", "vanilla", "layer"), CellSpec("lstm", "fgr", "batch"),
            CellSpec("gru", norm="layer"), CellSpec("rnn_tanh")]


@pytest.mark.parametrize("spec", cache_specs(), ids=spec_id)
def test_buffer_cache_reused_blocks_give_the_reference(monkeypatch, spec):
    """A second call runs on blocks the first call left behind, holding its values (not the
    zeros of fresh pages): still the reference's results, and no block mapped anew."""
    monkeypatch.setenv("FUSEDRNN_CPU_CACHE_MB", "1024")  # the default, but ASan builds default to 0
    fusedrnn.empty_cpu_cache()
    compare(spec, *make_layer(spec, *CACHE_SHAPE, torch.float64, seed=8), training=True)
    after_first = fusedrnn.cpu_cache_info()
    assert after_first["cached"] >= 2 * MB, after_first
    compare(spec, *make_layer(spec, *CACHE_SHAPE, torch.float64, seed=9), training=True)
    assert fusedrnn.cpu_cache_info()["cached"] == after_first["cached"]
    fusedrnn.empty_cpu_cache()
    assert fusedrnn.cpu_cache_info()["cached"] == 0


def test_buffer_cache_hands_out_live_buffers_and_respects_the_cap(monkeypatch):
    spec = CellSpec("lstm", "vanilla", "layer")
    x, state, p = make_layer(spec, *CACHE_SHAPE, torch.float64)
    monkeypatch.setenv("FUSEDRNN_CPU_CACHE_MB", "1024")
    fusedrnn.empty_cpu_cache()
    base = fusedrnn.cpu_cache_info()["in_use"]
    with torch.no_grad():
        y, _ = _ops.run_layer(spec, x, state, p)
    held = fusedrnn.cpu_cache_info()
    assert held["in_use"] - base >= y.numel() * y.element_size()  # y itself is a cached block
    del y
    assert fusedrnn.cpu_cache_info()["in_use"] == base
    monkeypatch.setenv("FUSEDRNN_CPU_CACHE_MB", "3")
    with torch.no_grad():
        _ops.run_layer(spec, x, state, p)
    info = fusedrnn.cpu_cache_info()
    assert info["cap"] == 3 * MB and info["cached"] <= 3 * MB, info


def test_buffer_cache_off(monkeypatch):
    """FUSEDRNN_CPU_CACHE_MB=0: every buffer from c10's allocator, same results."""
    monkeypatch.setenv("FUSEDRNN_CPU_CACHE_MB", "0")
    fusedrnn.empty_cpu_cache()
    spec = CellSpec("lstm", "peephole", "layer")
    base = fusedrnn.cpu_cache_info()["in_use"]
    x, state, p = make_layer(spec, *CACHE_SHAPE, torch.float64)
    with torch.no_grad():
        y, _ = _ops.run_layer(spec, x, state, p)
        info = fusedrnn.cpu_cache_info()
        assert info["in_use"] == base and info["cached"] == 0 and info["cap"] == 0, info
        torch.testing.assert_close(y, reference.run_layer(spec, x, state, p)[0], rtol=1e-10, atol=1e-12)


FORK_SCRIPT = """
import os, sys, threading
import torch
from fusedrnn import _ops
from fusedrnn.spec import LSTM_VARIANTS, NORMS, CellSpec
from test_cpu_kernels import CACHE_SHAPE, make_layer
from test_reliability import wait_child

torch.set_num_threads(1)  # fork after an OpenMP team has started is unsafe in itself
os.environ["FUSEDRNN_CPU_CACHE_MB"] = "1024"
spec = CellSpec("lstm", "vanilla", "layer")
x, state, p = make_layer(spec, *CACHE_SHAPE, torch.float64)
with torch.no_grad():
    want = _ops.run_layer(spec, x, state, p)[0]
stop = threading.Event()

def churn():  # keeps taking and returning cached blocks while the main thread forks
    while not stop.is_set():
        with torch.no_grad():
            _ops.run_layer(spec, x, state, p)

thread = threading.Thread(target=churn)
thread.start()
codes = []
for _ in range(20):
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            with torch.no_grad():
                code = 0 if torch.equal(_ops.run_layer(spec, x, state, p)[0], want) else 2
        finally:
            os._exit(code)
    status = wait_child(pid, timeout=60, poll=0.01)
    codes.append("hang" if status is None else os.waitstatus_to_exitcode(status))
stop.set()
thread.join()
print(codes)
sys.exit(0 if codes == [0] * 20 else 1)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_buffer_cache_in_children_forked_while_another_thread_allocates():
    """20 children forked while another thread keeps taking and returning cached blocks each run
    a layer (from the inherited cache) and get the parent's result, none hangs. The cache's lock
    is held across fork (pthread_atfork in csrc/cpu/pool.h); without that a child forked while
    the other thread held it would wait forever. The window is microseconds wide, so this test
    shows forked children work, not that the race is closed."""
    out = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, timeout=600,
                         cwd=os.path.dirname(os.path.abspath(__file__)),
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    assert out.returncode == 0, (out.stdout, out.stderr[-3000:])


def test_buffer_cache_env_rejects_bad_cap(monkeypatch):
    spec = CellSpec("lstm")
    x, state, p = make_layer(spec, *CACHE_SHAPE, torch.float64)
    monkeypatch.setenv("FUSEDRNN_CPU_CACHE_MB", "lots")
    with pytest.raises(RuntimeError, match="FUSEDRNN_CPU_CACHE_MB must be a non-negative integer \\(MiB\\), got 'lots'"):
        _ops.run_layer(spec, x, state, p)


# ----------------------------------------------------------------------------- batch norm


@pytest.mark.parametrize("variant", ["vanilla", "peephole", "fgr"])
def test_batch_norm_slots(variant):
    """Steps beyond max_bn_steps reuse the last slot; t0 offsets; train then eval."""
    spec = CellSpec("lstm", variant, "batch", max_bn_steps=3)
    x, state, p = make_layer(spec, 7, 4, 3, 5, torch.float64)
    for t0 in (0, 1, 4):
        compare(spec, x, state, p, training=True, t0=t0)
        compare(spec, x, state, p, lengths=torch.tensor([7, 1, 4, 2]), training=True, t0=t0)
        compare(spec, x, state, p, training=False, t0=t0)
    # the kernel updates the caller's running statistics in place, like the reference
    p_ref = {k: (v.clone() if k.startswith(("rm_", "rv_")) else v) for k, v in p.items()}
    with torch.no_grad():
        reference.run_layer(spec, x, state, p_ref, training=True, t0=1)
        _ops.run_layer(spec, x, state, p, training=True, t0=1)
    for r in spec.buffer_shapes(5):
        torch.testing.assert_close(p[r], p_ref[r], rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------- modules


def _module_pair(cls, kwargs, dtype=torch.float64):
    torch.manual_seed(0)
    ker = cls(**kwargs, backend="cpu", dtype=dtype)
    ref = cls(**kwargs, backend="reference", dtype=dtype)
    ref.load_state_dict(ker.state_dict())
    return ker, ref


@pytest.mark.parametrize("cls,kwargs", [
    (fusedrnn.LSTM, dict(variant="vanilla")),
    (fusedrnn.LSTM, dict(variant="fgr", norm="layer")),
    (fusedrnn.LSTM, dict(variant="peephole", norm="batch", max_bn_steps=4)),
    (fusedrnn.LSTM, dict(variant="cifg", norm="layer_per_gate")),
    (fusedrnn.LSTM, dict(proj_size=2)),
    (fusedrnn.GRU, dict(norm="layer")),
    (fusedrnn.RNN, dict(nonlinearity="relu")),
], ids=["lstm", "lstm-fgr-layer", "lstm-peephole-batch", "lstm-cifg-lpg", "lstm-proj", "gru-layer", "rnn-relu"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_modules_bidirectional_multilayer(cls, kwargs, packed):
    ker, ref = _module_pair(cls, dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, **kwargs))
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 5, 3])
    outs = []
    for m in (ker, ref):
        m.train()
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        y, hx = m(inp)
        y = y.data
        hx = (hx,) if isinstance(hx, torch.Tensor) else hx
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + sum(h.sum() for h in hx)
        grads = torch.autograd.grad(loss, list(m.parameters()))
        outs.append((y, hx, grads, [b.clone() for b in m.buffers()]))
    assert ker.last_backend == "cpu" and ref.last_backend == "reference"
    (y1, h1, g1, b1), (y2, h2, g2, b2) = outs
    check_close(y1, y2, "y")
    for a, b in zip(h1, h2):
        check_close(a, b, "final state")
    for (name, _), a, b in zip(ker.named_parameters(), g1, g2):
        check_close(a, b, f"grad {name}")
    for a, b in zip(b1, b2):
        check_close(a, b, "buffer")


def test_auto_backend_is_cpu():
    m = fusedrnn.LSTM(3, 4, norm="layer")
    m(torch.randn(2, 1, 3))
    assert m.last_backend == "cpu"
    m = fusedrnn.LSTM(3, 4, proj_size=2)
    m(torch.randn(2, 1, 3))
    assert m.last_backend == "cpu"
    c = fusedrnn.LSTMCell(3, 4, norm="batch").eval()
    c(torch.randn(2, 3), bn_step=5)
    assert c.last_backend == "cpu"
    g = fusedrnn.GRU(3, 4, dtype=torch.float64)
    g(torch.randn(2, 1, 3, dtype=torch.float64))
    assert g.last_backend == "cpu"


@pytest.mark.parametrize("kwargs", [dict(norm="layer"), dict(proj_size=2)], ids=["layer", "proj"])
def test_compile_fullgraph(kwargs):
    torch.manual_seed(0)
    m = fusedrnn.LSTM(3, 4, num_layers=2, **kwargs)
    x = torch.randn(5, 2, 3)
    y_eager, _ = m(x)
    g_eager = torch.autograd.grad(y_eager.sum(), list(m.parameters()))
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y, _ = compiled(x)
    g = torch.autograd.grad(y.sum(), list(m.parameters()))
    check_close(y, y_eager, "compiled y")
    for a, b in zip(g, g_eager):
        check_close(a, b, "compiled grad")


def test_autocast():
    m = fusedrnn.LSTM(3, 4, norm="batch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = m(torch.randn(5, 2, 3))
    assert m.last_backend == "cpu" and y.dtype == torch.float32
    y.sum().backward()
    assert m.weight_hh_l0.grad is not None


def test_double_backward_raises():
    m = fusedrnn.LSTM(2, 3, dtype=torch.float64)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    y, _ = m(x)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


# ----------------------------------------------------------------------------- ops


def _lstm_args(spec, training=True, dtype=torch.float64):
    x, state, p = make_layer(spec, 3, 2, 2, 3, dtype)
    bn = spec.norm == "batch"
    return (x, torch.tensor([3, 2]), state[0], state[1], state[2] if spec.full_gate_recurrence else None,
            p["w_ih"], p["w_hh"], *(p.get(r) for r in _ops._LSTM_ROLES),
            *(p[r] if bn else None for r in _ops._BN_ROLES),
            _ops._VARIANT[spec.variant], _ops._NORM[spec.norm], training, 0, spec.eps,
            *((p["w_hr"],) if spec.proj_size else ()))


@pytest.mark.parametrize("spec", [CellSpec("lstm", "peephole"), CellSpec("lstm", "fgr", "layer"),
                                  CellSpec("lstm", "cifg", "layer_per_gate"), CellSpec("lstm", "nig", "batch"),
                                  CellSpec("lstm", proj_size=2)], ids=spec_id)
def test_opcheck_lstm(spec):
    args = _lstm_args(spec)
    torch.library.opcheck(torch.ops.fusedrnn.lstm_fwd.default, args)
    out = torch.ops.fusedrnn.lstm_fwd(*args)
    grads = tuple(torch.randn_like(t) for t in out[:4])
    saved = (*args[:17], out[0], *out[4:])
    variant, norm, training, _t0, eps, *w_hr = args[23:]
    bwd_args = tuple(t.detach() if isinstance(t, torch.Tensor) else t
                     for t in (*grads, *saved, variant, norm, training, eps, *w_hr))
    torch.library.opcheck(torch.ops.fusedrnn.lstm_bwd.default, bwd_args)
    if spec.norm == "batch":
        running = tuple(t.clone() for t in args[17:23])
        torch.library.opcheck(torch.ops.fusedrnn.bn_update_.default,
                              (*running, out[8].detach(), args[1], 2, 0, 0.1))


@pytest.mark.parametrize("spec", [CellSpec("lstm", "fgr", "batch"), CellSpec("lstm", proj_size=2),
                                  CellSpec("gru", norm="layer"), CellSpec("rnn_relu")], ids=spec_id)
def test_function_and_op_autograd_agree(spec):
    """run_layer's autograd.Functions (grad mode) and the autograd registered on the ops give the
    same outputs and gradients; without grad mode run_layer calls the op itself."""
    x, state, p = make_layer(spec, 3, 2, 2, 3, torch.float64)
    lengths = torch.tensor([3, 2])
    leaves = [x, *state, *(t for r, t in p.items() if not r.startswith(("rm_", "rv_")))]
    runs = {}
    for entry in ("function", "op"):
        with mock.patch.dict(_ops._APPLY, _ops._OPS if entry == "op" else {}):
            y, final = _ops.run_layer(spec, x, state, p, lengths=lengths, training=True)
        runs[entry] = (y, torch.autograd.grad((y * y).sum() + sum(f.sum() for f in final), leaves))
    name = {"lstm": "lstm_fwd", "gru": "gru_fwd"}.get(spec.family, "rnn_fwd")
    assert type(runs["function"][0].grad_fn).__name__.startswith(f"Fused_{name}")
    assert not type(runs["op"][0].grad_fn).__name__.startswith("Fused_")
    torch.testing.assert_close(runs["function"][0], runs["op"][0], rtol=0, atol=0)
    for a, b in zip(runs["function"][1], runs["op"][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        y, _ = _ops.run_layer(spec, x, state, p, lengths=lengths, training=False)
    assert y.grad_fn is None


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_opcheck_gru(norm):
    spec = CellSpec("gru", norm=norm)
    x, (h0,), p = make_layer(spec, 3, 2, 2, 3, torch.float64)
    args = (x, torch.tensor([3, 1]), h0, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p.get("g_ih"), p.get("g_hh"),
            _ops._NORM[norm], spec.eps)
    torch.library.opcheck(torch.ops.fusedrnn.gru_fwd.default, args)
    out = torch.ops.fusedrnn.gru_fwd(*args)
    bwd = tuple(t.detach() if isinstance(t, torch.Tensor) else t
                for t in (torch.randn_like(out[0]), torch.randn_like(out[1]), *args[:9], out[0], *out[2:]))
    torch.library.opcheck(torch.ops.fusedrnn.gru_bwd.default, bwd + (_ops._NORM[norm], spec.eps))


@pytest.mark.parametrize("family", ["rnn_tanh", "rnn_relu"])
def test_opcheck_rnn(family):
    spec = CellSpec(family)
    x, (h0,), p = make_layer(spec, 3, 2, 2, 3, torch.float64)
    args = (x, None, h0, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], _ops._RNN_KIND[family])
    torch.library.opcheck(torch.ops.fusedrnn.rnn_fwd.default, args)
    y, h = torch.ops.fusedrnn.rnn_fwd(*args)
    bwd = tuple(t.detach() if isinstance(t, torch.Tensor) else t
                for t in (torch.randn_like(y), torch.randn_like(h), x, None, h0, p["w_ih"], p["w_hh"], y))
    torch.library.opcheck(torch.ops.fusedrnn.rnn_bwd.default, bwd + (_ops._RNN_KIND[family], True))


def test_errors_say_expected_and_got():
    spec = CellSpec("lstm")
    args = list(_lstm_args(spec))
    args[5] = args[5][:, :1].contiguous()  # w_ih with the wrong input size
    with pytest.raises(RuntimeError, match=r"w_ih must have shape \[12, 2\], got \[12, 1\]"):
        torch.ops.fusedrnn.lstm_fwd(*args)
    args = list(_lstm_args(spec))
    args[0] = args[0].float()
    with pytest.raises(RuntimeError, match="must have dtype"):
        torch.ops.fusedrnn.lstm_fwd(*args)
    args = list(_lstm_args(spec))
    args[2] = args[2].detach().t().contiguous().t()  # non-contiguous h0 [2, 3]
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.fusedrnn.lstm_fwd(*args)
    with pytest.raises(TypeError, match="float32 and float64"):
        _ops.select("cpu", torch.randn(2, 2, dtype=torch.bfloat16))
    assert _ops.select("auto", torch.randn(2, 2, dtype=torch.bfloat16))[1] == "reference"


def test_projection_errors_say_expected_and_got():
    """w_hr [P, H] (proj_size): shapes checked against H (from w_hr) and P; vanilla / no norm only."""
    args = list(_lstm_args(CellSpec("lstm", proj_size=2)))  # H = 3, P = 2: w_hh [12, 2], h0 [2, 2]
    bad = list(args)
    bad[-1] = args[-1][:, :2].contiguous()  # w_hr [2, 2]: H = 2 disagrees with c0 and w_hh
    with pytest.raises(RuntimeError, match=r"w_hh must have shape \[8, 2\], got \[12, 2\]"):
        torch.ops.fusedrnn.lstm_fwd(*bad)
    bad = list(args)
    bad[-1] = args[-1][:1].contiguous()  # w_hr [1, 3]: P = 1, but w_hh and h0 are 2 wide
    with pytest.raises(RuntimeError, match=r"w_hh must have shape \[12, 1\], got \[12, 2\]|h0 must have shape"):
        torch.ops.fusedrnn.lstm_fwd(*bad)
    bad = list(args)
    bad[-1] = args[-1][:0].contiguous()
    with pytest.raises(RuntimeError, match=r"w_hr must be \[P, H\] with P >= 1, got shape \[0, 3\]"):
        torch.ops.fusedrnn.lstm_fwd(*bad)
    bad = list(args)
    bad[24] = _ops._NORM["layer"]
    with pytest.raises(RuntimeError, match="vanilla LSTM without norm only"):
        torch.ops.fusedrnn.lstm_fwd(*bad)
    bad = list(args)
    bad[2] = torch.zeros(2, 3, dtype=torch.float64)  # h0 H wide instead of P
    with pytest.raises(RuntimeError, match=r"h0 must have shape \[2, 2\], got \[2, 3\]"):
        torch.ops.fusedrnn.lstm_fwd(*bad)
