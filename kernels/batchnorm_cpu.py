"""Numba batch normalisation (training mode), fused, parallel over channels.

Notation: x (N, C, H, W); each channel's statistics run over n = N*H*W values, which for channel c
are N contiguous runs of H*W values. Same math as ``npresnet.functional.batchnorm``::

    forward:  mu = sum(x)/n,  var = sum((x - mu)^2)/n,  invstd = 1/sqrt(var + eps)
              x_hat = (x - mu) * invstd,  y = x_hat * gamma + beta
    backward: dbeta = sum(g),  dgamma = sum(g * x_hat)
              dx = (g - dbeta/n - x_hat * dgamma/n) * (gamma * invstd)

Forward reads x three times (sum, centred sum of squares, then x_hat and y in one sweep); backward
reads (g, x_hat) twice. Every sum and every per-element formula is evaluated in float64, also for
float32 input, and only the results are rounded to the input dtype. So float64 results equal the
float64 reference up to summation order (~1e-13 relative), and float32 results are *more* accurate
than the float32 reference, which sums in float32 (they agree to ~1e-6).
Outputs are allocated by NumPy (huge pages for big arrays) and filled by the kernels; see im2col_cpu.
"""

from __future__ import annotations

import numpy as np

from ._numba import CACHE, njit, parallel_kernel, prange, require_same_dtype, require_shape

# The row sums use 4 interleaved float64 accumulators, and a channel adds up its N row sums: a
# short pairwise scheme that keeps the adds independent (faster than one serial chain) and is more
# accurate than it. Channel c's rows x[n, c] are contiguous views, so the loops vectorise.


@njit(cache=CACHE, error_model="numpy", inline="always")
def _row_sum(a):
    """sum(a) of a 1-D row, in float64."""
    M = a.shape[0]
    s0 = s1 = s2 = s3 = 0.0
    m = 0
    while m + 4 <= M:
        s0 += a[m]
        s1 += a[m + 1]
        s2 += a[m + 2]
        s3 += a[m + 3]
        m += 4
    while m < M:
        s0 += a[m]
        m += 1
    return (s0 + s1) + (s2 + s3)


@njit(cache=CACHE, error_model="numpy", inline="always")
def _row_centred_square_sum(a, mu):
    """sum((a - mu)^2), in float64."""
    M = a.shape[0]
    s0 = s1 = s2 = s3 = 0.0
    m = 0
    while m + 4 <= M:
        d0 = a[m] - mu
        d1 = a[m + 1] - mu
        d2 = a[m + 2] - mu
        d3 = a[m + 3] - mu
        s0 += d0 * d0
        s1 += d1 * d1
        s2 += d2 * d2
        s3 += d3 * d3
        m += 4
    while m < M:
        d0 = a[m] - mu
        s0 += d0 * d0
        m += 1
    return (s0 + s1) + (s2 + s3)


@njit(cache=CACHE, error_model="numpy", inline="always")
def _row_product_sum(a, b):
    """sum(a * b), in float64."""
    M = a.shape[0]
    s0 = s1 = s2 = s3 = 0.0
    m = 0
    while m + 4 <= M:
        s0 += np.float64(a[m]) * b[m]
        s1 += np.float64(a[m + 1]) * b[m + 1]
        s2 += np.float64(a[m + 2]) * b[m + 2]
        s3 += np.float64(a[m + 3]) * b[m + 3]
        m += 4
    while m < M:
        s0 += np.float64(a[m]) * b[m]
        m += 1
    return (s0 + s1) + (s2 + s3)


@njit(cache=CACHE, error_model="numpy", inline="always")
def _normalise_row(x_hat, y, x, mu, inv, gamma, beta, use_weight, use_bias):
    """x_hat = (x - mu) * inv; y = x_hat * gamma + beta (each term only if used), in float64."""
    for m in range(x.shape[0]):
        xh = (np.float64(x[m]) - mu) * inv
        x_hat[m] = xh
        yv = xh * gamma if use_weight else xh
        y[m] = (yv + beta) if use_bias else yv


@njit(cache=CACHE, error_model="numpy", inline="always")
def _dx_row(dx, g, x_hat, g_mean, gx_mean, scale):
    """dx = (g - mean(g) - x_hat * mean(g * x_hat)) * gamma * invstd, in float64."""
    for m in range(g.shape[0]):
        dx[m] = (np.float64(g[m]) - g_mean - np.float64(x_hat[m]) * gx_mean) * scale


@parallel_kernel
def batchnorm_train_forward_kernel(x, weight, bias, use_weight, use_bias, eps, y, x_hat, mean, var, invstd):
    """x (N, C, M=H*W); weight, bias (C,) float64. Fills y, x_hat (N, C, M) and mean, var, invstd (C,) float64."""
    N, C, M = x.shape
    count = N * M
    for c in prange(C):
        total = 0.0
        for n in range(N):
            total += _row_sum(x[n, c])
        mu = total / count
        total = 0.0
        for n in range(N):
            total += _row_centred_square_sum(x[n, c], mu)
        v = total / count                                   # biased variance
        inv = 1.0 / np.sqrt(v + eps)
        gamma = weight[c] if use_weight else 1.0
        beta = bias[c] if use_bias else 0.0
        for n in range(N):
            _normalise_row(x_hat[n, c], y[n, c], x[n, c], mu, inv, gamma, beta, use_weight, use_bias)
        mean[c], var[c], invstd[c] = mu, v, inv


@parallel_kernel
def batchnorm_train_backward_kernel(dout, x_hat, invstd, weight, use_weight, dx, dweight, dbias):
    """dout, x_hat (N, C, M); invstd, weight (C,) float64. Fills dx (N, C, M), dweight, dbias (C,) float64."""
    N, C, M = dout.shape
    count = N * M
    for c in prange(C):
        g_sum = 0.0
        gx_sum = 0.0
        for n in range(N):
            g_sum += _row_sum(dout[n, c])
            gx_sum += _row_product_sum(dout[n, c], x_hat[n, c])
        g_mean = g_sum / count
        gx_mean = gx_sum / count
        scale = weight[c] * invstd[c] if use_weight else invstd[c]
        for n in range(N):
            _dx_row(dx[n, c], dout[n, c], x_hat[n, c], g_mean, gx_mean, scale)
        dbias[c], dweight[c] = g_sum, gx_sum


def _as_float64(name, v, C):
    """A (C,) per-channel array as float64 (zeros for None)."""
    if v is None:
        return np.zeros(C)
    require_shape(f"batch_norm {name}", v, (C,))
    return np.ascontiguousarray(v, dtype=np.float64)


def batchnorm2d_train_forward(x, weight, bias, eps):
    """Training-mode batch norm of a NumPy (N, C, H, W) array; weight/bias (C,) or None.

    Returns y, x_hat (N, C, H, W) and mean, biased var, invstd (C,), all in x's dtype. The caller
    updates the running statistics from mean and var (running_var uses var * n / (n - 1)).
    """
    if x.ndim != 4:
        raise ValueError(f"npresnet.kernels: batch_norm expects an (N, C, H, W) array, got shape {x.shape}")
    N, C, H, W = x.shape
    x3 = np.ascontiguousarray(x).reshape(N, C, H * W)
    y, x_hat = np.empty_like(x3), np.empty_like(x3)
    mean, var, invstd = np.empty(C), np.empty(C), np.empty(C)
    gamma, beta = _as_float64("weight", weight, C), _as_float64("bias", bias, C)
    batchnorm_train_forward_kernel(x3, gamma, beta, weight is not None, bias is not None, float(eps),
                                   y, x_hat, mean, var, invstd)
    dt = x.dtype
    return y.reshape(x.shape), x_hat.reshape(x.shape), mean.astype(dt), var.astype(dt), invstd.astype(dt)


def batchnorm2d_train_backward(dout, x_hat, invstd, weight):
    """Backward of training-mode batch norm: dout, x_hat (N, C, H, W); invstd (C,); weight (C,) or None.

    Returns dx (N, C, H, W), dweight (C,), dbias (C,) in dout's dtype.
    """
    N, C, H, W = dout.shape
    require_shape("batch_norm x_hat", x_hat, dout.shape)
    require_same_dtype("batch_norm dout and x_hat", dout, x_hat)
    dout3 = np.ascontiguousarray(dout).reshape(N, C, H * W)
    x_hat3 = np.ascontiguousarray(x_hat).reshape(N, C, H * W)
    dx, dweight, dbias = np.empty_like(dout3), np.empty(C), np.empty(C)
    invstd64, gamma = _as_float64("invstd", invstd, C), _as_float64("weight", weight, C)
    batchnorm_train_backward_kernel(dout3, x_hat3, invstd64, gamma, weight is not None, dx, dweight, dbias)
    dt = dout.dtype
    return dx.reshape(dout.shape), dweight.astype(dt), dbias.astype(dt)
