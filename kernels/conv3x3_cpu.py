"""Direct 3x3 stride-1 convolution (forward, input and weight gradients) for thin layers, no im2col.

Why: im2col + GEMM is the right tool for wide layers, but for the 16- and 32-channel 3x3 convs of
the CIFAR ResNets the GEMM has only O = 16 or 32 rows, and OpenBLAS spends as long packing the
columns as multiplying them (27 GFLOP/s for O = 16, against 100+ on square shapes), on top of the
im2col pass itself. Computing the convolution directly is faster there for the forward up to
16 channels and for the gradients up to 32; from 64 channels on the GEMM wins
(``python bench/conv3x3_bench.py`` compares every ResNet-20 conv shape; docs/performance.md has
the figures). So ``npresnet.engine`` sends stride-1, ungrouped 3x3 convolutions whose channels are
at most ``DIRECT_MAX_CHANNELS`` (32) here for their gradients, and at most
``DIRECT_FORWARD_MAX_CHANNELS`` (16) for their forward too, when P <= 2*D per axis (see below).

The "wide row" trick. Pad each input plane once into a flat buffer of Hp*Wp pixels (Hp = H + 2PH,
Wp = W + 2PW, plus a few zeros at the end). For stride 1, output pixel (oh, ow) reads the nine
input pixels at flat positions  q + i*DH*Wp + k*DW  with  q = oh*Wp + ow. Compute the output at
every q in [0, OH*Wp) -- the last Wp - OW of each row are junk that is never copied out -- and the
nine reads become nine *shifted contiguous vectors*::

    acc[q] += w[o,c,0,0]*x[q] + w[o,c,0,1]*x[q+DW] + ... + w[o,c,2,2]*x[q + 2*DH*Wp + 2*DW]

one long loop that LLVM vectorises, with acc (one output plane, a few KB) staying in L1 while the
C input planes stream past. Four output channels share each pass over the nine shifted inputs (the
loop was bound by loads), and each a*b + c may be one FMA (``fused_multiply_add_kernel``): together
a third to 40% faster than one channel per pass without FMA.
Each output is the sum over (c, i, k) in that fixed order: the result is
deterministic, though not bitwise equal to the GEMM's order (tests compare with a tolerance).

Input gradient. For stride 1 the adjoint of a convolution is a convolution of dy, padded by
D*(3-1) - P, with the weights flipped in space and transposed in channels::

    dx = conv(dy, w'),   w'[c, o, i, k] = w[o, c, 2-i, 2-k]

so the same kernel serves the backward (``conv3x3_backward_input``); it needs P <= 2*D per axis
(a non-negative adjoint padding), which the dispatch checks.

Weight gradient (``conv3x3_backward_weight``, BLAS, no Numba). With the same wide layout, now with
the batch folded in -- X (C, N*Hp*Wp) the padded planes side by side, G (O, N*Hp*Wp) dy placed at
each output's q and zero at the junk positions -- every kernel tap (i, k) is one product over all
pixels of the batch, with X read through a shifted view (no im2col)::

    dw[:, :, i, k] = G @ X[:, s : s + N*Hp*Wp].T,     s = i*DH*Wp + k*DW

A (O, M) @ (M, C) product with O, C <= 32 and huge M is memory-bound and slow in BLAS, so M is cut
into chunks small enough (O*C*chunk <= 2^19) for OpenBLAS's small-matrix kernel, which skips
packing: at 16 channels the chunked products take less than half the time of unchunked ones, and
the whole weight gradient a third less than im2col + GEMM's.

Weight gradient by dot products (``conv3x3_backward_weight_dots``, Numba). Those small BLAS
products are too small for OpenBLAS to thread: a second core buys nothing. The same sums written
as nine dot products per (o, c) over the wide rows, two output channels per pass (18 running sums,
11 loads per 18 multiply-adds), split over fixed blocks of 4096 columns, use every thread; LLVM
vectorises each sum only if it may reassociate it (``reassociating_kernel``). At two threads they
took about half the BLAS products' time; at one thread from as long to a third less. Measured on
one CPU only, so it is a candidate of the measured dispatch ("direct/dots"), not the fixed rule's
choice. (Forcing 512-bit vectors where LLVM picks 256-bit, ``NUMBA_CPU_FEATURES=<host
features>,-prefer-256-bit``, was faster in isolation but gained nothing in a training step.)
"""

from __future__ import annotations

import numba
import numpy as np

from ._numba import (
    CACHE,
    copy_row,
    fill_row,
    fused_multiply_add_kernel,
    njit,
    parallel_kernel,
    prange,
    reassociating_kernel,
    require_same_dtype,
)


@njit(cache=CACHE, error_model="numpy", inline="always")
def _taps(w):
    """The nine weights of one (o, c) pair, w (3, 3), as scalars (registers in the hot loop)."""
    return w[0, 0], w[0, 1], w[0, 2], w[1, 0], w[1, 1], w[1, 2], w[2, 0], w[2, 1], w[2, 2]


@njit(cache=CACHE, error_model="numpy", inline="always")
def _tap_sum(acc, t, x0, x1, x2, x3, x4, x5, x6, x7, x8):
    """acc + the nine products of taps t with inputs x0..x8, added in tap order."""
    return (
        acc + t[0] * x0 + t[1] * x1 + t[2] * x2 + t[3] * x3 + t[4] * x4 + t[5] * x5 + t[6] * x6 + t[7] * x7 + t[8] * x8
    )


@fused_multiply_add_kernel
def conv3x3_wide_kernel(x_flat, weight, y, Wp, DH, DW):
    """y (N, O, OH, OW) = conv of x_flat (N, C, Hp*Wp + 2*DW) with weight (O, C, 3, 3), stride 1.

    Four output channels at a time share each load of the nine shifted inputs (the loop was bound
    by loads, not arithmetic); every output still sums its (c, i, k) products in the same order.
    """
    N, C = x_flat.shape[0], x_flat.shape[1]
    O = weight.shape[0]
    OH = y.shape[2]
    L = OH * Wp
    r1, r2 = DH * Wp, 2 * DH * Wp  # flat offsets of kernel rows 1 and 2
    for n in prange(N):
        acc = np.empty((4, L), dtype=y.dtype)  # four wide output planes
        for o0 in range(0, O, 4):
            block = min(4, O - o0)
            for b in range(4):
                for q in range(L):
                    acc[b, q] = 0
            a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
            for c in range(C):
                x = x_flat[n, c]
                # Shifted views, indexed from 0: LLVM proves the indices non-negative and vectorises
                # (x[q + DW] with a run-time DW keeps Python's negative-index check and stays scalar).
                x00, x01, x02 = x[0:], x[DW:], x[2 * DW :]
                x10, x11, x12 = x[r1:], x[r1 + DW :], x[r1 + 2 * DW :]
                x20, x21, x22 = x[r2:], x[r2 + DW :], x[r2 + 2 * DW :]
                t0 = _taps(weight[o0, c])  # a short block repeats its last channel's taps;
                t1 = _taps(weight[min(o0 + 1, O - 1), c])  # those planes are never copied out
                t2 = _taps(weight[min(o0 + 2, O - 1), c])
                t3 = _taps(weight[min(o0 + 3, O - 1), c])
                for q in range(L):
                    v0, v1, v2 = x00[q], x01[q], x02[q]
                    v3, v4, v5 = x10[q], x11[q], x12[q]
                    v6, v7, v8 = x20[q], x21[q], x22[q]
                    a0[q] = _tap_sum(a0[q], t0, v0, v1, v2, v3, v4, v5, v6, v7, v8)
                    a1[q] = _tap_sum(a1[q], t1, v0, v1, v2, v3, v4, v5, v6, v7, v8)
                    a2[q] = _tap_sum(a2[q], t2, v0, v1, v2, v3, v4, v5, v6, v7, v8)
                    a3[q] = _tap_sum(a3[q], t3, v0, v1, v2, v3, v4, v5, v6, v7, v8)
            for b in range(block):
                for oh in range(OH):  # drop the junk columns of each wide row
                    copy_row(y[n, o0 + b, oh], acc[b, oh * Wp :])  # copies len(y[n, o, oh]) = OW


@parallel_kernel
def _place_planes_kernel(src, dst, channel_major, Hp, Wp, top, left):
    """For each plane (n, c) of src (N, C, h, w), a zero Hp x Wp block holding src[n, c] at (top,
    left), written flat into the 2-D dst: at row n*C + c from column 0 (batch-major), or at row c
    from column n*Hp*Wp (channel-major: each channel's planes side by side). One pass, padding
    included (np.zeros and a strided assignment were two); planes are independent, split over threads.
    """
    N, C, h, w = src.shape
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        block = dst[c, n * Hp * Wp : (n + 1) * Hp * Wp] if channel_major else dst[plane, : Hp * Wp]
        fill_row(block[: top * Wp], 0)
        for r in range(h):
            row = block[(top + r) * Wp : (top + r + 1) * Wp]
            fill_row(row[:left], 0)
            copy_row(row[left : left + w], src[n, c, r])
            fill_row(row[left + w :], 0)
        fill_row(block[(top + h) * Wp :], 0)


def _place_planes(src, rows, columns, channel_major, Hp, Wp, top, left):
    """A (rows, columns) array holding src's planes padded to Hp x Wp (see the kernel), zero after them."""
    src = np.ascontiguousarray(src)
    N, C = src.shape[:2]
    dst = np.empty((rows, columns), dtype=src.dtype)
    _place_planes_kernel(src, dst, channel_major, Hp, Wp, top, left)
    used = N * Hp * Wp if channel_major else Hp * Wp
    dst[:, used:] = 0
    return dst


def _pad_flat(x, PH, PW, DW):
    """x (N, C, H, W) -> zero-padded planes flattened to (N, C, Hp*Wp + 2*DW), and Wp."""
    N, C, H, W = x.shape
    Hp, Wp = H + 2 * PH, W + 2 * PW
    return _place_planes(x, N * C, Hp * Wp + 2 * DW, False, Hp, Wp, PH, PW).reshape(N, C, -1), Wp


#: ``_convolve`` pads this many bytes of input planes at a time (at least one sample per thread):
#: the padded copy then costs a chunk's memory, not a second copy of the whole input, and is still
#: in cache when the kernel reads it.
PAD_CHUNK_BYTES = 1 << 20


def _convolve(x, weight, padding, dilation):
    """Stride-1 3x3 conv of x (N, C, H, W) with weight (O, C, 3, 3) -> (N, O, OH, OW), via the wide
    rows, a chunk of samples at a time (each output is computed the same way whatever the chunk)."""
    N, C, H, W = x.shape
    (PH, PW), (DH, DW) = padding, dilation
    OH, OW = H + 2 * PH - 2 * DH, W + 2 * PW - 2 * DW
    padded_bytes = C * ((H + 2 * PH) * (W + 2 * PW) + 2 * DW) * x.itemsize  # a sample's, as _pad_flat makes it
    step = max(numba.get_num_threads(), PAD_CHUNK_BYTES // padded_bytes, 1)
    y = np.empty((N, weight.shape[0], OH, OW), dtype=x.dtype)
    weight = np.ascontiguousarray(weight)
    for start in range(0, N, step):
        x_flat, Wp = _pad_flat(x[start : start + step], PH, PW, DW)
        conv3x3_wide_kernel(x_flat, weight, y[start : start + step], Wp, DH, DW)
    return y


def conv3x3_forward(x, weight, padding, dilation):
    """y = conv2d(x, weight), stride 1, no bias. x (N, C, H, W), weight (O, C, 3, 3) -> (N, O, OH, OW)."""
    require_same_dtype("conv3x3 input and weight", x, weight)
    return _convolve(x, weight, padding, dilation)


def _wide_buffers(dout, x, padding, dilation):
    """The weight gradient's two wide buffers (see the module docstring), and Wp:
    x_wide (C, N*Hp*Wp + tail), the padded input planes of each channel side by side, and
    g_wide (O, N*Hp*Wp), dy at q = oh*Wp + ow of each plane and 0 at the junk positions."""
    N, C, H, W = x.shape
    O = dout.shape[1]
    (PH, PW), (DH, DW) = padding, dilation
    Hp, Wp = H + 2 * PH, W + 2 * PW
    M = N * Hp * Wp
    tail = 2 * DH * Wp + 2 * DW  # the last tap's shift
    x_wide = _place_planes(x, C, M + tail, True, Hp, Wp, PH, PW)
    g_wide = _place_planes(dout, O, M, True, Hp, Wp, 0, 0)
    return x_wide, g_wide, Wp


def _weight_grad_chunk(O: int, C: int) -> int:
    """Columns per product: O*C*chunk stays within 2^19, the OpenBLAS small-matrix range (see above)."""
    return int(min(4096, max(256, (1 << 19) // (O * C))))


def conv3x3_backward_weight(dout, x, padding, dilation):
    """dw of a stride-1 3x3 conv: dout (N, O, OH, OW), x (N, C, H, W) -> (O, C, 3, 3). BLAS products."""
    require_same_dtype("conv3x3 dout and input", dout, x)
    O, C = dout.shape[1], x.shape[1]
    DH, DW = dilation
    x_wide, g_wide, Wp = _wide_buffers(dout, x, padding, dilation)
    M = g_wide.shape[1]
    dw = np.zeros((3, 3, O, C), dtype=dout.dtype)
    product = np.empty((O, C), dtype=dout.dtype)
    chunk = _weight_grad_chunk(O, C)
    for start in range(0, M, chunk):
        stop = min(M, start + chunk)
        g = g_wide[:, start:stop]
        for i in range(3):
            for k in range(3):
                shift = i * DH * Wp + k * DW
                np.matmul(g, x_wide[:, start + shift : stop + shift].T, out=product)
                dw[i, k] += product
    return np.ascontiguousarray(dw.transpose(2, 3, 0, 1))


#: Columns of the wide buffers per block of ``conv3x3_backward_weight_dots``. Fixed (not derived
#: from the thread count), so the blocks, and hence the bits of the result, are the same at any
#: number of threads.
DOTS_BLOCK_COLUMNS = 4096


@reassociating_kernel
def weight_dots_kernel(g_wide, x_wide, partial, Wp, DH, DW):
    """partial[j, o, c, 3*i + k] = sum over the columns q of block j of g_wide[o, q] * x_wide[c, q + s],
    s = i*DH*Wp + k*DW: nine dot products per (o, c), two output channels per pass, so each load of
    the nine shifted input vectors serves 18 multiply-adds. g_wide (O, M), x_wide (C, M + tail),
    partial (ceil(M / DOTS_BLOCK_COLUMNS), O, C, 9); blocks are independent (split over threads).
    """
    O, M = g_wide.shape
    C = x_wide.shape[0]
    r1, r2 = DH * Wp, 2 * DH * Wp  # flat offsets of kernel rows 1 and 2
    for j in prange(partial.shape[0]):
        start = j * DOTS_BLOCK_COLUMNS
        length = min(M, start + DOTS_BLOCK_COLUMNS) - start
        for o0 in range(0, O, 2):
            o1 = min(o0 + 1, O - 1)  # odd O: the last pass computes the last channel twice
            ga, gb = g_wide[o0, start:], g_wide[o1, start:]
            for c in range(C):
                x = x_wide[c, start:]
                x00, x01, x02 = x[0:], x[DW:], x[2 * DW :]
                x10, x11, x12 = x[r1:], x[r1 + DW :], x[r1 + 2 * DW :]
                x20, x21, x22 = x[r2:], x[r2 + DW :], x[r2 + 2 * DW :]
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = x.dtype.type(0)
                b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = b8 = x.dtype.type(0)
                for q in range(length):
                    u, v = ga[q], gb[q]
                    v0, v1, v2 = x00[q], x01[q], x02[q]
                    v3, v4, v5 = x10[q], x11[q], x12[q]
                    v6, v7, v8 = x20[q], x21[q], x22[q]
                    a0 += u * v0
                    a1 += u * v1
                    a2 += u * v2
                    a3 += u * v3
                    a4 += u * v4
                    a5 += u * v5
                    a6 += u * v6
                    a7 += u * v7
                    a8 += u * v8
                    b0 += v * v0
                    b1 += v * v1
                    b2 += v * v2
                    b3 += v * v3
                    b4 += v * v4
                    b5 += v * v5
                    b6 += v * v6
                    b7 += v * v7
                    b8 += v * v8
                pa, pb = partial[j, o0, c], partial[j, o1, c]
                pa[0], pa[1], pa[2], pa[3], pa[4], pa[5], pa[6], pa[7], pa[8] = a0, a1, a2, a3, a4, a5, a6, a7, a8
                pb[0], pb[1], pb[2], pb[3], pb[4], pb[5], pb[6], pb[7], pb[8] = b0, b1, b2, b3, b4, b5, b6, b7, b8


def conv3x3_backward_weight_dots(dout, x, padding, dilation):
    """dw of a stride-1 3x3 conv as nine dot products per (o, c) (Numba, no BLAS), same shapes as
    ``conv3x3_backward_weight``: dout (N, O, OH, OW), x (N, C, H, W) -> (O, C, 3, 3).

        dw[o, c, i, k] = sum_j sum_{q in block j} g_wide[o, q] * x_wide[c, q + i*DH*Wp + k*DW]

    The blocks' partial sums are added in block order afterwards.
    """
    require_same_dtype("conv3x3 dout and input", dout, x)
    O, C = dout.shape[1], x.shape[1]
    x_wide, g_wide, Wp = _wide_buffers(dout, x, padding, dilation)
    blocks = -(-g_wide.shape[1] // DOTS_BLOCK_COLUMNS)
    partial = np.empty((blocks, O, C, 9), dtype=dout.dtype)
    weight_dots_kernel(g_wide, x_wide, partial, Wp, dilation[0], dilation[1])
    return partial.sum(axis=0).reshape(O, C, 3, 3)


def conv3x3_backward_input(dout, weight, padding, dilation):
    """dx of a stride-1 3x3 conv: dout (N, O, OH, OW), weight (O, C, 3, 3) -> (N, C, H, W)."""
    require_same_dtype("conv3x3 dout and weight", dout, weight)
    flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (C, O, 3, 3)
    adjoint_padding = (2 * dilation[0] - padding[0], 2 * dilation[1] - padding[1])
    return _convolve(dout, flipped, adjoint_padding, dilation)
