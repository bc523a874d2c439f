"""Average pooling over k x k windows with a stride s, no padding.

    y[n, c, i, j] = (1/k^2) sum_{a, b < k} x[n, c, i*s + a, j*s + b]

Backward: every input in window (i, j) gets dy[n, c, i, j] / k^2. When s < k the windows overlap
and an input collects a share from each window that covers it, so the shares are added (+=).
"""

import numpy as np


def avgpool_forward(x, k, s):
    """x (N, C, H, W) -> y (N, C, OH, OW) with OH = (H - k) // s + 1 (OW likewise), cache."""
    N, C, H, W = x.shape
    OH, OW = (H - k) // s + 1, (W - k) // s + 1
    y = np.zeros((N, C, OH, OW), dtype=x.dtype)
    for i in range(OH):
        for j in range(OW):
            y[:, :, i, j] = x[:, :, i * s : i * s + k, j * s : j * s + k].mean(axis=(2, 3))
    return y, (x.shape, k, s)


def avgpool_backward(dy, cache):
    """dy (N, C, OH, OW) -> dx (N, C, H, W)."""
    x_shape, k, s = cache
    OH, OW = dy.shape[2:]
    dx = np.zeros(x_shape, dtype=dy.dtype)
    for i in range(OH):
        for j in range(OW):
            dx[:, :, i * s : i * s + k, j * s : j * s + k] += dy[:, :, i : i + 1, j : j + 1] / (k * k)
    return dx
