"""npresnet: ResNets from scratch in NumPy (CuPy on the GPU), every backward pass by hand.

Quick start::

    import numpy as np, npresnet
    from npresnet import nn
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = conv(x)                              # forward, keeps a cache
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)  # dL/dy
    dx = conv.backward(dy)                   # backward, conv.weight.grad now holds dL/dW
"""

import importlib.util as _importlib_util
from typing import TYPE_CHECKING

__version__ = "0.2.0"  # the one place: pyproject.toml reads it from here (setuptools dynamic version)

if _importlib_util.find_spec(f"{__name__}.kernels") is None:
    # A bare checkout on sys.path: the top-level kernels/ folder becomes npresnet.kernels only when installed.
    raise ImportError(
        "npresnet is not installed: run `pip install -e .` in the repository root (it maps the "
        "top-level kernels/ folder to npresnet.kernels)"
    )

# The API is imported on first use (PEP 562, ``__getattr__`` below): ``import npresnet`` loads no NumPy,
# so the pytest plugin (npresnet.testing.plugin), which pytest loads in every test run of an environment
# that has npresnet installed, costs those runs nothing. ``npresnet.optim.SGD(...)`` after a bare
# ``import npresnet`` works as before: the attribute access imports npresnet.optim.
if TYPE_CHECKING:
    from . import backend, data, engine, functional, gradcheck, io, models, nn, optim, schedules, summary, testing
    from .grad_mode import is_grad_enabled, no_grad
    from .gradcheck import GradcheckError, GradcheckReport, NondifferentiableError
    from .io import load, save

#: Each public name -> the submodule that defines it (a submodule of the API maps to itself).
_API = {
    **{name: name for name in ("backend", "data", "engine", "functional", "gradcheck", "io", "models", "nn", "optim")},
    **{name: name for name in ("schedules", "summary", "testing")},
    **dict.fromkeys(["is_grad_enabled", "no_grad"], "grad_mode"),
    **dict.fromkeys(["GradcheckError", "GradcheckReport", "NondifferentiableError"], "gradcheck"),
    **dict.fromkeys(["load", "save"], "io"),
}

#: 0.1's public modules that moved into npresnet.engine: still reachable as attributes this release (each
#: warns once and is the engine's module itself), never listed in __all__ or dir().
_DEPRECATED_MODULES = ("autotune", "runtime")

__all__ = [
    "GradcheckError",
    "GradcheckReport",
    "NondifferentiableError",
    "backend",
    "data",
    "engine",
    "functional",
    "gradcheck",
    "is_grad_enabled",
    "models",
    "nn",
    "no_grad",
    "optim",
    "schedules",
    "testing",
    "io",
    "load",
    "save",
    "summary",
]

# The namespace is the API: __all__. Python binds every imported submodule as an attribute of its package,
# internals too (grad_mode, checks, kernels, ...); ``__dir__`` lists the API only. ``import npresnet.checks``
# works as before, and the attribute ``npresnet.checks`` of a submodule already imported resolves.
if not TYPE_CHECKING:  # hidden from mypy, which would type what it cannot resolve (npresnet.kernels) as object

    def __getattr__(name: str) -> object:
        """A public name, imported now (once); or an internal submodule already imported."""
        import importlib
        import sys

        if name in _API:
            module = importlib.import_module(f"{__name__}.{_API[name]}")
            value = module if _API[name] == name else getattr(module, name)
            globals()[name] = value
            return value
        module = sys.modules.get(f"{__name__}.{name}")
        if module is None and name in _DEPRECATED_MODULES:  # 0.1's spelling: the alias warns and hands over
            module = importlib.import_module(f"{__name__}.{name}")
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return module


def __dir__() -> list[str]:
    return sorted({*__all__, *(name for name in globals() if name.startswith("_"))})


del TYPE_CHECKING
