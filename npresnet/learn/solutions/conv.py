"""Convolution as one matrix product: im2col, a GEMM, and col2im for the input gradient.

With cols = im2col(x) (C*KH*KW, N*OH*OW) and W = w.reshape(F, C*KH*KW)::

    Y  = W @ cols + b[:, None]            (F, N*OH*OW), then reshaped to (N, F, OH, OW)
    dW = G @ cols.T                       G = dy as (F, N*OH*OW)
    dx = col2im(W.T @ G)                  the adjoint of im2col adds overlapping windows
    db = sum of G over its columns

The loop version's sums (exercise conv_loop) are exactly these products.
"""

import numpy as np

from npresnet.learn.layout import col2im, im2col


def conv_forward(x, w, b, s, p):
    """x (N, C, H, W), w (F, C, KH, KW), b (F,) -> y (N, F, OH, OW), cache."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = (H + 2 * p - KH) // s + 1, (W + 2 * p - KW) // s + 1
    cols = im2col(x, KH, KW, s, p)
    Y = w.reshape(F, -1) @ cols + b[:, None]
    y = Y.reshape(F, N, OH, OW).transpose(1, 0, 2, 3)
    return np.ascontiguousarray(y), (x.shape, cols, w, s, p)


def conv_backward(dy, cache):
    """dy (N, F, OH, OW) -> dx (N, C, H, W), dw (F, C, KH, KW), db (F,)."""
    x_shape, cols, w, s, p = cache
    F, _, KH, KW = w.shape
    G = dy.transpose(1, 0, 2, 3).reshape(F, -1)
    dw = (G @ cols.T).reshape(w.shape)
    dx = col2im(w.reshape(F, -1).T @ G, x_shape, KH, KW, s, p)
    db = G.sum(axis=1)
    return dx, dw, db
