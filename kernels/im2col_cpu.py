"""Numba im2col / col2im, exactly equal (bitwise) to ``npresnet.functional.im2col``.

Notation: N batch, C channels, H x W input, KH x KW kernel, SH x SW stride, PH x PW padding,
DH x DW dilation, OH x OW output. Same column layout as the reference::

    cols[c, i, j, n, oh, ow] = x[n, c, oh*SH + i*DH - PH, ow*SW + j*DW - PW]   (0 outside the input)

For kernel offset (i, j), output row oh reads input row h = oh*SH + i*DH - PH, and the outputs
ow in [lo, hi) (``valid_range``) read the input columns lo*SW + j*DW - PW, ... in steps of SW; the
other outputs fall in the padding. So both kernels work on whole rows: one strided row slice each.
im2col of a stride-1 conv that keeps the width (OW == W, e.g. 3x3 with padding 1) copies each
(OH, OW) block as one contiguous run instead (``_shifted_plane``), and col2im adds it back as one
run (``_col2im_same_width``).

im2col: parallel over the C*KH*KW column blocks; each writes its own contiguous (N, OH, OW) block.
Padding is written as zeros, never built as a padded copy of x.

col2im (the adjoint): parallel over the N*C image planes, so each thread owns its output plane and
there are no races. Within a plane the column rows are added in the reference's order, kernel
offset (i, j) outermost, so every pixel sums the same numbers in the same order, from 0: the result
is bitwise identical to the reference's strided ``+=`` per offset.

Outputs are allocated by NumPy and filled by the kernels: NumPy asks the OS for huge pages for big
arrays, and first-touching a fresh 100 MB array from Numba's own allocator costs more than the copy.
"""

from __future__ import annotations

import numpy as np

from ._numba import CACHE, add_row, copy_row, fill_row, njit, parallel_kernel, prange, require_shape, valid_range
from .geometry import cols_shape


@njit(cache=CACHE, error_model="numpy", inline="always")
def _copy_every(dst, src, step):
    """dst[t] = src[step * t]. Indexing a contiguous view this way measured 2x faster (1x1 stride-2
    convs) than copying from a stepped view ``src[::step]``."""
    for t in range(dst.shape[0]):
        dst[t] = src[step * t]


@njit(cache=CACHE, error_model="numpy", inline="always")
def _shifted_plane(dst, src, OW, di, dj, lo, hi):
    """One block of a stride-1 "same-width" im2col (OW == W), on flattened planes: dst (OH*OW,)
    gets dst[oh*OW + ow] = src[(oh + di)*OW + ow + dj] where the input pixel (oh + di, ow + dj) lies
    inside the H x W plane src (H*OW,), and 0 where it falls in the padding; ``[lo, hi)`` are the
    ow whose column ow + dj is inside.

    With equal row lengths the valid rows are one contiguous run of src shifted by di*OW + dj: one
    long copy instead of a short copy per row (the per-row overhead dominated small planes: 12 ns a
    row, 2.7 GB/s on ResNet-20's 8x8 layers). The copy also fills the invalid columns with
    neighbouring pixels, which the last loop overwrites with zeros.
    """
    OH, H = dst.shape[0] // OW, src.shape[0] // OW
    row_lo, row_hi = valid_range(di, 1, H, OH)
    fill_row(dst[: row_lo * OW], 0)
    fill_row(dst[row_hi * OW :], 0)
    shift = di * OW + dj
    first = max(row_lo * OW, -shift)  # clip the reads to the plane; the clipped
    last = min(row_hi * OW, H * OW - shift)  # entries lie in invalid columns (zeroed below)
    if first < last:
        copy_row(dst[first:last], src[first + shift : last + shift])
    for oh in range(row_lo, row_hi):
        for ow in range(lo):
            dst[oh * OW + ow] = 0
        for ow in range(hi, OW):
            dst[oh * OW + ow] = 0


@parallel_kernel
def im2col_kernel(x, cols, KH, KW, SH, SW, PH, PW, DH, DW):
    """Fill cols (C*KH*KW, N, OH, OW) from x (N, C, H, W); both C-contiguous."""
    N, C, H, W = x.shape
    OH, OW = cols.shape[2], cols.shape[3]
    same_width = SH == 1 and SW == 1 and OW == W  # 2*PW == DW*(KW-1): e.g. 3x3, padding 1
    x_flat, cols_flat = x.reshape(N, C, H * W), cols.reshape(cols.shape[0], N, OH * OW)
    for block in prange(C * KH * KW):
        c = block // (KH * KW)
        i = (block // KW) % KH
        j = block % KW
        lo, hi = valid_range(j * DW - PW, SW, W, OW)
        if same_width:
            for n in range(N):
                _shifted_plane(cols_flat[block, n], x_flat[n, c], OW, i * DH - PH, j * DW - PW, lo, hi)
            continue
        start = lo * SW + j * DW - PW  # input column read by output lo
        for n in range(N):
            for oh in range(OH):
                h = oh * SH + i * DH - PH
                out = cols[block, n, oh]
                if h < 0 or h >= H:
                    fill_row(out, 0)
                    continue
                fill_row(out[:lo], 0)
                fill_row(out[hi:], 0)
                if SW == 1:
                    copy_row(out[lo:hi], x[n, c, h, start : start + hi - lo])
                else:
                    _copy_every(out[lo:hi], x[n, c, h, start:], SW)


@parallel_kernel
def col2im_kernel(cols, dx, SH, SW, PH, PW, DH, DW):
    """Set dx (N, C, H, W) to the sum of the cols (C, KH, KW, N, OH, OW) entries read from each pixel."""
    N, C, H, W = dx.shape
    KH, KW, OH, OW = cols.shape[1], cols.shape[2], cols.shape[4], cols.shape[5]
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
                    column_row = cols[c, i, j, n, oh, lo:hi]
                    if SW == 1:
                        add_row(dx[n, c, h, start : start + hi - lo], column_row)
                    else:
                        add_row(dx[n, c, h, start : start + (hi - lo - 1) * SW + 1 : SW], column_row)


@parallel_kernel
def _col2im_same_width(cols, dx, OW, PH, PW, DH, DW):
    """col2im of a stride-1 conv with OW == W, on flattened planes: cols (C, KH, KW, N, OH*OW), dx (N, C, H*W).

    The adjoint of ``_shifted_plane``: each block is added to its plane as one contiguous run. The
    run's invalid columns (which would land on the neighbouring row's edge) are zeroed in a copy
    first, so those pixels get + 0.0, which changes no sum: a sum that starts at +0.0 is never -0.0,
    and x + 0.0 == x bit for bit for every other x (NaN and inf included). The other pixels get the
    same numbers in the same (i, j) order as the row-by-row loop, so the result is bitwise the same.
    """
    C, KH, KW, N, L = cols.shape
    H = dx.shape[2] // OW
    OH = L // OW
    for plane in prange(N * C):
        n = plane // C
        c = plane % C
        out = dx[n, c]
        fill_row(out, 0)
        run = np.empty(L, dtype=dx.dtype)
        for i in range(KH):
            row_lo, row_hi = valid_range(i * DH - PH, 1, H, OH)
            for j in range(KW):
                lo, hi = valid_range(j * DW - PW, 1, OW, OW)
                shift = (i * DH - PH) * OW + j * DW - PW
                first = max(row_lo * OW, -shift)
                last = min(row_hi * OW, H * OW - shift)
                if first >= last or lo >= hi:
                    continue
                copy_row(run[first:last], cols[c, i, j, n, first:last])
                for oh in range(row_lo, row_hi):
                    for ow in range(lo):
                        run[oh * OW + ow] = 0
                    for ow in range(hi, OW):
                        run[oh * OW + ow] = 0
                add_row(out[first + shift : last + shift], run[first:last])


def im2col(x, kernel_size, stride, padding, dilation):
    """Drop-in for ``functional.im2col.im2col`` on a NumPy float array. Returns cols (C, KH, KW, N, OH, OW)."""
    x = np.ascontiguousarray(x)
    if x.ndim != 4:
        raise ValueError(f"npresnet.kernels: im2col expects an (N, C, H, W) array, got shape {x.shape}")
    shape = cols_shape(x.shape, kernel_size, stride, padding, dilation)  # (C, KH, KW, N, OH, OW)
    (KH, KW), (SH, SW), (PH, PW), (DH, DW) = kernel_size, stride, padding, dilation
    cols = np.empty((shape[0] * KH * KW, *shape[3:]), dtype=x.dtype)
    im2col_kernel(x, cols, KH, KW, SH, SW, PH, PW, DH, DW)
    return cols.reshape(shape)


def col2im(cols, x_shape, stride, padding, dilation):
    """Drop-in for ``functional.im2col.col2im``. Returns a C-contiguous (N, C, H, W) array."""
    cols = np.ascontiguousarray(cols)
    kernel_size = cols.shape[1:3] if cols.ndim == 6 else (1, 1)
    require_shape("col2im cols", cols, cols_shape(x_shape, kernel_size, stride, padding, dilation))
    (SH, SW), (PH, PW), (DH, DW) = stride, padding, dilation
    dx = np.empty(x_shape, dtype=cols.dtype)
    N, C, H, W = x_shape
    KH, KW, OH, OW = cols.shape[1], cols.shape[2], cols.shape[4], cols.shape[5]
    if SH == 1 and SW == 1 and OW == W:
        _col2im_same_width(cols.reshape(C, KH, KW, N, OH * OW), dx.reshape(N, C, H * W), OW, PH, PW, DH, DW)
    else:
        col2im_kernel(cols, dx, SH, SW, PH, PW, DH, DW)
    return dx
