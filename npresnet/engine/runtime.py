"""Process-wide performance settings: thread counts and the memory allocator.

Nothing here changes a result; it only changes how fast the same arithmetic runs. The library never
calls these by itself: ``python -m npresnet.bench`` and ``python -m npresnet.train`` do, and you
may in your own scripts.

``set_num_threads(n)``
    BLAS (through threadpoolctl), Numba's kernels and, if it is imported, torch, together: setting
    only one of them lets the others oversubscribe the cores. ``default_threads()`` is the number
    of cores this process may use (what torch takes by default); the bench and train commands use it.

    Numba and OpenBLAS take turns on the same cores (a GEMM, then a BatchNorm kernel, then a GEMM),
    and the first attempt at parallel kernels ran several times slower than serial ones. The cause
    was spinning, not parallelism: Numba's OpenMP layer keeps its workers spinning after each
    parallel region, on the cores the next GEMM's OpenBLAS threads need. ``npresnet.kernels``
    therefore runs its pool on Numba's TBB layer where the tbb package is installed, else on
    workqueue (both put their workers to sleep when done), never on OpenMP unless asked for, and at
    one thread runs serial builds (``kernels/_numba.py``).

``set_blas_spin(exponent)``
    OpenBLAS's idle worker threads keep spinning for 2**28 CPU cycles (about 0.1 s) after each
    call before they sleep, to pick up the next GEMM fast. Between two GEMMs npresnet runs Numba
    kernels on the same cores, and a spinning OpenBLAS thread takes a core from them: the kernels
    scale in isolation but not inside a training step.
    ``set_num_threads(n)`` with n > 1 therefore shortens the spin to 2**``BLAS_SPIN_EXPONENT``
    cycles (numpy's OpenBLAS only; the pool restarts; no effect on results).

``tune_allocator()``
    A training step allocates and frees the same multi-MB activations every time. glibc's malloc
    hands arrays above 32 MB (dynamic threshold) back to the OS when freed (``munmap``), and the next
    step faults every page of them in again, zeroed by the kernel: hundreds of thousands of page
    faults per ResNet-50 step. Raising ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` keeps freed
    memory in the process for the next step (a training step ran about a tenth faster:
    docs/performance.md). The price: resident memory stays at its peak between steps instead of
    dropping. glibc (Linux) only; elsewhere it does nothing and says so.

This module is ``npresnet.engine.runtime``; ``npresnet.engine`` re-exports its public functions, and
``npresnet.runtime`` is a deprecated alias of it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import platform
import sys
from typing import Any

from .. import settings

__all__ = [
    "BLAS_SPIN_EXPONENT",
    "blas_threads",
    "cpu_id",
    "cpu_model",
    "default_threads",
    "set_blas_spin",
    "set_num_threads",
    "slow_pool_note",
    "tbb_reason",
    "tune_allocator",
]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _first_cpu_fields() -> dict[str, str]:
    """The first processor's ``name: value`` lines of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    if fields:
                        break  # the first processor's block is enough
                    continue
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s "model name"), else what ``platform`` knows."""
    return _first_cpu_fields().get("model name") or platform.processor() or platform.machine()


def cpu_id() -> dict[str, Any]:
    """What tells two CPUs of one model name apart: /proc/cpuinfo's vendor, family, model and
    stepping, and the sizes of cpu0's caches (sysfs), as far as this system reports them.

    The model name alone is not enough: CPUs of different generations (different caches and
    vector units) may report the same model name, and a kernel choice timed on one need not hold
    on the other."""
    fields = _first_cpu_fields()
    wanted = {"vendor_id": "vendor", "cpu family": "family", "model": "model", "stepping": "stepping"}
    found: dict[str, Any] = {key: fields[name] for name, key in wanted.items() if name in fields}
    caches = {}
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with open(os.path.join(index, "level")) as level, open(os.path.join(index, "type")) as kind:
                with open(os.path.join(index, "size")) as size:
                    caches[f"L{level.read().strip()} {kind.read().strip().lower()}"] = size.read().strip()
        except OSError:
            continue
    if caches:
        found["caches"] = caches
    return found


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


_blas_threads: int | None = None  # what set_num_threads last gave BLAS


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


#: OpenBLAS idle spin while Numba kernels share the cores: 2**this CPU cycles (see the module docstring);
#: NPRESNET_BLAS_SPIN (npresnet.settings) sets it, None leaves OpenBLAS's own (2**28).
BLAS_SPIN_EXPONENT: int | None = settings.BLAS_SPIN


def set_blas_spin(exponent: int | None) -> bool:
    """Let numpy's OpenBLAS worker threads spin 2**exponent cycles (4..30; None: OpenBLAS's default,
    2**28) after each call before they sleep. Returns True if applied: OpenBLAS with its own
    pthreads pool, found through threadpoolctl, exporting ``openblas_read_env`` and
    ``blas_thread_shutdown_`` (it re-reads OPENBLAS_THREAD_TIMEOUT; the pool restarts on the next call)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return False
    libraries = [
        i
        for i in threadpool_info()
        if i.get("internal_api") == "openblas"
        and i.get("threading_layer") == "pthreads"
        and "numpy" in str(i.get("filepath"))
    ]
    if not libraries:
        return False
    if exponent is None:
        os.environ.pop("OPENBLAS_THREAD_TIMEOUT", None)
    else:
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(min(30, max(4, int(exponent))))
    applied = False
    for info in libraries:
        library = ctypes.CDLL(info["filepath"])
        read_env = getattr(library, "openblas_read_env", None)
        shutdown = getattr(library, "blas_thread_shutdown_", None)
        if read_env is not None and shutdown is not None:
            read_env()
            shutdown()
            applied = True
    return applied


#: A hand-off to Numba's pool above this many microseconds gets ``slow_pool_note``: the parallel
#: kernels cannot gain from threads there (docs/performance.md has the measurements).
SLOW_HANDOFF_US = 30.0


def slow_pool_note(pool: tuple[str, int, float] | None = None, why: bool = True) -> str | None:
    """One line for the user when Numba's kernels run on the workqueue layer and a hand-off to its
    pool is slow on this machine, else None (also at one Numba thread: the kernels then run serial
    builds, with no hand-off). ``pool``: a measurement of ``kernels.thread_pool()`` (layer, threads,
    microseconds) already taken; without it one is taken now, which starts the pool. ``why``: end
    with the reason TBB is not in use (``tbb_reason``); False where the caller has printed it."""
    from .. import kernels

    pool = pool if pool is not None else kernels.thread_pool()
    if pool is None:
        return None
    layer, threads, handoff_us = pool
    if layer != "workqueue" or threads < 2 or handoff_us <= SLOW_HANDOFF_US:
        return None
    note = (
        f"note: Numba's workqueue thread pool takes {handoff_us:.0f} us per parallel kernel call on this machine, "
        "so its kernels gain little or nothing from more threads (TBB's pool hands off in microseconds)"
    )
    reason = tbb_reason(layer) if why else None
    return note if reason is None else f"{note}; TBB is not in use: {reason}"


def tbb_reason(layer: str) -> str | None:
    """Why Numba's pool runs ``layer`` rather than TBB, in one line (None on TBB): e.g. that the tbb
    package is not installed, or that NUMBA_THREADING_LAYER chose another layer."""
    from ..kernels import _tbb

    return _tbb.reason(layer)


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
    from .. import kernels

    kernels.set_num_threads(numba_threads)
    if threads > 1 and numba_threads > 1 and BLAS_SPIN_EXPONENT is not None:
        set_blas_spin(BLAS_SPIN_EXPONENT)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return limiter
