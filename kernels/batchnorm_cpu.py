"""Numba batch normalisation (training mode), fused, parallel over the rows of the batch.

Notation: x (N, C, H, W); each channel's statistics run over n = N*H*W values, which for channel c
are N contiguous rows of H*W values, one per sample. Same math as ``npresnet.functional.batchnorm``::

    forward:  mu = sum(x)/n,  var = sum((x - mu)^2)/n,  invstd = 1/sqrt(var + eps)
              x_hat = (x - mu) * invstd,  y = x_hat * gamma + beta
    backward: dbeta = sum(g),  dgamma = sum(g * x_hat)
              dx = (g - dbeta/n - x_hat * dgamma/n) * (gamma * invstd)

Forward reads x twice (each row's sum and centred sum of squares, then x_hat and y); backward
reads (g, x_hat) twice. Every sweep runs over the N*C rows in memory order, split over
the threads, and a channel then adds up its N row sums in ascending n: the same numbers in the same
order whatever the thread count, so parallel and serial results are identical to the bit.

Why rows, not channels. The first version gave each thread whole channels, which leaves threads
idle when C is small (1-3 channels, or C not a multiple of the thread count) and had x read three
times. Here any thread count splits the N*C rows evenly, a row's two passes (its sum, then its
squares about the row mean) find it in L1, and the rows' moments are combined exactly (Chan et
al.), so x comes from memory twice. The forward ran 5-10% faster than the channel version at one
thread, the backward as fast (docs/performance.md).

Every sum and every per-element formula is evaluated in float64, also for float32 input, and only
the results are rounded to the input dtype. So float64 results equal the float64 reference up to
summation order (~1e-13 relative), and float32 results are *more* accurate than the float32
reference, which sums in float32 (they agree to ~1e-6).
Outputs are allocated by NumPy (huge pages for big arrays) and filled by the kernels; see im2col_cpu.
"""

from __future__ import annotations

import numpy as np

from ._numba import CACHE, njit, parallel_kernel, prange, require_same_dtype, require_shape

#: Row sums keep this many interleaved float64 partial sums (lane j takes elements j, j + LANES, ...),
#: then add the lanes pairwise. Independent adds let LLVM fill whole SIMD registers; with 4 lanes
#: (one add chain per 4 elements) the row moments were bound by the add latency, several times
#: slower than a plain copy of x, and only 64 lanes made a sweep about twice as fast as 4, 16 or 32
#: (docs/performance.md). The order is fixed by the code, so any thread count gives the same bits;
#: more lanes are also more accurate (each adds ~M/64 terms). Channel c's rows x[n, c] are
#: contiguous views, so the loops vectorise.
LANES = 64


@njit(cache=CACHE, error_model="numpy", inline="always")
def _fold_lanes(acc):
    """acc[0] + ... + acc[LANES-1], added pairwise (a fixed tree)."""
    width = LANES
    while width > 1:
        width //= 2
        for j in range(width):
            acc[j] += acc[j + width]
    return acc[0]


@njit(cache=CACHE, error_model="numpy", inline="always")
def _row_sum(a):
    """sum(a) of a 1-D row, in float64."""
    M = a.shape[0]
    acc = np.zeros(LANES)
    full = M - M % LANES
    for m in range(0, full, LANES):
        for j in range(LANES):
            acc[j] += a[m + j]
    for m in range(full, M):
        acc[m - full] += a[m]
    return _fold_lanes(acc)


@njit(cache=CACHE, error_model="numpy", inline="always")
def _row_centred_square_sum(a, mu):
    """sum((a - mu)^2), in float64."""
    M = a.shape[0]
    acc = np.zeros(LANES)
    full = M - M % LANES
    for m in range(0, full, LANES):
        for j in range(LANES):
            d = a[m + j] - mu
            acc[j] += d * d
    for m in range(full, M):
        d = a[m] - mu
        acc[m - full] += d * d
    return _fold_lanes(acc)


@njit(cache=CACHE, error_model="numpy", inline="always")
def _row_product_sum(a, b):
    """sum(a * b), in float64."""
    M = a.shape[0]
    acc = np.zeros(LANES)
    full = M - M % LANES
    for m in range(0, full, LANES):
        for j in range(LANES):
            acc[j] += np.float64(a[m + j]) * b[m + j]
    for m in range(full, M):
        acc[m - full] += np.float64(a[m]) * b[m]
    return _fold_lanes(acc)


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


@njit(cache=CACHE, error_model="numpy")
def _channel_totals(partial):
    """totals[c] = sum over n of partial[n, c] (N, C), from 0.0 in ascending n: the order in which
    a channel's row sums are added, whichever thread computed each row."""
    N, C = partial.shape
    totals = np.zeros(C)
    for n in range(N):
        for c in range(C):
            totals[c] += partial[n, c]
    return totals


@parallel_kernel
def _row_moments_kernel(x, row_sum, row_m2):
    """row_sum[n, c] = sum(x[n, c]) and row_m2[n, c] = sum((x[n, c] - row mean)^2), float64, for
    x (N, C, M): both from one read of the row (the second pass finds it in L1)."""
    N, C, M = x.shape
    for row in prange(N * C):
        n, c = row // C, row % C
        total = _row_sum(x[n, c])
        row_sum[n, c] = total
        row_m2[n, c] = _row_centred_square_sum(x[n, c], total / M)


@njit(cache=CACHE, error_model="numpy")
def _combine_moments(row_sum, row_m2, M, mean, var):
    """Per channel, from its N rows of M values (Chan et al.'s pairwise update, in ascending n)::

    mean = sum_n row_sum[n] / (N*M)
    var  = (sum_n row_m2[n] + M * sum_n (row_sum[n]/M - mean)^2) / (N*M)        (biased)
    """
    N, C = row_sum.shape
    count = N * M
    totals = _channel_totals(row_sum)
    for c in range(C):
        mean[c] = totals[c] / count
    for c in range(C):
        within = 0.0
        between = 0.0
        for n in range(N):
            within += row_m2[n, c]
            d = row_sum[n, c] / M - mean[c]
            between += d * d
        var[c] = (within + M * between) / count


@parallel_kernel
def _normalise_kernel(x, mean, invstd, weight, bias, use_weight, use_bias, y, x_hat):
    """x_hat = (x - mean) * invstd, y = x_hat * weight + bias, row by row for x (N, C, M)."""
    N, C, M = x.shape
    for row in prange(N * C):
        n, c = row // C, row % C
        gamma = weight[c] if use_weight else 1.0
        beta = bias[c] if use_bias else 0.0
        _normalise_row(x_hat[n, c], y[n, c], x[n, c], mean[c], invstd[c], gamma, beta, use_weight, use_bias)


@parallel_kernel
def _grad_sums_kernel(dout, x_hat, g_partial, gx_partial):
    """g_partial[n, c] = sum(dout[n, c]), gx_partial[n, c] = sum(dout[n, c] * x_hat[n, c]) (float64)."""
    N, C, M = dout.shape
    for row in prange(N * C):
        n, c = row // C, row % C
        g_partial[n, c] = _row_sum(dout[n, c])
        gx_partial[n, c] = _row_product_sum(dout[n, c], x_hat[n, c])


@parallel_kernel
def _dx_kernel(dout, x_hat, g_mean, gx_mean, scale, dx):
    """dx = (dout - g_mean - x_hat * gx_mean) * scale per channel, row by row for (N, C, M)."""
    N, C, M = dout.shape
    for row in prange(N * C):
        n, c = row // C, row % C
        _dx_row(dx[n, c], dout[n, c], x_hat[n, c], g_mean[c], gx_mean[c], scale[c])


def batchnorm_train_forward_kernel(x, weight, bias, use_weight, use_bias, eps, y, x_hat, mean, var, invstd):
    """x (N, C, M=H*W); weight, bias (C,) float64. Fills y, x_hat (N, C, M) and mean, var, invstd (C,) float64.

    Two sweeps over x in memory order, each parallel over the N*C rows: each row's sum and centred
    sum of squares (``_row_moments_kernel``), combined per channel in ascending n
    (``_combine_moments``), then x_hat and y (``_normalise_kernel``).
    """
    N, C, M = x.shape
    row_sum, row_m2 = np.empty((N, C)), np.empty((N, C))
    _row_moments_kernel(x, row_sum, row_m2)
    _combine_moments(row_sum, row_m2, M, mean, var)
    invstd[:] = 1.0 / np.sqrt(var + eps)
    _normalise_kernel(x, mean, invstd, weight, bias, use_weight, use_bias, y, x_hat)


def batchnorm_train_backward_kernel(dout, x_hat, invstd, weight, use_weight, dx, dweight, dbias):
    """dout, x_hat (N, C, M); invstd, weight (C,) float64. Fills dx (N, C, M), dweight, dbias (C,) float64."""
    N, C, M = dout.shape
    count = N * M
    g_partial, gx_partial = np.empty((N, C)), np.empty((N, C))
    _grad_sums_kernel(dout, x_hat, g_partial, gx_partial)
    dbias[:], dweight[:] = _channel_totals(g_partial), _channel_totals(gx_partial)
    scale = weight * invstd if use_weight else invstd.copy()
    _dx_kernel(dout, x_hat, dbias / count, dweight / count, scale, dx)


@parallel_kernel
def _channel_affine_kernel(x, scale, shift, y):
    """y[n, c] = x[n, c] * scale[c] + shift[c] for x, y (N, C, M), in x's dtype (two roundings)."""
    N, C, M = x.shape
    for row in prange(N * C):
        n, c = row // C, row % C
        s, t = scale[c], shift[c]
        out, src = y[n, c], x[n, c]
        for m in range(M):
            out[m] = src[m] * s + t


def channel_affine(x, scale, shift):
    """Evaluation-mode batch norm's arithmetic: x (N, C, H, W) * scale + shift per channel ((C,) each,
    cast to x's dtype), bitwise equal to NumPy's ``y = x * scale; y += shift`` (one pass, not two)."""
    if x.ndim != 4:
        raise ValueError(f"npresnet.kernels: channel_affine expects an (N, C, H, W) array, got shape {x.shape}")
    N, C, H, W = x.shape
    scale = np.ascontiguousarray(scale, dtype=x.dtype)
    shift = np.ascontiguousarray(shift, dtype=x.dtype)
    require_shape("channel_affine scale", scale, (C,))
    require_shape("channel_affine shift", shift, (C,))
    x3 = np.ascontiguousarray(x).reshape(N, C, H * W)
    y = np.empty_like(x3)
    _channel_affine_kernel(x3, scale, shift, y)
    return y.reshape(x.shape)


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
    batchnorm_train_forward_kernel(
        x3, gamma, beta, weight is not None, bias is not None, float(eps), y, x_hat, mean, var, invstd
    )
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
