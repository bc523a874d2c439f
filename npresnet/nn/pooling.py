"""Pooling layers (see ``npresnet.functional.pooling`` for the math and tie rules).

Shapes: x (N, C, H, W) -> y (N, C, OH, OW), one window per output cell, per channel.

MaxPool2d: y = max over the window (padding is -inf). Backward routes the whole gradient of each
window to its argmax (the first maximum in scan order, as PyTorch): dx[argmax] += g; every other
cell gets nothing from that window. Overlapping windows accumulate.

AvgPool2d: y = sum over the window / divisor (k*k with ``count_include_pad``). Backward shares the
gradient equally: each cell of the window gets g / divisor.

AdaptiveAvgPool2d: windows chosen to give a fixed output size; (1, 1) is the global average of a
ResNet's head, whose backward is dx = g / (H*W) broadcast over the map.
"""

from __future__ import annotations

from typing import Any

from .. import functional as F
from ..checks import pair
from .module import Module


class MaxPool2d(Module):
    """Like ``torch.nn.MaxPool2d``: (N, C, H, W) -> (N, C, OH, OW); pads with -inf; ties go to the
    first maximum in the window's scan order."""

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    def forward(self, x: Any) -> Any:
        y, cache = F.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        self._save_for_backward(cache)
        return y

    def backward(self, dout: Any) -> Any:
        return F.maxpool2d_backward(dout, self._pop_cache())

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )


class AvgPool2d(Module):
    """Like ``torch.nn.AvgPool2d`` (``count_include_pad=True`` by default)."""

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    def forward(self, x: Any) -> Any:
        y, cache = F.avgpool2d_forward(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )
        self._save_for_backward(cache)
        return y

    def backward(self, dout: Any) -> Any:
        return F.avgpool2d_backward(dout, self._pop_cache())

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Like ``torch.nn.AdaptiveAvgPool2d``; ``AdaptiveAvgPool2d(1)`` is ResNet's global average pool."""

    def __init__(self, output_size: int | tuple[int, int] = 1) -> None:
        super().__init__()
        self.output_size = pair(output_size, "output_size")

    def forward(self, x: Any) -> Any:
        y, cache = F.adaptive_avgpool2d_forward(x, self.output_size)
        self._save_for_backward(cache)
        return y

    def backward(self, dout: Any) -> Any:
        return F.adaptive_avgpool2d_backward(dout, self._pop_cache())

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
