"""``ReLU``: y = max(x, 0); its gradient is 0 where x <= 0 (see ``npresnet.functional.activation``)."""

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
