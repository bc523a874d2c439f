"""Numba version of the dy transform of Winograd's weight gradient: the values of
``npresnet.functional.winograd.transform_gradient`` (which has the math and the reference), bit
for bit, laid out tiles first.

    winograd_gradient:  dy (N, O, OH, OW) -> Et (4, 4, N*TH*TW, O),  Et[a, b, p, o] = E[a, b, o, p]

Why tiles first: the engine then computes M^T = V[a, b] @ Et[a, b], a (C, P) @ (P, O) product with
both operands stored row by row and the long dimension P between them, a layout BLAS runs at
full speed for any width, where (O, P) @ (P, C)^T with two wide operands ran slower; and each tile
writes runs of O contiguous values. The x tiles are the forward's (``winograd_input`` in
``winograd_cpu``) and the final G^T M G touches only O*C*16 values, so this is the one transform
of its own.

A row of tiles (n, ty) reads the two rows of dy it covers from every plane into a small buffer
that stays in L1, channels last (a transposition, zero past OH and OW as the reference's padded
copy); the row and column transforms are then loops over o on contiguous values, which the
compiler turns into vector code. Each value is the same additions and subtractions in the same
order as the reference, so the results are the same bits. The rows of tiles are independent and
split over the threads.
"""

from __future__ import annotations

import numpy as np

from ._numba import copy_row, parallel_kernel, prange


@parallel_kernel
def winograd_gradient_kernel(dy, Et, TH, TW):
    """Et (4, 4, N*TH*TW, O) from dy (N, O, OH, OW); tiles hanging over the edge read zeros."""
    N, O, OH, OW = dy.shape
    Wp = 2 * TW
    for row in prange(N * TH):
        n, ty = row // TH, row % TH
        d = np.zeros((2, Wp, O), dtype=dy.dtype)  # rows 2*ty and 2*ty + 1 of every plane, channels last
        r = np.empty((4, Wp, O), dtype=dy.dtype)  # after the row transform
        for i in range(min(2, OH - 2 * ty)):
            di = d[i]
            for o in range(O):
                src = dy[n, o, 2 * ty + i]
                for k in range(OW):
                    di[k, o] = src[k]
        d0, d1 = d[0].ravel(), d[1].ravel()
        r0, r1, r2, r3 = r[0].ravel(), r[1].ravel(), r[2].ravel(), r[3].ravel()
        for q in range(Wp * O):  # rows first: A down each column, (d0, d0 + d1, d0 - d1, -d1)
            r0[q] = d0[q]
        for q in range(Wp * O):  # (one loop per output: one store stream each, vector code)
            r1[q] = d0[q] + d1[q]
        for q in range(Wp * O):
            r2[q] = d0[q] - d1[q]
        for q in range(Wp * O):
            r3[q] = -d1[q]
        p0 = row * TW
        for a in range(4):  # then A^T along each row of each tile: (e, e + f, e - f, -f)
            for tx in range(TW):
                e, f = r[a, 2 * tx], r[a, 2 * tx + 1]
                copy_row(Et[a, 0, p0 + tx], e)
                out = Et[a, 1, p0 + tx]
                for o in range(O):
                    out[o] = e[o] + f[o]
                out = Et[a, 2, p0 + tx]
                for o in range(O):
                    out[o] = e[o] - f[o]
                out = Et[a, 3, p0 + tx]
                for o in range(O):
                    out[o] = -f[o]


def winograd_gradient(dy, tile_counts):
    """The values of ``npresnet.functional.winograd.transform_gradient(dy, tile_counts)``, tiles
    first: Et (4, 4, N*TH*TW, O), C-contiguous (the reference's E is (4, 4, O, N*TH*TW))."""
    dy = np.ascontiguousarray(dy)
    N, O = dy.shape[:2]
    TH, TW = tile_counts
    Et = np.empty((4, 4, N * TH * TW, O), dtype=dy.dtype)
    winograd_gradient_kernel(dy, Et, TH, TW)
    return Et
