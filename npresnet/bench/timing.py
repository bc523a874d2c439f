"""Timing a step (first call apart, then the median of repeats) and the NumPy memory it allocates."""

from __future__ import annotations

import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["quartiles", "step_peak_memory", "synchronize", "timed", "timed_together"]


def synchronize(xp: Any) -> None:
    if xp is not np:
        xp.cuda.Device().synchronize()


def timed(fn: Callable[[], Any], warmup: int, repeat: int, xp: Any = np) -> tuple[float, list[float]]:
    """(first call's seconds, [seconds of each timed call after ``warmup`` more calls])."""
    return timed_together([fn], warmup, repeat, xp)[0]


def timed_together(
    fns: list[Callable[[], Any]], warmup: int, repeat: int, xp: Any = np
) -> list[tuple[float, list[float]]]:
    """``timed`` for several steps at once, in alternation: each one's first call and warm-up, then
    ``repeat`` rounds in which every step runs once, timed (round r starts with step r mod len(fns),
    so none is always first). Two frameworks compared this way see the same state of the machine:
    on a shared VM whose speed drifts by 10-25% over seconds, timing one after the other measured
    that drift as much as the frameworks."""
    firsts = []
    for fn in fns:
        start = time.perf_counter()
        fn()
        synchronize(xp)
        firsts.append(time.perf_counter() - start)
        for _ in range(max(warmup - 1, 0)):
            fn()
        synchronize(xp)
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeat):
        for k in range(len(fns)):
            i = (r + k) % len(fns)
            start = time.perf_counter()
            fns[i]()
            synchronize(xp)
            times[i].append(time.perf_counter() - start)
    return list(zip(firsts, times))


def step_peak_memory(step: Callable[[], Any], xp: Any = np) -> int | None:
    """Peak bytes of NumPy arrays allocated during one call of ``step`` above those alive before it
    (tracemalloc sees every NumPy allocation, whatever the allocator keeps cached). One extra,
    untimed call: tracing slows Python down. None on the GPU."""
    if xp is not np:
        return None
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        step()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def quartiles(times: list[float]) -> tuple[float, float]:
    if len(times) < 2:
        return times[0], times[0]
    q = statistics.quantiles(times, n=4, method="inclusive")
    return q[0], q[2]
