"""Numba versions of the two data transforms of the Winograd F(2x2, 3x3) convolution, bitwise equal
to ``npresnet.functional.winograd`` (which has the math, the matrices and the reference).

    winograd_input:   x (N, C, H, W) -> V (4, 4, C, N*TH*TW),  V[:, :, c, p] = B^T d B of tile p
    winograd_output:  M (4, 4, O, N*TH*TW) -> y (N, O, OH, OW), the 2x2 tile at p = A^T M[:, :, o, p] A

The reference builds a padded copy of x and then makes one whole-array pass per row and per column
combination (twelve passes over data four times the input's size for V); these read each input
plane once, padded into a small buffer that stays in L1, and write the 16 values of each tile once.
Each value is the same additions and subtractions in the same order as the reference, so the
results are the same bits. The planes, (n, c) for the input and (n, o) for the output, are
independent and split over the threads.
"""

from __future__ import annotations

import numpy as np

from ._numba import CACHE, copy_row, njit, parallel_kernel, prange, require_same_dtype, require_shape


@njit(cache=CACHE, error_model="numpy", inline="always")
def _bt(d0, d1, d2, d3):
    """B^T along one axis, as the reference's ``_bt``."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(cache=CACHE, error_model="numpy", inline="always")
def _at(m0, m1, m2, m3):
    """A^T along one axis, as the reference's ``_at``."""
    return m0 + m1 + m2, m1 - m2 - m3


@parallel_kernel
def winograd_input_kernel(x, V, PH, PW, TH, TW):
    """V (4, 4, C, N*TH*TW) from x (N, C, H, W), zero padding PH on top, PW on the left."""
    N, C, H, W = x.shape
    Wp = 2 * TW + 2
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        d = np.zeros((2 * TH + 2, Wp), dtype=x.dtype)  # the padded plane
        r = np.empty((4, Wp), dtype=x.dtype)  # one row of tiles after the row transform
        for h in range(H):
            copy_row(d[PH + h, PW : PW + W], x[n, c, h])
        for ty in range(TH):
            d0, d1, d2, d3 = d[2 * ty], d[2 * ty + 1], d[2 * ty + 2], d[2 * ty + 3]
            r0, r1, r2, r3 = r[0], r[1], r[2], r[3]
            for k in range(Wp):  # rows first: B^T down each column of the four rows
                r0[k], r1[k], r2[k], r3[k] = _bt(d0[k], d1[k], d2[k], d3[k])
            p0 = (n * TH + ty) * TW
            for a in range(4):  # then B along each row, for the TW tiles of this row
                ra = r[a]
                v0, v1 = V[a, 0, c, p0 : p0 + TW], V[a, 1, c, p0 : p0 + TW]
                v2, v3 = V[a, 2, c, p0 : p0 + TW], V[a, 3, c, p0 : p0 + TW]
                for tx in range(TW):
                    j = 2 * tx
                    v0[tx], v1[tx], v2[tx], v3[tx] = _bt(ra[j], ra[j + 1], ra[j + 2], ra[j + 3])


@parallel_kernel
def winograd_output_kernel(M, y, TH, TW):
    """y (N, O, OH, OW) from M (4, 4, O, N*TH*TW); tiles hanging over the edge are cut."""
    N, O, OH, OW = y.shape
    for plane in prange(N * O):
        n, o = plane // O, plane % O
        s = np.empty((2, 4, TW), dtype=M.dtype)  # one row of tiles after A^T down the columns
        wide = np.empty((2, 2 * TW), dtype=M.dtype)  # its two output rows, overhang included
        for ty in range(TH):
            p0 = (n * TH + ty) * TW
            for b in range(4):  # rows first: A^T over a, for each column b of the tiles
                m0, m1 = M[0, b, o, p0 : p0 + TW], M[1, b, o, p0 : p0 + TW]
                m2, m3 = M[2, b, o, p0 : p0 + TW], M[3, b, o, p0 : p0 + TW]
                s0, s1 = s[0, b], s[1, b]
                for tx in range(TW):
                    s0[tx], s1[tx] = _at(m0[tx], m1[tx], m2[tx], m3[tx])
            for i in range(2):  # then A along each row
                si, out = s[i], wide[i]
                for tx in range(TW):
                    out[2 * tx], out[2 * tx + 1] = _at(si[0, tx], si[1, tx], si[2, tx], si[3, tx])
            for i in range(min(2, OH - 2 * ty)):
                copy_row(y[n, o, 2 * ty + i], wide[i])  # copies OW values


def winograd_input(x, padding, tile_counts):
    """Same arguments and result as ``npresnet.functional.winograd.transform_input``."""
    x = np.ascontiguousarray(x)
    N, C = x.shape[:2]
    TH, TW = tile_counts
    V = np.empty((4, 4, C, N * TH * TW), dtype=x.dtype)
    winograd_input_kernel(x, V, padding[0], padding[1], TH, TW)
    return V


def winograd_output(M, N, out, y=None):
    """Same arguments and result as ``npresnet.functional.winograd.transform_output`` (written into
    ``y``, C-contiguous, if given: the caller's output, with no copy afterwards)."""
    M = np.ascontiguousarray(M)
    OH, OW = out
    if y is None:
        y = np.empty((N, M.shape[2], OH, OW), dtype=M.dtype)
    require_shape("winograd_output y", y, (N, M.shape[2], OH, OW))
    require_same_dtype("winograd_output M and y", M, y)
    if not y.flags.c_contiguous:
        raise ValueError("npresnet.kernels: winograd_output writes into a C-contiguous y only")
    winograd_output_kernel(M, y, -(-OH // 2), -(-OW // 2))
    return y
