"""Shared Numba settings and row helpers for the CPU kernels (imported only once a kernel is used).

``NPRESNET_NUMBA_CACHE=0`` turns off Numba's on-disk cache (``kernels/__pycache__``), e.g. when several
processes might write it at once or a stale cache is suspected; ``NUMBA_CACHE_DIR`` moves it.
The cache is written and read only when this folder is imported as ``npresnet.kernels``: Numba
keys its cache by source file, but a compiled kernel records its module's name, so one compiled
while a checkout's ``kernels/`` was imported as a package of its own (``import kernels``) made
every later ``npresnet`` process fail on that kernel with ``No module named 'kernels'``.
Every kernel is compiled lazily, on its first call, once per dtype (float32 / float64).
``fastmath`` stays off: the kernels must reproduce the NumPy references to the last bit (the
exceptions, FMA contraction and reassociated sums in the direct 3x3 convolution, are
``fused_multiply_add_kernel`` and ``reassociating_kernel``).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import threading
import time
import types

import numba
import numpy as np
from numba import njit, prange  # noqa: F401  (prange is re-exported for the kernel modules)

from . import _tbb, _this_thread  # TBB's library loader; the package's thread-local settings (no Numba there)
from ._settings import settings

#: Write compiled kernels to disk so later processes skip the compile (seconds per kernel); only
#: as npresnet.kernels (see above: a cache entry carries the module name it was compiled under).
CACHE = settings.NUMBA_CACHE and __name__ == "npresnet.kernels._numba"


def require_shape(name, array, expected):
    """The kernels (CPU and CUDA) index without bounds checks: a wrong shape must be an error first."""
    if tuple(array.shape) != tuple(expected):
        raise ValueError(f"npresnet.kernels: {name} must have shape {tuple(expected)}, got {tuple(array.shape)}")


def require_same_dtype(what, a, b):
    if a.dtype != b.dtype:
        raise TypeError(f"npresnet.kernels: {what} must share a dtype, got {a.dtype} and {b.dtype}")


#: NPRESNET_NUMBA_PARALLEL: "auto" (default) runs the ``prange`` kernels on Numba's thread pool
#: whenever ``numba.get_num_threads() > 1`` and as plain serial loops at one thread; "0" always
#: serial. Each kernel is compiled twice, once each way, on first use (``ParallelKernel``).
PARALLEL = settings.NUMBA_PARALLEL

# Why not Numba's OpenMP layer (when NUMBA_THREADING_LAYER is not set). The kernels run
# between OpenBLAS GEMMs, and both libraries want every core. Numba's default without TBB is its
# OpenMP layer (libgomp), whose workers spin-wait after each parallel region on the cores the next
# GEMM's OpenBLAS threads need: alternating GEMMs and kernels ran several times slower on omp than
# on tbb or workqueue, whose workers sleep (shortening OpenBLAS's own spin as well helps more:
# npresnet.engine.runtime.set_blas_spin). TBB was also the fastest inside a training step. The one
# limitation of workqueue: two Python threads may not run parallel kernels at once, so
# ``ParallelKernel`` runs the serial build when another thread holds the pool. So TBB first when it
# is installed (pip install tbb), else workqueue; never omp unless asked for (NUMBA_THREADING_LAYER).
# docs/performance.md has the measurements.
_tbb.load()  # pip's libtbb, where Numba's tbbpool cannot find it on its own (see _tbb.py)
if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["tbb", "workqueue", "omp"]  # type: ignore[attr-defined]

#: Calls whose arrays hold fewer bytes than this run serially: handing work to the pool and waiting
#: for it costs about as long as a serial im2col of one small sample, so such a call ran slower at
#: two threads than at one (docs/performance.md). NPRESNET_PARALLEL_MIN_BYTES overrides it.
PARALLEL_MIN_BYTES = settings.PARALLEL_MIN_BYTES

_pool_lock = threading.Lock()  # held while a parallel kernel runs (workqueue is not reentrant)


def set_num_threads(threads):
    """``numba.set_num_threads(min(threads, NUMBA_NUM_THREADS))``; returns the number set."""
    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    return threads


# Without NUMBA_NUM_THREADS, Numba's pool has one thread per core. A process told to use fewer
# through OMP_NUM_THREADS (e.g. each rank of ``mpiexec -genv OMP_NUM_THREADS 1``, which BLAS obeys)
# gets that many kernel threads too, so the ranks do not oversubscribe the cores.
_omp_threads = os.environ.get("OMP_NUM_THREADS", "").strip()
if "NUMBA_NUM_THREADS" not in os.environ and _omp_threads.isdigit() and int(_omp_threads) >= 1:
    set_num_threads(int(_omp_threads))


@njit(parallel=True, cache=CACHE)
def _handoff_probe(a):
    for i in prange(a.shape[0]):
        a[i] += 1.0


def thread_pool(repeat=51):
    """(threading layer, thread count, median microseconds of one hand-off) of Numba's pool at its
    current thread count: a parallel loop over 2 elements, i.e. waking the workers and waiting for them, nothing
    else. Starts the pool if it is not running (which fixes the layer for the process).

    A few microseconds on tbb and omp (whose workers spin); on workqueue from a few times that to a
    hundred times, on VMs where every hand-off wakes a sleeping vCPU: there a parallel kernel on
    workqueue loses to the serial one, and a training step at 2 threads gains nothing over 1
    (docs/performance.md has the figures).
    """
    a = np.zeros(2)
    _handoff_probe(a)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        _handoff_probe(a)
        times.append(time.perf_counter() - start)
    return numba.threading_layer(), numba.get_num_threads(), 1e6 * sorted(times)[len(times) // 2]


def _function_copy(function, suffix):
    """The same function under another __qualname__, so Numba's on-disk cache keeps its two builds
    (serial, parallel) in two files (the cache index does not tell ``parallel=`` apart)."""
    copy = types.FunctionType(
        function.__code__, function.__globals__, function.__name__ + suffix, function.__defaults__, function.__closure__
    )
    copy.__qualname__ = function.__qualname__ + suffix
    copy.__module__ = function.__module__
    copy.__doc__ = function.__doc__
    return copy


def _sources_digest(folder=None):
    """A short hash of every kernel source file in ``folder`` (default: this one's, this file included)."""
    digest = hashlib.sha256()
    for path in sorted(pathlib.Path(folder or pathlib.Path(__file__).resolve().parent).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


#: Part of every cached kernel's name: Numba's cache index checks the kernel's own source file
#: only, so a change here (a row helper the kernel inlines, a build option such as nogil) left
#: the old machine code in use: after nogil was added here, the cached conv3x3 kernels still held
#: the GIL, and two threads each running the serial build on half a batch were much slower than
#: once the cache was cleared. Any edit to kernels/ now compiles afresh.
SOURCES_DIGEST = _sources_digest() if CACHE else ""


class ParallelKernel:
    """A ``prange`` kernel compiled serially and for the thread pool; each call picks one.

    ``serial`` is ``njit(parallel=False)``: ``prange`` is a plain ``range`` (at one thread this is
    the fastest build, with no hand-off to a worker). ``parallel`` is ``njit(parallel=True)``.
    A call runs ``parallel`` when Numba has more than one thread, its arrays hold at least
    ``PARALLEL_MIN_BYTES``, no other Python thread is inside a parallel kernel and the calling
    thread has not asked for serial builds (``serial_in_this_thread``), else ``serial``. Both are
    ``nogil``: Python threads running kernels at once do not wait for each other.
    Both builds visit every output element with the same arithmetic in the same order, so they
    give the same bits (the kernels split work only over independent outputs: planes, rows,
    column blocks, channels).
    """

    def __init__(self, function, fastmath=False):
        options = dict(cache=CACHE, error_model="numpy", fastmath=fastmath, nogil=True)
        canonical = sorted((k, sorted(v) if isinstance(v, (set, frozenset)) else v) for k, v in options.items())
        tag = hashlib.sha256(f"{SOURCES_DIGEST} {canonical!r}".encode()).hexdigest()[:12]  # no set order
        self.py_func = function
        self.serial = njit(parallel=False, **options)(_function_copy(function, f"__serial_{tag}"))
        self.parallel = njit(parallel=True, **options)(_function_copy(function, f"__parallel_{tag}"))
        self.__doc__, self.__name__ = function.__doc__, function.__name__

    def __call__(self, *args):
        if (
            PARALLEL == "0"
            or numba.get_num_threads() == 1
            or getattr(_this_thread, "serial", False)  # kernels.serial_in_this_thread
            or sum(a.nbytes for a in args if isinstance(a, np.ndarray)) < PARALLEL_MIN_BYTES
            or not _pool_lock.acquire(blocking=False)
        ):
            return self.serial(*args)
        try:
            return self.parallel(*args)
        finally:
            _pool_lock.release()


def parallel_kernel(function):
    """Decorator: a ``ParallelKernel`` (see above) with NumPy's float semantics (x/0 -> inf, no
    ZeroDivisionError), cached. Call it from Python, not from another jitted function.

    No fastmath: results must match the NumPy references exactly.
    """
    return ParallelKernel(function)


def fused_multiply_add_kernel(function):
    """``parallel_kernel`` that may fuse a * b + c into one FMA instruction (LLVM's ``contract``
    flag, nothing else of fastmath: no reassociation, NaN and inf as usual). Only for kernels that
    already sum in another order than their reference (the direct 3x3 convolution): one rounding
    instead of two per product, so as accurate or more, and still the same bits on every run,
    since the compiled code, not the data's address, decides where FMAs go.
    """
    return ParallelKernel(function, fastmath={"contract"})


def reassociating_kernel(function):
    """``fused_multiply_add_kernel`` that may also reassociate sums (LLVM's ``reassoc``): a scalar
    reduction ``s += a[q] * b[q]`` then runs as several SIMD partial sums added at the end, which
    is what makes a dot-product loop fast. Only for kernels whose reference sums in another order
    anyway (the direct 3x3 weight gradient). The order is fixed by the compiled code, so a given
    machine gives the same bits on every run and at any thread count (the kernel splits work only
    over independent blocks); another CPU (another SIMD width) may differ in the last bits.
    """
    return ParallelKernel(function, fastmath={"contract", "reassoc"})


@njit(cache=CACHE, error_model="numpy", inline="always")
def valid_range(offset, stride, size, out_size):
    """The outputs o in [lo, hi) whose input position ``o*stride + offset`` lies inside [0, size).

    ``offset`` is ``i*dilation - padding`` for kernel offset i; positions outside are padding.
    Always 0 <= lo <= hi <= out_size (so loops over [0, lo) stay inside the output).
    """
    lo = 0 if offset >= 0 else min(out_size, (-offset + stride - 1) // stride)
    last = size - 1 - offset  # o*stride <= last
    hi = 0 if last < 0 else min(out_size, last // stride + 1)
    return lo, max(lo, hi)


# Row helpers. The kernels hand them 1-D *views* (a row of an image, of a column block, ...) and
# they loop from 0: LLVM vectorises these loops (SIMD), while the same loop written with 4-D
# indices and offsets, x[n, c, h, ow*SW + off], stays scalar and runs 2-3x slower. A view with
# stride 1 (sliced ``a:b``, no step) is the fast case, so callers branch on ``stride == 1``.


@njit(cache=CACHE, error_model="numpy", inline="always")
def fill_row(dst, value):
    for t in range(dst.shape[0]):
        dst[t] = value


@njit(cache=CACHE, error_model="numpy", inline="always")
def copy_row(dst, src):
    for t in range(dst.shape[0]):
        dst[t] = src[t]


@njit(cache=CACHE, error_model="numpy", inline="always")
def add_row(dst, src):
    for t in range(dst.shape[0]):
        dst[t] += src[t]
