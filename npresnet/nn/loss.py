"""``CrossEntropyLoss`` from logits (see ``npresnet.functional.loss``).

Shapes: logits z (N, K), target (N,) class indices; the loss is a scalar (``reduction="mean"``
or ``"sum"``) or (N,) (``"none"``). With p = softmax(z) and the target distribution q (one-hot,
or smoothed: (1 - s) one-hot + s / K)::

    loss_n = -sum_k q[n, k] log p[n, k]

Backward: dloss_n / dz[n] = p[n] - q[n]; divided by N for the mean, times the upstream
gradient ``dout`` (1 by default).
"""

from __future__ import annotations

from typing import Any

from .. import functional as F
from ..backend import get_array_module
from .module import Module


class CrossEntropyLoss(Module):
    """Like ``torch.nn.CrossEntropyLoss``: ``loss = criterion(logits (N, K), target (N,))``.

    ``criterion.backward()`` returns dloss/dlogits (N, K) for an upstream gradient of 1
    (or ``dout``).
    """

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in F.loss.REDUCTIONS:
            raise ValueError(f"reduction must be one of {F.loss.REDUCTIONS}, got {reduction!r}")
        self.label_smoothing, self.reduction = label_smoothing, reduction

    def forward(self, logits: Any, target: Any) -> Any:
        xp = get_array_module(logits)
        if not hasattr(target, "dtype"):  # a Python list of class indices
            target = xp.asarray(target)
        loss, cache = F.cross_entropy_forward(logits, target, self.label_smoothing, self.reduction)
        self._save_for_backward(cache)
        return loss

    def backward(self, dout: Any = 1.0) -> Any:
        return F.cross_entropy_backward(dout, self._pop_cache())

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"
