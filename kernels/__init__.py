"""Fast kernels for npresnet's hot loops, installed as ``npresnet.kernels``.

This folder lives at the top of the repository and is mapped onto the package by
``[tool.setuptools.package-dir]`` in pyproject.toml: always import it as ``npresnet.kernels``,
never as ``kernels``. Every kernel has a plain NumPy reference in ``npresnet.functional`` that it
is tested against and falls back to; ``NPRESNET_KERNELS=numpy`` forces the reference.
"""

from __future__ import annotations

import importlib.util
import os

#: "numba" when Numba is installed and not disabled, else "numpy" (the reference code paths).
REQUESTED = os.environ.get("NPRESNET_KERNELS", "auto").strip().lower() or "auto"
if REQUESTED not in ("auto", "numba", "numpy"):
    raise ValueError(f"NPRESNET_KERNELS must be 'auto', 'numba' or 'numpy', got {REQUESTED!r}")

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
if REQUESTED == "numba" and not HAVE_NUMBA:
    raise ImportError("NPRESNET_KERNELS=numba but numba is not installed (pip install 'npresnet[kernels]')")


def active() -> str:
    """Which CPU kernel family is in use: 'numba' or 'numpy'."""
    return "numba" if HAVE_NUMBA and REQUESTED != "numpy" else "numpy"
