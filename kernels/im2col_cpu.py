"""Numba im2col / col2im, exactly equal (bitwise) to ``npresnet.functional.im2col``.

Notation: N batch, C channels, H x W input, KH x KW kernel, SH x SW stride, PH x PW padding,
DH x DW dilation, OH x OW output. Same column layout as the reference::

    cols[c, i, j, n, oh, ow] = x[n, c, oh*SH + i*DH - PH, ow*SW + j*DW - PW]   (0 outside the input)

For kernel offset (i, j), output row oh reads input row h = oh*SH + i*DH - PH, and the outputs
ow in [lo, hi) (``valid_range``) read the input columns lo*SW + j*DW - PW, ... in steps of SW; the
other outputs fall in the padding. So both kernels work on whole rows: one strided row each,
addressed by offsets into the flat arrays with unsigned indices (``_strided_plane`` says why).
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

from ._numba import CACHE, fill_row, njit, parallel_kernel, prange, require_shape, valid_range
from .geometry import cols_shape


@njit(cache=CACHE, error_model="numpy", inline="always")
def _zero_padding(cols, o, OH, OW, row_lo, row_hi, lo, hi):
    """Zero the entries of one (OH, OW) block of cols (from flat offset o, unsigned) that read the
    padding: the rows outside [row_lo, row_hi), and in the others the columns outside [lo, hi)."""
    for q in range(np.uint64(row_lo * OW)):
        cols[o + q] = 0
    for q in range(np.uint64(row_hi * OW), np.uint64(OH * OW)):
        cols[o + q] = 0
    for oh in range(row_lo, row_hi):
        row = o + np.uint64(oh * OW)
        for ow in range(np.uint64(lo)):
            cols[row + ow] = 0
        for ow in range(np.uint64(hi), np.uint64(OW)):
            cols[row + ow] = 0


@njit(cache=CACHE, error_model="numpy", inline="always")
def _strided_plane(cols, out0, x, in0, OH, W, OW, SH, SW, top, row_lo, row_hi, lo, hi, start):
    """One block of a general im2col (any stride), on flat arrays: the plane of cols (OH*OW values
    from offset out0) gets, in output row oh, the input row h = oh*SH + top of the plane at x[in0:]
    (W values a row) read at columns start, start + SW, ... for the outputs ow in [lo, hi), and 0
    elsewhere; ``[row_lo, row_hi)`` are the rows whose h lies inside the plane.

    Offsets, not views, and unsigned indices: a view per output row costs a reference count, and a
    signed index makes Numba test it for wraparound (x[-1]), which keeps the loop scalar. The first
    version had both and was up to several times slower at one thread (docs/performance.md).
    """
    o = np.uint64(out0)
    _zero_padding(cols, o, OH, OW, row_lo, row_hi, lo, hi)
    count, step = np.uint64(hi - lo), np.uint64(SW)
    for oh in range(row_lo, row_hi):
        dst, src = o + np.uint64(oh * OW + lo), np.uint64(in0 + (oh * SH + top) * W + start)
        for t in range(count):
            cols[dst + t] = x[src + step * t]


@njit(cache=CACHE, error_model="numpy", inline="always")
def _shifted_plane(cols, out0, x, in0, OH, H, OW, di, dj, lo, hi):
    """One block of a stride-1 "same-width" im2col (OW == W), on flat arrays: the plane of cols
    (OH*OW values from offset out0) gets plane[oh*OW + ow] = x[in0 + (oh + di)*OW + ow + dj] where
    the input pixel (oh + di, ow + dj) lies inside the H x W plane at x[in0:], and 0 where it falls
    in the padding; ``[lo, hi)`` are the ow whose column ow + dj is inside.

    With equal row lengths the valid rows are one contiguous run of x shifted by di*OW + dj: one
    long copy instead of a short copy per row (the per-row overhead dominated small planes such as
    ResNet-20's 8x8 layers). The copy also fills the invalid columns with
    neighbouring pixels, which the last loop overwrites with zeros. Offsets instead of a view per
    plane and unsigned indices, as in ``_strided_plane`` (about twice as fast on 8x8 planes).
    """
    row_lo, row_hi = valid_range(di, 1, H, OH)
    o = np.uint64(out0)
    shift = di * OW + dj
    first = max(row_lo * OW, -shift)  # clip the reads to the plane; the clipped
    last = min(row_hi * OW, H * OW - shift)  # entries lie in invalid columns (zeroed below)
    if first < last:
        dst, src = o + np.uint64(first), np.uint64(in0 + first + shift)
        for t in range(np.uint64(last - first)):
            cols[dst + t] = x[src + t]
    _zero_padding(cols, o, OH, OW, row_lo, row_hi, lo, hi)  # after the copy: it wrote the invalid columns


@parallel_kernel
def im2col_kernel(x, cols, KH, KW, SH, SW, PH, PW, DH, DW):
    """Fill cols (C*KH*KW, N, OH, OW) from x (N, C, H, W); both C-contiguous."""
    N, C, H, W = x.shape
    OH, OW = cols.shape[2], cols.shape[3]
    same_width = SH == 1 and SW == 1 and OW == W  # 2*PW == DW*(KW-1): e.g. 3x3, padding 1
    x_all, cols_all = x.reshape(-1), cols.reshape(-1)  # flat: planes are addressed by offsets
    for block in prange(C * KH * KW):
        c = block // (KH * KW)
        i = (block // KW) % KH
        j = block % KW
        lo, hi = valid_range(j * DW - PW, SW, W, OW)
        if same_width:
            for n in range(N):
                out0, in0 = (block * N + n) * OH * OW, (n * C + c) * H * W
                _shifted_plane(cols_all, out0, x_all, in0, OH, H, OW, i * DH - PH, j * DW - PW, lo, hi)
            continue
        start = lo * SW + j * DW - PW  # input column read by output lo
        row_lo, row_hi = valid_range(i * DH - PH, SH, H, OH)
        for n in range(N):
            out0, in0 = (block * N + n) * OH * OW, (n * C + c) * H * W
            _strided_plane(cols_all, out0, x_all, in0, OH, W, OW, SH, SW, i * DH - PH, row_lo, row_hi, lo, hi, start)


@njit(cache=CACHE, error_model="numpy", inline="always")
def _add_strided_plane(dst, column, W, OW, SH, SW, top, row_lo, row_hi, lo, hi, start):
    """The adjoint of ``_strided_plane``: add the block column (OH*OW,) into the plane dst (H*W,),
    each valid output (oh, ow) onto the input pixel it was read from (unsigned indices, as there)."""
    count, step = np.uint64(hi - lo), np.uint64(SW)
    for oh in range(row_lo, row_hi):
        in0, out0 = np.uint64(oh * OW + lo), np.uint64((oh * SH + top) * W + start)
        for t in range(count):
            dst[out0 + step * t] += column[in0 + t]


@parallel_kernel
def col2im_kernel(cols, dx, SH, SW, PH, PW, DH, DW):
    """Set dx (N, C, H, W) to the sum of the cols (C, KH, KW, N, OH, OW) entries read from each pixel.

    For one kernel offset (i, j) no two outputs read the same pixel, so every pixel receives its
    entries in (i, j) order, the reference's order."""
    N, C, H, W = dx.shape
    KH, KW, OH, OW = cols.shape[1], cols.shape[2], cols.shape[4], cols.shape[5]
    dx_flat, cols_flat = dx.reshape(N, C, H * W), cols.reshape(C, KH, KW, N, OH * OW)
    for plane in prange(N * C):
        n = plane // C
        c = plane % C
        out = dx_flat[n, c]
        fill_row(out, 0)
        for i in range(KH):
            row_lo, row_hi = valid_range(i * DH - PH, SH, H, OH)
            for j in range(KW):
                lo, hi = valid_range(j * DW - PW, SW, W, OW)
                start = lo * SW + j * DW - PW
                _add_strided_plane(
                    out, cols_flat[c, i, j, n], W, OW, SH, SW, i * DH - PH, row_lo, row_hi, lo, hi, start
                )


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
    cols_all = cols.reshape(-1)  # flat: block (c, i, j, n) starts at offset ((c*KH + i)*KW + j)*N + n, times L
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
                block = np.uint64((((c * KH + i) * KW + j) * N + n) * L)
                for q in range(np.uint64(first), np.uint64(last)):
                    run[q] = cols_all[block + q]
                for oh in range(row_lo, row_hi):
                    row = np.uint64(oh * OW)
                    for ow in range(np.uint64(lo)):
                        run[row + ow] = 0
                    for ow in range(np.uint64(hi), np.uint64(OW)):
                        run[row + ow] = 0
                target = np.uint64(first + shift)  # >= 0: first >= -shift
                for t in range(np.uint64(last - first)):
                    out[target + t] += run[np.uint64(first) + t]


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
