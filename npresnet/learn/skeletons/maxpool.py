"""Exercise maxpool: max pooling over k x k windows with stride s, no padding.

Shapes: x (N, C, H, W) -> y (N, C, OH, OW), OH = (H - k) // s + 1 (OW likewise); dy like y, dx like x.

Derive: y[n, c, i, j] = max over the window. Only the input that won moved y. On a tie the first
maximum in the window's row-major order wins (as np.argmax picks it, and PyTorch on the CPU): it
alone gets the gradient. Overlapping windows (s < k) can pick the same input.

Check with: python -m npresnet.learn check maxpool
"""

import numpy as np  # noqa: F401  (you will need it)


def maxpool_forward(x, k, s):
    """x (N, C, H, W), window k, stride s -> (y (N, C, OH, OW), cache)."""
    # TODO
    raise NotImplementedError


def maxpool_backward(dy, cache):
    """dy (N, C, OH, OW) -> dx (N, C, H, W)."""
    # TODO: route each dy[n, c, i, j] to the input that won window (i, j)
    raise NotImplementedError
