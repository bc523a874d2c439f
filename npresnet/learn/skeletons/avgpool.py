"""Exercise avgpool: average pooling over k x k windows with stride s, no padding.

Shapes: x (N, C, H, W) -> y (N, C, OH, OW), OH = (H - k) // s + 1 (OW likewise); dy like y, dx like x.

Derive: y[n, c, i, j] = (1/k^2) sum_{a, b < k} x[n, c, i*s + a, j*s + b]. Which outputs does one input
x[n, c, h, w] feed, and with which coefficient? With s < k the windows overlap: an input can be in
several windows.

Check with: python -m npresnet.learn check avgpool
"""

import numpy as np  # noqa: F401  (you will need it)


def avgpool_forward(x, k, s):
    """x (N, C, H, W), window k, stride s -> (y (N, C, OH, OW), cache)."""
    # TODO
    raise NotImplementedError


def avgpool_backward(dy, cache):
    """dy (N, C, OH, OW) -> dx (N, C, H, W)."""
    # TODO: every input of window (i, j) gets its share of dy[:, :, i, j]
    raise NotImplementedError
