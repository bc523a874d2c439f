"""Inverted dropout: zero each value with probability p and scale the survivors by 1/(1-p).

Training: y = x * mask, mask[i] = (u[i] >= p) / (1 - p) with u uniform in [0, 1).
The scaling keeps E[y] = x, so evaluation mode is simply the identity.
Backward: dx = dy * mask (the same mask).
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from ..checks import check_floating, check_grad_like


def dropout_forward(x: Any, p: float, training: bool, rng: Any) -> tuple[Any, Any]:
    """x any shape; rng a ``numpy``/``cupy`` ``random.Generator``. Returns (y, mask or None)."""
    check_floating(x, "dropout input")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x, None
    xp = get_array_module(x)
    if p == 1.0:
        mask = xp.zeros_like(x)
    else:
        mask = (rng.random(x.shape, dtype=x.dtype) >= p).astype(x.dtype) / x.dtype.type(1.0 - p)
    return x * mask, mask


def dropout_backward(dout: Any, mask: Any) -> Any:
    """dx = dout * mask (identity when the forward dropped nothing)."""
    if mask is None:
        return dout
    check_grad_like(dout, mask.shape, mask, "dropout")
    return dout * mask
