"""``Dropout``: inverted dropout, seeded, the identity in evaluation mode.

Shapes: any; y has the shape of x. Training: keep each element with probability 1 - p and scale
the kept ones by 1 / (1 - p), so E[y] = x::

    mask = (u >= p) / (1 - p),   y = x * mask

Backward: dx = g * mask (the same mask; in evaluation mode, dx = g).
"""

from __future__ import annotations

from typing import Any

from .. import functional as F
from ..backend import backend_name, get_array_module
from .module import Module


class Dropout(Module):
    """Like ``torch.nn.Dropout(p)``. ``seed`` makes the masks reproducible."""

    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p, self.seed = p, seed
        self._rngs: dict[str, Any] = {}

    def _rng(self, x: Any) -> Any:
        """One generator per backend, created on first use from ``seed``."""
        name = backend_name(x)
        if name not in self._rngs:
            self._rngs[name] = get_array_module(x).random.default_rng(self.seed)
        return self._rngs[name]

    def forward(self, x: Any) -> Any:
        y, mask = F.dropout_forward(x, self.p, self.training, self._rng(x) if self.training else None)
        self._save_for_backward((mask,))
        return y

    def backward(self, dout: Any) -> Any:
        (mask,) = self._pop_cache()
        return F.dropout_backward(dout, mask)

    def extra_repr(self) -> str:
        return f"p={self.p}"
