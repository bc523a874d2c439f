"""Shared fixtures for the test suite: torch conversion, tolerances, mpiexec.

The seeded generator ``rng`` (and ``float64``) are npresnet's own pytest plugin's
(npresnet.testing.plugin): each test's generator is seeded from its id, a failure prints its seed,
and ``--npresnet-seed N`` reseeds every test. Helpers are fixtures (not importable names): pytest
runs with ``--import-mode=importlib``, where test files cannot ``import conftest``. The helper
fixtures are session-scoped, so hypothesis tests may use them too. The case lists that several
files share are in cases.py, which this file loads as the module ``cases``
(``from cases import IM2COL_CASES``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def _load_cases() -> None:
    """tests/cases.py as the module ``cases``, before any test file imports it (see cases.py)."""
    spec = importlib.util.spec_from_file_location("cases", Path(__file__).with_name("cases.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cases"] = module
    spec.loader.exec_module(module)


_load_cases()

# Hermetic: the measured dispatch's cache (on by default, in the user's cache directory) is off in
# the tests and in the processes they start; the tests of the cache point it at tmp_path.
os.environ["NPRESNET_AUTOTUNE_CACHE"] = "off"
if "npresnet.engine.autotune" in sys.modules:
    sys.modules["npresnet.engine.autotune"].set_cache_file(None)

# Worst relative error (max |a - b| / max |b|) accepted against PyTorch, per dtype.
TOLERANCES = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


@pytest.fixture(scope="session")
def tol() -> dict[np.dtype, float]:
    """``tol[np.dtype(np.float64)]``: the accepted worst relative error vs PyTorch for a dtype."""
    return TOLERANCES


@pytest.fixture(scope="session")
def to_torch():
    """``to_torch(array, requires_grad=False)``: a CPU torch tensor with the array's dtype (a copy)."""
    import torch  # the referee; a hard requirement of the tests, never a skip

    def convert(array: Any, requires_grad: bool = False):
        from npresnet.backend import to_numpy

        tensor = torch.from_numpy(np.array(to_numpy(array), copy=True))
        return tensor.requires_grad_(requires_grad)

    return convert


@pytest.fixture(scope="session")
def max_rel_err():
    """``max_rel_err(ours, reference)``: max |a - b| / max |b| in float64 (shapes must match)."""
    from npresnet.backend import to_numpy

    def measure(ours: Any, reference: Any) -> float:
        a = np.asarray(to_numpy(ours), dtype=np.float64)
        b = np.asarray(to_numpy(reference), dtype=np.float64)
        assert a.shape == b.shape, f"shape mismatch: ours {a.shape}, reference {b.shape}"
        if a.size == 0:
            return 0.0
        scale = max(float(np.max(np.abs(b))), 1e-30)
        return float(np.max(np.abs(a - b))) / scale

    return measure


@pytest.fixture(scope="session")
def mpiexec() -> str:
    """The mpiexec next to this Python (the mpich wheel's), else the one on PATH; skip if none or no mpi4py."""
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not installed (pip install 'npresnet[mpi]'): multi-process tests not run")
    for candidate in (Path(sysconfig.get_path("scripts")) / "mpiexec", Path(sys.executable).parent / "mpiexec"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec found (pip install mpich): multi-process tests not run")
    return found
