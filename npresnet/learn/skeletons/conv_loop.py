"""Exercise conv_loop: a convolution written as plain loops (no im2col yet).

Shapes: x (N, C, H, W), w (F, C, KH, KW), b (F,), stride s, zero padding p ->
y (N, F, OH, OW) with OH = (H + 2p - KH) // s + 1 (OW likewise). dy like y.

Derive: with xp = x zero-padded by p (np.pad),
    y[n, f, i, j] = b[f] + sum_{c, a, e} w[f, c, a, e] * xp[n, c, i*s + a, j*s + e]
(cross-correlation, as in PyTorch: no kernel flip). Read this sum with w as the variable to get dw,
with xp as the variable to get dxp (then cut the padding off), and with b to get db.

Check with: python -m npresnet.learn check conv_loop
"""

import numpy as np  # noqa: F401  (you will need it)


def conv_forward_loop(x, w, b, s, p):
    """x (N, C, H, W), w (F, C, KH, KW), b (F,), stride s, padding p -> (y (N, F, OH, OW), cache)."""
    # TODO: loop over n, f, i, j (one window times one filter per output)
    raise NotImplementedError


def conv_backward_loop(dy, cache):
    """dy (N, F, OH, OW) -> (dx (N, C, H, W), dw (F, C, KH, KW), db (F,))."""
    # TODO: the same loops; each dy[n, f, i, j] adds to dw[f] and to a window of dxp
    raise NotImplementedError
