"""Process-wide performance settings: thread counts and the memory allocator.

Nothing here changes a result; it only changes how fast the same arithmetic runs. The library never
calls these by itself: ``python -m npresnet.bench`` and ``python -m npresnet.train`` do, and you
may in your own scripts.

``set_num_threads(n)``
    BLAS (through threadpoolctl), Numba's kernels and, if it is imported, torch, together: setting
    only one of them lets the others oversubscribe the cores. ``default_threads()`` is the number
    of cores this process may use (what torch takes by default); the bench and train commands use it.

    Numba and OpenBLAS take turns on the same cores (a GEMM, then a BatchNorm kernel, then a GEMM),
    and the first attempt at parallel kernels ran 8x slower than serial ones (3 digits epochs of
    ResNet-20: 59 s against 7.4 s). The cause was spinning, not parallelism: Numba's OpenMP layer
    keeps its workers spinning after each parallel region, on the cores the next GEMM's OpenBLAS
    threads need. ``npresnet.kernels`` therefore runs its pool on Numba's workqueue layer, whose
    workers sleep when done, and at one thread runs serial builds (``kernels/_numba.py``).

``tune_allocator()``
    A training step allocates and frees the same multi-MB activations every time. glibc's malloc
    hands arrays above 32 MB (dynamic threshold) back to the OS when freed (``munmap``), and the next
    step faults every page of them in again, zeroed by the kernel: hundreds of thousands of page
    faults per ResNet-50 step. Raising ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` keeps freed
    memory in the process for the next step (measured on a 2-core VM: ResNet-20 batch 128 training
    step 2.28-2.36 s -> 1.96-2.07 s, 13% faster). The price: resident memory stays at its peak
    between steps instead of dropping. glibc (Linux) only; elsewhere it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

__all__ = ["blas_threads", "default_threads", "set_num_threads", "tune_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = 2**31 - 1) -> bool:
    """Keep freed large blocks inside the process (glibc ``mallopt``). Returns True if applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


_blas_threads: int | None = None         # what set_num_threads last gave BLAS


def blas_threads() -> int:
    """BLAS's thread count: what ``set_num_threads`` last set, else threadpoolctl's reading (once)."""
    global _blas_threads
    if _blas_threads is None:
        try:
            from threadpoolctl import threadpool_info

            counts = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
            _blas_threads = max(counts) if counts else 1
        except ImportError:
            _blas_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or default_threads()
    return _blas_threads


def default_threads() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_num_threads(threads: int, numba_threads: int | None = None) -> Any:
    """Use ``threads`` threads in BLAS, torch (if imported) and Numba's kernels (``numba_threads``
    if given). Returns the threadpoolctl limiter (call ``restore_original_limits()`` on it to undo
    the BLAS part), or None without threadpoolctl (then only ``OMP_NUM_THREADS`` is set, which
    reaches BLAS libraries not yet loaded)."""
    global _blas_threads
    numba_threads = threads if numba_threads is None else numba_threads
    if threads < 1 or numba_threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads} (numba_threads {numba_threads})")
    _blas_threads = threads
    limiter = None
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(threads)
    except ImportError:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    from . import kernels

    kernels.set_num_threads(numba_threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return limiter
