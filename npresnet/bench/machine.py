"""The machine a benchmark ran on: CPU, BLAS library, versions, and the single-GEMM peak."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from typing import Any

import numpy as np

from .. import kernels
from ..runtime import cpu_id, cpu_model
from .timing import timed

__all__ = ["blas_info", "cpu_model", "gemm_peak_gflops", "machine_info", "numba_pool"]


def blas_info() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl not installed"}]
    keep = ("internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [{k: info.get(k) for k in keep} for info in threadpool_info() if info.get("user_api") == "blas"]


def numba_pool() -> dict[str, Any] | None:
    """Numba's threading layer and the median cost of one hand-off to its pool (``kernels.thread_pool``)."""
    pool = kernels.thread_pool()
    if pool is None:
        return None
    layer, threads, handoff_us = pool
    return {"layer": layer, "threads": threads, "handoff_us": round(handoff_us, 1)}


def machine_info(threads: int, backend: str) -> dict[str, Any]:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("numba", "torch", "cupy"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = module.__version__
    return {
        "cpu": cpu_model(),
        "cpu_id": cpu_id(),
        "threads": threads,
        "backend": backend,
        "kernels": kernels.active(),
        "blas": blas_info(),
        "numba_pool": numba_pool(),
        "versions": versions,
        "openblas_env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
    }


def gemm_peak_gflops(dtype: Any, xp: Any = np, n: int = 1536, repeat: int = 5) -> float:
    """GFLOP/s of one large square GEMM: the ceiling an im2col convolution can approach."""
    a = xp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype=dtype)
    b = a.T.copy()
    times = timed(lambda: a @ b, warmup=1, repeat=repeat, xp=xp)[1]
    return 2 * n**3 / statistics.median(times) / 1e9
