"""Launching npresnet's Numba CUDA kernels on CuPy arrays (imported only once a CUDA kernel is asked for).

Every CUDA kernel in ``cuda_im2col`` and ``cuda_pool`` is written the same way: one thread per
element of the array it *writes* (a gather, never a scatter), visited with a grid-stride loop::

    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        ...decode t into (n, c, h, w) or (c, i, j, n, oh, ow) and compute that one element...

so no two threads write the same element, there are no atomics, and the result does not depend on
the launch configuration or the scheduling order: it is deterministic.

Arrays cross from CuPy to Numba through ``__cuda_array_interface__`` without a copy. A plain kernel
launch would synchronise the host with the stream CuPy exported (Numba's default,
``NUMBA_CUDA_ARRAY_INTERFACE_SYNC``); :func:`launch` avoids that stall by wrapping each array with
``cuda.as_cuda_array(a, sync=False)`` and launching *on CuPy's current stream*, so the kernel is
ordered after the CuPy work that produced its inputs and before the work that reads its outputs.
It also selects the array's device.

Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set before ``numba.cuda`` is imported)
the same kernels run on the CPU, one Python thread per CUDA thread, on NumPy arrays: this is how
the test suite runs them without a GPU. The simulator launches few, small blocks
(:data:`THREADS`, :data:`MAX_BLOCKS`) so that it stays fast and the grid-stride loops really loop.
"""

from __future__ import annotations

from typing import Any

from numba import cuda

from ._settings import settings


def _simulator_enabled() -> bool:
    config: Any = getattr(cuda, "config", None)  # numba-cuda keeps its own config module
    if config is None or not hasattr(config, "ENABLE_CUDASIM"):
        import numba

        config = numba.config
    return bool(config.ENABLE_CUDASIM)


#: Keep compiled kernels on disk (kernels/__pycache__), as the CPU kernels do; NPRESNET_NUMBA_CACHE=0 turns it off.
CACHE = settings.NUMBA_CACHE


def kernel(function: Any) -> Any:
    """``@cuda.jit`` (no fastmath: results must match the NumPy references bit for bit), cached on disk.

    Compiled lazily, on the first launch, once per argument types (float32 / float64).
    """
    return cuda.jit(cache=CACHE and not SIMULATOR)(function)


#: True when the kernels run in Numba's CUDA simulator (on NumPy arrays, on the CPU).
SIMULATOR = _simulator_enabled()
#: Threads per block, and the most blocks one launch uses (the grid-stride loops cover the rest).
THREADS = 32 if SIMULATOR else 256
MAX_BLOCKS = 3 if SIMULATOR else 65535


def grid_for(total: int) -> tuple[int, int]:
    """(blocks, threads per block) for ``total`` independent elements (total >= 1)."""
    blocks = min(MAX_BLOCKS, -(-total // THREADS))
    return blocks, THREADS


def launch(kernel: Any, total: int, *args: Any) -> None:
    """Run ``kernel[blocks, threads](*args)`` over ``total`` elements, on CuPy's current stream.

    Array arguments are CuPy arrays on a GPU (NumPy arrays in the simulator); the other arguments
    are Python ints or NumPy scalars. Returns without waiting for the kernel (CUDA is asynchronous;
    anything that reads the result on the same stream is ordered after it).
    """
    if total == 0:
        return
    blocks, threads = grid_for(total)
    if SIMULATOR:
        kernel[blocks, threads](*args)
        return
    import cupy  # a CuPy array reached us, so CuPy is importable

    device_arrays = [a for a in args if hasattr(a, "__cuda_array_interface__")]
    with cuda.gpus[device_arrays[0].device.id]:
        stream = cuda.external_stream(cupy.cuda.get_current_stream().ptr)
        wrapped = [cuda.as_cuda_array(a, sync=False) if hasattr(a, "__cuda_array_interface__") else a for a in args]
        kernel[blocks, threads, stream](*wrapped)


def array_module(x: Any) -> Any:
    """numpy or cupy, from the array (outputs are allocated where the input lives)."""
    from . import is_cupy_array

    if is_cupy_array(x):
        import cupy

        return cupy
    import numpy

    return numpy


def require_float(name: str, x: Any) -> None:
    if x.dtype.kind != "f" or x.dtype.itemsize not in (4, 8):
        raise TypeError(f"npresnet.kernels: CUDA {name} expects a float32 or float64 array, got {x.dtype}")
