"""Batch normalisation in training mode, per channel over the n = N*H*W values of a batch.

Forward, staged (each line one node of the graph)::

    mu    = mean(x)                      over N, H, W
    var   = mean((x - mu)^2)             biased: divided by n
    xhat  = (x - mu) / sqrt(var + eps)
    y     = gamma * xhat + beta

Backward, g = dL/dy; every x moves mu and var too, which gives the two subtracted means::

    dbeta  = sum(g)
    dgamma = sum(g * xhat)
    dxhat  = gamma * g
    dx     = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / sqrt(var + eps)
"""

import numpy as np


def batchnorm_forward(x, gamma, beta, eps=1e-5):
    """x (N, C, H, W), gamma (C,), beta (C,) -> y (N, C, H, W), cache."""
    mu = x.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mu) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    invstd = 1 / np.sqrt(var + eps)
    xhat = (x - mu) * invstd
    y = gamma.reshape(1, -1, 1, 1) * xhat + beta.reshape(1, -1, 1, 1)
    return y, (xhat, invstd, gamma)


def batchnorm_backward(dy, cache):
    """dy (N, C, H, W) -> dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    xhat, invstd, gamma = cache
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    dxhat = dy * gamma.reshape(1, -1, 1, 1)
    mean_dxhat = dxhat.mean(axis=(0, 2, 3), keepdims=True)
    mean_dxhat_xhat = (dxhat * xhat).mean(axis=(0, 2, 3), keepdims=True)
    dx = (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * invstd
    return dx, dgamma, dbeta
