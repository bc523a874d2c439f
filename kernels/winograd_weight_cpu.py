"""Numba version of the dy transform of Winograd's weight gradient, bitwise equal to
``npresnet.functional.winograd.transform_gradient`` (which has the math and the reference).

    winograd_gradient:  dy (N, O, OH, OW) -> E (4, 4, O, N*TH*TW),  E[:, :, o, p] = A e A^T of tile p

The x tiles of the weight gradient are the forward's (``winograd_input`` in ``winograd_cpu``) and
the final G^T M G touches only O*C*16 values, so this is the one transform of its own. The
reference pads dy into a copy and makes one whole-array pass per row and column combination; this
reads each plane of dy once, two rows at a time into a small buffer that stays in L1, and writes
the 16 values of each tile once. Each value is the same additions and subtractions in the same
order as the reference (a missing row or column of an overhanging tile is a zero, as in the
reference's padded copy), so the results are the same bits. The planes (n, o) are independent and
split over the threads.
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
    """E (4, 4, O, N*TH*TW) from dy (N, O, OH, OW); tiles hanging over the edge read zeros."""
    N, O, OH, OW = dy.shape
    Wp = 2 * TW
    for plane in prange(N * O):
        n, o = plane // O, plane % O
        e = np.zeros((2, Wp), dtype=dy.dtype)  # the tile row's two rows of dy, zero past OW
        r = np.empty((4, Wp), dtype=dy.dtype)  # after the row transform
        for ty in range(TH):
            for i in range(2):
                if 2 * ty + i < OH:
                    copy_row(e[i, :OW], dy[n, o, 2 * ty + i])
                else:
                    e[i, :] = 0.0
            e0, e1 = e[0], e[1]
            r0, r1, r2, r3 = r[0], r[1], r[2], r[3]
            for k in range(Wp):  # rows first: A down each column of the two rows
                r0[k], r1[k], r2[k], r3[k] = _a(e0[k], e1[k])
            p0 = (n * TH + ty) * TW
            for a in range(4):  # then A^T along each row, for the TW tiles of this row
                ra = r[a]
                v0, v1 = E[a, 0, o, p0 : p0 + TW], E[a, 1, o, p0 : p0 + TW]
                v2, v3 = E[a, 2, o, p0 : p0 + TW], E[a, 3, o, p0 : p0 + TW]
                for tx in range(TW):
                    j = 2 * tx
                    v0[tx], v1[tx], v2[tx], v3[tx] = _a(ra[j], ra[j + 1])


def winograd_gradient(dy, tile_counts):
    """Same arguments and result as ``npresnet.functional.winograd.transform_gradient``."""
    dy = np.ascontiguousarray(dy)
    N, O = dy.shape[:2]
    TH, TW = tile_counts
    E = np.empty((4, 4, O, N * TH * TW), dtype=dy.dtype)
    winograd_gradient_kernel(dy, E, TH, TW)
    return E
