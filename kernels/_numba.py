"""Shared Numba settings and row helpers for the CPU kernels (imported only once a kernel is used).

``NPRESNET_NUMBA_CACHE=0`` turns off Numba's on-disk cache (``kernels/__pycache__``), e.g. when several
processes might write it at once or a stale cache is suspected; ``NUMBA_CACHE_DIR`` moves it.
Every kernel is compiled lazily, on its first call, once per dtype (float32 / float64).
``fastmath`` stays off: the kernels must reproduce the NumPy references to the last bit.
"""

from __future__ import annotations

import os

from numba import njit, prange  # noqa: F401  (prange is re-exported for the kernel modules)

#: Write compiled kernels to disk so later processes skip the compile (seconds per kernel).
CACHE = os.environ.get("NPRESNET_NUMBA_CACHE", "1").strip() != "0"


def require_shape(name, array, expected):
    """The kernels (CPU and CUDA) index without bounds checks: a wrong shape must be an error first."""
    if tuple(array.shape) != tuple(expected):
        raise ValueError(f"npresnet.kernels: {name} must have shape {tuple(expected)}, got {tuple(array.shape)}")


def require_same_dtype(what, a, b):
    if a.dtype != b.dtype:
        raise TypeError(f"npresnet.kernels: {what} must share a dtype, got {a.dtype} and {b.dtype}")


#: NPRESNET_NUMBA_PARALLEL=1 compiles the ``prange`` kernels for Numba's thread pool; the default
#: compiles them as serial loops. Why: next to a multi-threaded BLAS, Numba's workers and OpenBLAS's
#: (which spin for a while after every GEMM) fight for the cores. Measured on the 2-core VM with
#: both libraries at their default 2 threads: 3 epochs of ResNet-20 on digits took 59 s with
#: parallel kernels and 7.4 s with serial ones; ResNet-50 batch 16 forward 3.01 s against 1.26 s.
#: At one thread, parallel and serial compile to the same speed (BN, im2col, col2im, pooling).
#: Opt in where BLAS leaves the cores free (e.g. Numba-heavy runs with OPENBLAS_NUM_THREADS=1).
#: The on-disk cache may hold either build; delete kernels/__pycache__ after switching.
PARALLEL = os.environ.get("NPRESNET_NUMBA_PARALLEL", "0").strip() == "1"


def parallel_kernel(function):
    """``@njit`` (``parallel=True`` only with NPRESNET_NUMBA_PARALLEL=1, see above) with NumPy's float
    semantics (x/0 -> inf, no ZeroDivisionError), cached.

    No fastmath: results must match the NumPy references exactly.
    """
    return njit(parallel=PARALLEL, cache=CACHE, error_model="numpy")(function)


@njit(cache=CACHE, error_model="numpy", inline="always")
def valid_range(offset, stride, size, out_size):
    """The outputs o in [lo, hi) whose input position ``o*stride + offset`` lies inside [0, size).

    ``offset`` is ``i*dilation - padding`` for kernel offset i; positions outside are padding.
    Always 0 <= lo <= hi <= out_size (so loops over [0, lo) stay inside the output).
    """
    lo = 0 if offset >= 0 else min(out_size, (-offset + stride - 1) // stride)
    last = size - 1 - offset                      # o*stride <= last
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
