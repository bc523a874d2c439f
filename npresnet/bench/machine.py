"""The machine a benchmark ran on: CPU, BLAS library, versions, and the single-GEMM peak."""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
from typing import Any

import numpy as np

from .. import kernels
from ..engine.runtime import cpu_id, cpu_model
from .timing import timed

__all__ = ["blas_info", "cpu_label", "cpu_model", "file_label", "gemm_peak_gflops", "machine_info", "numba_pool"]


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


def cpu_label(cpu: str, identity: dict[str, Any] | None) -> str:
    """How a report names its CPU: the model name, then what tells two CPUs of that name apart
    (``runtime.cpu_id``), e.g. "AMD EPYC (family 25 model 17, L2 1024K, L3 32768K)"."""
    identity = identity or {}
    parts = []
    if "family" in identity and "model" in identity:
        parts.append(f"family {identity['family']} model {identity['model']}")
    caches = identity.get("caches", {})
    parts += [f"{level} {caches[f'{level} unified']}" for level in ("L2", "L3") if f"{level} unified" in caches]
    return f"{cpu} ({', '.join(parts)})" if parts else cpu


def file_label(cpu: str | None = None, identity: dict[str, Any] | None = None) -> str:
    """The CPU part of a recorded run's file name (``bench/run.sh``): the model name in lower case
    with dashes, then family and model, e.g. "amd-epyc-f25-m17" (Zen 4) or "amd-epyc-f26-m2"
    (Zen 5): both call themselves "AMD EPYC". Defaults: this machine."""
    cpu = cpu_model() if cpu is None else cpu
    identity = cpu_id() if identity is None else identity
    name = re.sub(r"\([^)]*\)", "", cpu.lower())
    name = re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "cpu"
    if "family" in identity and "model" in identity:
        name += f"-f{identity['family']}-m{identity['model']}"
    return name


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
