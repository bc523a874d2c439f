"""``Linear`` and ``Flatten`` (see ``npresnet.functional.linear``).

Linear: x (*, in), weight W (out, in), bias b (out,), y (*, out); y = x W^T + b. Backward with
the leading dimensions flattened to a batch of n rows, g = dL/dy (n, out)::

    dx = g W    (n, in)        dW = g^T x    (out, in)        db = sum over rows of g    (out,)

Flatten: (N, C, H, W) -> (N, C*H*W), a reshape; backward reshapes g back to (N, C, H, W).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import functional as F
from ..checks import check_floating, check_like
from .module import Module, new_parameter


class Linear(Module):
    """Like ``torch.nn.Linear``: (*, in_features) -> (*, out_features); weight (out, in).

    Initialised as PyTorch does: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias, from ``rng``.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        rng = rng if rng is not None else np.random.default_rng()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = new_parameter(rng.uniform(-bound, bound, (out_features, in_features)))
        self.bias = new_parameter(rng.uniform(-bound, bound, out_features)) if bias else None

    def forward(self, x: Any) -> Any:
        check_floating(x, "Linear input")
        check_like(x, self.weight.data, "input", "Linear parameters")
        bias = self.bias.data if self.bias is not None else None
        y, cache = F.linear_forward(x, self.weight.data, bias)
        self._save_for_backward(cache)
        return y

    def backward(self, dout: Any) -> Any:
        cache = self._pop_cache()
        wants_param_grad = self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
        dx, dweight, dbias = F.linear_backward(dout, cache, need_weight_grad=wants_param_grad)
        self.weight.accumulate_grad(dweight)
        if self.bias is not None:
            self.bias.accumulate_grad(dbias)
        return dx

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(Module):
    """Like ``torch.nn.Flatten``: (N, C, H, W) -> (N, C*H*W) for ``start_dim=1``."""

    def __init__(self, start_dim: int = 1) -> None:
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x: Any) -> Any:
        y, cache = F.flatten_forward(x, self.start_dim)
        self._save_for_backward(cache)
        return y

    def backward(self, dout: Any) -> Any:
        return F.flatten_backward(dout, self._pop_cache())
