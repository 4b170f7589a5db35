"""Timing on the GPU: do_bench-style medians with CUDA events and an L2 flush before every rep, a back-to-back
host-inclusive time for small ops, and the card's two ceilings (copy bandwidth, bf16 matmul rate).

Why our own loop and not triton.testing.do_bench: the suite must also time the PyTorch baselines when Triton is
broken or absent, and it reports the spread (20th/80th percentiles) beside the median. The method is the same:
one call to warm up, a few calls to estimate the cost, then warm-up calls for ``warmup_ms`` and timed reps for
``rep_ms``, each rep preceded by zeroing a 256 MB buffer so that no input is served from the L2 cache, and
timed by its own pair of CUDA events so that the flush is not counted.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import formulas

_FLUSH_BYTES = 256 * 1024 * 1024  # larger than any L2 (H100 50 MB, H200 60 MB, B200 126 MB)
_flush_buf: Optional[torch.Tensor] = None


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int


def _flush_l2() -> None:
    global _flush_buf
    if _flush_buf is None:
        _flush_buf = torch.empty(_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    _flush_buf.zero_()


def _quantile(xs, q: float) -> float:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def device_time(fn: Callable[[], object], *, warmup_ms: float = 25.0, rep_ms: float = 100.0, flush: bool = True,
                min_reps: int = 5, max_reps: int = 1000) -> Timing:
    """Median device time of fn() in ms over reps that each start with a cold L2 (CUDA events)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        if flush:
            _flush_l2()
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 5, 1e-4)  # includes the flush: an upper bound
    n_warmup = max(1, int(warmup_ms / estimate))
    n_rep = max(min_reps, min(max_reps, int(rep_ms / estimate)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    for _ in range(n_warmup):
        fn()
    for i in range(n_rep):
        if flush:
            _flush_l2()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), n_rep)


def loop_time(fn: Callable[[], object], n: int, *, sync: bool = True) -> float:
    """Wall time per call in seconds of n back-to-back calls of fn. sync: synchronise CUDA at both ends (GPU
    work counts); without, only the host's time counts (CPU stubs, or a machine without CUDA)."""
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    if sync:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def host_time(fn: Callable[[], object], *, rep_ms: float = 50.0, max_reps: int = 2000, sync: bool = True) -> float:
    """Wall time per call in ms of back-to-back calls (no flush), synchronized at both ends (sync=False: not).

    For small ops this is what a caller in a loop sees: it includes the host's dispatch (argument checks,
    custom-op dispatch, launches) whenever that is slower than the kernels themselves.
    """
    fn()
    one = max(loop_time(fn, 1, sync=sync), 1e-6) * 1e3
    n = max(3, min(max_reps, int(rep_ms / one)))
    return loop_time(fn, n, sync=sync) * 1e3


def wall_time(fn: Callable[[], object], *, reps: int = 3, sync: bool = True) -> Timing:
    """Median wall time in ms of a few whole calls (for long end-to-end runs such as generation)."""
    fn()
    times = []
    for _ in range(reps):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), reps)


@dataclass
class Ceilings:
    copy_gbps: Optional[float] = None     # device-to-device copy, bytes read + written
    matmul_tflops: Optional[float] = None  # bf16 matmul, 2·M·N·K
    copy_what: str = ""
    matmul_what: str = ""


def measure_ceilings(quick: bool) -> Ceilings:
    """The card's copy bandwidth and bf16 matmul rate, measured now on random data (never zeros)."""
    c = Ceilings()
    rep = 100 if quick else 300
    n = (1 << 30) // 4  # 1 GiB of float32
    t = _time_pair(lambda: torch.randn(n, device="cuda"), lambda src: torch.empty_like(src),
                   lambda src, dst: dst.copy_(src), warmup_ms=20, rep_ms=rep)
    c.copy_gbps = formulas.gbps(formulas.copy_bytes(n, 4), t.median_ms)
    c.copy_what = f"1 GiB float32 device-to-device copy, median of {t.reps}"
    m = 8192
    t = _time_pair(lambda: torch.randn(m, m, device="cuda", dtype=torch.bfloat16),
                   lambda a: torch.randn(m, m, device="cuda", dtype=torch.bfloat16),
                   torch.matmul, warmup_ms=100, rep_ms=rep)
    c.matmul_tflops = formulas.tflops(formulas.matmul_flops(m, m, m), t.median_ms)
    c.matmul_what = f"{m}³ bf16 torch.matmul on random data, median of {t.reps}"
    torch.cuda.empty_cache()
    return c


def _time_pair(make_a, make_b, op, *, warmup_ms: float, rep_ms: float) -> Timing:
    """Time op(a, b) on freshly made operands (no L2 flush: the operands are far larger than the L2)."""
    a = make_a()
    b = make_b(a)
    return device_time(lambda: op(a, b), warmup_ms=warmup_ms, rep_ms=rep_ms, flush=False)
