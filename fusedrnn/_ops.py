"""Fused kernel backends: the C++ ops of fusedrnn._C wrapped as a `run_layer`.

The ops (schemas in csrc/ops.cpp) run one layer in one direction. This module gives them
autograd (torch.library.register_autograd, and autograd.Functions with the same formulas,
which run_layer calls; the backward is its own op), fake-tensor implementations (so
torch.compile(fullgraph=True) traces them), autocast rules, and a `run_layer` with exactly
reference.run_layer's contract, which the modules and reference.rnn use unchanged. The
run_layer is device-agnostic: the dispatcher picks the CPU or the CUDA kernels registered for
the same schemas.

If the extension is not built (a source checkout), `AVAILABLE` is False, `LOAD_ERROR` says
why, and backend="auto" uses the reference (and says so).
"""
from __future__ import annotations

import torch

from . import reference
from .spec import CUDA_PATHS, LSTM_VARIANTS, NORMS, CellSpec

LOAD_ERROR = None
try:
    from . import _C  # noqa: F401  (loading the library registers the ops)
except ImportError as e:  # not built: the reference backend still works
    LOAD_ERROR = e

AVAILABLE = LOAD_ERROR is None


def _has_kernel(key: str) -> bool:
    return AVAILABLE and torch._C._dispatch_has_kernel_for_dispatch_key("fusedrnn::lstm_fwd", key)


HAS_CPU = _has_kernel("CPU")
HAS_CUDA = _has_kernel("CUDA")
CPU_DTYPES = (torch.float32, torch.float64)

# int codes of the op schemas (csrc/include/fusedrnn/cell_math.h)
_VARIANT = {v: k for k, v in enumerate(LSTM_VARIANTS)}
_NORM = {n: k for k, n in enumerate(NORMS)}
_RNN_KIND = {"rnn_tanh": 0, "rnn_relu": 1}
_CUDA_PATH = {p: k for k, p in enumerate(CUDA_PATHS)}  # the ops' cuda_path argument (csrc/ops.cpp)
_NUM_GATES = {k: CellSpec("lstm", v).num_gates for v, k in _VARIANT.items()}
_BN_ROLES = ("rm_ih", "rv_ih", "rm_hh", "rv_hh", "rm_cell", "rv_cell")
_LSTM_ROLES = ("b_ih", "b_hh", "w_peep", "w_fgr", "g_ih", "g_hh", "g_cell", "b_cell", "g_gates", "b_gates")


def _require_extension(what: str) -> None:
    if not AVAILABLE:
        raise RuntimeError(f"fusedrnn.{what} needs the C++ extension, which did not load: {LOAD_ERROR}")


def cpu_cache_info() -> dict:
    """The CPU kernels' cache of large buffers (csrc/cpu/pool.h), in bytes.

    Returns {"cached": held in free blocks, "in_use": handed to live tensors, "cap": the most
    kept free (FUSEDRNN_CPU_CACHE_MB; 0 = no cache)}.
    """
    _require_extension("cpu_cache_info")
    cached, in_use, cap = torch.ops.fusedrnn.cpu_cache_info()
    return {"cached": cached, "in_use": in_use, "cap": cap}


def cpu_gemm_info() -> dict:
    """Which kernels the CPU backend runs on this machine, under the current FUSEDRNN_PACKED_GEMM,
    FUSEDRNN_LARGE_GEMM and FUSEDRNN_CPU_SIMD (csrc/cpu/recurrent_gemm.h, csrc/cpu/simd.h).

    Returns {"recurrent": the float32 per-step recurrent product ("amx": Intel AMX tiles at
    float32 accuracy for steps of at least 2^22 multiply-adds, fusedrnn's packed AVX-512 kernel for
    the others; "avx512": that kernel; "mkl_packed", "blas" or "loop"), "large": the float32 GEMMs around the time loop
    ("amx": Intel AMX tiles at float32 accuracy, csrc/cpu/amx_gemm.h, the default where the CPU
    has them; "avx512": the same kernel as the steps'; either where a product has at least 16
    output columns and 64k multiply-adds, ATen's mm for the others; "aten": ATen's mm, the
    default on other Intel CPUs),
    "units": the instruction set of the per-row unit and normalization loops ("avx512", "avx2"
    or "base")}.
    """
    _require_extension("cpu_gemm_info")
    recurrent, large, units = torch.ops.fusedrnn.cpu_gemm_info()
    return {"recurrent": recurrent, "large": large, "units": units}


def large_gemm(a, b, bias=None):
    """a @ b (+ bias) through the CPU kernels' large GEMM, the one FUSEDRNN_LARGE_GEMM picks
    (for tests and GEMM benchmarks): a [M, K], b [K, N] of any strides, bias float32 [N]."""
    _require_extension("large_gemm")
    return torch.ops.fusedrnn.cpu_large_gemm(a, b, bias)


def empty_cpu_cache() -> None:
    """Returns the free blocks of the CPU buffer cache to the system (like torch.cuda.empty_cache)."""
    _require_extension("empty_cpu_cache")
    torch.ops.fusedrnn.cpu_cache_release()


# ----------------------------------------------------------------------------- run_layer


def _c(t):
    return None if t is None else t.contiguous()


def run_layer(spec: CellSpec, x, state, p: dict, *, lengths=None, training: bool = False, t0: int = 0,
              cuda_path: str | None = None):
    """One layer, one direction, through the fused kernels: reference.run_layer's contract.

    x: [T, B, I]; state: tuple of [B, *] (CellSpec.state_names); p: {role: tensor};
    lengths: [B] int64 on x's device or None; training: batch-norm statistics mode (the
    running statistics in p are updated in place); t0: batch-norm slot of x[0].
    cuda_path: how the CUDA kernels run an LSTM layer, forward and backward: "auto" (the
    heuristic of csrc/cuda/persistent_launch.h), "step" (a GEMM and a fused kernel per step),
    "persistent" (one persistent kernel for all steps where it fits, else per step), None
    (FUSEDRNN_PERSISTENT decides; unset: auto). The CPU kernels, GRU and RNN ignore it.
    Returns y [T, B, H_out] (zero at padded steps) and the final state tuple.
    """
    if cuda_path not in _CUDA_PATH:
        raise ValueError(f"fusedrnn: cuda_path must be one of {CUDA_PATHS}, got {cuda_path!r}")
    x = x.contiguous()
    lengths = None if lengths is None else lengths.contiguous()
    ops = torch.ops.fusedrnn
    fwd = _APPLY if torch.is_grad_enabled() else _OPS
    if spec.family == "lstm":
        fgr = spec.full_gate_recurrence
        bn = spec.norm == "batch"
        out = fwd["lstm_fwd"](x, lengths, _c(state[0]), _c(state[1]), _c(state[2]) if fgr else None,
                              _c(p["w_ih"]), _c(p["w_hh"]), *(_c(p.get(r)) for r in _LSTM_ROLES),
                              *(_c(p[r]) if bn else None for r in _BN_ROLES),
                              _VARIANT[spec.variant], _NORM[spec.norm], bool(training), int(t0),
                              float(spec.eps), _c(p["w_hr"]) if spec.proj_size else None, _CUDA_PATH[cuda_path])
        if bn and training:
            with torch.no_grad():
                ops.bn_update_(*(p[r] for r in _BN_ROLES), out[8], lengths, x.shape[1], int(t0),
                               float(spec.bn_momentum))
        return out[0], ((out[1], out[2], out[3]) if fgr else (out[1], out[2]))
    if spec.family == "gru":
        out = fwd["gru_fwd"](x, lengths, _c(state[0]), _c(p["w_ih"]), _c(p["w_hh"]), _c(p.get("b_ih")),
                             _c(p.get("b_hh")), _c(p.get("g_ih")), _c(p.get("g_hh")), _NORM[spec.norm],
                             float(spec.eps))
        return out[0], (out[1],)
    out = fwd["rnn_fwd"](x, lengths, _c(state[0]), _c(p["w_ih"]), _c(p["w_hh"]), _c(p.get("b_ih")),
                         _c(p.get("b_hh")), _RNN_KIND[spec.family])
    return out[0], (out[1],)


def select(backend: str, x):
    """(run_layer, name of the backend that runs) for `backend` on x's device and dtype."""
    dev = x.device.type
    if backend == "reference":
        return reference.run_layer, "reference"
    if backend == "auto":
        if dev == "cpu" and HAS_CPU and x.dtype in CPU_DTYPES:
            return run_layer, "cpu"
        if dev == "cuda" and HAS_CUDA:
            return run_layer, "cuda"
        return reference.run_layer, "reference"
    if backend == "cpu":
        if not HAS_CPU:
            raise RuntimeError(f"fusedrnn: backend 'cpu' is not available: the extension fusedrnn._C is not "
                               f"built ({LOAD_ERROR}); build it with `pip install --no-build-isolation -e .` "
                               "or use backend='reference'")
        if dev != "cpu":
            raise RuntimeError(f"fusedrnn: backend 'cpu' needs CPU tensors, got input on {x.device}")
        if x.dtype not in CPU_DTYPES:
            raise TypeError(f"fusedrnn: backend 'cpu' supports float32 and float64, got {x.dtype}")
        return run_layer, "cpu"
    if backend == "cuda":
        if not HAS_CUDA:
            why = f"the extension is not built ({LOAD_ERROR})" if not AVAILABLE else \
                "this build has no CUDA kernels"
            raise RuntimeError(f"fusedrnn: backend 'cuda' is not available: {why}; use backend='auto' or "
                               "'reference'")
        if dev != "cuda":
            raise RuntimeError(f"fusedrnn: backend 'cuda' needs CUDA tensors, got input on {x.device}")
        return run_layer, "cuda"
    raise ValueError(f"fusedrnn: unknown backend {backend!r}; expected 'auto', 'reference', 'cpu' or 'cuda'")


# ----------------------------------------------------------------------------- registrations


def _grad(g, given):
    """Gradient of an input: None where the input was absent (the op returns an empty tensor)."""
    return None if given is None else g


def _dense(g, shape, like):
    """Incoming gradient as a contiguous tensor; None (an unused output) becomes zeros.

    The setups turn off autograd's materialized zero gradients: the LSTM forward has five
    non-differentiable [T, B, *] outputs (saved activations) whose zero "gradients" cost an
    allocation and a fill of hundreds of megabytes per call on long sequences.
    """
    return like.new_zeros(shape) if g is None else g.contiguous()


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fusedrnn: double backward (gradient of a gradient) through the fused kernels is "
                       "not supported; use backend='reference' for higher-order gradients")


def _no_double_backward_setup(ctx, inputs, output):
    pass


def _stats_dtype(dtype):
    """Normalization statistics are kept in float32 for float16/bfloat16 (CUDA kernels)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _lstm_fwd_fake(x, lengths, h0, c0, a0, w_ih, w_hh, b_ih, b_hh, w_peep, w_fgr, g_ih, g_hh, g_cell, b_cell,
                   g_gates, b_gates, rm_ih, rv_ih, rm_hh, rv_hh, rm_cell, rv_cell, variant, norm, training, t0,
                   eps, w_hr=None, cuda_path=0):
    T, B, _ = x.shape
    R = w_hh.shape[1]  # width of h: H, or P with the projection w_hr [P, H]
    H = R if w_hr is None else w_hr.shape[1]
    G = _NUM_GATES[variant]
    fgr = variant == _VARIANT["fgr"]
    empty = x.new_empty(0)
    sd = _stats_dtype(x.dtype)
    stats = (empty if norm == 0 else
             x.new_empty(T, B, 6, dtype=sd) if norm == 1 else
             x.new_empty(T, B, 2 * G + 2, dtype=sd) if norm == 2 else
             x.new_empty(T, 2, 2 * G * H + H, dtype=sd))
    hw = (x.new_empty(T, B, G * H) if norm in (1, 3) else
          x.new_empty(T, B, H) if w_hr is not None else x.new_empty(0))  # projection: m_t
    return (x.new_empty(T, B, R), x.new_empty(B, R), x.new_empty(B, H),
            x.new_empty(B, 3 * H) if fgr else x.new_empty(0), x.new_empty(T, B, G * H), x.new_empty(T, B, H),
            x.new_empty(T, B, G * H) if norm != 0 else x.new_empty(0), hw, stats)


def _lstm_bwd_fake(grad_y, grad_h_n, grad_c_n, grad_a_n, x, lengths, h0, c0, a0, w_ih, w_hh, b_ih, b_hh, w_peep,
                   w_fgr, g_ih, g_hh, g_cell, b_cell, g_gates, b_gates, y, acts, cs, xw, hw, stats, variant, norm,
                   training, eps, w_hr=None, cuda_path=0):
    def like(t):
        return x.new_empty(0) if t is None else torch.empty_like(t)
    return (torch.empty_like(x), torch.empty_like(h0), torch.empty_like(c0), like(a0), torch.empty_like(w_ih),
            torch.empty_like(w_hh), like(b_ih), like(b_hh), like(w_peep), like(w_fgr), like(g_ih), like(g_hh),
            like(g_cell), like(b_cell), like(g_gates), like(b_gates), like(w_hr))


def _lstm_setup(ctx, inputs, output):
    (x, lengths, h0, c0, a0, w_ih, w_hh, b_ih, b_hh, w_peep, w_fgr, g_ih, g_hh, g_cell, b_cell, g_gates, b_gates,
     *_running, variant, norm, training, t0, eps, w_hr, cuda_path) = inputs
    y, _h, _c_, _a, acts, cs, xw, hw, stats = output
    ctx.save_for_backward(x, lengths, h0, c0, a0, w_ih, w_hh, b_ih, b_hh, w_peep, w_fgr, g_ih, g_hh, g_cell,
                          b_cell, g_gates, b_gates, y, acts, cs, xw, hw, stats, w_hr)
    ctx.args = (variant, norm, training, eps)
    ctx.cuda_path = cuda_path  # the backward takes the forward's path choice
    ctx.mark_non_differentiable(acts, cs, xw, hw, stats)
    ctx.set_materialize_grads(False)
    ctx.grad_shapes = tuple(t.shape for t in output[:4])


def _lstm_backward(ctx, gy, gh, gc, ga, *_unused):
    saved = ctx.saved_tensors
    (x, lengths, h0, c0, a0, w_ih, w_hh, b_ih, b_hh, w_peep, w_fgr, g_ih, g_hh, g_cell, b_cell, g_gates,
     b_gates) = saved[:17]
    w_hr = saved[-1]
    gy, gh, gc, ga = (_dense(g, s, x) for g, s in zip((gy, gh, gc, ga), ctx.grad_shapes))
    grads = torch.ops.fusedrnn.lstm_bwd(gy, gh, gc, ga, *saved[:-1], *ctx.args, w_hr, ctx.cuda_path)
    dx, dh0, dc0, da0, dw_ih, dw_hh, *rest, dw_hr = grads
    roles = (b_ih, b_hh, w_peep, w_fgr, g_ih, g_hh, g_cell, b_cell, g_gates, b_gates)
    return (dx, None, dh0, dc0, _grad(da0, a0), dw_ih, dw_hh, *(_grad(g, r) for g, r in zip(rest, roles)),
            *([None] * 6), None, None, None, None, None, _grad(dw_hr, w_hr), None)


def _gru_fwd_fake(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, norm, eps):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    ln = norm == 1
    return (x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty(T, B, 3 * H), x.new_empty(T, B, H),
            x.new_empty(T, B, 3 * H) if ln else x.new_empty(0), x.new_empty(T, B, 3 * H) if ln else x.new_empty(0),
            x.new_empty(T, B, 4, dtype=_stats_dtype(x.dtype)) if ln else x.new_empty(0))


def _gru_bwd_fake(grad_y, grad_h_n, x, lengths, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, y, acts, hn, xw, hw,
                  stats, norm, eps):
    def like(t):
        return x.new_empty(0) if t is None else torch.empty_like(t)
    return (torch.empty_like(x), torch.empty_like(h0), torch.empty_like(w_ih), torch.empty_like(w_hh),
            like(b_ih), like(b_hh), like(g_ih), like(g_hh))


def _gru_setup(ctx, inputs, output):
    x, lengths, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, norm, eps = inputs
    y, _h, acts, hn, xw, hw, stats = output
    ctx.save_for_backward(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, y, acts, hn, xw, hw, stats)
    ctx.args = (norm, eps)
    ctx.mark_non_differentiable(acts, hn, xw, hw, stats)
    ctx.set_materialize_grads(False)
    ctx.grad_shapes = (y.shape, _h.shape)


def _gru_backward(ctx, gy, gh, *_unused):
    saved = ctx.saved_tensors
    b_ih, b_hh, g_ih, g_hh = saved[5:9]
    gy, gh = (_dense(g, s, saved[0]) for g, s in zip((gy, gh), ctx.grad_shapes))
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dg_ih, dg_hh = torch.ops.fusedrnn.gru_bwd(gy, gh, *saved, *ctx.args)
    return (dx, None, dh0, dw_ih, dw_hh, _grad(db_ih, b_ih), _grad(db_hh, b_hh), _grad(dg_ih, g_ih),
            _grad(dg_hh, g_hh), None, None)


def _rnn_fwd_fake(x, lengths, h0, w_ih, w_hh, b_ih, b_hh, kind):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    return x.new_empty(T, B, H), x.new_empty(B, H)


def _rnn_bwd_fake(grad_y, grad_h_n, x, lengths, h0, w_ih, w_hh, y, kind, has_bias):
    n = w_hh.shape[0]
    return (torch.empty_like(x), torch.empty_like(h0), torch.empty_like(w_ih), torch.empty_like(w_hh),
            x.new_empty(n) if has_bias else x.new_empty(0), x.new_empty(n) if has_bias else x.new_empty(0))


def _rnn_setup(ctx, inputs, output):
    x, lengths, h0, w_ih, w_hh, b_ih, b_hh, kind = inputs
    ctx.save_for_backward(x, lengths, h0, w_ih, w_hh, output[0])
    ctx.args = (kind, b_ih is not None)


def _rnn_backward(ctx, gy, gh):
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh = torch.ops.fusedrnn.rnn_bwd(gy.contiguous(), gh.contiguous(),
                                                                      *ctx.saved_tensors, *ctx.args)
    has_bias = ctx.args[1]
    return (dx, None, dh0, dw_ih, dw_hh, db_ih if has_bias else None, db_hh if has_bias else None, None)


def _bn_update_fake(rm_ih, rv_ih, rm_hh, rv_hh, rm_cell, rv_cell, stats, lengths, batch, t0, momentum):
    return None


# The forward ops' autograd (setup, backward), registered on the ops below and also wrapped in
# autograd.Functions with the same setup and backward, which run_layer calls in grad mode: a
# Function's forward runs with grad mode off, so the op goes straight to its kernel, and the
# call skips torch 2.13's register_autograd glue, which re-reads the op schema's argument list
# once per argument (fill_defaults): about 200 us per lstm_fwd call (29 arguments) on the
# project machine, 30 us per gru_fwd (11). Without grad mode run_layer calls the ops directly.
_AUTOGRAD = {"lstm_fwd": (_lstm_setup, _lstm_backward), "gru_fwd": (_gru_setup, _gru_backward),
             "rnn_fwd": (_rnn_setup, _rnn_backward)}


def _function(name: str, op, setup, backward) -> type:
    # forward(ctx, ...) calling the setup itself: Function.apply binds the arguments to a
    # separate setup_context's forward signature with inspect on every call (~35 us)
    def forward(ctx, *args):
        out = op(*args)
        setup(ctx, args, out)
        return out

    return type(f"Fused_{name}", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})


def _register():
    lib = "fusedrnn::"
    for name, fake in (("lstm_fwd", _lstm_fwd_fake), ("lstm_bwd", _lstm_bwd_fake), ("gru_fwd", _gru_fwd_fake),
                       ("gru_bwd", _gru_bwd_fake), ("rnn_fwd", _rnn_fwd_fake), ("rnn_bwd", _rnn_bwd_fake),
                       ("bn_update_", _bn_update_fake)):
        torch.library.register_fake(lib + name, fake)
    for name, (setup, backward) in _AUTOGRAD.items():
        torch.library.register_autograd(lib + name, backward, setup_context=setup)
        _OPS[name] = getattr(torch.ops.fusedrnn, name)
        _APPLY[name] = _function(name, _OPS[name], setup, backward).apply
    for name in ("lstm_bwd", "gru_bwd", "rnn_bwd"):
        torch.library.register_autograd(lib + name, _no_double_backward, setup_context=_no_double_backward_setup)
    # Under autocast the kernels run in float32 (CPU kernels support float32/float64 only).
    for name in ("lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd", "rnn_fwd", "rnn_bwd"):
        for device in ("cpu", "cuda"):
            torch.library.register_autocast(lib + name, device, torch.float32)


_APPLY: dict = {}  # forward op name -> its Function's apply (run_layer in grad mode)
_OPS: dict = {}  # forward op name -> the op (run_layer without grad mode)
if AVAILABLE:
    _register()
