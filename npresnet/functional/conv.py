"""2-D convolution (cross-correlation, as in PyTorch) as im2col + one batched GEMM.

Notation: N batch, C input channels, O output channels, G groups, Cg = C/G and Og = O/G channels
per group, H x W input, KH x KW kernel, OH x OW output, L = N*OH*OW output pixels.

Forward, per group g (weight is (O, Cg, KH, KW), PyTorch's OIHW layout, no kernel flip)::

    cols = im2col(x)                                # (C, KH, KW, N, OH, OW)
    Y[g] = W[g] @ cols[g]                           # (Og, Cg*KH*KW) @ (Cg*KH*KW, L) -> (Og, L)
    y[n, o, oh, ow] = Y[o, n*OH*OW + oh*OW + ow] + b[o]

Backward, given dY = dL/dy regrouped to (G, Og, L)::

    dW[g]    = dY[g] @ cols[g].T                    # (Og, L) @ (L, Cg*KH*KW)
    dcols[g] = W[g].T @ dY[g]                       # (Cg*KH*KW, Og) @ (Og, L)
    dx       = col2im(dcols)                        # adjoint of im2col: accumulate overlaps
    db       = sum of dy over N, OH, OW
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import get_array_module
from ..checks import check_grad_like, check_like, check_nchw, pair
from .im2col import col2im, conv_output_size, im2col


class ConvCache(NamedTuple):
    cols: Any                       # (C, KH, KW, N, OH, OW) im2col of the input
    weight: Any                     # (O, Cg, KH, KW)
    x_shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    has_bias: bool


def conv2d_forward(x: Any, weight: Any, bias: Any | None = None, stride: int | tuple[int, int] = 1,
                   padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                   groups: int = 1) -> tuple[Any, ConvCache]:
    """y = conv2d(x, weight) + bias, like ``torch.nn.functional.conv2d``.

    Args:
        x: (N, C, H, W). weight: (O, C/G, KH, KW). bias: (O,) or None.

    Returns:
        y: (N, O, OH, OW) and the cache for :func:`conv2d_backward`.
    """
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    check_nchw(x, None, "input", "conv2d")
    check_like(x, weight, "input", "conv2d weight")
    if weight.ndim != 4:
        raise ValueError(f"conv2d weight must be 4-D (O, C/groups, KH, KW), got shape {tuple(weight.shape)}")
    N, C, H, W = x.shape
    O, Cg, KH, KW = weight.shape
    G = groups
    if G < 1 or O % G:
        raise ValueError(f"groups={G} must be >= 1 and divide out_channels={O}")
    if Cg * G != C:
        hint = " (is it NHWC? npresnet uses NCHW)" if x.shape[-1] == Cg * G else ""
        raise ValueError(
            f"conv2d expects input with {Cg * G} channels in dim 1 (weight {tuple(weight.shape)}, "
            f"groups={G}), got input of shape {tuple(x.shape)}{hint}"
        )
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"conv2d needs stride>=1, dilation>=1, padding>=0; got {stride}, {dilation}, {padding}")
    OH = conv_output_size(H, KH, stride[0], padding[0], dilation[0])
    OW = conv_output_size(W, KW, stride[1], padding[1], dilation[1])
    if OH < 1 or OW < 1:
        raise ValueError(
            f"conv2d input of spatial size {H}x{W} (padding {padding}) is smaller than the "
            f"dilated kernel {dilation[0] * (KH - 1) + 1}x{dilation[1] * (KW - 1) + 1}"
        )
    if bias is not None:
        check_like(bias, weight, "bias", "conv2d weight")
        if tuple(bias.shape) != (O,):
            raise ValueError(f"conv2d bias must have shape ({O},), got {tuple(bias.shape)}")
    xp = get_array_module(x)

    cols = im2col(x, (KH, KW), stride, padding, dilation)            # (C, KH, KW, N, OH, OW)
    cols_g = cols.reshape(G, Cg * KH * KW, N * OH * OW)
    weight_g = weight.reshape(G, O // G, Cg * KH * KW)
    y = xp.matmul(weight_g, cols_g)                                  # (G, Og, L)
    y = xp.ascontiguousarray(y.reshape(O, N, OH, OW).transpose(1, 0, 2, 3))
    if bias is not None:
        y += bias.reshape(1, O, 1, 1)
    return y, ConvCache(cols, weight, (N, C, H, W), stride, padding, dilation, G, bias is not None)


def conv2d_backward(dout: Any, cache: ConvCache, need_input_grad: bool = True,
                    need_weight_grad: bool = True) -> tuple[Any | None, Any | None, Any | None]:
    """Gradients of a convolution.

    Args:
        dout: (N, O, OH, OW) upstream gradient dL/dy.
        cache: from :func:`conv2d_forward`.
        need_input_grad / need_weight_grad: skip the GEMM whose result is not wanted.

    Returns:
        dx (N, C, H, W), dweight (O, C/G, KH, KW), dbias (O,) or None (for no bias / not needed).
    """
    cols, weight, x_shape = cache.cols, cache.weight, cache.x_shape
    C, KH, KW, N, OH, OW = cols.shape
    O, Cg, _, _ = weight.shape
    G = cache.groups
    check_grad_like(dout, (N, O, OH, OW), weight, "conv2d")
    xp = get_array_module(dout)

    # dy regrouped like the forward GEMM's output: (N, O, OH, OW) -> (G, Og, N*OH*OW).
    dout_g = xp.ascontiguousarray(dout.transpose(1, 0, 2, 3)).reshape(G, O // G, N * OH * OW)
    cols_g = cols.reshape(G, Cg * KH * KW, N * OH * OW)
    weight_g = weight.reshape(G, O // G, Cg * KH * KW)

    dweight = dbias = dx = None
    if need_weight_grad:
        dweight = xp.matmul(dout_g, cols_g.transpose(0, 2, 1)).reshape(weight.shape)
        if cache.has_bias:
            dbias = dout.sum(axis=(0, 2, 3))
    if need_input_grad:
        dcols = xp.matmul(weight_g.transpose(0, 2, 1), dout_g)      # (G, Cg*KH*KW, L)
        dx = col2im(dcols.reshape(C, KH, KW, N, OH, OW), x_shape, cache.stride, cache.padding, cache.dilation)
    return dx, dweight, dbias
