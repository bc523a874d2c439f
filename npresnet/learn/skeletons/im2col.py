"""Exercise im2col: every convolution window as a column (im2col), and its adjoint (col2im).

Shapes: x (N, C, H, W), kernel kh x kw, stride s, zero padding p, OH = (H + 2p - kh) // s + 1
(OW likewise). cols is (C*kh*kw, N*OH*OW): row (c*kh + a)*kw + e, column (n*OH + i)*OW + j holds
    cols[row, column] = xp[n, c, i*s + a, j*s + e]        (xp: x zero-padded by p)

Derive: im2col is linear, so its backward is its transpose (adjoint), col2im: each entry of the
gradient of cols goes back, *added*, to the pixel it was copied from. Which pixels were copied into
more than one column?

Check with: python -m npresnet.learn check im2col (col2im is checked as im2col's backward)
"""

import numpy as np  # noqa: F401  (you will need it)


def im2col(x, kh, kw, s, p):
    """x (N, C, H, W) -> cols (C*kh*kw, N*OH*OW)."""
    # TODO: one strided slice of the padded x per kernel offset (a, e), or plain loops to start
    raise NotImplementedError


def col2im(cols, x_shape, kh, kw, s, p):
    """cols (C*kh*kw, N*OH*OW), x_shape (N, C, H, W) -> dx (N, C, H, W)."""
    # TODO: put every entry back where im2col took it from
    raise NotImplementedError
