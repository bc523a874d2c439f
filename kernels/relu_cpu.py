"""Numba ReLU backward, bitwise equal to ``npresnet.functional.activation.relu_backward``.

    dx[i] = dout[i] if y[i] > 0 else 0          (y = the cached ReLU output; y > 0 exactly where x > 0)

NumPy needs two passes for this (``y > 0`` into a boolean array, then ``where``); the kernel reads
y and dout once and writes dx once, in parallel over blocks of the flattened arrays.
"""

from __future__ import annotations

import numpy as np

from ._numba import parallel_kernel, prange, require_same_dtype, require_shape

_BLOCK = 1 << 14


@parallel_kernel
def relu_backward_kernel(dout, y, dx):
    """All three 1-D and C-contiguous."""
    size = dx.shape[0]
    for block in prange((size + _BLOCK - 1) // _BLOCK):
        start = block * _BLOCK
        stop = min(start + _BLOCK, size)
        for t in range(start, stop):
            dx[t] = dout[t] if y[t] > 0 else 0


def relu_backward(dout, y):
    """Drop-in for ``functional.activation.relu_backward(dout, y)`` on NumPy float arrays."""
    require_shape("relu_backward dout", dout, y.shape)
    require_same_dtype("relu_backward dout and y", dout, y)
    dout, y = np.ascontiguousarray(dout), np.ascontiguousarray(y)
    dx = np.empty_like(dout)
    relu_backward_kernel(dout.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx
