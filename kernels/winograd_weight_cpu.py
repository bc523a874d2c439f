"""Numba version of the dy transform of Winograd's weight gradient, bitwise equal to
``npresnet.functional.winograd.transform_gradient`` (which has the math and the reference).

    winograd_gradient:  dy (N, O, OH, OW) -> E (4, 4, O, N*TH*TW),  E[:, :, o, p] = A e A^T of tile p

The x tiles of the weight gradient are the forward's (``winograd_input`` in ``winograd_cpu``) and
the final G^T M G touches only O*C*16 values, so this is the one transform of its own. The
reference pads dy into a copy and makes one whole-array pass per row and column combination; this
reads each plane of dy once into a small padded buffer that stays in L1, and writes each of the
16 runs of E that the plane's tiles fill once, contiguously. Each value is the same additions and
subtractions in the same order as the reference (a missing row or column of an overhanging tile
is a zero, as in the reference's padded copy), so the results are the same bits. The planes (n, o)
are independent and split over the threads.
"""

from __future__ import annotations

import numpy as np

from ._numba import CACHE, copy_row, njit, parallel_kernel, prange


@njit(cache=CACHE, error_model="numpy", inline="always")
def _a(e0, e1):
    """A along one axis, as the reference's ``_a``."""
    return e0, e0 + e1, e0 - e1, -e1


@parallel_kernel
def winograd_gradient_kernel(dy, E, TH, TW):
    """E (4, 4, O, N*TH*TW) from dy (N, O, OH, OW); tiles hanging over the edge read zeros.

    A plane's tiles are T = TH*TW consecutive columns of each E[a, b, o]. The row transform goes
    into two small buffers, the even and the odd columns of each tile (scalar stores into L1);
    the column transform is then 16 loops over the T tiles, each reading one or two of those
    buffers and writing one contiguous run of E, which the compiler turns into vector code."""
    N, O, OH, OW = dy.shape
    T = TH * TW
    for plane in prange(N * O):
        n, o = plane // O, plane % O
        d = np.zeros((2 * TH, 2 * TW), dtype=dy.dtype)  # the plane, zero past OH and OW
        even = np.empty((4, T), dtype=dy.dtype)  # after the row transform: each tile's column 0
        odd = np.empty((4, T), dtype=dy.dtype)  # and its column 1
        for h in range(OH):
            copy_row(d[h, :OW], dy[n, o, h])
        for ty in range(TH):  # rows first: A down each column of the tile's two rows
            d0, d1 = d[2 * ty], d[2 * ty + 1]
            for tx in range(TW):
                q, j = ty * TW + tx, 2 * tx
                even[0, q], even[1, q], even[2, q], even[3, q] = _a(d0[j], d1[j])
                odd[0, q], odd[1, q], odd[2, q], odd[3, q] = _a(d0[j + 1], d1[j + 1])
        p0 = n * T
        for a in range(4):  # then A^T along each row: (even, even + odd, even - odd, -odd)
            e, f = even[a], odd[a]
            copy_row(E[a, 0, o, p0 : p0 + T], e)
            out = E[a, 1, o, p0 : p0 + T]
            for q in range(T):
                out[q] = e[q] + f[q]
            out = E[a, 2, o, p0 : p0 + T]
            for q in range(T):
                out[q] = e[q] - f[q]
            out = E[a, 3, o, p0 : p0 + T]
            for q in range(T):
                out[q] = -f[q]


def winograd_gradient(dy, tile_counts):
    """Same arguments and result as ``npresnet.functional.winograd.transform_gradient``."""
    dy = np.ascontiguousarray(dy)
    N, O = dy.shape[:2]
    TH, TW = tile_counts
    E = np.empty((4, 4, O, N * TH * TW), dtype=dy.dtype)
    winograd_gradient_kernel(dy, E, TH, TW)
    return E
