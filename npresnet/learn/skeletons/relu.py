"""Exercise relu: y = max(x, 0), elementwise.

Shapes: x of any shape; y and dy the same shape.

Derive: y[i] depends on x[i] alone, with slope 1 where x[i] > 0 and 0 where x[i] < 0 (the grader keeps
x away from the kink at 0). What must the cache remember to know the slope in the backward?

Check with: python -m npresnet.learn check relu
"""

import numpy as np  # noqa: F401  (you will need it)


def relu_forward(x):
    """x -> (y, cache), y = max(x, 0)."""
    # TODO
    raise NotImplementedError


def relu_backward(dy, cache):
    """dy (the shape of x) -> dx."""
    # TODO: dx = dy times the slope of max(x, 0) at x
    raise NotImplementedError
