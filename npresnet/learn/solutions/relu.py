"""ReLU: y = max(x, 0), elementwise.

Backward: dy/dx is 1 where x > 0 and 0 elsewhere, so dx = dy * [x > 0].
"""

import numpy as np


def relu_forward(x):
    """x (any shape) -> y (same shape), cache."""
    y = np.maximum(x, 0)
    return y, x


def relu_backward(dy, cache):
    """dy (the shape of x) -> dx."""
    x = cache
    return dy * (x > 0)
