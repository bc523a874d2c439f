"""A 3x3 stride-1 convolution by Winograd's minimal filtering, F(2x2, 3x3).

Reference: A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016
(arXiv:1509.09308), section 4; the matrices below are theirs.

Notation: x (N, C, H, W), weight (O, C, 3, 3), padding (PH, PW), output (N, O, OH, OW) with
OH = H + 2*PH - 2. The output is cut into 2x2 tiles, TH = ceil(OH/2) by TW = ceil(OW/2) of them
per plane, P = N*TH*TW tiles in all; tile (ty, tx) of a plane reads the 4x4 input patch d at rows
2*ty .. 2*ty+3 and columns 2*tx .. 2*tx+3 of the zero-padded input. For one (input channel, output
channel) pair, with g the 3x3 filter::

    Y (2x2) = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise on 4x4)

    B^T = [[1,  0, -1,  0],    G = [[1,    0,   0  ],    A^T = [[1, 1,  1,  0],
           [0,  1,  1,  0],         [1/2,  1/2, 1/2],            [0, 1, -1, -1]]
           [0, -1,  1,  0],         [1/2, -1/2, 1/2],
           [0,  1,  0, -1]]         [0,    0,   1  ]]

which is exactly the 2x2 block of the cross-correlation (check one entry by hand: it multiplies
out to the nine products of g with d). Summing over the input channels commutes with A^T .. A,
so with the transformed filters U[a, b] = (G g G^T)[a, b] as (O, C) matrices and the transformed
inputs V[a, b] = (B^T d B)[a, b] as (C, P) matrices, the whole layer is 16 GEMMs::

    U = transform_weight(weight)            # (4, 4, O, C)
    V = transform_input(x)                  # (4, 4, C, P)
    M[a, b] = U[a, b] @ V[a, b]             # (O, C) @ (C, P) -> (O, P), for the 16 (a, b)
    y = transform_output(M)                 # A^T M A per tile -> (N, O, OH, OW)

Why: a direct 3x3 convolution (or im2col + GEMM) spends 36 multiplications on a 2x2 output tile,
this spends 16, so the GEMMs do 2.25x fewer flops; the transforms are additions only, reading and
writing each value a few times. On the CPU it pays where the GEMMs dominate (ResNet-50's 3x3 layers
of 64-512 channels, ResNet-20's of 32 and 64); at 16 channels it ties with the direct kernels.
``npresnet.engine`` runs it (in chunks of samples, with the Numba transforms:
``npresnet.engine.conv.winograd``) as a measured candidate, never as the fixed rule's choice.

Accuracy: the transforms only add, subtract and halve (exact), and each output sums the same C*9
products in a different grouping, so results agree with im2col + GEMM to rounding: float32 max
error against a float64 reference ~5e-7 of the output's scale in tests, as for the GEMM. (Larger
tiles, F(4x4, 3x3), have transforms with 1/6 and 1/24 and lose about two digits; not used.)

The input gradient of a stride-1 3x3 convolution is a convolution of dy with the flipped,
transposed filters and padding 2 - P (``conv3x3_cpu`` derives it), so the same three steps compute
dx, for padding <= 2.

The weight gradient, dW[o, c, i, j] = sum over n, y, x of dy[n, o, y, x] * xpad[n, c, y+i, x+j],
correlates each 4x4 input patch d with the 2x2 tile e of dy at the same place (tiles of dy where
the forward had tiles of y), a 3x3 result per tile: F(3x3, 2x2) (Lavin and Gray use it for the
weight gradient). The algorithm used here is the transpose of F(2x2, 3x3): Y = A^T [(G g G^T) *
(B^T d B)] A is linear in g, and its derivative with respect to g, given dY = e, is::

    dg (3x3) = G^T [ (A e A^T) * (B^T d B) ] G            (* elementwise on 4x4)

    A = [[1,  0],    G^T = [[1, 1/2,  1/2, 0],
         [1,  1],           [0, 1/2, -1/2, 0],
         [1, -1],           [0, 1/2,  1/2, 1]]
         [0, -1]]

Since the 2x2 tile is exactly Y's (each of its four entries a sum of nine products of g and d),
this is exactly the tile's share of dW. The x tiles are the forward's V, bit for bit; the dy
transform only adds and subtracts; the halvings come last, once per (o, c), not once per tile.
(The F(3, 2) of the Toom-Cook points 0, 1, -1, inf with the 1/2 in the dy transform instead is
the same algorithm up to where the halving and one sign go.) Summing over the tiles and samples
commutes with G^T .. G, so with E[a, b] = (A e A^T)[a, b] as (O, P) matrices the weight gradient
is 16 GEMMs with the long dimension P inside::

    E = transform_gradient(dy)              # (4, 4, O, P)
    V = transform_input(x)                  # (4, 4, C, P)
    M[a, b] = E[a, b] @ V[a, b]^T           # (O, P) @ (P, C) -> (O, C), for the 16 (a, b)
    dW = transform_weight_gradient(M)       # G^T M G per (o, c) -> (O, C, 3, 3)

again 16 multiplications per tile and (o, c) instead of 36. Tiles hanging over the edge of dy
read zeros there, so they add nothing for the missing rows and columns.

This file is the reference (NumPy or CuPy through the array module, whole arrays at a time); on the
CPU ``npresnet.kernels`` has Numba versions of the two data transforms with the same arithmetic in
the same order, hence the same bits (tested), that sweep the data once instead of once per step
(and, for the weight gradient, versions of E and V laid out tiles first, which its GEMMs read
faster: ``kernels/winograd_weight_cpu.py``). Nothing in the library calls :func:`conv3x3_winograd`
or :func:`weight_gradient` itself: they are the page to read, and the engine's chunked versions
(``npresnet.engine.conv.winograd`` and ``winograd_weight_gradient``, measured candidates) are
tested against them.
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module

__all__ = [
    "G",
    "conv3x3_winograd",
    "tiles",
    "transform_gradient",
    "transform_input",
    "transform_output",
    "transform_weight",
    "transform_weight_gradient",
    "weight_gradient",
]


def tiles(OH: int, OW: int) -> tuple[int, int]:
    """(TH, TW): the 2x2 output tiles per plane (the last row/column of tiles may hang over)."""
    return -(-OH // 2), -(-OW // 2)


#: G, the filter transform (4x3). Its entries 1 and 1/2 are exact in binary floating point.
G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def transform_weight(weight: Any) -> Any:
    """U = G g G^T for every (o, c): weight (O, C, 3, 3) -> U (4, 4, O, C), C-contiguous.

    U[a, b, o, c] = sum_ij G[a, i] G[b, j] g[o, c, i, j]: with the Kronecker product kron(G, G)
    (16 x 9) that is one GEMM over all O*C filters, kron(G, G) @ g.reshape(O*C, 9).T (about three
    times faster than the elementwise form for ResNet-50's widest filters)."""
    xp = get_array_module(weight)
    O, C = weight.shape[:2]
    g = xp.asarray(G, dtype=weight.dtype)
    return (xp.kron(g, g) @ weight.reshape(O * C, 9).T).reshape(4, 4, O, C)


def _bt(d0: Any, d1: Any, d2: Any, d3: Any) -> tuple[Any, Any, Any, Any]:
    """B^T applied along one axis: (d0 - d2, d1 + d2, d2 - d1, d1 - d3)."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def transform_input(x: Any, padding: tuple[int, int], tile_counts: tuple[int, int]) -> Any:
    """V = B^T d B for every channel and tile: x (N, C, H, W) -> V (4, 4, C, N*TH*TW), tiles in
    (n, ty, tx) order. Rows first (over the padded rows 2*ty + i), then columns."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    (PH, PW), (TH, TW) = padding, tile_counts
    padded = xp.zeros((N, C, 2 * TH + 2, 2 * TW + 2), dtype=x.dtype)  # P on top/left, >= P below/right
    padded[:, :, PH : PH + H, PW : PW + W] = x
    V = xp.empty((4, 4, C, N, TH, TW), dtype=x.dtype)
    rows = _bt(*(padded[:, :, i : i + 2 * TH : 2, :] for i in range(4)))  # each (N, C, TH, W + 2)
    for a, row in enumerate(rows):
        for b, value in enumerate(_bt(*(row[..., j : j + 2 * TW : 2] for j in range(4)))):
            V[a, b] = value.transpose(1, 0, 2, 3)  # (N, C, TH, TW) -> (C, N, TH, TW)
    return V.reshape(4, 4, C, N * TH * TW)


def _at(m0: Any, m1: Any, m2: Any, m3: Any) -> tuple[Any, Any]:
    """A^T applied along one axis: (m0 + m1 + m2, m1 - m2 - m3)."""
    return m0 + m1 + m2, m1 - m2 - m3


def transform_output(M: Any, N: int, out: tuple[int, int], y: Any = None) -> Any:
    """y = A^T M A for every output channel and tile: M (4, 4, O, N*TH*TW) -> y (N, O, OH, OW),
    written into ``y`` if given (C-contiguous), else a new array."""
    xp = get_array_module(M)
    O = M.shape[2]
    OH, OW = out
    TH, TW = tiles(OH, OW)
    M = M.reshape(4, 4, O, N, TH, TW)
    wide = xp.empty((N, O, 2 * TH, 2 * TW), dtype=M.dtype)  # whole tiles, overhang included
    rows = _at(M[0], M[1], M[2], M[3])  # each (4, O, N, TH, TW), indexed by b
    for i, row in enumerate(rows):
        for j, value in enumerate(_at(row[0], row[1], row[2], row[3])):
            wide[:, :, i::2, j::2] = value.transpose(1, 0, 2, 3)
    if y is None:
        return wide if (2 * TH, 2 * TW) == (OH, OW) else xp.ascontiguousarray(wide[:, :, :OH, :OW])
    y[...] = wide[:, :, :OH, :OW]
    return y


def conv3x3_winograd(x: Any, weight: Any, padding: tuple[int, int]) -> Any:
    """y = conv2d(x, weight), stride 1, dilation 1, no bias, padding <= 2: x (N, C, H, W),
    weight (O, C, 3, 3) -> y (N, O, OH, OW), the whole batch at once (the four lines of the
    module docstring)."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    O = weight.shape[0]
    OH, OW = H + 2 * padding[0] - 2, W + 2 * padding[1] - 2
    TH, TW = tiles(OH, OW)
    U = transform_weight(weight).reshape(16, O, C)
    V = transform_input(x, padding, (TH, TW)).reshape(16, C, N * TH * TW)
    M = xp.matmul(U, V)  # 16 GEMMs (O, C) @ (C, N*TH*TW)
    return transform_output(M.reshape(4, 4, O, N * TH * TW), N, (OH, OW))


def _a(e0: Any, e1: Any) -> tuple[Any, Any, Any, Any]:
    """A applied along one axis, 2 values to 4: (e0, e0 + e1, e0 - e1, -e1)."""
    return e0, e0 + e1, e0 - e1, -e1


def transform_gradient(dy: Any, tile_counts: tuple[int, int]) -> Any:
    """E = A e A^T for every output channel and 2x2 tile e of dy: dy (N, O, OH, OW) -> E (4, 4, O,
    N*TH*TW), tiles in (n, ty, tx) order as in :func:`transform_input`; a tile hanging over the
    edge reads zeros. Rows first (over rows 2*ty and 2*ty + 1), then columns."""
    xp = get_array_module(dy)
    N, O, OH, OW = dy.shape
    TH, TW = tile_counts
    padded = xp.zeros((N, O, 2 * TH, 2 * TW), dtype=dy.dtype)
    padded[:, :, :OH, :OW] = dy
    E = xp.empty((4, 4, O, N, TH, TW), dtype=dy.dtype)
    rows = _a(padded[:, :, 0::2, :], padded[:, :, 1::2, :])  # each (N, O, TH, 2*TW)
    for a, row in enumerate(rows):
        for b, value in enumerate(_a(row[..., 0::2], row[..., 1::2])):
            E[a, b] = value.transpose(1, 0, 2, 3)  # (N, O, TH, TW) -> (O, N, TH, TW)
    return E.reshape(4, 4, O, N * TH * TW)


def _gt(m0: Any, m1: Any, m2: Any, m3: Any) -> tuple[Any, Any, Any]:
    """G^T applied along one axis, 4 values to 3: with h = (m1 + m2) / 2, (m0 + h, (m1 - m2) / 2, h + m3)."""
    h = (m1 + m2) * 0.5
    return m0 + h, (m1 - m2) * 0.5, h + m3


def transform_weight_gradient(M: Any) -> Any:
    """dW = G^T M G for every (o, c): M (4, 4, O, C) -> dW (O, C, 3, 3), C-contiguous. Rows
    first (over a), then columns (over b)."""
    xp = get_array_module(M)
    O, C = M.shape[2:]
    dW = xp.empty((O, C, 3, 3), dtype=M.dtype)
    rows = _gt(M[0], M[1], M[2], M[3])  # each (4, O, C), indexed by b
    for i, row in enumerate(rows):
        for j, value in enumerate(_gt(row[0], row[1], row[2], row[3])):
            dW[:, :, i, j] = value
    return dW


def weight_gradient(dy: Any, x: Any, padding: tuple[int, int]) -> Any:
    """dW of y = conv2d(x, weight), stride 1, dilation 1, padding <= 2: dy (N, O, OH, OW), x (N, C,
    H, W) -> dW (O, C, 3, 3), the whole batch at once (the four lines of the module docstring)."""
    xp = get_array_module(dy)
    N, O, OH, OW = dy.shape
    C = x.shape[1]
    TH, TW = tiles(OH, OW)
    E = transform_gradient(dy, (TH, TW)).reshape(16, O, N * TH * TW)
    V = transform_input(x, padding, (TH, TW)).reshape(16, C, N * TH * TW)
    M = xp.matmul(E, V.transpose(0, 2, 1))  # 16 GEMMs (O, P) @ (P, C)
    return transform_weight_gradient(M.reshape(4, 4, O, C))
