"""Fast kernels for npresnet's hot loops, installed as ``npresnet.kernels``.

This folder lives at the top of the repository and is mapped onto the package by
``[tool.setuptools.package-dir]`` in pyproject.toml: always import it as ``npresnet.kernels``,
never as ``kernels``. Every kernel has a plain NumPy reference in ``npresnet.functional`` that it
is tested against and falls back to; ``NPRESNET_KERNELS=numpy`` forces the reference.

The functional layer asks for a kernel by name, for the array it is about to process::

    fast = kernels.get("im2col", x)          # the Numba kernel, or None
    if fast is not None:
        return fast(x, kernel_size, stride, padding, dilation)
    ...                                      # the NumPy reference

Threads. Every kernel with a parallel loop is compiled twice, serially and for Numba's thread pool,
and runs the pool build whenever Numba has more than one thread: ``set_num_threads(n)`` below
(``npresnet.engine.set_num_threads`` sets BLAS and these together). The two builds give the same
bits. ``NPRESNET_NUMBA_PARALLEL=0`` keeps every kernel serial; ``kernels/_numba.py`` explains the
threading layer (TBB where the tbb package is installed, else workqueue) and why the kernels then
do not fight OpenBLAS for the cores; ``thread_pool()`` measures what one hand-off to the pool
costs on this machine (microseconds on TBB, up to a hundred times more on workqueue on some VMs).
The builds release the GIL; ``serial_in_this_thread(True)`` makes one Python thread run only serial
builds (the threads of ``npresnet.engine.batch_threads`` each compute a slice of a layer: they are
the parallelism).

``get`` returns None (run the reference) unless Numba is active and ``x`` is a NumPy float32 or
float64 array, so CuPy arrays never reach a Numba kernel. The kernels make their inputs
C-contiguous themselves. Importing this package imports no Numba and compiles nothing: the kernel
modules are imported on the first ``get`` that needs them, and each kernel compiles on its first
call (once per dtype; ``cache=True`` keeps the machine code in ``kernels/__pycache__``;
``NPRESNET_NUMBA_CACHE=0`` turns that off).

Kernels (same arguments and results as the reference, unless noted; outputs are C-contiguous):

==============================  ==========================================================================
``im2col``                      (x, kernel_size, stride, padding, dilation) -> cols (C, KH, KW, N, OH, OW)
``col2im``                      (cols, x_shape, stride, padding, dilation) -> dx (N, C, H, W)
``maxpool2d_forward``           (x, geometry) -> y, argmax (int32, k = i*KW + j)
``maxpool2d_backward``          (dout, argmax, x_shape, geometry) -> dx
``avgpool2d_forward``           (x, divisor (OH, OW), geometry) -> y
``avgpool2d_backward``          (dout, divisor, x_shape, geometry) -> dx
``batchnorm2d_train_forward``   (x, weight|None, bias|None, eps) -> y, x_hat, mean, var (biased), invstd
``batchnorm2d_train_backward``  (dout, x_hat, invstd, weight|None) -> dx, dweight, dbias
``relu_forward``                (x) -> y = maximum(x, 0), any shape
``relu_backward``               (dout, y) -> dx = dout where y > 0, else 0
``channel_affine``              (x, scale (C,), shift (C,)) -> x * scale + shift per channel (eval batch norm)
``conv3x3_forward``             (x, weight, padding, dilation) -> y, a stride-1 ungrouped 3x3 conv, no bias
``conv3x3_backward_input``      (dout, weight, padding, dilation) -> dx of that conv (needs P <= 2*D)
``conv3x3_backward_weight``     (dout, x, padding, dilation) -> dweight of that conv (BLAS, no Numba)
``conv3x3_backward_weight_dots`` (dout, x, padding, dilation) -> the same dweight by Numba dot products
``winograd_input``              (x, padding, (TH, TW)) -> V (4, 4, C, N*TH*TW), Winograd F(2x2, 3x3) tiles
``winograd_output``             (M (4, 4, O, N*TH*TW), N, (OH, OW), y=None) -> y (N, O, OH, OW)
``winograd_gradient``           (dy, (TH, TW), out=None) -> Et (4, 4, N*TH*TW, O): dW's dy tiles, tiles first
``winograd_input_t``            (x, padding, (TH, TW), out=None) -> Vt (4, 4, N*TH*TW, C): V, tiles first
==============================  ==========================================================================

The conv3x3 kernels are the one exception to "same result as the reference": they compute a
3x3 convolution directly instead of im2col + GEMM, so they sum the same products in another order
(equal to rounding, not bitwise). ``npresnet.functional.conv`` uses them only for thin layers, where
they are up to 2x faster (see ``conv3x3_cpu``); CuPy arrays always take im2col + cuBLAS.

``geometry`` is ``npresnet.kernels.geometry.PoolGeometry`` (its ``extra`` ceil_mode padding is handled by
bounds checks). The batch-norm pair covers training mode only; the caller updates the running
statistics from the returned mean and var.

CuPy arrays. For a CuPy float32/float64 array ``get`` returns a Numba CUDA kernel (modules
``cuda_im2col``, ``cuda_pool``; package numba-cuda) with the *same* signature and result, bit for
bit, as the CPU kernel above, for every name except the batch-norm pair (CuPy's own reductions
serve batch norm). The CUDA kernels take CuPy arrays through ``__cuda_array_interface__`` (no copy),
run on CuPy's current stream, and write each output element from one thread (col2im and the pool
backwards are gathers: no atomics, deterministic). ``get`` returns None, and the pure-CuPy reference
runs, when numba-cuda is not installed, Numba sees no usable CUDA device, ``NPRESNET_KERNELS=numpy``,
or inside ``reference_only()``. ``numba.cuda`` is imported on the first CuPy ``get`` only.
``cuda_active()`` says which family CuPy arrays get. The tests run these kernels on NumPy arrays
under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), where ``get`` serves them for CuPy arrays too.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ._settings import settings

#: NPRESNET_KERNELS: "auto" (Numba when installed), "numba" (required) or "numpy" (the references only).
REQUESTED = settings.KERNELS


def _numba_installed() -> bool:
    """Whether Numba can be found, without importing it (a blocked or broken finder counts as no)."""
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


HAVE_NUMBA = _numba_installed()
if REQUESTED == "numba" and not HAVE_NUMBA:
    raise ImportError(
        "NPRESNET_KERNELS=numba but numba is not installed; it is a dependency of npresnet: "
        "pip install 'numba>=0.58' (or reinstall: pip install -e .)"
    )

#: kernel name -> (module in this package, function in it)
KERNELS = {
    "im2col": ("im2col_cpu", "im2col"),
    "col2im": ("im2col_cpu", "col2im"),
    "maxpool2d_forward": ("pool_cpu", "maxpool2d_forward"),
    "maxpool2d_backward": ("pool_cpu", "maxpool2d_backward"),
    "avgpool2d_forward": ("pool_cpu", "avgpool2d_forward"),
    "avgpool2d_backward": ("pool_cpu", "avgpool2d_backward"),
    "batchnorm2d_train_forward": ("batchnorm_cpu", "batchnorm2d_train_forward"),
    "batchnorm2d_train_backward": ("batchnorm_cpu", "batchnorm2d_train_backward"),
    "relu_forward": ("relu_cpu", "relu_forward"),
    "relu_backward": ("relu_cpu", "relu_backward"),
    "channel_affine": ("batchnorm_cpu", "channel_affine"),
    "conv3x3_forward": ("conv3x3_cpu", "conv3x3_forward"),
    "conv3x3_backward_input": ("conv3x3_cpu", "conv3x3_backward_input"),
    "conv3x3_backward_weight": ("conv3x3_cpu", "conv3x3_backward_weight"),
    "conv3x3_backward_weight_dots": ("conv3x3_cpu", "conv3x3_backward_weight_dots"),
    "winograd_input": ("winograd_cpu", "winograd_input"),
    "winograd_output": ("winograd_cpu", "winograd_output"),
    "winograd_gradient": ("winograd_weight_cpu", "winograd_gradient"),
    "winograd_input_t": ("winograd_weight_cpu", "winograd_input_t"),
}

#: kernel name -> (module, function) of the Numba CUDA kernel served for CuPy arrays (no batch norm).
CUDA_KERNELS = {
    "im2col": ("cuda_im2col", "im2col"),
    "col2im": ("cuda_im2col", "col2im"),
    "maxpool2d_forward": ("cuda_pool", "maxpool2d_forward"),
    "maxpool2d_backward": ("cuda_pool", "maxpool2d_backward"),
    "avgpool2d_forward": ("cuda_pool", "avgpool2d_forward"),
    "avgpool2d_backward": ("cuda_pool", "avgpool2d_backward"),
}

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_cuda_problem: str | None = None  # why the CUDA kernels are off; set by _cuda_usable()
_cuda_checked = False
_numba_import_error: BaseException | None = None  # set if Numba was found but failed to import
_reference_depth = 0  # > 0 inside ``with reference_only():``
_this_thread = threading.local()  # .serial True: this Python thread runs serial builds only


def set_num_threads(threads: int) -> int:
    """Run the CPU kernels on ``threads`` Numba threads (capped at ``NUMBA_NUM_THREADS``, the pool
    size fixed at start-up); returns the number set. At 1 every kernel runs its serial build.

    Use this rather than ``numba.set_num_threads``: it first loads ``kernels/_numba.py``, which
    picks the threading layer before Numba starts its pool (see ``ParallelKernel`` there).
    Without Numba it does nothing and returns 1.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if active() != "numba":
        return 1
    from . import _numba

    return _numba.set_num_threads(threads)


def serial_in_this_thread(serial: bool) -> bool:
    """Make the calling Python thread run only the kernels' serial builds (``serial`` True), or the
    pool builds again (False); returns the previous setting. Used by ``npresnet.engine.batch_threads``,
    whose threads each compute a share of one layer. Imports nothing (no Numba)."""
    previous = getattr(_this_thread, "serial", False)
    _this_thread.serial = bool(serial)
    return previous


def thread_pool() -> tuple[str, int, float] | None:
    """(Numba's threading layer, its thread count, median microseconds to hand work to its pool and
    wait for it), measured now; None without the Numba kernels. Microseconds on TBB, up to a hundred
    times more on workqueue depending on the machine (docs/performance.md has the figures)."""
    if active() != "numba":
        return None
    from . import _numba

    return _numba.thread_pool()


def active() -> str:
    """Which CPU kernel family is in use: 'numba' or 'numpy'."""
    usable = HAVE_NUMBA and _numba_import_error is None and _reference_depth == 0
    return "numba" if usable and REQUESTED != "numpy" else "numpy"


@contextlib.contextmanager
def reference_only() -> Iterator[None]:
    """Run the NumPy references inside this block (``get`` returns None), process-wide: for parity
    tests and benchmarks."""
    global _reference_depth
    _reference_depth += 1
    try:
        yield
    finally:
        _reference_depth -= 1


# None, or observer(name, kernel) -> the function ``get`` hands out instead of the kernel (a profiler
# wraps it in a timer). Off, it costs one comparison per ``get``.
_observer: Callable[[str, Callable[..., Any]], Callable[..., Any]] | None = None


def set_observer(observer: Callable[[str, Callable[..., Any]], Callable[..., Any]] | None) -> Any:
    """Hand every kernel that ``get`` returns through ``observer(name, kernel)`` (``None``: stop).

    The hook point of ``python -m npresnet.bench --profile``, which times each kernel call. Returns
    the previous observer, to put back afterwards.
    """
    global _observer
    previous, _observer = _observer, observer
    return previous


def get(name: str, x: Any) -> Callable[..., Any] | None:
    """The Numba kernel ``name`` (see the module docstring) if it should process ``x``, else None.

    None means "run the NumPy reference": Numba is off or missing, or ``x`` is not a NumPy
    float32/float64 array (integer arrays, lists, ...). A CuPy float array gets the Numba CUDA
    kernel when ``cuda_active() == "numba-cuda"``, else None (the CuPy reference runs). An unknown
    name is an error whatever the backend, so typos show up in every configuration.
    """
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; expected one of {sorted(KERNELS)}")
    if _observer is not None:  # a profiler is watching (see set_observer)
        kernel = _get(name, x)
        return kernel if kernel is None else _observer(name, kernel)
    return _get(name, x)


def _get(name: str, x: Any) -> Callable[..., Any] | None:
    if is_cupy_array(x):
        return _get_cuda(name, x)
    if active() != "numba" or not isinstance(x, np.ndarray) or x.dtype not in _FLOAT_DTYPES:
        return None
    module_name, function_name = KERNELS[name]
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except (ImportError, SystemError) as exc:  # Numba installed but broken (e.g. rejects this NumPy)
        if REQUESTED == "numba":
            raise
        _disable_numba(exc)
        return None
    return getattr(module, function_name)


def _disable_numba(exc: BaseException) -> None:
    global _numba_import_error
    _numba_import_error = exc
    warnings.warn(
        f"npresnet.kernels: numba failed to import ({exc}); using the NumPy reference kernels",
        RuntimeWarning,
        stacklevel=3,
    )


# ------------------------------------------------------------------------------------------------
# CuPy arrays: Numba CUDA kernels


def is_cupy_array(x: Any) -> bool:
    """Recognise a CuPy array without importing CuPy. The one definition: ``npresnet.backend`` imports it
    from here, since kernels/ may import nothing of the rest of npresnet."""
    return type(x).__module__.split(".")[0] == "cupy"


def _cuda_usable() -> bool:
    """Whether numba-cuda imports and sees a CUDA device (or its simulator); checked once, lazily."""
    global _cuda_checked, _cuda_problem
    if not _cuda_checked:
        _cuda_checked = True
        try:
            from numba import cuda

            if not cuda.is_available():
                _cuda_problem = "numba.cuda.is_available() is False (no CUDA driver or device)"
        except ImportError as exc:
            _cuda_problem = f"numba-cuda is not installed ({exc})"
        except Exception as exc:  # installed but broken: say so once, then use CuPy
            _cuda_problem = f"numba.cuda failed to import ({type(exc).__name__}: {exc})"
            warnings.warn(
                f"npresnet.kernels: {_cuda_problem}; CuPy arrays use the pure-CuPy references",
                RuntimeWarning,
                stacklevel=3,
            )
    return _cuda_problem is None


def cuda_active() -> str:
    """Which kernel family CuPy arrays get: 'numba-cuda' or 'cupy' (the references). Imports numba.cuda."""
    if REQUESTED == "numpy" or _reference_depth > 0 or not _cuda_usable():
        return "cupy"
    return "numba-cuda"


def cuda_problem() -> str | None:
    """Why the CUDA kernels are not used (after the first check), or None."""
    _cuda_usable()
    return _cuda_problem


def _get_cuda(name: str, x: Any) -> Callable[..., Any] | None:
    """The Numba CUDA kernel ``name`` for the CuPy array ``x``, or None (run the CuPy reference)."""
    if name not in CUDA_KERNELS or getattr(x, "dtype", None) not in _FLOAT_DTYPES:
        return None
    if cuda_active() != "numba-cuda":
        return None
    module_name, function_name = CUDA_KERNELS[name]
    return getattr(importlib.import_module(f"{__name__}.{module_name}"), function_name)
