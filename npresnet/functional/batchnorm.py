"""Batch normalisation over (N, H, W) for each channel, with PyTorch's exact semantics.

Notation: x (N, C, H, W); statistics per channel over n = N*H*W values.

Forward (training)::

    mu    = mean(x)                     over N, H, W
    var   = mean((x - mu)^2)            biased: divide by n (used to normalise)
    invstd = 1 / sqrt(var + eps)        eps inside the square root
    x_hat = (x - mu) * invstd
    y     = gamma * x_hat + beta
    running_mean = (1 - momentum) * running_mean + momentum * mu
    running_var  = (1 - momentum) * running_var  + momentum * var * n / (n - 1)      unbiased!

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

import numpy as np

from .. import kernels
from ..backend import get_array_module
from ..checks import check_grad_like, check_like, check_nchw

_AXES = (0, 2, 3)  # reduce over N, H, W; keep C


def _per_channel(v: Any) -> Any:
    """(C,) -> (1, C, 1, 1) so it broadcasts against (N, C, H, W)."""
    return v.reshape(1, -1, 1, 1)


class BatchNormCache(NamedTuple):
    x_hat: Any  # (N, C, H, W) normalised input (training), or None (evaluation: see x, mean)
    invstd: Any  # (C,) 1 / sqrt(var + eps)
    weight: Any | None  # (C,) gamma, or None when affine=False
    batch_stats: bool  # True if mu/var came from this batch (they then depend on x)
    x: Any = None  # evaluation mode only: the input, so backward can rebuild x_hat for dgamma
    mean: Any = None  # evaluation mode only: the running mean used


def batchnorm2d_forward(
    x: Any,
    weight: Any | None,
    bias: Any | None,
    running_mean: Any | None,
    running_var: Any | None,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[Any, BatchNormCache]:
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
    for name, v in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if v is not None:
            check_like(x, v, "input", f"batch_norm {name}")
            if tuple(v.shape) != (C,):
                raise ValueError(
                    f"batch_norm {name} must have shape ({C},) for input {tuple(x.shape)}, got {tuple(v.shape)}"
                )
    xp = get_array_module(x)
    fast = kernels.get("batchnorm2d_train_forward", x) if training else None
    if training:
        n = x.size // C
        if n <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input of shape {tuple(x.shape)}"
            )
    if fast is not None:  # one fused pass for the statistics, one for y
        y, x_hat, mean, var, invstd = fast(x, weight, bias, eps)
        _update_running(running_mean, running_var, mean, var, momentum, n)
        return y, BatchNormCache(x_hat, invstd, weight, training)
    if training:
        n, mean, m2, centred = channel_moments(x)
        var = m2 / n  # biased
        _update_running(running_mean, running_var, mean, var, momentum, n)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm in evaluation mode needs running_mean and running_var")
        invstd = 1.0 / xp.sqrt(running_var + eps)
        scale = invstd if weight is None else weight * invstd
        shift = -running_mean * scale if bias is None else bias - running_mean * scale
        fast = kernels.get("channel_affine", x) if scale.dtype == shift.dtype == x.dtype else None
        if fast is not None:  # one pass instead of two, the same bits
            y = fast(x, scale, shift)
        else:
            y = x * _per_channel(scale)
            y += _per_channel(shift)
        return y, BatchNormCache(None, invstd, weight, False, x, running_mean.copy())
    invstd = 1.0 / xp.sqrt(var + eps)
    y, x_hat = affine_normalize(centred, invstd, weight, bias)
    return y, BatchNormCache(x_hat, invstd, weight, training)


# ---------------------------------------------------------------------------------------------- shared steps
# The pieces of the training-mode math that SyncBatchNorm (npresnet.distributed) shares: it computes
# the moments of each rank's part, combines them over the ranks, then normalises and differentiates
# exactly as here.
def channel_moments(x: Any) -> tuple[int, Any, Any, Any]:
    """Per-channel moments of x (N, C, H, W) over its n = N*H*W values per channel.

    Returns ``(n, mean, m2, centred)``: mean (C,), centred = x - mean (N, C, H, W), and
    m2 = sum(centred^2) (C,), the sum of squared deviations (biased var = m2 / n). An empty
    batch (n = 0) gives mean = m2 = 0.
    """
    xp = get_array_module(x)
    C = x.shape[1]
    n = x.size // C
    mean = x.mean(axis=_AXES) if n else xp.zeros(C, dtype=x.dtype)
    centred = x - _per_channel(mean)
    m2 = (centred * centred).sum(axis=_AXES)
    return n, mean, m2, centred


def combine_channel_moments(counts: np.ndarray, means: np.ndarray, m2s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and biased variance (C,) of the union of R parts, from each part's moments.

    counts (R,) n_r, means (R, C) mu_r, m2s (R, C) M2_r, as ``channel_moments`` gives them, in
    float64 NumPy; n = sum(counts) must be > 0. Chan et al.'s parallel combination::

        mu  = sum_r n_r mu_r / n
        M2  = sum_r M2_r + sum_r n_r (mu_r - mu)^2       (no cancellation, unlike E[x^2] - mu^2)
        var = M2 / n
    """
    n = counts.sum()
    mean = counts @ means / n
    var = (m2s.sum(axis=0) + counts @ (means - mean) ** 2) / n
    return mean, var


def affine_normalize(centred: Any, invstd: Any, weight: Any | None, bias: Any | None) -> tuple[Any, Any]:
    """(y, x_hat) from centred = x - mu (N, C, H, W) and invstd (C,): x_hat = centred * invstd,
    y = gamma * x_hat + beta (gamma, beta (C,) or None)."""
    x_hat = centred * _per_channel(invstd)
    y = x_hat * _per_channel(weight) if weight is not None else x_hat.copy()
    if bias is not None:
        y += _per_channel(bias)
    return y, x_hat


def grad_sums(dout: Any, x_hat: Any) -> tuple[Any, Any]:
    """(dbeta, dgamma) = (sum(g), sum(g * x_hat)) per channel (C,) over N, H, W, for g = dout (N, C, H, W)."""
    return dout.sum(axis=_AXES), (dout * x_hat).sum(axis=_AXES)


def batch_stats_input_grad(dout: Any, x_hat: Any, mean_g: Any, mean_gx: Any, scale: Any) -> Any:
    """dx = (g - mean(g) - x_hat * mean(g * x_hat)) * scale (N, C, H, W), with the means (C,) over
    the whole batch and scale = gamma * invstd (C,): the training-mode input gradient."""
    dx = dout - _per_channel(mean_g) - x_hat * _per_channel(mean_gx)
    dx *= _per_channel(scale)
    return dx


def _update_running(
    running_mean: Any | None, running_var: Any | None, mean: Any, var: Any, momentum: float, n: int
) -> None:
    """running = (1 - momentum) * running + momentum * batch statistic, in place; var made unbiased."""
    if running_mean is not None:
        running_mean *= 1 - momentum
        running_mean += momentum * mean
    if running_var is not None:
        running_var *= 1 - momentum
        running_var += momentum * (var * (n / (n - 1)))  # unbiased


def batchnorm2d_backward(dout: Any, cache: BatchNormCache) -> tuple[Any, Any, Any]:
    """Gradients of batch normalisation (see the module docstring for the math).

    Args:
        dout: (N, C, H, W) upstream gradient.

    Returns:
        dx (N, C, H, W), dweight (C,), dbias (C,).
    """
    x_hat, invstd, weight = cache.x_hat, cache.invstd, cache.weight
    if x_hat is None:  # evaluation mode: rebuild x_hat from x
        x_hat = (cache.x - _per_channel(cache.mean)) * _per_channel(invstd)
    check_grad_like(dout, x_hat.shape, x_hat, "batch_norm")
    fast = kernels.get("batchnorm2d_train_backward", dout) if cache.batch_stats else None
    if fast is not None:
        return fast(dout, x_hat, invstd, weight)
    dbias, dweight = grad_sums(dout, x_hat)
    scale = invstd if weight is None else weight * invstd
    if cache.batch_stats:
        n = x_hat.size // x_hat.shape[1]
        dx = batch_stats_input_grad(dout, x_hat, dbias / n, dweight / n, scale)
    else:
        dx = dout * _per_channel(scale)
    return dx, dweight, dbias
