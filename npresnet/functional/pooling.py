"""Max pooling, average pooling and adaptive (global) average pooling.

Notation: x (N, C, H, W), window KH x KW, stride SH x SW, padding PH x PW, output OH x OW.
Like im2col, every pool visits its windows with one strided slice per window offset (i, j), so
there is no Python loop over pixels (see ``im2col.window_slice``).

Max pooling. Padding is -inf (a padded cell never wins). On ties the *first* maximum in the
window's row-major (i, j) scan order wins, as in PyTorch on the CPU; a NaN always wins (it
propagates). Backward routes each dy to the one input that won its window::

    dx[n, c, oh*SH + i*DH - PH, ow*SW + j*DW - PW] += dy[n, c, oh, ow]   where (i, j) = argmax

Average pooling. y = sum(window) / divisor, where the divisor counts the window's cells inside
the padded input (``count_include_pad=True``, PyTorch's default) or inside the real input only.
Backward spreads dy / divisor evenly over the window.

Adaptive average pooling to (OH, OW) uses PyTorch's windows ``[floor(o*H/OH), ceil((o+1)*H/OH))``;
output size 1 is the global average pool that ends every ResNet.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .. import kernels
from ..backend import get_array_module
from ..checks import check_grad_like, check_nchw, pair
from ..kernels.geometry import PoolGeometry, conv_output_size
from .im2col import pad_nchw, window_slice


def pool_geometry(
    x_shape: tuple[int, ...], kernel_size: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool, layer: str
) -> PoolGeometry:
    """Validate pooling arguments (PyTorch's rules) and compute the output size."""
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    padding, dilation = pair(padding, "padding"), pair(dilation, "dilation")
    if min(kernel) < 1 or min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(
            f"{layer} needs kernel_size, stride, dilation >= 1 and padding >= 0, got "
            f"{kernel}, {stride}, {dilation}, {padding}"
        )
    for k, p, d in zip(kernel, padding, dilation):
        if p > (d * (k - 1) + 1) // 2:
            raise ValueError(f"{layer}: padding {padding} must be at most half the (dilated) kernel size {kernel}")
    H, W = x_shape[2], x_shape[3]
    OH = conv_output_size(H, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    OW = conv_output_size(W, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    if OH < 1 or OW < 1:
        raise ValueError(
            f"{layer}: input of spatial size {H}x{W} (padding {padding}) is smaller than the kernel {kernel}"
        )
    # How far past the symmetric padding the last window reaches (only with ceil_mode).
    extra = tuple(
        max(0, (o - 1) * s + d * (k - 1) + 1 - (n + 2 * p))
        for o, s, d, k, n, p in zip((OH, OW), stride, dilation, kernel, (H, W), padding)
    )
    return PoolGeometry(kernel, stride, padding, dilation, (OH, OW), extra)


def _offsets(geom: PoolGeometry):
    """Yield (k, rows, cols): window offset number k = i*KW + j and its two strided slices."""
    (KH, KW), (SH, SW), (DH, DW), (OH, OW) = geom.kernel, geom.stride, geom.dilation, geom.out
    for i in range(KH):
        for j in range(KW):
            yield i * KW + j, window_slice(i, DH, SH, OH), window_slice(j, DW, SW, OW)


def _unpad(x_padded: Any, x_shape: tuple[int, ...], padding: tuple[int, int]) -> Any:
    (PH, PW), H, W = padding, x_shape[2], x_shape[3]
    return x_padded[:, :, PH : PH + H, PW : PW + W]


class MaxPoolCache(NamedTuple):
    argmax: Any  # (N, C, OH, OW) winning offset k = i*KW + j inside each window
    x_shape: tuple[int, int, int, int]
    dtype: Any
    geometry: PoolGeometry


def maxpool2d_forward(
    x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False
) -> tuple[Any, MaxPoolCache]:
    """Like ``torch.nn.functional.max_pool2d``. x: (N, C, H, W) -> y: (N, C, OH, OW)."""
    check_nchw(x, None, "input", "max_pool2d")
    geom = pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d")
    fast = kernels.get("maxpool2d_forward", x)  # the Numba kernel (same result, bitwise), or None
    if fast is not None:
        y, argmax = fast(x, geom)
        return y, MaxPoolCache(argmax, tuple(x.shape), x.dtype, geom)
    xp = get_array_module(x)
    x_padded = pad_nchw(x, geom.padding, -np.inf, geom.extra)
    N, C = x.shape[:2]
    y = xp.full((N, C, *geom.out), -np.inf, dtype=x.dtype)
    argmax = xp.zeros((N, C, *geom.out), dtype=np.int32)
    for k, rows, cols in _offsets(geom):
        window = x_padded[:, :, rows, cols]
        wins = (window > y) | xp.isnan(window)  # strict '>': the first maximum keeps its place
        y = xp.where(wins, window, y)
        argmax = xp.where(wins, k, argmax)
    return y, MaxPoolCache(argmax, tuple(x.shape), x.dtype, geom)


def maxpool2d_backward(dout: Any, cache: MaxPoolCache) -> Any:
    """Route each dy to the input that won its window. Returns dx (N, C, H, W)."""
    geom = cache.geometry
    N, C, H, W = cache.x_shape
    xp = get_array_module(dout)
    check_grad_like(dout, (N, C, *geom.out), cache.argmax, "max_pool2d", dtype=cache.dtype)
    fast = kernels.get("maxpool2d_backward", dout)
    if fast is not None:
        return fast(dout, cache.argmax, cache.x_shape, geom)
    (PH, PW), (EH, EW) = geom.padding, geom.extra
    dx_padded = xp.zeros((N, C, H + 2 * PH + EH, W + 2 * PW + EW), dtype=dout.dtype)
    zero = xp.zeros((), dtype=dout.dtype)
    for k, rows, cols in _offsets(geom):
        dx_padded[:, :, rows, cols] += xp.where(cache.argmax == k, dout, zero)
    return _unpad(dx_padded, cache.x_shape, geom.padding)


class AvgPoolCache(NamedTuple):
    divisor: Any  # (OH, OW) number of cells each output averaged over
    x_shape: tuple[int, int, int, int]
    dtype: Any
    geometry: PoolGeometry


def _avgpool_divisor(geom: PoolGeometry, H: int, W: int, count_include_pad: bool) -> np.ndarray:
    """(OH, OW) window sizes, clipped as PyTorch clips them (to the padded or the real input)."""
    counts = []
    for o_size, s, p, k, n in zip(geom.out, geom.stride, geom.padding, geom.kernel, (H, W)):
        start = np.arange(o_size) * s - p
        end = np.minimum(start + k, n + p)
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, n)
        counts.append(end - start)
    return np.outer(counts[0], counts[1])


def avgpool2d_forward(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> tuple[Any, AvgPoolCache]:
    """Like ``torch.nn.functional.avg_pool2d``. x: (N, C, H, W) -> y: (N, C, OH, OW)."""
    check_nchw(x, None, "input", "avg_pool2d")
    geom = pool_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d")
    xp = get_array_module(x)
    if divisor_override is not None:
        divisor = np.full(geom.out, divisor_override)
    else:
        divisor = _avgpool_divisor(geom, x.shape[2], x.shape[3], count_include_pad)
    divisor = xp.asarray(divisor, dtype=x.dtype)
    fast = kernels.get("avgpool2d_forward", x)
    if fast is not None:
        return fast(x, divisor, geom), AvgPoolCache(divisor, tuple(x.shape), x.dtype, geom)
    x_padded = pad_nchw(x, geom.padding, 0.0, geom.extra)
    total = xp.zeros((*x.shape[:2], *geom.out), dtype=x.dtype)
    for _, rows, cols in _offsets(geom):
        total += x_padded[:, :, rows, cols]
    return total / divisor, AvgPoolCache(divisor, tuple(x.shape), x.dtype, geom)


def avgpool2d_backward(dout: Any, cache: AvgPoolCache) -> Any:
    """Each input cell gets dy / divisor from every window that covers it. Returns dx (N, C, H, W)."""
    geom = cache.geometry
    N, C, H, W = cache.x_shape
    check_grad_like(dout, (N, C, *geom.out), cache.divisor, "avg_pool2d")
    fast = kernels.get("avgpool2d_backward", dout)
    if fast is not None:
        return fast(dout, cache.divisor, cache.x_shape, geom)
    xp = get_array_module(dout)
    (PH, PW), (EH, EW) = geom.padding, geom.extra
    share = dout / cache.divisor
    dx_padded = xp.zeros((N, C, H + 2 * PH + EH, W + 2 * PW + EW), dtype=dout.dtype)
    for _, rows, cols in _offsets(geom):
        dx_padded[:, :, rows, cols] += share
    return _unpad(dx_padded, cache.x_shape, geom.padding)


def _adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    return [((o * size) // out, math.ceil((o + 1) * size / out)) for o in range(out)]


class AdaptivePoolCache(NamedTuple):
    x_shape: tuple[int, int, int, int]
    out: tuple[int, int]  # (OH, OW)
    dtype: Any


def adaptive_avgpool2d_forward(x: Any, output_size: Any = 1) -> tuple[Any, AdaptivePoolCache]:
    """Like ``torch.nn.functional.adaptive_avg_pool2d``. (N, C, H, W) -> (N, C, OH, OW).

    The cache holds the input and output shapes (the windows follow from them).
    """
    check_nchw(x, None, "input", "adaptive_avg_pool2d")
    OH, OW = pair(output_size, "output_size")
    if OH < 1 or OW < 1:
        raise ValueError(f"adaptive_avg_pool2d output_size must be >= 1, got {(OH, OW)}")
    cache = AdaptivePoolCache(tuple(x.shape), (OH, OW), x.dtype)
    if (OH, OW) == (1, 1):
        return x.mean(axis=(2, 3), keepdims=True), cache
    xp = get_array_module(x)
    y = xp.empty((*x.shape[:2], OH, OW), dtype=x.dtype)
    for oh, (h0, h1) in enumerate(_adaptive_windows(x.shape[2], OH)):
        for ow, (w0, w1) in enumerate(_adaptive_windows(x.shape[3], OW)):
            y[:, :, oh, ow] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y, cache


def adaptive_avgpool2d_backward(dout: Any, cache: AdaptivePoolCache) -> Any:
    """Spread each dy evenly over its window. Returns dx (N, C, H, W)."""
    x_shape = cache.x_shape
    N, C, H, W = x_shape
    OH, OW = cache.out
    check_grad_like(dout, (N, C, OH, OW), dout, "adaptive_avg_pool2d", dtype=cache.dtype)
    xp = get_array_module(dout)
    if (OH, OW) == (1, 1):
        return xp.broadcast_to(dout / (H * W), x_shape).copy()
    dx = xp.zeros(x_shape, dtype=dout.dtype)
    for oh, (h0, h1) in enumerate(_adaptive_windows(H, OH)):
        for ow, (w0, w1) in enumerate(_adaptive_windows(W, OW)):
            dx[:, :, h0:h1, w0:w1] += dout[:, :, oh : oh + 1, ow : ow + 1] / ((h1 - h0) * (w1 - w0))
    return dx
