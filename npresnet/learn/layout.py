"""im2col and col2im in the exercises' 2-D column layout, computed by npresnet.functional.

The exercises lay the columns out as a matrix (C*KH*KW, N*OH*OW): row (c*KH + a)*KW + e, column
(n*OH + i)*OW + j. npresnet.functional.im2col returns the same numbers as a 6-D array (C, KH, KW,
N, OH, OW), and this module only reshapes. The conv exercise may import these (or the learner's own
im2col.py, once it passes).
"""

from __future__ import annotations

from typing import Any

from .. import functional as F


def output_size(size: int, k: int, s: int, p: int) -> int:
    """(size + 2p - k) // s + 1: the number of windows along one axis."""
    return (size + 2 * p - k) // s + 1


def im2col(x: Any, kh: int, kw: int, s: int, p: int) -> Any:
    """x (N, C, H, W) -> cols (C*kh*kw, N*OH*OW)."""
    N, C, H, W = x.shape
    cols = F.im2col(x, (kh, kw), (s, s), (p, p), (1, 1))
    return cols.reshape(C * kh * kw, N * output_size(H, kh, s, p) * output_size(W, kw, s, p))


def col2im(cols: Any, x_shape: tuple[int, int, int, int], kh: int, kw: int, s: int, p: int) -> Any:
    """cols (C*kh*kw, N*OH*OW) -> (N, C, H, W), overlapping entries added."""
    N, C, H, W = x_shape
    OH, OW = output_size(H, kh, s, p), output_size(W, kw, s, p)
    blocks = cols.reshape(C, kh, kw, N, OH, OW)
    return F.col2im(blocks, (N, C, H, W), (s, s), (p, p), (1, 1))
