"""im2col and col2im: turning a convolution into one matrix product.

Notation: N batch, C channels, H x W input, KH x KW kernel, SH x SW stride, PH x PW padding,
DH x DW dilation, OH x OW output.

A convolution output pixel (n, o, oh, ow) is a dot product between the filter o and the
C x KH x KW window of the (zero-padded) input that starts at (oh*SH, ow*SW). ``im2col`` copies
every window into a column, so that all output pixels come from a single GEMM::

    cols[c, i, j, n, oh, ow] = x_padded[n, c, oh*SH + i*DH, ow*SW + j*DW]

It does this with KH*KW strided slice copies (one per kernel offset (i, j)), never a Python loop
over pixels. The column layout (C, KH, KW, N, OH, OW) puts the reduced axes (C, KH, KW) first, so
``cols.reshape(C*KH*KW, N*OH*OW)`` is the GEMM's right-hand side without another copy.

``col2im`` is the adjoint (transpose) of ``im2col``: each column entry is *added* back to the
pixel it was copied from. Windows overlap when the stride is smaller than the kernel, so the
same pixel receives several contributions: it must accumulate (+=), never assign. Within one
kernel offset (i, j) no pixel repeats, which is why a plain strided ``+=`` per offset is correct.
"""

from __future__ import annotations

from typing import Any

from .. import kernels
from ..backend import get_array_module
from ..kernels.geometry import cols_shape, conv_output_size

__all__ = ["col2im", "cols_shape", "conv_output_size", "im2col", "pad_nchw", "window_slice"]


def window_slice(offset: int, dilation: int, stride: int, out_size: int) -> slice:
    """The input positions that kernel offset ``offset`` visits, as one strided slice.

    Output position ``o`` reads input ``o*stride + offset*dilation`` for o in 0..out_size-1.
    """
    start = offset * dilation
    return slice(start, start + stride * (out_size - 1) + 1, stride)


def pad_nchw(x: Any, padding: tuple[int, int], value: float = 0.0, extra: tuple[int, int] = (0, 0)) -> Any:
    """Pad H by ``padding[0]`` (+ ``extra[0]`` at the bottom) and W by ``padding[1]`` (+ ``extra[1]``)."""
    (ph, pw), (eh, ew) = padding, extra
    if ph == pw == eh == ew == 0:
        return x
    xp = get_array_module(x)
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)), mode="constant", constant_values=value)


def im2col(
    x: Any, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]
) -> Any:
    """Copy every convolution window of ``x`` into a column.

    Args:
        x: (N, C, H, W) input.
        kernel_size, stride, padding, dilation: (KH, KW), (SH, SW), (PH, PW), (DH, DW).

    Returns:
        cols: (C, KH, KW, N, OH, OW), C-contiguous.
    """
    fast = kernels.get("im2col", x)  # the Numba kernel (same result, bitwise), or None
    if fast is not None:
        return fast(x, kernel_size, stride, padding, dilation)
    xp = get_array_module(x)
    C, KH, KW, N, OH, OW = cols_shape(x.shape, kernel_size, stride, padding, dilation)
    (SH, SW), (DH, DW) = stride, dilation
    x_padded = pad_nchw(x, padding)
    cols = xp.empty((C, KH, KW, N, OH, OW), dtype=x.dtype)
    for i in range(KH):
        rows = window_slice(i, DH, SH, OH)
        for j in range(KW):
            columns = window_slice(j, DW, SW, OW)
            # (N, C, OH, OW) -> (C, N, OH, OW): one strided copy per kernel offset.
            cols[:, i, j] = x_padded[:, :, rows, columns].transpose(1, 0, 2, 3)
    return cols


def col2im(
    cols: Any,
    x_shape: tuple[int, int, int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Any:
    """Add every column entry back to the input pixel it came from (the adjoint of ``im2col``).

    Args:
        cols: (C, KH, KW, N, OH, OW), e.g. the gradient with respect to the columns.
        x_shape: (N, C, H, W) of the original input.

    Returns:
        (N, C, H, W) array: ``sum`` over all windows covering each pixel.
    """
    fast = kernels.get("col2im", cols)
    if fast is not None:
        return fast(cols, x_shape, stride, padding, dilation)
    xp = get_array_module(cols)
    N, C, H, W = x_shape
    _, KH, KW, _, OH, OW = cols.shape
    (SH, SW), (PH, PW), (DH, DW) = stride, padding, dilation
    x_padded = xp.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=cols.dtype)
    for i in range(KH):
        rows = window_slice(i, DH, SH, OH)
        for j in range(KW):
            columns = window_slice(j, DW, SW, OW)
            # Accumulate: overlapping windows send several contributions to one pixel.
            x_padded[:, :, rows, columns] += cols[:, i, j].transpose(1, 0, 2, 3)
    return x_padded[:, :, PH : PH + H, PW : PW + W]
