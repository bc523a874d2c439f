"""The engine: how npresnet computes, fast on this machine, what ``npresnet.functional`` defines.

``npresnet.functional`` is the textbook: each op's forward and backward as the math, by plain
NumPy (or CuPy) references. Where a faster algorithm can compute the same thing, the textbook has
exactly one line that hands the work to this package, and every algorithm here equals the
reference to rounding (``fixed`` mode: the same bits on every run at a given thread count).

``conv``
    the convolution's algorithms: im2col + GEMM in cache-sized chunks, the batch split per thread,
    the direct 3x3 kernels, Winograd F(2x2, 3x3);
``conv_dispatch``
    which algorithm runs for a layer's shape: the candidates and the fixed rule;
``autotune``
    the measured choice among the candidates (``set_mode("measure")``) and its on-disk cache;
``batch_threads``
    the batch split: each thread computes its own slice of a layer's samples;
``runtime``
    thread counts for BLAS, Numba and torch together, OpenBLAS's idle spin, glibc's allocator.

The Numba kernels themselves live in ``npresnet.kernels``; every ``NPRESNET_*`` environment
variable is read in ``npresnet.settings``. The names users call are re-exported here::

    from npresnet import engine
    engine.set_num_threads(2)
    engine.autotune.set_mode("measure")
"""

from . import autotune, batch_threads, conv, conv_dispatch, runtime
from .runtime import default_threads, set_num_threads, tune_allocator

__all__ = [
    "autotune",
    "batch_threads",
    "conv",
    "conv_dispatch",
    "default_threads",
    "runtime",
    "set_num_threads",
    "tune_allocator",
]
