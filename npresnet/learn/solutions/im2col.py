"""im2col and col2im: every convolution window as a column, and back.

x (N, C, H, W), kernel KH x KW, stride s, zero padding p, output OH x OW; xp is x padded by p.
Column layout: one row per (c, a, e) (C*KH*KW rows, row r = (c*KH + a)*KW + e), one column per
output pixel (n, i, j) (N*OH*OW columns, column q = (n*OH + i)*OW + j)::

    cols[(c, a, e), (n, i, j)] = xp[n, c, i*s + a, j*s + e]

col2im is im2col's adjoint (its transpose, and the backward of im2col): each entry of cols is
*added* back to the pixel it was copied from. Where windows overlap (s < KH) one pixel was copied
into several columns and receives several contributions.
"""

import numpy as np


def im2col(x, kh, kw, s, p):
    """x (N, C, H, W) -> cols (C*kh*kw, N*OH*OW), OH = (H + 2p - kh) // s + 1."""
    N, C, H, W = x.shape
    OH, OW = (H + 2 * p - kh) // s + 1, (W + 2 * p - kw) // s + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    cols = np.empty((C, kh, kw, N, OH, OW), dtype=x.dtype)
    for a in range(kh):
        for e in range(kw):
            # every output pixel's (a, e) entry at once: a strided slice (N, C, OH, OW)
            patch = xp[:, :, a : a + s * (OH - 1) + 1 : s, e : e + s * (OW - 1) + 1 : s]
            cols[:, a, e] = patch.transpose(1, 0, 2, 3)
    return cols.reshape(C * kh * kw, N * OH * OW)


def col2im(cols, x_shape, kh, kw, s, p):
    """cols (C*kh*kw, N*OH*OW) -> dx (N, C, H, W): each entry added back where it came from."""
    N, C, H, W = x_shape
    OH, OW = (H + 2 * p - kh) // s + 1, (W + 2 * p - kw) // s + 1
    cols = cols.reshape(C, kh, kw, N, OH, OW)
    dxp = np.zeros((N, C, H + 2 * p, W + 2 * p), dtype=cols.dtype)
    for a in range(kh):
        for e in range(kw):
            dxp[:, :, a : a + s * (OH - 1) + 1 : s, e : e + s * (OW - 1) + 1 : s] += cols[:, a, e].transpose(1, 0, 2, 3)
    return dxp[:, :, p : p + H, p : p + W]
