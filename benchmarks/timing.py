"""Synchronized timing, peak memory and the GEMM-only compute floor."""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time

import torch


class Timer:
    """Times fn() on `device`: CUDA events around each call on GPU, perf_counter on CPU.

    measure() runs `warmup` calls (the first one's wall time is kept: it includes any
    compilation), then up to `repeats` timed calls; with budget_s > 0 the number of timed calls
    is cut so that they take about budget_s seconds, but never below min_repeats.
    `setup()` runs before every call, outside the timed region (e.g. clearing .grad).
    """

    def __init__(self, device: torch.device, repeats: int, warmup: int, budget_s: float = 0.0,
                 min_repeats: int = 3):
        self.device = device
        self.repeats = max(1, repeats)
        self.warmup = max(1, warmup)
        self.budget_s = budget_s
        self.min_repeats = min(min_repeats, self.repeats)
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _once(self, fn, setup):
        """Seconds of one call."""
        if setup is not None:
            setup()
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def measure(self, fn, setup=None, on_first=None) -> dict:
        """Timing summary of fn; on_first(result of the first call) runs once, untimed (checks)."""
        if setup is not None:
            setup()
        self.sync()
        t0 = time.perf_counter()
        y = fn()
        self.sync()
        first = time.perf_counter() - t0
        if on_first is not None:
            on_first(y)
        del y
        last = first
        for _ in range(self.warmup - 1):
            last = self._once(fn, setup)
        n = self.repeats
        if self.budget_s > 0 and last > 0:
            n = max(self.min_repeats, min(n, int(self.budget_s / last)))
        times = sorted(self._once(fn, setup) for _ in range(n))
        return summarize(times, first)

    def side_by_side(self, calls: dict, rounds: int, per_block: int) -> dict:
        """Interleaved timing of several callables, for ratios that a drifting machine cannot skew.

        calls: name -> (fn, setup). Each of `rounds` rounds runs every callable's block in turn (the
        order reversed every other round): one untimed call (the switch from the other callable
        leaves caches and buffer pools cold), then `per_block` timed calls. Returns name -> the
        summary of its rounds * per_block times (first_call_s None).
        """
        names = list(calls)
        times = {name: [] for name in names}
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                fn, setup = calls[name]
                self._once(fn, setup)
                times[name] += [self._once(fn, setup) for _ in range(per_block)]
        return {name: summarize(sorted(t), None) for name, t in times.items()}


def summarize(times, first_call_s: float) -> dict:
    """Median, quartiles (IQR) and min in milliseconds of sorted `times` (seconds)."""
    ms = [t * 1e3 for t in times]
    if len(ms) >= 2:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q3 = ms[0]
    return {"median_ms": statistics.median(ms), "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1,
            "min_ms": ms[0], "repeats": len(ms), "first_call_s": first_call_s}


def peak_memory_mib(fn, device: torch.device, setup=None):
    """(peak MiB allocated by one call of fn above what was allocated before it, method) or (None, why).

    GPU: torch.cuda.max_memory_allocated. CPU: the running sum of the CPU allocator's
    allocation/free events recorded by torch.profiler during the call (ATen tensors only;
    memory that a library allocates itself, e.g. oneDNN scratchpads, is not seen).
    """
    if setup is not None:
        setup()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, "cuda.max_memory_allocated"
    from torch.profiler import ProfilerActivity, profile
    with _quiet_stderr():  # the profiler logs start/stop lines from C++, which would break the progress bar
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    return peak / 2**20, "torch.profiler CPU allocator events"


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to /dev/null for the duration (C++ log lines); Python exceptions still propagate."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class GemmFloor:
    """The time of the GEMMs alone for a layer of a cell on a shape, with ATen mm into preallocated outputs.

    forward:  the input projection [T*B, I] x [I, GH] and T recurrent products [B, H] x [H, GH]
              (FGR adds T products [B, 3H] x [3H, 3H]);
    backward: T products [B, GH] x [GH, H] for dh (FGR: [B, 3H] x [3H, 3H]), dW_hh = [GH, T*B] x [T*B, H],
              dW_ih = [GH, T*B] x [T*B, I] and dx = [T*B, GH] x [GH, I].
    On CPU it is a lower bound only for code that calls a GEMM per step (per-call overhead is
    included; a kernel that keeps W_hh packed across steps can beat it at small sizes). On GPU the
    GEMMs are replayed from a CUDA graph, so launch overhead is excluded.
    """

    def __init__(self, T, B, I, H, G, fgr: bool, dtype, device):  # noqa: E741
        GH = G * H
        mk = lambda *s: torch.randn(*s, dtype=dtype, device=device)  # noqa: E731
        self.T, self.fgr = T, fgr
        self.x, self.w_ih, self.xw = mk(T * B, I), mk(GH, I), mk(T * B, GH)
        self.h, self.w_hh, self.hw = mk(B, H), mk(GH, H), mk(B, GH)
        self.dg_all, self.dwhh, self.dwih, self.dx = mk(T * B, GH), mk(GH, H), mk(GH, I), mk(T * B, I)
        self.h_all = mk(T * B, H)
        self.dh = mk(B, H)
        if fgr:
            self.a, self.w_fgr, self.aw = mk(B, 3 * H), mk(3 * H, 3 * H), mk(B, 3 * H)

    def forward(self):
        torch.mm(self.x, self.w_ih.t(), out=self.xw)
        for _ in range(self.T):
            torch.mm(self.h, self.w_hh.t(), out=self.hw)
            if self.fgr:
                torch.mm(self.a, self.w_fgr.t(), out=self.aw)

    def backward(self):
        dg = self.dg_all[: self.hw.shape[0]]
        for _ in range(self.T):
            torch.mm(dg, self.w_hh, out=self.dh)
            if self.fgr:
                torch.mm(self.aw, self.w_fgr, out=self.a)
        torch.mm(self.dg_all.t(), self.h_all, out=self.dwhh)
        torch.mm(self.dg_all.t(), self.x, out=self.dwih)
        torch.mm(self.dg_all, self.w_ih, out=self.dx)

    def forward_backward(self):
        self.forward()
        self.backward()

    def callable(self, mode: str):
        """The GEMMs of `mode` ("fwd" or "fwdbwd"); on GPU captured once in a CUDA graph and replayed,
        so that the floor is GEMM time, not kernel-launch time."""
        fn = self.forward if mode == "fwd" else self.forward_backward
        if self.xw.device.type != "cuda":
            return fn
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture (cuBLAS handles, workspaces)
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        self._graphs = getattr(self, "_graphs", []) + [graph]
        return graph.replay
