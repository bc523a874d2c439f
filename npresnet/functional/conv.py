"""2-D convolution (cross-correlation, as in PyTorch) as im2col + GEMM.

Notation: N batch, C input channels, O output channels, G groups, Cg = C/G and Og = O/G channels
per group, H x W input, KH x KW kernel, OH x OW output, K = Cg*KH*KW, L = N*OH*OW output pixels.

Forward, per group g (weight is (O, Cg, KH, KW), PyTorch's OIHW layout, no kernel flip)::

    cols = im2col(x)                                # (C, KH, KW, N, OH, OW), seen as (G, K, L)
    Y[g] = W[g] @ cols[g]                           # (Og, K) @ (K, L) -> (Og, L)
    y[n, o, oh, ow] = Y[o, n*OH*OW + oh*OW + ow] + b[o]

Backward, given dY = dL/dy regrouped to (G, Og, L)::

    dW[g]    = dY[g] @ cols[g].T                    # (Og, L) @ (L, K)
    dcols[g] = W[g].T @ dY[g]                       # (K, Og) @ (Og, L)
    dx       = col2im(dcols)                        # adjoint of im2col: accumulate overlaps
    db       = sum of dy over N, OH, OW

Two choices keep memory and time down; neither changes the arithmetic above:

* The cache holds the input x, not its columns: cols is KH*KW times larger than x, and backward
  rebuilds it with one more im2col (as cuDNN-style implementations do). x is usually alive anyway
  (it is the previous ReLU's cached output), so a conv costs almost no memory of its own.
* A 1x1 convolution without padding needs no im2col at all: its columns *are* the (strided)
  input. Per sample n, with X[n] = x[n, :, ::SH, ::SW] seen as (C, OH*OW)::

      y[n] = W @ X[n]        dX[n] = W.T @ dy[n]        dW = sum_n dy[n] @ X[n].T

  and the output comes out in (N, O, OH, OW) order with no transpose.

Every other convolution goes through one door to ``npresnet.engine.conv``, which may compute the
same products another way (in cache-sized chunks of samples, a slice of the batch per thread, the
direct 3x3 kernels, Winograd's F(2x2, 3x3)) and equals :func:`im2col_gemm` and
:func:`im2col_gemm_backward` below to rounding. ``npresnet.engine.conv_dispatch`` says which way
runs for which layer.

Every GEMM is a plain 2-D product of C-contiguous matrices (or their .T views), which BLAS runs at
full speed; a batched matmul over a transposed 3-D view can fall off BLAS onto a slow loop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import get_array_module
from ..checks import check_grad_like, check_like, check_nchw, pair
from ..engine import conv as conv_engine
from .im2col import col2im, conv_output_size, im2col

__all__ = ["ConvCache", "conv2d_backward", "conv2d_forward", "im2col_gemm", "im2col_gemm_backward", "output_size"]


class ConvCache(NamedTuple):
    x: Any  # (N, C, H, W) the input; for a 1x1 conv its strided samples (N, C, OH, OW)
    weight: Any  # (O, Cg, KH, KW)
    x_shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    has_bias: bool
    pointwise: bool  # True: 1x1, no padding, one group -> no im2col (see module docstring)
    plan: Any  # the engine's notes for the backward (npresnet.engine.conv.Plan); None for a 1x1 conv


def conv2d_forward(
    x: Any,
    weight: Any,
    bias: Any | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> tuple[Any, ConvCache]:
    """y = conv2d(x, weight) + bias, like ``torch.nn.functional.conv2d``.

    Args:
        x: (N, C, H, W). weight: (O, C/G, KH, KW). bias: (O,) or None.

    Returns:
        y: (N, O, OH, OW) and the cache for :func:`conv2d_backward`.
    """
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    OH, OW = check_conv2d(x, weight, bias, stride, padding, dilation, groups)
    N, C, H, W = x.shape
    O = weight.shape[0]
    xp = get_array_module(x)
    plan, pointwise = None, _is_pointwise(weight.shape[2:], padding, groups)
    if pointwise:  # y[n] = W @ X[n]: the input is its own columns
        x_used = x if stride == (1, 1) else xp.ascontiguousarray(x[:, :, :: stride[0], :: stride[1]])
        y = xp.matmul(weight.reshape(O, C), x_used.reshape(N, C, OH * OW)).reshape(N, O, OH, OW)
    else:  # y = im2col_gemm(x, weight, ...)
        x_used = x
        # The engine may compute this product another way; every way equals im2col_gemm to rounding.
        y, plan = conv_engine.forward(x, weight, stride=stride, padding=padding, dilation=dilation, groups=groups)
    if bias is not None:
        y += bias.reshape(1, O, 1, 1)
    cache = ConvCache(
        x_used, weight, (N, C, H, W), stride, padding, dilation, groups, bias is not None, pointwise, plan
    )
    return y, cache


def im2col_gemm(
    x: Any, weight: Any, stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], groups: int
) -> Any:
    """The forward's definition, for the n samples of x: Y[g] = W[g] @ cols[g] -> y (n, O, OH, OW)."""
    xp = get_array_module(x)
    n = x.shape[0]
    O, Cg, KH, KW = weight.shape
    G, K = groups, Cg * KH * KW
    cols = im2col(x, (KH, KW), stride, padding, dilation)  # (C, KH, KW, n, OH, OW)
    OH, OW = cols.shape[-2:]
    Y = _grouped_matmul(weight.reshape(G, O // G, K), cols.reshape(G, K, n * OH * OW), xp)  # (G, Og, n*OH*OW)
    return Y.reshape(O, n, OH, OW).transpose(1, 0, 2, 3)


def conv2d_backward(
    dout: Any, cache: ConvCache, need_input_grad: bool = True, need_weight_grad: bool = True
) -> tuple[Any | None, Any | None, Any | None]:
    """Gradients of a convolution.

    Args:
        dout: (N, O, OH, OW) upstream gradient dL/dy.
        cache: from :func:`conv2d_forward`.
        need_input_grad / need_weight_grad: skip the GEMM whose result is not wanted.

    Returns:
        dx (N, C, H, W), dweight (O, C/G, KH, KW), dbias (O,) or None (for no bias / not needed).
    """
    N, C, H, W = cache.x_shape
    O = cache.weight.shape[0]
    OH, OW = output_size(cache.x_shape, cache.weight.shape, cache.stride, cache.padding, cache.dilation)
    check_grad_like(dout, (N, O, OH, OW), cache.weight, "conv2d")
    xp = get_array_module(dout)
    dbias = dout.sum(axis=(0, 2, 3)) if cache.has_bias and need_weight_grad else None
    if cache.pointwise:
        dx, dweight = _pointwise_backward(dout, cache, need_input_grad, need_weight_grad, xp)
    else:  # dx, dweight = im2col_gemm_backward(dout, cache.x, cache, ...)
        # The engine may compute these products another way; every way equals im2col_gemm_backward to rounding.
        dx, dweight = conv_engine.gradients(
            dout, cache, need_input_grad=need_input_grad, need_weight_grad=need_weight_grad
        )
    return dx, dweight, dbias


def im2col_gemm_backward(
    dout: Any, x: Any, cache: ConvCache, need_input_grad: bool = True, need_weight_grad: bool = True
) -> tuple[Any | None, Any | None]:
    """The backward's definition, for the n samples of dout (n, O, OH, OW) and their input x:
    (dx (n, C, H, W), this batch's dweight), each None when not needed."""
    xp = get_array_module(dout)
    n, O, OH, OW = dout.shape
    C, H, W = cache.x_shape[1:]
    _, Cg, KH, KW = cache.weight.shape
    G, K, L = cache.groups, Cg * KH * KW, n * OH * OW
    geometry = (cache.stride, cache.padding, cache.dilation)
    dY = xp.ascontiguousarray(dout.transpose(1, 0, 2, 3)).reshape(G, O // G, L)  # regrouped like Y
    dx = dweight = None
    if need_weight_grad:
        cols = im2col(x, (KH, KW), *geometry).reshape(G, K, L)
        dweight = _grouped_matmul(dY, cols, xp, transpose_b=True).reshape(cache.weight.shape)  # dW = dY @ cols.T
    if need_input_grad:
        dcols = _grouped_matmul(cache.weight.reshape(G, O // G, K), dY, xp, transpose_a=True)  # dcols = W.T @ dY
        dx = col2im(dcols.reshape(C, KH, KW, n, OH, OW), (n, C, H, W), *geometry)  # dx = col2im(dcols)
    return dx, dweight


def _pointwise_backward(
    dout: Any, cache: ConvCache, need_input_grad: bool, need_weight_grad: bool, xp: Any
) -> tuple[Any | None, Any | None]:
    """Backward of a 1x1 convolution with X = the cached strided input (N, C, OH, OW)::

    dX[n] = W.T @ dy[n]        dW = sum_n dy[n] @ X[n].T        (dx = dX scattered back at the stride)
    """
    N, C, H, W = cache.x_shape
    O = cache.weight.shape[0]
    x_used = cache.x
    OH, OW = x_used.shape[2:]
    dout3 = xp.ascontiguousarray(dout).reshape(N, O, OH * OW)
    x3 = x_used.reshape(N, C, OH * OW)
    dx = dweight = None
    if need_weight_grad:
        dweight = dout3[0] @ x3[0].T
        for n in range(1, N):
            dweight += dout3[n] @ x3[n].T
        dweight = dweight.reshape(O, C, 1, 1)
    if need_input_grad:
        weight_t = xp.ascontiguousarray(cache.weight.reshape(O, C).T)  # (C, O)
        dx_used = xp.matmul(weight_t, dout3).reshape(N, C, OH, OW)
        if cache.stride == (1, 1):
            dx = dx_used
        else:
            dx = xp.zeros(cache.x_shape, dtype=dout.dtype)
            dx[:, :, :: cache.stride[0], :: cache.stride[1]] = dx_used
    return dx, dweight


def _grouped_matmul(a: Any, b: Any, xp: Any, transpose_a: bool = False, transpose_b: bool = False) -> Any:
    """out[g] = op(a[g]) @ op(b[g]) for each group g, each a 2-D BLAS GEMM. a, b: (G, ., .)."""
    products = []
    for g in range(a.shape[0]):
        left = a[g].T if transpose_a else a[g]
        right = b[g].T if transpose_b else b[g]
        products.append(left @ right)
    return products[0][None] if len(products) == 1 else xp.stack(products)


def _is_pointwise(kernel: tuple[int, int], padding: tuple[int, int], groups: int) -> bool:
    return tuple(kernel) == (1, 1) and padding == (0, 0) and groups == 1


def output_size(
    x_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """(OH, OW) of a convolution of an (N, C, H, W) input with an (O, Cg, KH, KW) weight."""
    (H, W), (KH, KW) = x_shape[2:], weight_shape[2:]
    return (
        conv_output_size(H, KH, stride[0], padding[0], dilation[0]),
        conv_output_size(W, KW, stride[1], padding[1], dilation[1]),
    )


def check_conv2d(
    x: Any,
    weight: Any,
    bias: Any | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> tuple[int, int]:
    """Validate conv2d's arguments (a clear error naming what was expected and what came); returns (OH, OW)."""
    check_nchw(x, None, "input", "conv2d")
    check_like(x, weight, "input", "conv2d weight")
    if weight.ndim != 4:
        raise ValueError(f"conv2d weight must be 4-D (O, C/groups, KH, KW), got shape {tuple(weight.shape)}")
    O, Cg, KH, KW = weight.shape
    G = groups
    if G < 1 or O % G:
        raise ValueError(f"groups={G} must be >= 1 and divide out_channels={O}")
    if Cg * G != x.shape[1]:
        hint = " (is it NHWC? npresnet uses NCHW)" if x.shape[-1] == Cg * G else ""
        raise ValueError(
            f"conv2d expects input with {Cg * G} channels in dim 1 (weight {tuple(weight.shape)}, "
            f"groups={G}), got input of shape {tuple(x.shape)}{hint}"
        )
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"conv2d needs stride>=1, dilation>=1, padding>=0; got {stride}, {dilation}, {padding}")
    OH, OW = output_size(x.shape, weight.shape, stride, padding, dilation)
    if OH < 1 or OW < 1:
        H, W = x.shape[2:]
        raise ValueError(
            f"conv2d input of spatial size {H}x{W} (padding {padding}) is smaller than the "
            f"dilated kernel {dilation[0] * (KH - 1) + 1}x{dilation[1] * (KW - 1) + 1}"
        )
    if bias is not None:
        check_like(bias, weight, "bias", "conv2d weight")
        if tuple(bias.shape) != (O,):
            raise ValueError(f"conv2d bias must have shape ({O},), got {tuple(bias.shape)}")
    return OH, OW
