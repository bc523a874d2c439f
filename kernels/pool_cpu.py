"""Numba max and average pooling, bitwise equal to ``npresnet.functional.pooling``.

Notation: x (N, C, H, W), window KH x KW, stride SH x SW, padding PH x PW, dilation DH x DW,
output OH x OW. Window (oh, ow) with offset (i, j) reads ``x[n, c, oh*SH + i*DH - PH, ow*SW + j*DW - PW]``.
Padding (and ceil_mode's extra bottom/right padding) is a bounds check, never a padded copy:
a -inf cell never wins a max and a 0 cell adds nothing to a sum, so skipping them is exact.
Every kernel is parallel over the N*C planes: each thread owns its output plane, so no races.

Max pooling visits each window's offsets in row-major (i, j) order and keeps the first maximum (strict ``>``);
a NaN always wins, as in the reference (``(v > best) | isnan(v)``), so with several NaNs the last
one is recorded. argmax is the offset k = i*KW + j inside the window (int32).

The forward kernels work a whole output row at a time: for offset (i, j), the outputs ow in
[lo, hi) (``valid_range``) read one strided slice of input row oh*SH + i*DH - PH, so the inner
loops run over 1-D views and vectorise (see ``_numba``).

Backward, exact summation order. The reference adds dy into dx one offset k at a time, so a pixel
covered by several windows sums their contributions in ascending k. Average-pool backward keeps
that loop order (offset outermost). Max-pool backward scatters each dy once: for a fixed pixel a
larger row offset i means a smaller oh (and, on one row, a larger j a smaller ow), so ascending k
is *descending* (oh, ow), and visiting the windows from the last to the first reproduces the
reference's sums bit for bit in a single pass.

Average pooling sums each window in (i, j) order in the input dtype (as the reference does), then
divides by the caller's (OH, OW) divisor, which encodes count_include_pad / divisor_override.

Outputs are allocated by NumPy (huge pages for big arrays) and filled by the kernels; see im2col_cpu.
"""

from __future__ import annotations

import numpy as np

from ._numba import (
    CACHE,
    add_row,
    fill_row,
    njit,
    parallel_kernel,
    prange,
    require_shape,
    valid_range,
)


@njit(cache=CACHE, error_model="numpy", inline="always")
def _max_row(best, best_k, src, k):
    """One window offset k for a row of windows: take src[t] where it beats best[t] (or is NaN)."""
    for t in range(best.shape[0]):
        v = src[t]
        b = best[t]
        wins = (v > b) | (v != v)  # strict '>': the first maximum keeps its place; NaN always wins
        best[t] = v if wins else b
        best_k[t] = k if wins else best_k[t]


@parallel_kernel
def maxpool_forward_kernel(x, y, argmax, KH, KW, SH, SW, PH, PW, DH, DW):
    """Fill y (N, C, OH, OW) with the window maxima of x (N, C, H, W) and argmax (int32) with their offsets.

    A whole output row at a time, offsets k = i*KW + j in increasing order, as the reference does.
    """
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    for plane in prange(N * C):
        n = plane // C
        c = plane % C
        for oh in range(OH):
            best, best_k = y[n, c, oh], argmax[n, c, oh]
            fill_row(best, -np.inf)
            fill_row(best_k, 0)
            for i in range(KH):
                h = oh * SH + i * DH - PH
                if h < 0 or h >= H:
                    continue
                for j in range(KW):
                    lo, hi = valid_range(j * DW - PW, SW, W, OW)
                    if lo == hi:
                        continue
                    start = lo * SW + j * DW - PW
                    if SW == 1:
                        _max_row(best[lo:hi], best_k[lo:hi], x[n, c, h, start : start + hi - lo], i * KW + j)
                    else:
                        _max_row(
                            best[lo:hi],
                            best_k[lo:hi],
                            x[n, c, h, start : start + (hi - lo - 1) * SW + 1 : SW],
                            i * KW + j,
                        )


@parallel_kernel
def maxpool_backward_kernel(dout, argmax, dx, KH, KW, SH, SW, PH, PW, DH, DW):
    """Set dx (N, C, H, W) from dout, argmax (N, C, OH, OW): each dy goes to its window's winner."""
    N, C, OH, OW = dout.shape
    H, W = dx.shape[2], dx.shape[3]
    for plane in prange(N * C):
        n = plane // C
        c = plane % C
        dx[n, c] = 0
        for oh in range(OH - 1, -1, -1):  # last window first = reference's order (module doc)
            for ow in range(OW - 1, -1, -1):
                k = argmax[n, c, oh, ow]
                h = oh * SH + (k // KW) * DH - PH
                w = ow * SW + (k % KW) * DW - PW
                if 0 <= h < H and 0 <= w < W:  # a winner in the padding has nowhere to go
                    dx[n, c, h, w] += dout[n, c, oh, ow]


@njit(cache=CACHE, error_model="numpy", inline="always")
def _divide_row(dst, divisor):
    for t in range(dst.shape[0]):
        dst[t] /= divisor[t]


@njit(cache=CACHE, error_model="numpy", inline="always")
def _add_quotient_row(dst, numerator, divisor):
    for t in range(dst.shape[0]):
        dst[t] += numerator[t] / divisor[t]


@parallel_kernel
def avgpool_forward_kernel(x, divisor, y, KH, KW, SH, SW, PH, PW, DH, DW):
    """Fill y (N, C, OH, OW) with window sum / divisor (OH, OW) of x (N, C, H, W).

    Each output row accumulates its window rows in offset order (i, j), in x's dtype, from 0.
    """
    N, C, H, W = x.shape
    OH, OW = divisor.shape
    for plane in prange(N * C):
        n = plane // C
        c = plane % C
        for oh in range(OH):
            total = y[n, c, oh]
            fill_row(total, 0)
            for i in range(KH):
                h = oh * SH + i * DH - PH
                if h < 0 or h >= H:
                    continue
                for j in range(KW):
                    lo, hi = valid_range(j * DW - PW, SW, W, OW)
                    if lo == hi:
                        continue
                    start = lo * SW + j * DW - PW
                    if SW == 1:
                        add_row(total[lo:hi], x[n, c, h, start : start + hi - lo])
                    else:
                        add_row(total[lo:hi], x[n, c, h, start : start + (hi - lo - 1) * SW + 1 : SW])
            _divide_row(total, divisor[oh])


@parallel_kernel
def avgpool_backward_kernel(dout, divisor, dx, KH, KW, SH, SW, PH, PW, DH, DW):
    """Set dx (N, C, H, W) from dout (N, C, OH, OW): dy / divisor to every cell of the window.

    Offset (i, j) outermost, as in the reference, so each pixel sums its shares in the same order.
    """
    N, C, OH, OW = dout.shape
    H, W = dx.shape[2], dx.shape[3]
    for plane in prange(N * C):
        n = plane // C
        c = plane % C
        dx[n, c] = 0
        for i in range(KH):
            for j in range(KW):
                lo, hi = valid_range(j * DW - PW, SW, W, OW)
                if lo == hi:
                    continue
                start = lo * SW + j * DW - PW
                for oh in range(OH):
                    h = oh * SH + i * DH - PH
                    if h < 0 or h >= H:
                        continue
                    share_num, share_den = dout[n, c, oh, lo:hi], divisor[oh, lo:hi]
                    if SW == 1:
                        _add_quotient_row(dx[n, c, h, start : start + hi - lo], share_num, share_den)
                    else:
                        _add_quotient_row(
                            dx[n, c, h, start : start + (hi - lo - 1) * SW + 1 : SW], share_num, share_den
                        )


def maxpool2d_forward(x, geom):
    """x (N, C, H, W), a PoolGeometry -> (y (N, C, OH, OW), argmax int32 (N, C, OH, OW))."""
    x = np.ascontiguousarray(x)
    if x.ndim != 4:
        raise ValueError(f"npresnet.kernels: max_pool2d expects an (N, C, H, W) array, got shape {x.shape}")
    y = np.empty((*x.shape[:2], *geom.out), dtype=x.dtype)
    argmax = np.empty(y.shape, dtype=np.int32)
    maxpool_forward_kernel(x, y, argmax, *geom.kernel_args())
    return y, argmax


def maxpool2d_backward(dout, argmax, x_shape, geom):
    """dout (N, C, OH, OW), argmax from the forward -> dx (N, C, H, W), C-contiguous."""
    dout = np.ascontiguousarray(dout)
    require_shape("max_pool2d dout", dout, (*x_shape[:2], *geom.out))
    require_shape("max_pool2d argmax", argmax, dout.shape)
    dx = np.empty(x_shape, dtype=dout.dtype)
    maxpool_backward_kernel(dout, np.ascontiguousarray(argmax, dtype=np.int32), dx, *geom.kernel_args())
    return dx


def avgpool2d_forward(x, divisor, geom):
    """x (N, C, H, W), divisor (OH, OW) (cast to x's dtype) -> y (N, C, OH, OW)."""
    x = np.ascontiguousarray(x)
    if x.ndim != 4:
        raise ValueError(f"npresnet.kernels: avg_pool2d expects an (N, C, H, W) array, got shape {x.shape}")
    divisor = np.ascontiguousarray(divisor, dtype=x.dtype)
    require_shape("avg_pool2d divisor", divisor, geom.out)
    y = np.empty((*x.shape[:2], *divisor.shape), dtype=x.dtype)
    avgpool_forward_kernel(x, divisor, y, *geom.kernel_args())
    return y


def avgpool2d_backward(dout, divisor, x_shape, geom):
    """dout (N, C, OH, OW), divisor (OH, OW) -> dx (N, C, H, W), C-contiguous."""
    dout = np.ascontiguousarray(dout)
    divisor = np.ascontiguousarray(divisor, dtype=dout.dtype)
    require_shape("avg_pool2d divisor", divisor, geom.out)
    require_shape("avg_pool2d dout", dout, (*x_shape[:2], *geom.out))
    dx = np.empty(x_shape, dtype=dout.dtype)
    avgpool_backward_kernel(dout, divisor, dx, *geom.kernel_args())
    return dx
