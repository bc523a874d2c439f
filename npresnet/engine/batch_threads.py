"""Split one layer's work over the batch: T threads, each computing its own slice of samples.

Why. At T threads a convolution by im2col + GEMM normally runs each of its steps on all T cores in
turn: an im2col on Numba's pool, then a GEMM on OpenBLAS's pool, then the next chunk. Each step is
small (a chunk of a few samples), so each pays for waking the other pool and for splitting a thin
product (16-64 rows) between cores. Splitting the *batch* instead is what oneDNN does for such
layers: thread t takes samples [N*t/T, N*(t+1)/T) and runs the whole one-thread algorithm on them
(im2col, 1-thread GEMM, next chunk), with one hand-off per layer, not two per chunk.

How. ``run(N, work)`` calls ``work(start, stop, t)`` for the T slices at once, slice 0 on the
calling thread and the others on T - 1 worker threads kept for the process. Meanwhile BLAS runs one
thread per call (OpenBLAS's thread count is process-wide, so it is set to 1 for the duration and
restored after; a BLAS call from the user's own threads in that window also gets one thread), and
the Numba kernels run their serial builds in these threads (``kernels.serial_in_this_thread``).
The kernels and NumPy's GEMMs release the GIL, so the slices really run at once.

Where it is used: ``npresnet.engine.conv_dispatch`` offers "split/<n>" (every slice in chunks
of n samples) as a candidate of the measured dispatch, and its fixed rule runs its im2col + GEMM
layers split at more than one thread (docs/performance.md has the measurements). Results: a sample's output
does not depend on which slice computed it, and the weight gradient adds the slices' partial sums
in slice order, so a given T gives the same bits on every run; they agree with the other
algorithms to rounding.

``threads()`` is T: BLAS's thread count (``npresnet.engine.set_num_threads`` sets it with Numba's).
``available(xp)`` says whether splitting can help here: NumPy arrays, T > 1, threadpoolctl
installed (it sets BLAS's thread count), and not switched off with ``NPRESNET_BATCH_SPLIT=0``
(then the measured dispatch never offers "split").
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import kernels, settings

__all__ = ["available", "run", "slices", "threads"]

ENABLED = settings.BATCH_SPLIT

_pool: ThreadPoolExecutor | None = None
_pool_threads = 0
_busy = threading.Lock()  # held while a split runs: a second one (another thread, or nested) runs inline
_blas: Any = None  # threadpoolctl's BLAS controllers, found once (False: threadpoolctl is missing)


def threads() -> int:
    """T, the number of slices: BLAS's thread count."""
    from .runtime import blas_threads

    return blas_threads()


def _blas_controllers() -> Any:
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController

            _blas = ThreadpoolController().select(user_api="blas")
        except ImportError:
            _blas = False
    return _blas


def available(xp: Any) -> bool:
    """Whether ``run`` would split: NumPy arrays, more than one thread, threadpoolctl present, ENABLED."""
    return ENABLED and xp.__name__ == "numpy" and threads() > 1 and bool(_blas_controllers())


def slices(N: int, T: int) -> list[tuple[int, int]]:
    """The T (or N, if fewer) contiguous slices [start, stop) of range(N), sizes differing by at most 1."""
    T = max(1, min(T, N))
    return [(N * t // T, N * (t + 1) // T) for t in range(T)]


def _slice(work: Callable[[int, int, int], None], start: int, stop: int, t: int) -> None:
    """One slice, with this thread's kernels serial (the slices are the parallelism)."""
    previous = kernels.serial_in_this_thread(True)
    try:
        work(start, stop, t)
    finally:
        kernels.serial_in_this_thread(previous)


def _forget_workers() -> None:
    """In a forked child: the parent's worker threads do not exist there; start afresh."""
    global _pool, _pool_threads, _busy
    _pool, _pool_threads, _busy = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def _workers(count: int) -> ThreadPoolExecutor:
    global _pool, _pool_threads
    if _pool is None or _pool_threads != count:
        if _pool is not None:
            _pool.shutdown(wait=True)
        _pool = ThreadPoolExecutor(count, thread_name_prefix="npresnet-batch")
        _pool_threads = count
    return _pool


def run(N: int, work: Callable[[int, int, int], None]) -> int:
    """Call ``work(start, stop, t)`` for each slice t of ``slices(N, threads())``, at once; returns
    the number of slices. Inline (one slice, this thread) when ``available`` is false for NumPy or
    a split is already running. An exception in any slice is raised here after all have ended."""
    parts = slices(N, threads())
    if len(parts) == 1 or not available(np) or not _busy.acquire(blocking=False):
        work(0, N, 0)
        return 1
    try:
        limiter = _blas_controllers().limit(limits=1)
        try:
            pool = _workers(threads() - 1)  # sized for T slices; fewer (N < T) leave some idle
            futures: list[Future] = [
                pool.submit(_slice, work, start, stop, t) for t, (start, stop) in enumerate(parts) if t
            ]
            error: BaseException | None = None
            try:
                _slice(work, parts[0][0], parts[0][1], 0)
            except BaseException as exc:  # wait for the workers before leaving: they write into our arrays
                error = exc
            for future in futures:
                failure = future.exception()  # waits for that slice to end
                error = error or failure
            if error is not None:
                raise error
        finally:
            limiter.restore_original_limits()
    finally:
        _busy.release()
    return len(parts)
