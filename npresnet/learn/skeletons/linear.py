"""Exercise linear: the fully connected layer y = x @ w.T + b (w in PyTorch's (M, D) layout).

Shapes: x (N, D), w (M, D), b (M,), y (N, M); dy, the upstream gradient dL/dy, is (N, M).

Derive: write one element, y[n, m] = sum_d x[n, d] w[m, d] + b[m], and ask for each of x, w, b:
which elements of y does it appear in, and with what coefficient? Sum dy over those. Then write the
sums as matrix products, and check them on a square w (where a wrong product has the right shape).

Check with: python -m npresnet.learn check linear
"""

import numpy as np  # noqa: F401  (you will need it)


def linear_forward(x, w, b):
    """x (N, D), w (M, D), b (M,) -> (y (N, M), cache). The cache is whatever backward needs."""
    # TODO: compute y, and keep what the backward needs in the cache
    raise NotImplementedError


def linear_backward(dy, cache):
    """dy (N, M) -> (dx (N, D), dw (M, D), db (M,))."""
    # TODO: dx[n, d] = sum_m dy[n, m] * ..., dw[m, d] = sum_n ..., db[m] = sum_n ...
    raise NotImplementedError
