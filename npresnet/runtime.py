"""Process-wide performance settings: thread counts and the memory allocator.

Nothing here changes a result; it only changes how fast the same arithmetic runs. The library never
calls these by itself: ``python -m npresnet.bench`` and ``python -m npresnet.train`` do, and you
may in your own scripts.

``set_num_threads(n)``
    BLAS (through threadpoolctl), Numba's parallel kernels and, if it is imported, torch, together:
    setting only one of them lets the others oversubscribe the cores. Numba gets ``numba_threads``
    (default 1), not n: OpenBLAS's worker threads keep spinning for a while after each GEMM, and a
    Numba kernel running between two GEMMs then fights them for the cores. Measured on the 2-core
    VM, ResNet-50 batch 16 forward with BLAS at 2 threads: Numba at 2 threads 3.01 s, Numba at
    1 thread 1.26 s (and 1 thread for both: 1.90 s). The Numba kernels are memory-bound copies and
    reductions; the GEMMs are where extra cores pay. (By default the kernels are even compiled as
    serial loops, so a library user who never calls this function does not hit the fight either:
    ``NPRESNET_NUMBA_PARALLEL=1`` in ``npresnet.kernels`` opts into Numba's thread pool.)

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

__all__ = ["set_num_threads", "tune_allocator"]

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


def set_num_threads(threads: int, numba_threads: int = 1) -> Any:
    """Use ``threads`` threads in BLAS and torch (if imported), ``numba_threads`` in Numba's
    parallel kernels (see the module docstring for why 1 by default). Returns the threadpoolctl
    limiter (call ``restore_original_limits()`` on it to undo the BLAS part), or None without
    threadpoolctl (then only ``OMP_NUM_THREADS`` is set, which reaches BLAS libraries not yet loaded)."""
    if threads < 1 or numba_threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads} (numba_threads {numba_threads})")
    limiter = None
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(threads)
    except ImportError:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    from . import kernels

    if kernels.active() == "numba":
        import numba

        # numba.config creates its settings at import time, out of mypy's sight
        numba.set_num_threads(min(numba_threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return limiter
