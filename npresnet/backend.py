"""The one place that knows about array backends (NumPy on the CPU, CuPy on the GPU).

Every op in npresnet takes its array module from its *input*::

    xp = get_array_module(x)     # numpy or cupy
    y = xp.maximum(x, 0)

so a single code path serves both backends. CuPy is imported lazily, only when a CuPy array is
seen or the CuPy backend is asked for: importing npresnet never requires CuPy.

The *default* backend only decides where newly created modules put their parameters. It is
NumPy unless the environment variable ``NPRESNET_BACKEND=cupy`` is set or
:func:`set_default` is called.

Asking for CuPy (``xp_for("cupy")``, ``set_default("cupy")``, ``to_backend(x, "cupy")``,
``module.to("cupy")``) checks that a CUDA device is usable and otherwise raises a ``RuntimeError``
that says why: CuPy imports fine on a machine without a GPU and would only fail later.

Crossing to and from other libraries goes through DLPack, without copies where the data stays on
its device: :func:`from_dlpack` (a CUDA torch tensor -> a CuPy array, a CPU tensor -> a NumPy
array), :func:`to_torch` (the reverse), and :func:`to_numpy` (the one explicit device -> host copy).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from . import settings
from .kernels import is_cupy_array  # the one definition (kernels/ is the leaf of the import graph)

BACKENDS = ("numpy", "cupy")
_default_backend = settings.BACKEND


def _import_cupy() -> ModuleType:
    """Import CuPy (a clear error if it is missing). Says nothing about a device: see :func:`require_cupy`."""
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "the 'cupy' backend was requested but CuPy is not installed (pip install 'npresnet[cuda]')"
        ) from exc
    return cupy


def _cupy_device_problem(cupy: ModuleType) -> str | None:
    """Why CuPy cannot run here (no driver, no device, ...), or None when a CUDA device is usable."""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, driver too old, ...
        return f"{type(exc).__name__}: {exc}"
    if count < 1:
        return "the CUDA runtime found no device"
    if not cupy.cuda.is_available():  # pragma: no cover - depends on the machine
        return "cupy.cuda.is_available() is False"
    return None


def require_cupy() -> ModuleType:
    """CuPy, checked to have a usable CUDA device; a ``RuntimeError`` naming the problem otherwise.

    CuPy imports on machines without a GPU (or with a driver too old for its CUDA runtime) and only
    fails at the first allocation, with an error that does not mention npresnet. Every place that
    *asks* for the CuPy backend (``xp_for("cupy")``, ``set_default("cupy")``, ``to_backend(x, "cupy")``,
    ``module.to("cupy")``, ``from_dlpack(..., backend="cupy")``) goes through here instead.
    """
    cupy = _import_cupy()
    problem = _cupy_device_problem(cupy)
    if problem is not None:
        raise RuntimeError(
            f"the 'cupy' backend was requested: CuPy {cupy.__version__} is installed but no "
            f"CUDA device is usable ({problem})"
        )
    return cupy


def cupy_available() -> bool:
    """True when CuPy imports *and* a CUDA device is usable (CuPy can import without a GPU)."""
    try:
        import cupy

        return _cupy_device_problem(cupy) is None
    except Exception:
        return False


def is_array(x: Any) -> bool:
    """A NumPy or CuPy array (not a torch tensor, a list or a scalar)."""
    return isinstance(x, np.ndarray) or is_cupy_array(x)


def backend_name(x: Any) -> str:
    """'numpy' or 'cupy' for an array (anything else is an error)."""
    if isinstance(x, np.ndarray):
        return "numpy"
    if is_cupy_array(x):
        return "cupy"
    raise TypeError(f"expected a numpy or cupy array, got {type(x).__module__}.{type(x).__name__}")


def xp_for(name: str) -> ModuleType:
    """The array module for a backend name ('numpy' or 'cupy')."""
    name = name.lower()
    if name == "numpy":
        return np
    if name == "cupy":
        return require_cupy()
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")


def get_array_module(*arrays: Any) -> ModuleType:
    """The array module (numpy or cupy) shared by all non-None ``arrays``.

    Mixing backends is a ``TypeError`` that names both, never an implicit copy.
    """
    names = {backend_name(a) for a in arrays if a is not None}
    if len(names) > 1:
        raise TypeError(f"arrays live on different backends: {sorted(names)}; move them with .to()")
    if names == {"cupy"}:
        return _import_cupy()
    return np


def check_same_backend_and_dtype(x: Any, like: Any, what: str = "input", of: str = "parameters") -> None:
    """Raise a ``TypeError`` naming both sides when ``x`` and ``like`` differ in backend or dtype."""
    bx, bl = backend_name(x), backend_name(like)
    if bx != bl:
        raise TypeError(f"{what} is a {bx} array but the {of} are {bl} arrays; move one with .to('{bx}')")
    if x.dtype != like.dtype:
        raise TypeError(
            f"{what} has dtype {x.dtype} but the {of} have dtype {like.dtype}; "
            f"cast the input or call module.to({x.dtype.name!r})"
        )


def get_default() -> str:
    """The backend new modules are created on: 'numpy' or 'cupy'."""
    return _default_backend


def set_default(name: str) -> None:
    """Create new modules on ``name`` ('numpy' or 'cupy') from now on."""
    global _default_backend
    xp_for(name)  # fail now, not at the first module, if CuPy is unusable
    _default_backend = name.lower()


def to_backend(x: Any, name: str) -> Any:
    """Copy ``x`` to the backend ``name`` (no copy if it is already there)."""
    name = name.lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    if backend_name(x) == name:
        return x
    if name == "numpy":
        return x.get()
    return xp_for(name).asarray(x)


def _dlpack_device_type(x: Any) -> int | None:
    """The DLPack device type of ``x`` (1 CPU, 2 CUDA, 3 CUDA host, 13 CUDA managed), None if it has none."""
    if not hasattr(x, "__dlpack_device__"):
        return None
    return int(x.__dlpack_device__()[0])


_DLPACK_CPU = (1, 3)  # kDLCPU, kDLCUDAHost (pinned host memory)
_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged


def _is_torch_tensor(x: Any) -> bool:
    """Recognise a torch tensor without importing torch."""
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def from_dlpack(x: Any, backend: str | None = None) -> Any:
    """A NumPy or CuPy array sharing memory with ``x`` (any DLPack producer: torch, JAX, CuPy, ...).

    Without ``backend`` the data stays where it is and nothing is copied: a CUDA torch tensor
    becomes a CuPy array on the same device, a CPU tensor a NumPy array. With ``backend``
    ('numpy' or 'cupy') the result is moved there, copying only if the data lives elsewhere.
    A torch tensor that requires grad is detached first (DLPack cannot export it); the result
    still shares its memory. NumPy and CuPy arrays are returned as they are (or moved).
    """
    if backend is not None and backend.lower() not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if is_array(x):
        return x if backend is None else to_backend(x, backend)
    if _is_torch_tensor(x) and getattr(x, "requires_grad", False):
        x = x.detach()
    device = _dlpack_device_type(x)
    if device in _DLPACK_CPU:
        array = np.from_dlpack(x)
    elif device in _DLPACK_CUDA:
        array = require_cupy().from_dlpack(x)
    elif device is None:
        raise TypeError(
            f"from_dlpack expects an object with __dlpack__ / __dlpack_device__ (a torch tensor, "
            f"a CuPy or NumPy array, ...), got {type(x).__module__}.{type(x).__name__}"
        )
    else:
        raise TypeError(f"from_dlpack: DLPack device type {device} is neither CPU (1, 3) nor CUDA (2, 13)")
    return array if backend is None else to_backend(array, backend)


def to_torch(x: Any) -> Any:
    """A torch tensor sharing memory with the NumPy or CuPy array ``x`` (CPU or CUDA tensor), via DLPack.

    Imports torch (only here). The tensor and the array alias: writes to one show in the other.
    """
    import torch

    backend_name(x)  # a clear TypeError for anything that is not a NumPy/CuPy array
    return torch.from_dlpack(x)


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array from a NumPy or CuPy array, a torch tensor or another DLPack producer.

    This is the one explicit device->host copy (for CuPy arrays and CUDA tensors); CPU data is
    shared, not copied. Anything else (lists, scalars) goes through ``np.asarray``.
    """
    if isinstance(x, np.ndarray):
        return x
    if is_cupy_array(x):
        return x.get()
    if _is_torch_tensor(x) and hasattr(x, "numpy"):  # without importing torch
        return x.detach().cpu().numpy()
    device = _dlpack_device_type(x)
    if device in _DLPACK_CPU:
        return np.from_dlpack(x)
    if device in _DLPACK_CUDA:
        return require_cupy().from_dlpack(x).get()
    return np.asarray(x)
