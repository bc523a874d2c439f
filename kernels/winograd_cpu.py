"""Numba versions of the two data transforms of the Winograd F(2x2, 3x3) convolution, bitwise equal
to ``npresnet.functional.winograd`` (which has the math, the matrices and the reference).

    winograd_input:   x (N, C, H, W) -> V (4, 4, C, N*TH*TW),  V[:, :, c, p] = B^T d B of tile p
    winograd_output:  M (4, 4, O, N*TH*TW) -> y (N, O, OH, OW), the 2x2 tile at p = A^T M[:, :, o, p] A

Each value is the same additions and subtractions in the same order as the reference, so the
results are the same bits; what differs is the order in which values are visited, chosen for the
memory system and the compiler:

- Work is split by channel (and by block of samples): for one channel c, V[a, b, c, :] is one
  contiguous run over the samples' tiles, so each of the 16 (a, b) runs is written front to back.
  The 16 runs of a channel are C*N*TH*TW values apart, often a power of two: writing (or reading)
  all 16 at once made them share a few cache sets and evict each other, which cost more than the
  arithmetic. The input transform writes 4 runs at a time (one a), the output transform reads 4.
- The output transform's first step (A^T over a, for each b) runs over all the tiles of a channel
  in one unit-stride loop, which LLVM turns into SIMD instructions; so does the second step
  (A over b), writing each tile row's two output rows interleaved; then each output row is one
  contiguous copy into y.
- The input transform cannot run over all tiles in one loop: neighbouring tiles overlap by two
  rows and columns of the (padded) input. It copies the block's planes into a zero-bordered
  buffer (only the interior is written, so the border stays zero from one block to the next), then
  per tile row applies B^T down the columns (rows step), then B along the row (columns step).
  For rows of 16 tiles and more the columns step is four unit-stride loops, one per b, over the
  row's even and odd columns (SIMD); shorter rows (ResNet-20's 8x8 and 16x16 planes) run faster
  as one scalar loop that reuses each column pair for the next tile.
- The scratch buffers are allocated once per thread, not per plane: ``prange`` runs over the
  threads (the wrappers pass Numba's thread count; inside a kernel it would be a dynamic global
  that keeps Numba from caching the kernel), each taking every ``threads``-th item. An item is
  computed the same way whichever thread takes it, so 1 and 2 threads give the same bits.
- An item is a jitted function of its own (``_input_item``, ``_output_item``), so the serial and
  the parallel build run the same machine code: inlined into the parallel build's loop body, the
  input's SIMD path took 1.5 times as long as in the serial build. ``_input_item`` allocates its two one-row buffers
  itself: LLVM then knows they overlap no other array and vectorises the loops that read or write
  them without checks at run time (with the buffers passed in, the input transform took twice as
  long).
"""

from __future__ import annotations

import numba
import numpy as np

from ._numba import CACHE, copy_row, njit, parallel_kernel, prange, require_same_dtype, require_shape

#: Values of padded input planes per work item of ``winograd_input_kernel`` (32 KiB of float32).
INPUT_BLOCK_VALUES = 8192
#: Tiles per work item of ``winograd_output_kernel`` (its scratch is 16 values per tile).
OUTPUT_BLOCK_TILES = 2048
#: Tile rows this long and longer take the SIMD columns step of the input transform.
SIMD_TILE_ROW = 16


@njit(cache=CACHE, error_model="numpy", inline="always")
def _bt(d0, d1, d2, d3):
    """B^T along one axis, as the reference's ``_bt``."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(cache=CACHE, error_model="numpy", inline="always")
def _at(m0, m1, m2, m3):
    """A^T along one axis, as the reference's ``_at``."""
    return m0 + m1 + m2, m1 - m2 - m3


@njit(cache=CACHE, error_model="numpy", inline="always")
def _rows(a):
    """The rows step of B^T for row a of V: its two input rows (offsets from 2*ty) and whether
    they are added (else the second is subtracted): d0 - d2, d1 + d2, d2 - d1, d1 - d3."""
    if a == 0:
        return 0, 2, False
    if a == 1:
        return 1, 2, True
    if a == 2:
        return 2, 1, False
    return 1, 3, False


@njit(cache=CACHE, error_model="numpy", inline="always")
def _combine_split(even, odd, u, v, plus):
    """even[k], odd[k] = u[2k] +- v[2k], u[2k+1] +- v[2k+1]: one row of the rows step, split into
    its even and odd columns."""
    if plus:
        for k in range(even.shape[0]):
            even[k] = u[2 * k] + v[2 * k]
            odd[k] = u[2 * k + 1] + v[2 * k + 1]
    else:
        for k in range(even.shape[0]):
            even[k] = u[2 * k] - v[2 * k]
            odd[k] = u[2 * k + 1] - v[2 * k + 1]


@njit(cache=CACHE, error_model="numpy", inline="always")
def _add(dst, u, v):
    for t in range(dst.shape[0]):
        dst[t] = u[t] + v[t]


@njit(cache=CACHE, error_model="numpy", inline="always")
def _subtract(dst, u, v):
    for t in range(dst.shape[0]):
        dst[t] = u[t] - v[t]


@njit(cache=CACHE, error_model="numpy", inline="always")
def _input_row_simd(V, a, c, p, TW, u, v, plus, even, odd):
    """V[a, :, c, p : p + TW] for one tile row from its two input rows u, v (rows step +/-):
    the rows step into even/odd columns, then B along the row as one loop per b."""
    _combine_split(even, odd, u, v, plus)
    e0, o0, e1, o1 = even[:TW], odd[:TW], even[1 : TW + 1], odd[1 : TW + 1]  # columns 2tx + 0, 1, 2, 3
    _subtract(V[a, 0, c, p : p + TW], e0, e1)
    _add(V[a, 1, c, p : p + TW], o0, e1)
    _subtract(V[a, 2, c, p : p + TW], e1, o0)
    _subtract(V[a, 3, c, p : p + TW], o0, o1)


@njit(cache=CACHE, error_model="numpy", inline="always")
def _input_row_scalar(V, a, c, p, TW, u, v, plus):
    """The same for short rows: one loop over the tiles, the rows step of columns 2tx + 2 and
    2tx + 3 kept for the next tile's 2tx and 2tx + 1."""
    if plus:
        e0, e1 = u[0] + v[0], u[1] + v[1]
    else:
        e0, e1 = u[0] - v[0], u[1] - v[1]
    for tx in range(TW):
        k = 2 * tx + 2
        if plus:
            f0, f1 = u[k] + v[k], u[k + 1] + v[k + 1]
        else:
            f0, f1 = u[k] - v[k], u[k + 1] - v[k + 1]
        q = p + tx
        V[a, 0, c, q], V[a, 1, c, q], V[a, 2, c, q], V[a, 3, c, q] = _bt(e0, e1, f0, f1)
        e0, e1 = f0, f1


@njit(cache=CACHE, error_model="numpy")
def _input_item(x, V, d, c, n0, n1, PH, PW, TH, TW):
    """V[:, :, c] for samples n0 .. n1 - 1: ``winograd_input_kernel``'s work item (a function of
    its own, so the serial and the parallel build run the same machine code)."""
    H, W = x.shape[2], x.shape[3]
    T = TH * TW
    even = np.empty(TW + 1, dtype=x.dtype)
    odd = np.empty(TW + 1, dtype=x.dtype)
    for n in range(n0, n1):
        for h in range(H):
            copy_row(d[n - n0, PH + h, PW : PW + W], x[n, c, h])
    simd = TW >= SIMD_TILE_ROW
    for a in range(4):  # 4 of the 16 runs V[a, b, c] at a time, each front to back
        i, j, plus = _rows(a)
        for n in range(n0, n1):
            for ty in range(TH):
                u, v = d[n - n0, 2 * ty + i], d[n - n0, 2 * ty + j]
                p = n * T + ty * TW
                if simd:
                    _input_row_simd(V, a, c, p, TW, u, v, plus, even, odd)
                else:
                    _input_row_scalar(V, a, c, p, TW, u, v, plus)


@parallel_kernel
def winograd_input_kernel(x, V, PH, PW, TH, TW, threads=1):
    """V (4, 4, C, N*TH*TW) from x (N, C, H, W), zero padding PH on top, PW on the left; the work
    split into ``threads`` interleaved shares (Numba's thread count: see ``winograd_input``)."""
    N, C = x.shape[0], x.shape[1]
    Hp, Wp = 2 * TH + 2, 2 * TW + 2
    samples = max(1, min(N, INPUT_BLOCK_VALUES // (Hp * Wp)))  # per work item
    blocks = -(-N // samples)
    items = C * blocks  # (channel, block of samples)
    threads = max(1, min(items, threads))
    for thread in prange(threads):
        d = np.zeros((samples, Hp, Wp), dtype=x.dtype)  # padded planes: the border is never written
        for item in range(thread, items, threads):
            c, n0 = item // blocks, (item % blocks) * samples
            _input_item(x, V, d, c, n0, min(N, n0 + samples), PH, PW, TH, TW)


@njit(cache=CACHE, error_model="numpy", inline="always")
def _at_rows(s0, s1, m0, m1, m2, m3):
    """s0, s1 = A^T (m0, m1, m2, m3), elementwise."""
    for t in range(s0.shape[0]):
        s0[t] = m0[t] + m1[t] + m2[t]
    for t in range(s1.shape[0]):
        s1[t] = m1[t] - m2[t] - m3[t]


@njit(cache=CACHE, error_model="numpy", inline="always")
def _at_interleaved(z, s0, s1, s2, s3):
    """z[2t], z[2t + 1] = A^T (s0, s1, s2, s3) at t: a tile's two output columns side by side."""
    for t in range(s0.shape[0]):
        z[2 * t] = s0[t] + s1[t] + s2[t]
        z[2 * t + 1] = s1[t] - s2[t] - s3[t]


@njit(cache=CACHE, error_model="numpy")
def _output_item(M, y, s, z, o, n0, n1, TH, TW):
    """y[n0 : n1, o]: ``winograd_output_kernel``'s work item (see ``_input_item``)."""
    OH, OW = y.shape[2], y.shape[3]
    T = TH * TW
    first, count = n0 * T, (n1 - n0) * T
    for b in range(4):  # rows first: A^T over a, for each column b of all the block's tiles
        m0, m1 = M[0, b, o, first : first + count], M[1, b, o, first : first + count]
        m2, m3 = M[2, b, o, first : first + count], M[3, b, o, first : first + count]
        _at_rows(s[0, b, :count], s[1, b, :count], m0, m1, m2, m3)
    for i in range(2):  # then A along each row
        si = s[i]
        _at_interleaved(z[i, : 2 * count], si[0, :count], si[1, :count], si[2, :count], si[3, :count])
    for n in range(n0, n1):
        for h in range(OH):  # row h of the output is row h % 2 of tile row h // 2
            start = 2 * ((n - n0) * T + (h // 2) * TW)
            copy_row(y[n, o, h], z[h % 2, start : start + OW])  # copies OW values


@parallel_kernel
def winograd_output_kernel(M, y, TH, TW, threads=1):
    """y (N, O, OH, OW) from M (4, 4, O, N*TH*TW); tiles hanging over the edge are cut; the work
    split into ``threads`` interleaved shares."""
    N, O = y.shape[0], y.shape[1]
    T = TH * TW
    samples = max(1, min(N, OUTPUT_BLOCK_TILES // T))  # per work item
    blocks = -(-N // samples)
    items = O * blocks  # (channel, block of samples)
    threads = max(1, min(items, threads))
    width = samples * T
    for thread in prange(threads):
        s = np.empty((2, 4, width + 16), dtype=M.dtype)  # A^T down the columns; + 16: rows not 2^k apart
        z = np.empty((2, 2 * width + 16), dtype=M.dtype)  # output rows 2ty + i, overhang included
        for item in range(thread, items, threads):
            o, n0 = item // blocks, (item % blocks) * samples
            _output_item(M, y, s, z, o, n0, min(N, n0 + samples), TH, TW)


def winograd_input(x, padding, tile_counts):
    """Same arguments and result as ``npresnet.functional.winograd.transform_input``."""
    x = np.ascontiguousarray(x)
    N, C = x.shape[:2]
    TH, TW = tile_counts
    V = np.empty((4, 4, C, N * TH * TW), dtype=x.dtype)
    winograd_input_kernel(x, V, padding[0], padding[1], TH, TW, numba.get_num_threads())
    return V


def winograd_output(M, N, out, y=None):
    """Same arguments and result as ``npresnet.functional.winograd.transform_output`` (written into
    ``y``, C-contiguous, if given: the caller's output, with no copy afterwards)."""
    M = np.ascontiguousarray(M)
    OH, OW = out
    if y is None:
        y = np.empty((N, M.shape[2], OH, OW), dtype=M.dtype)
    require_shape("winograd_output y", y, (N, M.shape[2], OH, OW))
    require_same_dtype("winograd_output M and y", M, y)
    if not y.flags.c_contiguous:
        raise ValueError("npresnet.kernels: winograd_output writes into a C-contiguous y only")
    winograd_output_kernel(M, y, -(-OH // 2), -(-OW // 2), numba.get_num_threads())
    return y
