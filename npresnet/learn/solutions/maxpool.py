"""Max pooling over k x k windows with a stride s, no padding.

    y[n, c, i, j] = max_{a, b < k} x[n, c, i*s + a, j*s + b]

Backward: the maximum is the only input that moved y, so dy[n, c, i, j] goes to it alone. On a tie
the first maximum in the window's row-major order wins (as in PyTorch on the CPU): one input gets
the whole gradient, never every tied one. Overlapping windows (s < k) can pick the same input:
its gradients add up.
"""

import numpy as np


def maxpool_forward(x, k, s):
    """x (N, C, H, W) -> y (N, C, OH, OW) with OH = (H - k) // s + 1 (OW likewise), cache."""
    N, C, H, W = x.shape
    OH, OW = (H - k) // s + 1, (W - k) // s + 1
    y = np.zeros((N, C, OH, OW), dtype=x.dtype)
    for i in range(OH):
        for j in range(OW):
            y[:, :, i, j] = x[:, :, i * s : i * s + k, j * s : j * s + k].max(axis=(2, 3))
    return y, (x, k, s)


def maxpool_backward(dy, cache):
    """dy (N, C, OH, OW) -> dx (N, C, H, W)."""
    x, k, s = cache
    N, C, OH, OW = dy.shape
    dx = np.zeros(x.shape, dtype=dy.dtype)
    for i in range(OH):
        for j in range(OW):
            window = x[:, :, i * s : i * s + k, j * s : j * s + k].reshape(N, C, k * k)
            first = np.argmax(window, axis=2)  # argmax returns the first maximum
            a, b = np.divmod(first, k)
            n, c = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
            np.add.at(dx, (n, c, i * s + a, j * s + b), dy[:, :, i, j])
    return dx
