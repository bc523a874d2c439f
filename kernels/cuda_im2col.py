"""Numba CUDA im2col / col2im on CuPy arrays, exactly equal to ``npresnet.functional.im2col``.

Notation: N batch, C channels, H x W input, KH x KW kernel, SH x SW stride, PH x PW padding,
DH x DW dilation, OH x OW output. Same column layout as the reference::

    cols[c, i, j, n, oh, ow] = x[n, c, oh*SH + i*DH - PH, ow*SW + j*DW - PW]   (0 outside the input)

im2col: one thread per column entry (C*KH*KW*N*OH*OW threads), each a single read or a 0.

col2im, the adjoint, as a *gather*: one thread per input pixel (n, c, h, w). Pixel h is read by
kernel row i from output row oh exactly when ``h + PH - i*DH = oh*SH`` with 0 <= oh < OH (and
likewise for w, j, ow), so the thread visits the offsets (i, j) in the reference's order, solves
for (oh, ow), and adds those column entries::

    dx[n, c, h, w] = sum over (i, j) in row-major order of cols[c, i, j, n, oh(i), ow(j)]

Each thread owns its output pixel: no atomics, deterministic. It adds the same numbers in the same
order, starting from 0, as the reference's strided ``+=`` per offset, so the result is bitwise equal.
The sum is kept in the array's dtype (``zero`` is passed in that dtype, so float32 stays float32).

Launchers ``im2col`` and ``col2im`` take the same arguments as the CPU kernels (``kernels.im2col_cpu``)
and the references; outputs are C-contiguous arrays of the input's module (CuPy on a GPU).
"""

from __future__ import annotations

from typing import Any

from numba import cuda

from ._numba import require_shape
from .cuda_launch import array_module, kernel, launch, require_float
from .geometry import cols_shape


@kernel
def im2col_kernel(x, cols, SH, SW, PH, PW, DH, DW, zero):
    """cols (C, KH, KW, N, OH, OW) from x (N, C, H, W): one thread per column entry."""
    N, C, H, W = x.shape
    KH, KW, OH, OW = cols.shape[1], cols.shape[2], cols.shape[4], cols.shape[5]
    total = C * KH * KW * N * OH * OW
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        ow = t % OW
        rest = t // OW
        oh = rest % OH
        rest //= OH
        n = rest % N
        rest //= N
        j = rest % KW
        rest //= KW
        i = rest % KH
        c = rest // KH
        h = oh * SH + i * DH - PH
        w = ow * SW + j * DW - PW
        if 0 <= h < H and 0 <= w < W:
            cols[c, i, j, n, oh, ow] = x[n, c, h, w]
        else:
            cols[c, i, j, n, oh, ow] = zero


@kernel
def col2im_kernel(cols, dx, SH, SW, PH, PW, DH, DW, zero):
    """dx (N, C, H, W) = sum of the cols (C, KH, KW, N, OH, OW) entries read from each pixel (a gather)."""
    N, C, H, W = dx.shape
    KH, KW, OH, OW = cols.shape[1], cols.shape[2], cols.shape[4], cols.shape[5]
    total = N * C * H * W
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        w = t % W
        rest = t // W
        h = rest % H
        rest //= H
        c = rest % C
        n = rest // C
        acc = zero
        for i in range(KH):
            rows = h + PH - i * DH  # = oh * SH for the output row oh that reads h
            if rows < 0 or rows % SH != 0 or rows // SH >= OH:
                continue
            oh = rows // SH
            for j in range(KW):
                columns = w + PW - j * DW
                if columns < 0 or columns % SW != 0 or columns // SW >= OW:
                    continue
                acc += cols[c, i, j, n, oh, columns // SW]
        dx[n, c, h, w] = acc


def im2col(
    x: Any, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]
) -> Any:
    """Drop-in for ``functional.im2col.im2col`` on a CuPy float array. Returns cols (C, KH, KW, N, OH, OW)."""
    xp = array_module(x)
    if x.ndim != 4:
        raise ValueError(f"npresnet.kernels: im2col expects an (N, C, H, W) array, got shape {x.shape}")
    require_float("im2col", x)
    x = xp.ascontiguousarray(x)
    (SH, SW), (PH, PW), (DH, DW) = stride, padding, dilation
    cols = xp.empty(cols_shape(x.shape, kernel_size, stride, padding, dilation), dtype=x.dtype)
    launch(im2col_kernel, cols.size, x, cols, SH, SW, PH, PW, DH, DW, x.dtype.type(0))
    return cols


def col2im(
    cols: Any,
    x_shape: tuple[int, int, int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Any:
    """Drop-in for ``functional.im2col.col2im``. Returns a C-contiguous (N, C, H, W) array."""
    xp = array_module(cols)
    require_float("col2im", cols)
    cols = xp.ascontiguousarray(cols)
    kernel_size = cols.shape[1:3] if cols.ndim == 6 else (1, 1)
    require_shape("col2im cols", cols, cols_shape(x_shape, kernel_size, stride, padding, dilation))
    (SH, SW), (PH, PW), (DH, DW) = stride, padding, dilation
    dx = xp.empty(tuple(x_shape), dtype=cols.dtype)
    launch(col2im_kernel, dx.size, cols, dx, SH, SW, PH, PW, DH, DW, cols.dtype.type(0))
    return dx
