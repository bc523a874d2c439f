"""Linear layer: y = x @ w.T + b, with w of shape (M, D) like PyTorch.

Backward, with g = dL/dy (N, M). Each y[n, m] = sum_d x[n, d] w[m, d] + b[m], so::

    dx[n, d] = sum_m g[n, m] w[m, d]   ->  dx = g @ w       (N, M) @ (M, D)
    dw[m, d] = sum_n g[n, m] x[n, d]   ->  dw = g.T @ x     (M, N) @ (N, D)
    db[m]    = sum_n g[n, m]
"""

import numpy as np


def linear_forward(x, w, b):
    """x (N, D), w (M, D), b (M,) -> y (N, M), cache."""
    y = x @ w.T + b
    return y, (x, w)


def linear_backward(dy, cache):
    """dy (N, M) -> dx (N, D), dw (M, D), db (M,)."""
    x, w = cache
    dx = dy @ w
    dw = dy.T @ x
    db = np.sum(dy, axis=0)
    return dx, dw, db
