"""``BatchNorm2d`` with PyTorch's exact semantics (see ``npresnet.functional.batchnorm``).

Shapes: x, y (N, C, H, W); weight gamma, bias beta, running_mean, running_var (C,). Statistics per
channel over m = N*H*W values; training normalises with the biased batch variance::

    x_hat = (x - mean) / sqrt(var + eps),    y = gamma * x_hat + beta

Backward (training), g = dL/dy, means over N, H, W::

    dbeta  = sum(g)             dgamma = sum(g * x_hat)
    dx     = gamma / sqrt(var + eps) * (g - mean(g) - x_hat * mean(g * x_hat))

The two subtracted terms are the paths through the batch mean and variance. For g = ones,
g - mean(g) = 0 and mean(g * x_hat) = 0, so dx == 0 (and dgamma == 0): a ``sum(y)`` gradient
check is vacuous; use a random g.
In evaluation mode the statistics are constants and dx = gamma / sqrt(running_var + eps) * g.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from ..checks import check_like, check_nchw
from .module import Module, new_buffer, new_parameter


class BatchNorm2d(Module):
    """Like ``torch.nn.BatchNorm2d``. Input and output (N, C, H, W).

    Parameters ``weight`` (gamma, ones) and ``bias`` (beta, zeros) if ``affine``; buffers
    ``running_mean`` (zeros), ``running_var`` (ones) and ``num_batches_tracked`` (int64, 0) if
    ``track_running_stats``. ``momentum=None`` makes the running statistics a cumulative average.
    Training normalises with batch statistics; evaluation uses the running ones (or batch
    statistics when they are not tracked).
    """

    # Buffers (registered in __init__; None without track_running_stats): arrays on the module's backend.
    running_mean: Any
    running_var: Any
    num_batches_tracked: Any

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = new_parameter(np.ones(num_features)) if affine else None
        self.bias = new_parameter(np.zeros(num_features)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", new_buffer(np.zeros(num_features, dtype=np.float32)))
            self.register_buffer("running_var", new_buffer(np.ones(num_features, dtype=np.float32)))
            self.register_buffer("num_batches_tracked", new_buffer(np.array(0, dtype=np.int64)))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x: Any) -> Any:
        check_nchw(x, self.num_features, "input", "BatchNorm2d")
        weight = self.weight.data if self.weight is not None else None  # None unless affine
        bias = self.bias.data if self.bias is not None else None
        reference = weight if weight is not None else self.running_mean
        if reference is not None:
            check_like(x, reference, "input", "BatchNorm2d parameters")
        update_running = self.training and self.track_running_stats
        momentum = self.momentum
        if update_running and momentum is None:  # cumulative moving average
            momentum = 1.0 / (int(self.num_batches_tracked) + 1)
        y, cache = F.batchnorm2d_forward(
            x,
            weight,
            bias,
            self.running_mean,
            self.running_var,
            training=self.training or not self.track_running_stats,
            momentum=momentum if momentum is not None else 0.0,
            eps=self.eps,
        )
        if update_running:
            self.num_batches_tracked += 1
        self._save_for_backward(cache)
        return y

    def backward(self, dout: Any) -> Any:
        dx, dweight, dbias = F.batchnorm2d_backward(dout, self._pop_cache())
        if self.weight is not None and self.bias is not None:  # affine
            self.weight.accumulate_grad(dweight)
            self.bias.accumulate_grad(dbias)
        return dx

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )
