"""Timing and peak memory of one benchmark case.

A case is a callable ``call()`` that runs the model once on the next of a few input sets (the
sets rotate so that small cases do not run from a cache warmed by the previous call).

* CPU time: ``torch.utils.benchmark.Timer.blocked_autorange`` after a warm-up, with the
  process's thread count (the Timer defaults to one thread). The reported figure is the median
  over blocks; a block is one call for anything slower than a fraction of a millisecond. The
  rows of one (cell, T, mode) are timed in turns (:func:`measure_interleaved`).
* GPU time: ``triton.testing.do_bench`` (it flushes L2 between calls) with the median, or CUDA
  events around each call when Triton is missing.
* Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus what was allocated before the
  call. On CPU ATen has no allocator statistics, so one extra call runs under
  ``torch.profiler`` with ``profile_memory=True``: every allocation and free made through c10's
  CPU allocator (every ATen tensor, oneDNN buffers that ATen allocates, and the C++ backends'
  tensors) is an event with its size; their running sum in time order peaks at the figure we
  report. Memory malloc'ed by a library behind ATen's back is not seen.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

TIMING_METHOD = {
    "cpu": "torch.utils.benchmark.Timer.blocked_autorange (median over blocks, all torch threads) "
           "after warm-up",
    "cuda": "triton.testing.do_bench (median, L2 flushed between calls) after warm-up; "
            "CUDA events when Triton is missing",
}
MEMORY_METHOD = {
    "cpu": "torch.profiler(profile_memory=True): running sum of c10 CPU-allocator alloc/free "
           "events during one call, peak above the level before the call",
    "cuda": "torch.cuda.max_memory_allocated during one call minus memory_allocated before it",
}


@contextlib.contextmanager
def _quiet_fd2():
    """Send the process's fd 2 to /dev/null for a moment (C++ logging that Python cannot mute)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall(call: Callable[[], object], device: torch.device) -> float:
    """Seconds of one synchronised call (for warm-up and estimates, not for reporting)."""
    _sync(device)
    t0 = time.perf_counter()
    call()
    _sync(device)
    return time.perf_counter() - t0


def warm_up(call: Callable[[], object], device: torch.device, seconds: float, est: float) -> float:
    """Call until ``seconds`` have passed (at least once); return the last call's duration,
    a better estimate than ``est`` (which included first-call costs)."""
    spent, last = 0.0, est
    while spent < seconds or spent == 0.0:
        last = wall(call, device)
        spent += last
    return last


def run_time_budget(est: float, repeats: int, min_repeats: int, max_case_time: float,
                    min_time: float = 0.05) -> float:
    """Seconds to spend timing one case: ``repeats`` calls when that fits in ``max_case_time``,
    never fewer than ``min_repeats`` calls, never under ``min_time`` (short calls get blocks)."""
    return max(min_time, min(repeats * est, max(max_case_time, min_repeats * est)))


def _quantiles(times: list[float]) -> tuple[float, float]:
    """(median, interquartile range) of per-call times."""
    med = statistics.median(times)
    if len(times) < 4:
        return med, max(times) - min(times)
    q = statistics.quantiles(times, n=4)
    return med, q[2] - q[0]


def measure(call: Callable[[], object], device: torch.device, budget_s: float) -> dict:
    """Time ``call`` for about ``budget_s`` seconds after it has been warmed up.

    Returns:
        dict with ``median_s`` and ``iqr_s`` (seconds per call), ``calls`` (timed calls) and
        ``blocks`` (independent measurements the median is taken over).
    """
    if device.type == "cuda":
        return _measure_cuda(call, device, budget_s)
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="call()", globals={"call": call}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=budget_s)
    med, iqr = _quantiles(list(m.times))
    return dict(median_s=med, iqr_s=iqr, calls=len(m.times) * m.number_per_run,
                blocks=len(m.times), times=list(m.times))


def measure_interleaved(cases: list[tuple[Callable[[], object], float, float]],
                        device: torch.device, rounds: int = 3) -> list[dict]:
    """Time several warmed-up ``(call, est_s, budget_s)`` cases in turns, like :func:`measure`.

    A case whose budget holds at least two calls per round is timed in ``rounds`` slices of its
    budget, round-robin with the other cases, and its median is over the blocks of all rounds:
    on a shared machine, load that comes and goes then hits torch.nn and the backends alike
    instead of whichever happened to run at the time. Slower cases are timed once, in round 0.
    """
    acc = [dict(calls=0, blocks=0, times=[]) for _ in cases]
    for r in range(rounds):
        for (call, est, budget), a in zip(cases, acc):
            n = rounds if budget >= 2 * rounds * est else 1
            if r >= n:
                continue
            m = measure(call, device, budget / n)
            a["calls"] += m["calls"]
            a["blocks"] += m["blocks"]
            a["times"] += m["times"]
    for a in acc:
        a["median_s"], a["iqr_s"] = _quantiles(a["times"])
    return acc


def _measure_cuda(call, device, budget_s: float) -> dict:
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        times_ms = do_bench(call, warmup=25, rep=max(1, int(budget_s * 1000)), return_mode="all")
        times = [t / 1000 for t in times_ms]
    else:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        est = wall(call, device)
        times = []
        for _ in range(max(3, math.ceil(budget_s / max(est, 1e-6)))):
            start.record()
            call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
    med, iqr = _quantiles(times)
    return dict(median_s=med, iqr_s=iqr, calls=len(times), blocks=len(times), times=times)


def peak_memory(call: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated during one call above the level before it (see the module doc)."""
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = call()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return int(peak)
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_fd2():  # kineto prints a line to fd 2 at every start and stop
        prof.start()
    try:
        out = call()
        del out  # the outputs' frees belong to the call's lifetime too
    finally:
        with _quiet_fd2():
            prof.stop()
    events = prof.profiler.kineto_results.events()
    # A free of a block allocated before the profiler started carries no size (c10 warns once),
    # so the running sum starts at the level before the call.
    mem = sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns())
    level = peak = 0
    for nbytes in (e.nbytes() for e in mem):
        level += nbytes
        peak = max(peak, level)
    return int(peak)
