"""npresnet: ResNets from scratch in NumPy (CuPy on the GPU), every backward pass by hand.

Quick start::

    import numpy as np, npresnet
    from npresnet import nn
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = conv(x)                              # forward, keeps a cache
    dx = conv.backward(np.ones_like(y))      # backward, conv.weight.grad now holds dL/dW
"""

import importlib.util as _importlib_util
from types import ModuleType as _ModuleType
from typing import TYPE_CHECKING

__version__ = "0.2.0"  # the one place: pyproject.toml reads it from here (setuptools dynamic version)

if _importlib_util.find_spec(f"{__name__}.kernels") is None:
    # A bare checkout on sys.path: the top-level kernels/ folder becomes npresnet.kernels only when installed.
    raise ImportError(
        "npresnet is not installed: run `pip install -e .` in the repository root (it maps the "
        "top-level kernels/ folder to npresnet.kernels)"
    )

# optim, schedules and data are imported here too (as torch.optim is): ``npresnet.optim.SGD(...)`` works
# after a bare ``import npresnet``. They cost about 5 ms of the ~140 ms import, so they are not lazy.
from . import backend, data, functional, gradcheck, io, models, nn, optim, schedules, summary, testing  # noqa: E402
from .grad_mode import is_grad_enabled, no_grad
from .gradcheck import GradcheckError, GradcheckReport, NondifferentiableError
from .io import load, save

__all__ = [
    "GradcheckError",
    "GradcheckReport",
    "NondifferentiableError",
    "backend",
    "data",
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

# The namespace is the API: __all__. Importing the package above also imported its internals (grad_mode,
# checks, kernels, ...), and Python binds each imported submodule as an attribute of its package; they are
# unbound here, so dir(npresnet) lists the API only. ``import npresnet.checks`` works as before, and the
# attribute ``npresnet.checks`` of a submodule already imported still resolves (``__getattr__`` below).
for _name in [n for n, v in globals().items() if isinstance(v, _ModuleType) and n not in __all__]:
    del globals()[_name]
del _name

if not TYPE_CHECKING:  # hidden from mypy, which would type what it cannot resolve (npresnet.kernels) as object

    def __getattr__(name: str) -> object:
        """``npresnet.<submodule>`` for a submodule already imported (an internal one is not bound, see above)."""
        import sys

        module = sys.modules.get(f"{__name__}.{name}")
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return module


del _ModuleType, TYPE_CHECKING
