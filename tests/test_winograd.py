"""Winograd F(2x2, 3x3) (npresnet.functional.winograd, npresnet.engine.conv.winograd and
kernels/winograd_cpu.py).

The reference equals the im2col + GEMM convolution to rounding on awkward shapes (H != W, odd sizes
with tiles hanging over the edge, batch 1, 1-3 channels, padding 0, 1, 2 and mixed); the engine's
chunked version gives the reference's bits; the Numba transforms give the reference's bits, at one
thread and at two; the dispatch offers it only where it applies, and the fixed rule never picks it.
(Serial against parallel builds: in tests/test_parallel_kernels.py, with the other kernels.)
"""

from __future__ import annotations

import numpy as np
import pytest

from npresnet import kernels
from npresnet.engine import autotune, batch_threads, conv_dispatch
from npresnet.engine.conv import winograd as engine_winograd
from npresnet.functional import winograd
from npresnet.functional.conv import conv2d_backward, conv2d_forward

numba_only = pytest.mark.skipif(kernels.active() != "numba", reason="Numba kernels not active")

# (N, C, O, H, W), padding
CASES = [
    ((1, 1, 1, 3, 3), (0, 0)),  # one tile, nothing to pad
    ((1, 2, 3, 7, 5), (1, 1)),  # odd output: the last tiles hang over
    ((3, 3, 2, 6, 9), (2, 1)),  # padding 2 on one axis
    ((2, 1, 4, 4, 11), (0, 2)),
    ((2, 5, 3, 1, 2), (2, 2)),  # input smaller than the kernel, all padding
    ((4, 16, 8, 8, 8), (1, 1)),
]

# For the Numba transforms' bits, CASES plus shapes that reach their other paths: rows of 16 tiles
# and more (the SIMD columns step; exactly 16 with padding 0), odd and H != W among them, many
# channels, and more samples than one work item holds (input: 81 8x8 or 7 32x32 planes; output:
# 128 8x8 or 8 32x32 planes), so blocks end mid-batch.
TRANSFORM_CASES = CASES + [
    ((2, 2, 3, 31, 35), (1, 1)),
    ((1, 3, 2, 36, 33), (2, 2)),
    ((5, 2, 1, 9, 40), (0, 1)),
    ((3, 1, 2, 34, 34), (0, 0)),
    ((1, 1, 1, 2, 70), (1, 1)),
    ((2, 70, 3, 5, 6), (1, 1)),
    ((9, 2, 3, 32, 32), (1, 1)),
    ((129, 1, 2, 8, 8), (1, 1)),
]


def _case(case, dtype, seed=0):
    (N, C, O, H, W), padding = case
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, C, H, W)).astype(dtype), rng.standard_normal((O, C, 3, 3)).astype(dtype), padding


@pytest.mark.parametrize("case", CASES)
def test_the_reference_is_the_convolution(case):
    x, w, padding = _case(case, np.float64)
    with kernels.reference_only():
        want = conv2d_forward(x, w, None, 1, padding)[0]
    got = winograd.conv3x3_winograd(x, w, padding)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.abs(got - want).max() <= 1e-13 * np.abs(want).max()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunk, split", [(1, False), (2, False), (100, False), (1, True), (2, True)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_engine_equals_the_reference_in_chunks(case, chunk, split, dtype):
    """Chunks of samples (a slice per thread with ``split``), the Numba transforms where they run:
    each output sample goes through the same transforms and products as in the whole-batch reference
    (equal to rounding: the 16 GEMMs have fewer columns, which BLAS may block differently)."""
    x, w, padding = _case(case, dtype)
    want = winograd.conv3x3_winograd(x, w, padding)
    got = engine_winograd(x, w, padding=padding, samples=chunk, split=split)
    assert got.shape == want.shape and got.dtype == want.dtype
    bound = 1e-13 if dtype == np.float64 else 1e-5
    assert np.abs(got - want).max() <= bound * np.abs(want).max()


def test_float32_is_as_accurate_as_the_gemm():
    """Max error against float64, relative to the output's scale: within 2x of im2col + GEMM's."""
    x, w, padding = _case(((4, 64, 32, 14, 10), (1, 1)), np.float64)
    with kernels.reference_only():
        exact = conv2d_forward(x, w, None, 1, padding)[0]
        x32, w32 = x.astype(np.float32), w.astype(np.float32)
        gemm = conv2d_forward(x32, w32, None, 1, padding)[0]
        wino = winograd.conv3x3_winograd(x32, w32, padding)
    scale = np.abs(exact).max()
    gemm_error, wino_error = np.abs(gemm - exact).max() / scale, np.abs(wino - exact).max() / scale
    assert wino.dtype == np.float32 and wino_error <= max(2 * gemm_error, 1e-6), (wino_error, gemm_error)


def test_the_weight_transform_is_g_g_gt():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 2, 3, 3))
    G = np.array(winograd.G)
    U = winograd.transform_weight(w)
    for o in range(3):
        for c in range(2):
            assert np.allclose(U[:, :, o, c], G @ w[o, c] @ G.T, rtol=0, atol=1e-14)


@numba_only
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_numba_transforms_give_the_reference_bits(dtype):
    for case in TRANSFORM_CASES:
        x, w, padding = _case(case, dtype)
        N, C, H, W = x.shape
        out = (H + 2 * padding[0] - 2, W + 2 * padding[1] - 2)
        tiles = winograd.tiles(*out)
        V = kernels.get("winograd_input", x)(x, padding, tiles)
        assert np.array_equal(V, winograd.transform_input(x, padding, tiles)), case
        M = np.random.default_rng(1).standard_normal((4, 4, w.shape[0], N * tiles[0] * tiles[1])).astype(dtype)
        y = kernels.get("winograd_output", M)(M, N, out)
        want = winograd.transform_output(M, N, out)
        assert y.shape == want.shape and y.flags.c_contiguous and np.array_equal(y, want), case
        # into the caller's array (a slice of the whole batch's output), by the kernel and the reference
        for transform in (kernels.get("winograd_output", M), winograd.transform_output):
            whole = np.full((N + 2, *want.shape[1:]), 7.0, dtype)
            assert transform(M, N, out, whole[1 : N + 1]) is not None
            assert np.array_equal(whole[1 : N + 1], want) and (whole[[0, N + 1]] == 7).all(), case
    with pytest.raises(ValueError, match="winograd_output y must have shape"):
        kernels.get("winograd_output", M)(M, N, out, np.empty((N, 1, 1, 1), dtype))


def test_where_winograd_applies():
    x = np.zeros((1, 2, 6, 6), np.float32)

    def applies(kernel, stride, padding, dilation, groups):
        return conv_dispatch.winograd_applies(
            x, kernel=kernel, stride=stride, padding=padding, dilation=dilation, groups=groups
        )

    expected = kernels.active() == "numba"
    assert applies((3, 3), (1, 1), (1, 1), (1, 1), 1) == expected
    assert applies((3, 3), (1, 1), (2, 0), (1, 1), 1) == expected
    assert not applies((3, 3), (2, 2), (1, 1), (1, 1), 1)  # stride
    assert not applies((3, 3), (1, 1), (2, 2), (2, 2), 1)  # dilation
    assert not applies((3, 3), (1, 1), (3, 1), (1, 1), 1)  # padding above 2: no adjoint for dx
    assert not applies((3, 3), (1, 1), (1, 1), (1, 1), 2)  # groups
    assert not applies((5, 5), (1, 1), (1, 1), (1, 1), 1)
    with kernels.reference_only():
        assert not applies((3, 3), (1, 1), (1, 1), (1, 1), 1)


def test_the_chunk_candidates_never_take_the_whole_of_a_large_batch():
    # ResNet-50's first stage at batch 16: 3.2 MB of Winograd tiles per sample
    chunks, split = conv_dispatch.winograd_candidates(np, N=16, channels=64, out=(56, 56), itemsize=4)
    assert chunks and max(chunks) < 16 and min(chunks) >= 1
    assert split == ([1] if batch_threads.available(np) else [])  # a slice per thread
    assert conv_dispatch.winograd_candidates(np, N=1, channels=64, out=(56, 56), itemsize=4)[1] == []  # no split
    # its 7x7 stem: 7.4 MB of columns per sample, 118 MB for the batch
    assert 16 not in conv_dispatch.chunk_candidates(np, N=16, column_bytes_per_sample=147 * 112 * 112 * 4)
    # its 128-channel 3x3: 58 MB, over WHOLE_BATCH_MAX_BYTES; its 512-channel 7x7 at batch 4: 3.5 MB
    assert 16 not in conv_dispatch.chunk_candidates(np, N=16, column_bytes_per_sample=1152 * 28 * 28 * 4)
    assert 4 in conv_dispatch.chunk_candidates(np, N=4, column_bytes_per_sample=4608 * 7 * 7 * 4)


@numba_only
def test_measure_mode_may_pick_it_and_fixed_mode_never_does():
    x, w, padding = _case(((2, 8, 8, 12, 10), (1, 1)), np.float64)
    dy = np.random.default_rng(2).standard_normal((2, 8, 12, 10))
    previous = autotune.set_mode("measure")
    autotune.clear()
    try:
        y, cache = conv2d_forward(x, w, None, 1, padding)
        conv2d_backward(dy, cache)
        timed = autotune.timed_keys()  # the forward, dx and dW (its transpose: test_winograd_weight.py)
        assert len(timed) == 3 and all("winograd/" in key for key in timed)  # among the candidates timed
        autotune.set_mode("fixed")
        ran: list[str] = []
        for what in ("forward", "input grad", "weight grad"):
            name = conv_dispatch.choose(
                what,
                key="key",
                channels=(64, 64),
                direct_ok=False,
                chunks=[2],
                run=lambda name, n: ran.append(name),
                flop_per_sample=1.0,
                winograd_chunks=[1, 2],
            )
            assert name == "gemm/2" and ran == []
    finally:
        autotune.set_mode(previous)
        autotune.clear()
