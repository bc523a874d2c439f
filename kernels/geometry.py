"""Convolution and pooling geometry: the integer arithmetic that the kernels and ``npresnet.functional`` share.

Notation: N batch, C channels, H x W input, KH x KW kernel, SH x SW stride, PH x PW padding,
DH x DW dilation, OH x OW output.

This module imports nothing (not even NumPy), so every kernel module can use it without importing
the rest of npresnet: ``kernels/`` stays a leaf of the import graph, and ``npresnet.functional``
imports it as ``npresnet.kernels.geometry``. The array code on both sides (the NumPy/CuPy
references in ``npresnet.functional`` and the Numba kernels here) therefore agree on every shape
by construction.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["PoolGeometry", "cols_shape", "conv_output_size"]


def conv_output_size(
    size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil_mode: bool = False
) -> int:
    """Output length along one axis: ``floor((size + 2p - d(k-1) - 1) / s) + 1`` (PyTorch's rule).

    With ``ceil_mode`` the division rounds up, but the last window must start inside the input
    or the left padding (PyTorch's pooling rule).
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if span < 0:
        return 0
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


def cols_shape(
    x_shape: tuple[int, ...],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int, int, int, int, int]:
    """(C, KH, KW, N, OH, OW): the shape of ``im2col``'s columns for an input of shape (N, C, H, W)."""
    N, C, H, W = x_shape
    (KH, KW), (SH, SW), (PH, PW), (DH, DW) = kernel_size, stride, padding, dilation
    return C, KH, KW, N, conv_output_size(H, KH, SH, PH, DH), conv_output_size(W, KW, SW, PW, DW)


class PoolGeometry(NamedTuple):
    """A pooling layer's validated geometry (built by ``npresnet.functional.pooling.pool_geometry``)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out: tuple[int, int]  # (OH, OW)
    extra: tuple[int, int]  # extra bottom/right padding that ceil_mode windows reach into

    def kernel_args(self) -> tuple[int, int, int, int, int, int, int, int]:
        """(KH, KW, SH, SW, PH, PW, DH, DW): the scalar arguments of the compiled pooling kernels."""
        (KH, KW), (SH, SW), (PH, PW), (DH, DW) = self.kernel, self.stride, self.padding, self.dilation
        return KH, KW, SH, SW, PH, PW, DH, DW
