"""The BatchNorm exercise (training mode) and the mistakes of its backward."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ... import functional as F
from .exercise import Attempt, Case, Exercise, Inputs, Mistake, _backward, _call, _close, _normal, _tuple_of


# ---------------------------------------------------------------------------------------- batchnorm
def _bn_case(shape: tuple[int, int, int, int]) -> Callable[[np.random.Generator], Inputs]:
    def build(rng: np.random.Generator) -> Inputs:
        C = shape[1]
        return {
            "x": 2 * _normal(rng, *shape) + rng.uniform(-1, 1, (1, C, 1, 1)),
            "gamma": rng.uniform(0.5, 1.5, C) * rng.choice([-1, 1], C),
            "beta": _normal(rng, C),
        }

    return build


def _bn_parts(t: Attempt) -> tuple[np.ndarray, ...]:
    x, gamma, g = t.inputs["x"], t.inputs["gamma"], t.upstream
    mu = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    invstd = 1 / np.sqrt(var + 1e-5)
    xhat = (x - mu) * invstd
    dxhat = g * gamma.reshape(1, -1, 1, 1)
    mean_d = dxhat.mean(axis=(0, 2, 3), keepdims=True)
    mean_dx = (dxhat * xhat).mean(axis=(0, 2, 3), keepdims=True)
    n = x.size // x.shape[1]
    return xhat, invstd, dxhat, mean_d, mean_dx, var, np.asarray(n)


def _bn_no_mean(t: Attempt) -> bool:
    xhat, invstd, dxhat, mean_d, mean_dx, _, _ = _bn_parts(t)
    return _close(t.yours["dx"], (dxhat - xhat * mean_dx) * invstd)


def _bn_no_var(t: Attempt) -> bool:
    xhat, invstd, dxhat, mean_d, mean_dx, _, _ = _bn_parts(t)
    return _close(t.yours["dx"], (dxhat - mean_d) * invstd)


def _bn_unbiased(t: Attempt) -> bool:
    xhat, invstd, dxhat, mean_d, mean_dx, var, n = _bn_parts(t)
    staged = (dxhat - mean_d - xhat * mean_dx * n / (n - 1)) * invstd  # d var/dx with 1/(n-1)
    rescaled = t.expected["dx"] * np.sqrt((var + 1e-5) / (var * n / (n - 1) + 1e-5))  # 1/std with n-1
    return _close(t.yours["dx"], staged) or _close(t.yours["dx"], rescaled)


BATCHNORM = Exercise(
    name="batchnorm",
    title="BatchNorm in training mode (statistics of the batch, per channel)",
    forward_name="batchnorm_forward",
    backward_name="batchnorm_backward",
    call_forward=_call("x", "gamma", "beta"),
    call_backward=_backward,
    reference=lambda i: F.batchnorm2d_forward(i["x"], i["gamma"], i["beta"], None, None, training=True)[0],
    grads={"dx": "x", "dgamma": "gamma", "dbeta": "beta"},
    unpack=_tuple_of("dx", "dgamma", "dbeta"),
    cases=(
        Case("x (4, 3, 2, 3)", _bn_case((4, 3, 2, 3))),
        Case("batch 1, H != W: x (1, 2, 3, 5)", _bn_case((1, 2, 3, 5))),
        Case("1x1 pixels: x (5, 4, 1, 1)", _bn_case((5, 4, 1, 1))),
    ),
    hints=(
        "Stage the forward: mu, var, xhat = (x - mu) / sqrt(var + eps), y = gamma * xhat + beta. dbeta and "
        "dgamma come straight from the last line (sums over N, H, W).",
        "x reaches xhat three ways: directly, through mu and through var. Go back through the stages: "
        "dxhat = gamma * dy, then dvar, then dmu, then dx.",
        "Compactly, with means over N, H, W: dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / "
        "sqrt(var + eps). The first mean is the path through mu, the second the path through var.",
        "The forward normalises with the biased variance (divided by n = N*H*W): differentiate that one, "
        "with 1/n, not 1/(n - 1).",
    ),
    mistakes=(
        Mistake(
            "BatchNorm without the mean of the normalised gradient",
            "every x moves mu: subtract mean(dxhat) (the path through the mean)",
            _bn_no_mean,
        ),
        Mistake(
            "BatchNorm without the variance term",
            "every x moves var too: subtract xhat * mean(dxhat * xhat) (the path through the variance)",
            _bn_no_var,
        ),
        Mistake(
            "dgamma without xhat",
            "y = gamma * xhat + beta, so dgamma = sum(dy * xhat); sum(dy) alone is dbeta",
            lambda t: _close(t.yours["dgamma"], t.expected["dbeta"]),
            "dgamma",
        ),
        Mistake(
            "the unbiased variance in the backward",
            "the forward divides by n (the biased variance); its derivative has 1/n too, never 1/(n - 1)",
            _bn_unbiased,
        ),
    ),
    channel_axis=1,
    tutorial="6. BatchNorm",
    swapped_in="every BatchNorm in training mode (evaluation uses npresnet's, with running statistics)",
)
