"""The one place that knows about array backends (NumPy on the CPU, CuPy on the GPU).

Every op in npresnet takes its array module from its *input*::

    xp = get_array_module(x)     # numpy or cupy
    y = xp.maximum(x, 0)

so a single code path serves both backends. CuPy is imported lazily, only when a CuPy array is
seen or the CuPy backend is asked for: importing npresnet never requires CuPy.

The *default* backend only decides where newly created modules put their parameters. It is
NumPy unless the environment variable ``NPRESNET_BACKEND=cupy`` is set or
:func:`set_default` is called.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

BACKENDS = ("numpy", "cupy")
_default_backend = os.environ.get("NPRESNET_BACKEND", "numpy").strip().lower() or "numpy"
if _default_backend not in BACKENDS:
    raise ValueError(f"NPRESNET_BACKEND must be one of {BACKENDS}, got {_default_backend!r}")


def _import_cupy() -> ModuleType:
    """Import CuPy and check that a CUDA device is usable; a clear error otherwise."""
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "the 'cupy' backend was requested but CuPy is not installed "
            "(pip install 'npresnet[cuda]')"
        ) from exc
    return cupy


def cupy_available() -> bool:
    """True when CuPy imports *and* a CUDA device is usable (CuPy can import without a GPU)."""
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:
        return False


def is_cupy_array(x: Any) -> bool:
    """Recognise a CuPy array without importing CuPy."""
    return type(x).__module__.split(".")[0] == "cupy"


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
        cupy = _import_cupy()
        if not cupy.cuda.is_available():
            raise RuntimeError("the 'cupy' backend was requested but no CUDA device is usable")
        return cupy
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
    if backend_name(x) == name:
        return x
    if name == "numpy":
        return x.get()
    return xp_for(name).asarray(x)


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array from a NumPy or CuPy array or a torch tensor (the one explicit device->host copy)."""
    if isinstance(x, np.ndarray):
        return x
    if is_cupy_array(x):
        return x.get()
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor, without importing torch
        return x.detach().cpu().numpy()
    return np.asarray(x)
