"""Numba transforms of Winograd's weight gradient: the values of
``npresnet.functional.winograd.transform_gradient`` and ``transform_input`` (which have the math
and the references), bit for bit, laid out tiles first.

    winograd_gradient:  dy (N, O, OH, OW) -> Et (4, 4, N*TH*TW, O),  Et[a, b, p, o] = E[a, b, o, p]
    winograd_input_t:   x (N, C, H, W) -> Vt (4, 4, N*TH*TW, C),     Vt[a, b, p, c] = V[a, b, c, p]

Why tiles first: the engine's GEMMs M = E @ V^T, (O, P) @ (P, C), then read V^T row by row and E
through its transpose, with the long dimension P between them, a layout BLAS runs at full speed
for any width, where E @ V^T with V^T a transposed view of (C, P) ran slower on wide layers; and
each tile writes runs of O or C contiguous values. (The forward keeps ``winograd_cpu``'s layout,
channel by channel: its GEMMs want V as (C, P).) The final G^T M G touches only O*C*16 values.

Each kernel first transposes what it reads into a small buffer, channels last (zero where the
references pad): ``winograd_gradient`` the two rows of dy that a row of tiles covers, a row of
tiles per work item; ``winograd_input_t`` the whole padded sample, a sample per work item, since
neighbouring rows of tiles share two rows of x. The row and column transforms are then loops over
the channels on contiguous values, one output per loop, which the compiler turns into vector code.
Each value is the same additions and subtractions in the same order as the reference, so the
results are the same bits. The work items are independent and split over the threads.
"""

from __future__ import annotations

import numpy as np

from ._numba import copy_row, parallel_kernel, prange, require_same_dtype, require_shape


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


def winograd_gradient(dy, tile_counts, out=None):
    """The values of ``npresnet.functional.winograd.transform_gradient(dy, tile_counts)``, tiles
    first: Et (4, 4, N*TH*TW, O), C-contiguous (the reference's E is (4, 4, O, N*TH*TW)); written
    into ``out`` if given (the caller's buffer, reused from chunk to chunk)."""
    dy = np.ascontiguousarray(dy)
    N, O = dy.shape[:2]
    TH, TW = tile_counts
    Et = _output("winograd_gradient", out, (4, 4, N * TH * TW, O), dy)
    winograd_gradient_kernel(dy, Et, TH, TW)
    return Et


def _output(name, out, shape, like):
    """``out`` checked (shape, dtype, C-contiguous: the kernels index it without checks), or a new array."""
    if out is None:
        return np.empty(shape, dtype=like.dtype)
    require_shape(f"{name} out", out, shape)
    require_same_dtype(f"{name} input and out", like, out)
    if not out.flags.c_contiguous:
        raise ValueError(f"npresnet.kernels: {name} writes into a C-contiguous out only")
    return out


@parallel_kernel
def winograd_input_t_kernel(x, Vt, PH, PW, TH, TW):
    """Vt (4, 4, N*TH*TW, C) from x (N, C, H, W), zero padding PH on top, PW on the left."""
    N, C, H, W = x.shape
    Wp = 2 * TW + 2
    for n in prange(N):
        d = np.zeros((2 * TH + 2, Wp, C), dtype=x.dtype)  # the padded sample, channels last
        r = np.empty((4, Wp, C), dtype=x.dtype)  # a row of tiles after the row transform
        for c in range(C):
            for h in range(H):
                src, dst = x[n, c, h], d[PH + h, PW : PW + W]
                for k in range(W):
                    dst[k, c] = src[k]
        r0, r1, r2, r3 = r[0].ravel(), r[1].ravel(), r[2].ravel(), r[3].ravel()
        for ty in range(TH):
            d0, d1, d2, d3 = d[2 * ty].ravel(), d[2 * ty + 1].ravel(), d[2 * ty + 2].ravel(), d[2 * ty + 3].ravel()
            for q in range(Wp * C):  # rows first: B^T down each column, (d0 - d2, d1 + d2, d2 - d1, d1 - d3)
                r0[q] = d0[q] - d2[q]
            for q in range(Wp * C):
                r1[q] = d1[q] + d2[q]
            for q in range(Wp * C):
                r2[q] = d2[q] - d1[q]
            for q in range(Wp * C):
                r3[q] = d1[q] - d3[q]
            p0 = (n * TH + ty) * TW
            for a in range(4):  # then B along each row of each tile
                for tx in range(TW):
                    j = 2 * tx
                    e0, e1, e2, e3 = r[a, j], r[a, j + 1], r[a, j + 2], r[a, j + 3]
                    out = Vt[a, 0, p0 + tx]
                    for c in range(C):
                        out[c] = e0[c] - e2[c]
                    out = Vt[a, 1, p0 + tx]
                    for c in range(C):
                        out[c] = e1[c] + e2[c]
                    out = Vt[a, 2, p0 + tx]
                    for c in range(C):
                        out[c] = e2[c] - e1[c]
                    out = Vt[a, 3, p0 + tx]
                    for c in range(C):
                        out[c] = e1[c] - e3[c]


def winograd_input_t(x, padding, tile_counts, out=None):
    """The values of ``npresnet.functional.winograd.transform_input(x, padding, tile_counts)``,
    tiles first: Vt (4, 4, N*TH*TW, C), C-contiguous (the reference's V is (4, 4, C, N*TH*TW));
    written into ``out`` if given."""
    x = np.ascontiguousarray(x)
    N, C = x.shape[:2]
    TH, TW = tile_counts
    Vt = _output("winograd_input_t", out, (4, 4, N * TH * TW, C), x)
    winograd_input_t_kernel(x, Vt, padding[0], padding[1], TH, TW)
    return Vt
