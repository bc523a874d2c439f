"""``Conv2d``: a convolution layer (im2col + GEMM, see ``npresnet.functional.conv``).

Shapes: x (N, C, H, W), weight (O, C/G, KH, KW), bias (O,), y (N, O, OH, OW) with
OH = (H + 2 PH - DH (KH - 1) - 1) // SH + 1 (and likewise OW). With cols = im2col(x), a
(C*KH*KW, N*OH*OW) matrix of every window, the forward is one matrix product per group::

    y_mat = W_mat @ cols + bias           W_mat (O, C*KH*KW), y_mat (O, N*OH*OW)

Backward, g_mat = dL/dy as (O, N*OH*OW)::

    dW_mat = g_mat @ cols^T               dbias = sum of g over N, OH, OW
    dx     = col2im(W_mat^T @ g_mat)      col2im, the adjoint of im2col, adds overlapping windows
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import functional as F
from ..checks import check_like, check_nchw, pair
from .module import Module, new_parameter


class Conv2d(Module):
    """Like ``torch.nn.Conv2d``. Input (N, C, H, W) -> output (N, O, OH, OW).

    weight: (O, C/groups, KH, KW); bias: (O,). Initialised as PyTorch does:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = C/groups * KH * KW, from ``rng``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride, self.padding = pair(stride, "stride"), pair(padding, "padding")
        self.dilation = pair(dilation, "dilation")
        rng = rng if rng is not None else np.random.default_rng()
        fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = new_parameter(rng.uniform(-bound, bound, shape))
        self.bias = new_parameter(rng.uniform(-bound, bound, out_channels)) if bias else None

    def forward(self, x: Any) -> Any:
        check_nchw(x, self.in_channels, "input", "Conv2d")
        check_like(x, self.weight.data, "input", "Conv2d parameters")
        bias = self.bias.data if self.bias is not None else None
        y, cache = F.conv2d_forward(x, self.weight.data, bias, self.stride, self.padding, self.dilation, self.groups)
        self._save_for_backward(cache)
        return y

    def backward(self, dout: Any) -> Any:
        cache = self._pop_cache()
        wants_param_grad = self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
        dx, dweight, dbias = F.conv2d_backward(dout, cache, need_weight_grad=wants_param_grad)
        self.weight.accumulate_grad(dweight)
        if self.bias is not None:
            self.bias.accumulate_grad(dbias)
        return dx

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")
