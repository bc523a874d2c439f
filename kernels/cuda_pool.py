"""Numba CUDA max and average pooling on CuPy arrays, exactly equal to ``npresnet.functional.pooling``.

Notation: x (N, C, H, W), window KH x KW, stride SH x SW, padding PH x PW, dilation DH x DW,
output OH x OW. Window (oh, ow) with offset (i, j), k = i*KW + j, reads
``x[n, c, oh*SH + i*DH - PH, ow*SW + j*DW - PW]``. Padding (and ceil_mode's extra bottom/right
padding) is a bounds check, never a padded copy: a -inf cell never wins a max and a +0 cell
changes no sum that starts at +0, so skipping them is exact.

Forward kernels: one thread per output (n, c, oh, ow), scanning the window in the reference's
row-major (i, j) order. Max pooling keeps the first maximum (strict ``>``) and lets a NaN always
win (``v > best or v != v``), so with several NaNs the last one is recorded, as in the reference;
argmax is the offset k (int32). Average pooling sums in the input dtype from 0, then divides by
the caller's (OH, OW) divisor (count_include_pad / divisor_override are encoded there).

Backward kernels are gathers: one thread per input pixel (n, c, h, w). Pixel h is in window row oh
at offset i exactly when ``h + PH - i*DH = oh*SH`` with 0 <= oh < OH (likewise w, j, ow). The
thread visits the offsets in ascending k, as the reference's ``+=`` per offset does, so it adds
the same numbers in the same order from 0 (bitwise equal), and needs no atomics (deterministic)::

    max:  dx[n, c, h, w] = sum over k of dy[n, c, oh(i), ow(j)]  where argmax[n, c, oh, ow] == k
    avg:  dx[n, c, h, w] = sum over k of dy[n, c, oh(i), ow(j)] / divisor[oh, ow]

Launchers take the same arguments as the CPU kernels in ``kernels.pool_cpu``; ``geometry`` is a
``npresnet.kernels.geometry.PoolGeometry``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda

from ._numba import require_shape
from .cuda_launch import array_module, kernel, launch, require_float


@kernel
def maxpool_forward_kernel(x, y, argmax, KH, KW, SH, SW, PH, PW, DH, DW, neg_inf):
    """y, argmax (N, C, OH, OW) = window maximum of x (N, C, H, W) and its offset k: one thread per output."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    total = N * C * OH * OW
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        ow = t % OW
        rest = t // OW
        oh = rest % OH
        rest //= OH
        c = rest % C
        n = rest // C
        best = neg_inf
        best_k = 0
        for i in range(KH):
            h = oh * SH + i * DH - PH
            if h < 0 or h >= H:
                continue
            for j in range(KW):
                w = ow * SW + j * DW - PW
                if w < 0 or w >= W:
                    continue
                v = x[n, c, h, w]
                if v > best or v != v:  # the first maximum keeps its place; NaN always wins
                    best = v
                    best_k = i * KW + j
        y[n, c, oh, ow] = best
        argmax[n, c, oh, ow] = best_k


@kernel
def maxpool_backward_kernel(dout, argmax, dx, KH, KW, SH, SW, PH, PW, DH, DW, zero):
    """dx (N, C, H, W) from dout, argmax (N, C, OH, OW): each pixel gathers the dy of the windows it won."""
    N, C, H, W = dx.shape
    OH, OW = dout.shape[2], dout.shape[3]
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
            rows = h + PH - i * DH  # = oh * SH for the window row oh holding h at offset i
            if rows < 0 or rows % SH != 0 or rows // SH >= OH:
                continue
            oh = rows // SH
            for j in range(KW):
                columns = w + PW - j * DW
                if columns < 0 or columns % SW != 0 or columns // SW >= OW:
                    continue
                ow = columns // SW
                if argmax[n, c, oh, ow] == i * KW + j:
                    acc += dout[n, c, oh, ow]
        dx[n, c, h, w] = acc


@kernel
def avgpool_forward_kernel(x, divisor, y, KH, KW, SH, SW, PH, PW, DH, DW, zero):
    """y (N, C, OH, OW) = window sum of x (N, C, H, W) / divisor (OH, OW): one thread per output."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    total = N * C * OH * OW
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        ow = t % OW
        rest = t // OW
        oh = rest % OH
        rest //= OH
        c = rest % C
        n = rest // C
        acc = zero
        for i in range(KH):
            h = oh * SH + i * DH - PH
            if h < 0 or h >= H:
                continue
            for j in range(KW):
                w = ow * SW + j * DW - PW
                if 0 <= w < W:
                    acc += x[n, c, h, w]
        y[n, c, oh, ow] = acc / divisor[oh, ow]


@kernel
def avgpool_backward_kernel(dout, divisor, dx, KH, KW, SH, SW, PH, PW, DH, DW, zero):
    """dx (N, C, H, W) = sum of dy / divisor over the windows covering each pixel (a gather)."""
    N, C, H, W = dx.shape
    OH, OW = dout.shape[2], dout.shape[3]
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
            rows = h + PH - i * DH
            if rows < 0 or rows % SH != 0 or rows // SH >= OH:
                continue
            oh = rows // SH
            for j in range(KW):
                columns = w + PW - j * DW
                if columns < 0 or columns % SW != 0 or columns // SW >= OW:
                    continue
                ow = columns // SW
                acc += dout[n, c, oh, ow] / divisor[oh, ow]
        dx[n, c, h, w] = acc


def _require_nchw(name: str, x: Any) -> None:
    if x.ndim != 4:
        raise ValueError(f"npresnet.kernels: {name} expects an (N, C, H, W) array, got shape {x.shape}")
    require_float(name, x)


def maxpool2d_forward(x: Any, geom: Any) -> tuple[Any, Any]:
    """x (N, C, H, W), a PoolGeometry -> (y (N, C, OH, OW), argmax int32 (N, C, OH, OW))."""
    _require_nchw("max_pool2d", x)
    xp = array_module(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty((*x.shape[:2], *geom.out), dtype=x.dtype)
    argmax = xp.empty(y.shape, dtype=np.int32)
    launch(maxpool_forward_kernel, y.size, x, y, argmax, *geom.kernel_args(), x.dtype.type(-np.inf))
    return y, argmax


def maxpool2d_backward(dout: Any, argmax: Any, x_shape: tuple[int, int, int, int], geom: Any) -> Any:
    """dout (N, C, OH, OW), argmax from the forward -> dx (N, C, H, W), C-contiguous."""
    require_float("max_pool2d backward", dout)
    xp = array_module(dout)
    dout = xp.ascontiguousarray(dout)
    require_shape("max_pool2d dout", dout, (*x_shape[:2], *geom.out))
    require_shape("max_pool2d argmax", argmax, dout.shape)
    argmax = xp.ascontiguousarray(argmax, dtype=np.int32)
    dx = xp.empty(tuple(x_shape), dtype=dout.dtype)
    launch(maxpool_backward_kernel, dx.size, dout, argmax, dx, *geom.kernel_args(), dout.dtype.type(0))
    return dx


def avgpool2d_forward(x: Any, divisor: Any, geom: Any) -> Any:
    """x (N, C, H, W), divisor (OH, OW) (cast to x's dtype) -> y (N, C, OH, OW)."""
    _require_nchw("avg_pool2d", x)
    xp = array_module(x)
    x = xp.ascontiguousarray(x)
    divisor = xp.ascontiguousarray(xp.asarray(divisor, dtype=x.dtype))
    require_shape("avg_pool2d divisor", divisor, geom.out)
    y = xp.empty((*x.shape[:2], *geom.out), dtype=x.dtype)
    launch(avgpool_forward_kernel, y.size, x, divisor, y, *geom.kernel_args(), x.dtype.type(0))
    return y


def avgpool2d_backward(dout: Any, divisor: Any, x_shape: tuple[int, int, int, int], geom: Any) -> Any:
    """dout (N, C, OH, OW), divisor (OH, OW) -> dx (N, C, H, W), C-contiguous."""
    require_float("avg_pool2d backward", dout)
    xp = array_module(dout)
    dout = xp.ascontiguousarray(dout)
    divisor = xp.ascontiguousarray(xp.asarray(divisor, dtype=dout.dtype))
    require_shape("avg_pool2d divisor", divisor, geom.out)
    require_shape("avg_pool2d dout", dout, (*x_shape[:2], *geom.out))
    dx = xp.empty(tuple(x_shape), dtype=dout.dtype)
    launch(avgpool_backward_kernel, dx.size, dout, divisor, dx, *geom.kernel_args(), dout.dtype.type(0))
    return dx
