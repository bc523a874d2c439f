"""Numba ReLU backward, bitwise equal to ``npresnet.functional.activation.relu_backward``.

    dx[i] = dout[i] if y[i] > 0 else 0          (y = the cached ReLU output; y > 0 exactly where x > 0)

NumPy needs two passes for this (``y > 0`` into a boolean array, then ``where``); the kernel reads
y and dout once and writes dx once. It is a plain serial loop that LLVM vectorises: the same loop
inside a ``prange`` over blocks did not vectorise and ran 4.6x slower at one thread (ResNet-50-sized
(16, 256, 56, 56) float32: serial 6.0 ms, prange 28 ms, NumPy ``where`` 48 ms, ReLU forward 5 ms).
"""

from __future__ import annotations

import numpy as np

from ._numba import CACHE, njit, require_same_dtype, require_shape


@njit(cache=CACHE, error_model="numpy")
def relu_backward_kernel(dout, y, dx, zero):
    """All three 1-D and C-contiguous; ``zero`` is a 0 of their dtype (keeps the loop in one type)."""
    for t in range(dx.shape[0]):
        dx[t] = dout[t] if y[t] > zero else zero


def relu_backward(dout, y):
    """Drop-in for ``functional.activation.relu_backward(dout, y)`` on NumPy float arrays."""
    require_shape("relu_backward dout", dout, y.shape)
    require_same_dtype("relu_backward dout and y", dout, y)
    dout, y = np.ascontiguousarray(dout), np.ascontiguousarray(y)
    dx = np.empty_like(dout)
    relu_backward_kernel(dout.reshape(-1), y.reshape(-1), dx.reshape(-1), dout.dtype.type(0))
    return dx
