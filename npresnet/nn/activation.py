"""``ReLU``: y = max(x, 0), elementwise (see ``npresnet.functional.activation``).

Shapes: any; y has the shape of x.

Backward: the Jacobian is diagonal, 1 where x > 0 and 0 elsewhere (0 at x == 0 exactly, as
PyTorch), so with g = dL/dy::

    dx = g * (x > 0)

The cache is the boolean mask. Gradient checks need inputs away from 0 (``testing.kink_free``):
a central difference across the kink gives 0.5 there.
"""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .module import Module


class ReLU(Module):
    """Like ``torch.nn.ReLU``. Any input shape."""

    def forward(self, x: Any) -> Any:
        y, cache = F.relu_forward(x)
        self._save_for_backward(cache)
        return y

    def backward(self, dout: Any) -> Any:
        return F.relu_backward(dout, self._pop_cache())
