"""Batch normalisation over (N, H, W) for each channel, with PyTorch's exact semantics.

Notation: x (N, C, H, W); statistics per channel over n = N*H*W values.

Forward (training)::

    mu    = mean(x)                     over N, H, W
    var   = mean((x - mu)^2)            biased: divide by n (used to normalise)
    invstd = 1 / sqrt(var + eps)        eps inside the square root
    x_hat = (x - mu) * invstd
    y     = gamma * x_hat + beta
    running_mean = (1 - m) * running_mean + m * mu
    running_var  = (1 - m) * running_var  + m * var * n / (n - 1)      unbiased!

In evaluation mode mu and var are the running statistics, which are constants, so the whole
layer folds into one multiply-add per element (as PyTorch's CPU inference path does)::

    scale = gamma * invstd,   shift = beta - mu * scale,   y = x * scale + shift

Backward (training), with g = dL/dy and means over N, H, W::

    dbeta  = sum(g)
    dgamma = sum(g * x_hat)
    dx     = gamma * invstd * (g - mean(g) - x_hat * mean(g * x_hat))

The two subtracted terms are the gradient flowing through mu and var: every x moves the batch
statistics. They are why a ``sum(y)`` loss gives dx == 0 (mean(g) = g, and mean(x_hat) = 0), and
why a BatchNorm gradient check needs a *random* upstream gradient.
In evaluation mode mu and var do not depend on x, so dx = gamma * invstd * g.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import kernels
from ..backend import get_array_module
from ..checks import check_grad_like, check_like, check_nchw

_AXES = (0, 2, 3)  # reduce over N, H, W; keep C


def _per_channel(v: Any) -> Any:
    """(C,) -> (1, C, 1, 1) so it broadcasts against (N, C, H, W)."""
    return v.reshape(1, -1, 1, 1)


class BatchNormCache(NamedTuple):
    x_hat: Any          # (N, C, H, W) normalised input (training), or None (evaluation: see x, mean)
    invstd: Any         # (C,) 1 / sqrt(var + eps)
    weight: Any | None  # (C,) gamma, or None when affine=False
    batch_stats: bool   # True if mu/var came from this batch (they then depend on x)
    x: Any = None       # evaluation mode only: the input, so backward can rebuild x_hat for dgamma
    mean: Any = None    # evaluation mode only: the running mean used


def batchnorm2d_forward(x: Any, weight: Any | None, bias: Any | None, running_mean: Any | None,
                        running_var: Any | None, training: bool, momentum: float = 0.1,
                        eps: float = 1e-5) -> tuple[Any, BatchNormCache]:
    """Like ``torch.nn.functional.batch_norm`` on an (N, C, H, W) input.

    Args:
        x: (N, C, H, W). weight, bias: (C,) or None. running_mean, running_var: (C,) or None.
        training: use (and update, if given) batch statistics; otherwise use the running ones.
        momentum: the weight of the new batch statistic in the running average (PyTorch's
            convention, *not* Keras'). ``nn.BatchNorm2d`` passes 1/num_batches_tracked here
            for ``momentum=None`` (cumulative average).

    Returns:
        y (N, C, H, W) and the cache. The running statistics are updated *in place*.
    """
    check_nchw(x, None, "input", "batch_norm")
    C = x.shape[1]
    for name, v in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if v is not None:
            check_like(x, v, "input", f"batch_norm {name}")
            if tuple(v.shape) != (C,):
                raise ValueError(f"batch_norm {name} must have shape ({C},) for input {tuple(x.shape)}, "
                                 f"got {tuple(v.shape)}")
    xp = get_array_module(x)
    fast = kernels.get("batchnorm2d_train_forward", x) if training else None
    if training:
        n = x.size // C
        if n <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input of shape "
                             f"{tuple(x.shape)}")
    if fast is not None:                             # one fused pass for the statistics, one for y
        y, x_hat, mean, var, invstd = fast(x, weight, bias, eps)
        _update_running(running_mean, running_var, mean, var, momentum, n)
        return y, BatchNormCache(x_hat, invstd, weight, training)
    if training:
        mean = x.mean(axis=_AXES)
        centred = x - _per_channel(mean)
        var = (centred * centred).mean(axis=_AXES)                     # biased
        _update_running(running_mean, running_var, mean, var, momentum, n)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm in evaluation mode needs running_mean and running_var")
        invstd = 1.0 / xp.sqrt(running_var + eps)
        scale = invstd if weight is None else weight * invstd
        shift = -running_mean * scale if bias is None else bias - running_mean * scale
        y = x * _per_channel(scale)
        y += _per_channel(shift)
        return y, BatchNormCache(None, invstd, weight, False, x, running_mean.copy())
    invstd = 1.0 / xp.sqrt(var + eps)
    x_hat = centred * _per_channel(invstd)
    y = x_hat * _per_channel(weight) if weight is not None else x_hat.copy()
    if bias is not None:
        y += _per_channel(bias)
    return y, BatchNormCache(x_hat, invstd, weight, training)


def _update_running(running_mean: Any | None, running_var: Any | None, mean: Any, var: Any, momentum: float,
                    n: int) -> None:
    """running = (1 - momentum) * running + momentum * batch statistic, in place; var made unbiased."""
    if running_mean is not None:
        running_mean *= 1 - momentum
        running_mean += momentum * mean
    if running_var is not None:
        running_var *= 1 - momentum
        running_var += momentum * (var * (n / (n - 1)))                 # unbiased


def batchnorm2d_backward(dout: Any, cache: BatchNormCache) -> tuple[Any, Any, Any]:
    """Gradients of batch normalisation (see the module docstring for the math).

    Args:
        dout: (N, C, H, W) upstream gradient.

    Returns:
        dx (N, C, H, W), dweight (C,), dbias (C,).
    """
    x_hat, invstd, weight = cache.x_hat, cache.invstd, cache.weight
    if x_hat is None:                                # evaluation mode: rebuild x_hat from x
        x_hat = (cache.x - _per_channel(cache.mean)) * _per_channel(invstd)
    check_grad_like(dout, x_hat.shape, x_hat, "batch_norm")
    fast = kernels.get("batchnorm2d_train_backward", dout) if cache.batch_stats else None
    if fast is not None:
        return fast(dout, x_hat, invstd, weight)
    dbias = dout.sum(axis=_AXES)
    dweight = (dout * x_hat).sum(axis=_AXES)
    scale = invstd if weight is None else weight * invstd
    if cache.batch_stats:
        n = x_hat.size // x_hat.shape[1]
        dx = dout - _per_channel(dbias / n) - x_hat * _per_channel(dweight / n)
        dx *= _per_channel(scale)
    else:
        dx = dout * _per_channel(scale)
    return dx, dweight, dbias
