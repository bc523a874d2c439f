"""Convolution written as loops (cross-correlation, as in PyTorch: no kernel flip).

x (N, C, H, W), w (F, C, KH, KW), b (F,), stride s, zero padding p; xp is x padded by p::

    y[n, f, i, j] = b[f] + sum_{c, a, e} w[f, c, a, e] * xp[n, c, i*s + a, j*s + e]

Backward, from the same sum read the other way (g = dL/dy)::

    dw[f, c, a, e]  = sum_{n, i, j} g[n, f, i, j] * xp[n, c, i*s + a, j*s + e]
    dxp[n, c, i*s + a, j*s + e] += g[n, f, i, j] * w[f, c, a, e]     (then cut the padding off)
    db[f] = sum_{n, i, j} g[n, f, i, j]
"""

import numpy as np


def conv_forward_loop(x, w, b, s, p):
    """x (N, C, H, W), w (F, C, KH, KW), b (F,) -> y (N, F, OH, OW), OH = (H + 2p - KH) // s + 1."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = (H + 2 * p - KH) // s + 1, (W + 2 * p - KW) // s + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    y = np.zeros((N, F, OH, OW), dtype=x.dtype)
    for n in range(N):
        for f in range(F):
            for i in range(OH):
                for j in range(OW):
                    window = xp[n, :, i * s : i * s + KH, j * s : j * s + KW]
                    y[n, f, i, j] = np.sum(window * w[f]) + b[f]
    return y, (x, w, s, p)


def conv_backward_loop(dy, cache):
    """dy (N, F, OH, OW) -> dx (N, C, H, W), dw (F, C, KH, KW), db (F,)."""
    x, w, s, p = cache
    N, F, OH, OW = dy.shape
    _, _, KH, KW = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for n in range(N):
        for f in range(F):
            for i in range(OH):
                for j in range(OW):
                    g = dy[n, f, i, j]
                    dw[f] += g * xp[n, :, i * s : i * s + KH, j * s : j * s + KW]
                    dxp[n, :, i * s : i * s + KH, j * s : j * s + KW] += g * w[f]
    dx = dxp[:, :, p : p + x.shape[2], p : p + x.shape[3]]
    db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db
