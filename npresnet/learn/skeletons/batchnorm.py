"""Exercise batchnorm: batch normalisation in training mode, per channel.

Shapes: x (N, C, H, W), gamma (C,), beta (C,) -> y (N, C, H, W); the statistics of each channel are
over its n = N*H*W values. eps = 1e-5.

Derive: stage the forward as a graph, mu = mean(x), var = mean((x - mu)^2) (biased: divided by n),
xhat = (x - mu) / sqrt(var + eps), y = gamma * xhat + beta, and go back through it node by node. Every
x moves mu and var too: dx has a term for each path.

Check with: python -m npresnet.learn check batchnorm
"""

import numpy as np  # noqa: F401  (you will need it)


def batchnorm_forward(x, gamma, beta, eps=1e-5):
    """x (N, C, H, W), gamma (C,), beta (C,) -> (y (N, C, H, W), cache). Training mode."""
    # TODO
    raise NotImplementedError


def batchnorm_backward(dy, cache):
    """dy (N, C, H, W) -> (dx (N, C, H, W), dgamma (C,), dbeta (C,))."""
    # TODO: dbeta, dgamma, then dx through xhat, var and mu
    raise NotImplementedError
