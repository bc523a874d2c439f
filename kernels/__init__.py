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
==============================  ==========================================================================

``geometry`` is ``functional.pooling.PoolGeometry`` (its ``extra`` ceil_mode padding is handled by
bounds checks). The batch-norm pair covers training mode only; the caller updates the running
statistics from the returned mean and var.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

#: NPRESNET_KERNELS: "auto" (Numba when installed), "numba" (required) or "numpy" (the references only).
REQUESTED = os.environ.get("NPRESNET_KERNELS", "auto").strip().lower() or "auto"
if REQUESTED not in ("auto", "numba", "numpy"):
    raise ValueError(f"NPRESNET_KERNELS must be 'auto', 'numba' or 'numpy', got {REQUESTED!r}")


def _numba_installed() -> bool:
    """Whether Numba can be found, without importing it (a blocked or broken finder counts as no)."""
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


HAVE_NUMBA = _numba_installed()
if REQUESTED == "numba" and not HAVE_NUMBA:
    raise ImportError("NPRESNET_KERNELS=numba but numba is not installed (pip install 'npresnet[kernels]')")

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
}

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_numba_import_error: BaseException | None = None   # set if Numba was found but failed to import
_reference_depth = 0                               # > 0 inside ``with reference_only():``


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


def get(name: str, x: Any) -> Callable[..., Any] | None:
    """The Numba kernel ``name`` (see the module docstring) if it should process ``x``, else None.

    None means "run the NumPy reference": Numba is off or missing, or ``x`` is not a NumPy
    float32/float64 array (CuPy arrays, integer arrays, ...). An unknown name is an error
    whatever the backend, so typos show up in every configuration.
    """
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; expected one of {sorted(KERNELS)}")
    if active() != "numba" or not isinstance(x, np.ndarray) or x.dtype not in _FLOAT_DTYPES:
        return None
    module_name, function_name = KERNELS[name]
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except (ImportError, SystemError) as exc:   # Numba installed but broken (e.g. rejects this NumPy)
        if REQUESTED == "numba":
            raise
        _disable_numba(exc)
        return None
    return getattr(module, function_name)


def _disable_numba(exc: BaseException) -> None:
    global _numba_import_error
    _numba_import_error = exc
    warnings.warn(f"npresnet.kernels: numba failed to import ({exc}); using the NumPy reference kernels",
                  RuntimeWarning, stacklevel=3)
