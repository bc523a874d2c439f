"""Winograd's weight gradient of a 3x3 stride-1 convolution (npresnet.functional.winograd's
``weight_gradient``, kernels/winograd_weight_cpu.py, the engine's "winograd/<n>" for dW).

The reference equals im2col + GEMM's dW on awkward shapes (H != W, odd output sizes whose last
tiles hang over the edge of dy, batch 1, one channel, C != O, padding 0, 1, 2 and mixed); the Numba
dy transform gives the reference's bits (at two threads too: tests/test_parallel_kernels.py); the
engine's chunked "winograd/<n>" and "winograd-split/<n>" equal im2col + GEMM's dW to rounding.
(The dispatch's candidates and the fixed rule: tests/test_winograd.py, tests/test_autotune.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from npresnet import kernels
from npresnet.engine.conv import run_gradients, winograd_weight_gradient
from npresnet.functional import winograd
from npresnet.functional.conv import conv2d_backward, conv2d_forward, im2col_gemm_backward

numba_only = pytest.mark.skipif(kernels.active() != "numba", reason="Numba kernels not active")

# (N, C, O, H, W), padding
CASES = [
    ((1, 1, 1, 4, 4), (0, 0)),  # one whole tile: the 3x3 result of F(3x3, 2x2) itself
    ((1, 1, 1, 3, 3), (0, 0)),  # a 1x1 dy: one tile, three quarters of it over the edge
    ((1, 2, 3, 7, 5), (1, 1)),  # odd output: the last tiles hang over
    ((3, 3, 2, 6, 9), (2, 1)),  # padding 2 on one axis
    ((2, 1, 4, 4, 11), (0, 2)),  # one input channel
    ((2, 5, 3, 1, 2), (2, 2)),  # input smaller than the kernel, all padding
    ((4, 16, 8, 8, 8), (1, 1)),
]


def _case(case, dtype, seed=0):
    """x, weight, padding and a random upstream gradient dy for one case."""
    (N, C, O, H, W), padding = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((O, C, 3, 3)).astype(dtype)
    OH, OW = H + 2 * padding[0] - 2, W + 2 * padding[1] - 2
    dy = rng.standard_normal((N, O, OH, OW)).astype(dtype)
    return x, w, padding, dy


def _gemm_weight_gradient(x, w, padding, dy):
    """dW by the definition, im2col + GEMM (the NumPy reference path)."""
    with kernels.reference_only():
        _, cache = conv2d_forward(x, w, None, 1, padding)
        return conv2d_backward(dy, cache, need_input_grad=False)[1]


def _relative_error(got, want):
    return np.abs(got - want).max() / np.abs(want).max()


@pytest.mark.parametrize("case", CASES)
def test_the_reference_is_the_weight_gradient(case):
    """float64: the two algorithms sum the same products in other groupings (plus exact halvings),
    so they agree to a few units in the last place of the largest entry."""
    x, w, padding, dy = _case(case, np.float64)
    want = _gemm_weight_gradient(x, w, padding, dy)
    got = winograd.weight_gradient(dy, x, padding)
    assert got.shape == want.shape == w.shape and got.dtype == want.dtype and got.flags.c_contiguous
    assert _relative_error(got, want) <= 1e-13


@pytest.mark.parametrize("case", CASES)
def test_float32_agrees_with_the_gemm_to_rounding(case):
    """float32: each dW entry is a sum of N*OH*OW (up to 256 here) products; two summation orders
    differ by a few ulps of the partial sums each, a random walk of ~sqrt(terms) * 6e-8 of the
    entries' scale, well under 1e-5 of the largest entry (a wrong tile or sign is off by O(1))."""
    x, w, padding, dy = _case(case, np.float32)
    want = _gemm_weight_gradient(x, w, padding, dy)
    got = winograd.weight_gradient(dy, x, padding)
    assert got.dtype == np.float32 and _relative_error(got, want) <= 1e-5


def test_float32_is_as_accurate_as_the_gemm():
    """Max error against float64, relative to dW's scale: within 2x of im2col + GEMM's (the dy and
    x transforms add up to 4 values before the products, the GEMM's inputs do not)."""
    x, w, padding, dy = _case(((4, 32, 16, 14, 10), (1, 1)), np.float64)
    exact = _gemm_weight_gradient(x, w, padding, dy)
    x32, w32, dy32 = x.astype(np.float32), w.astype(np.float32), dy.astype(np.float32)
    gemm = _gemm_weight_gradient(x32, w32, padding, dy32)
    wino = winograd.weight_gradient(dy32, x32, padding)
    gemm_error, wino_error = _relative_error(gemm, exact), _relative_error(wino, exact)
    assert wino.dtype == np.float32 and wino_error <= max(2 * gemm_error, 1e-6), (wino_error, gemm_error)


def test_the_matrices_are_the_transpose_of_f2x2_3x3():
    """For one tile: G^T [(A e A^T) * (B^T d B)] G is the 3x3 correlation of d with e, and it is the
    derivative of F(2x2, 3x3)'s A^T [(G g G^T) * (B^T d B)] A with respect to g, paired with e."""
    rng = np.random.default_rng(4)
    d, e, g = rng.standard_normal((4, 4)), rng.standard_normal((2, 2)), rng.standard_normal((3, 3))
    G = np.array(winograd.G)
    BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=float)
    AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=float)
    E = winograd.transform_gradient(e.reshape(1, 1, 2, 2), (1, 1)).reshape(4, 4)
    V = winograd.transform_input(d.reshape(1, 1, 4, 4), (0, 0), (1, 1)).reshape(4, 4)
    assert np.allclose(E, AT.T @ e @ AT, rtol=0, atol=1e-14)
    assert np.allclose(V, BT @ d @ BT.T, rtol=0, atol=1e-14)
    dg = winograd.transform_weight_gradient((E * V).reshape(4, 4, 1, 1))[0, 0]
    assert np.allclose(dg, G.T @ (E * V) @ G, rtol=0, atol=1e-14)
    correlation = np.array([[(e * d[i : i + 2, j : j + 2]).sum() for j in range(3)] for i in range(3)])
    assert np.allclose(dg, correlation, rtol=0, atol=1e-13)
    forward = AT @ ((G @ g @ G.T) * V) @ AT.T  # the forward's 2x2 tile, linear in g
    assert np.isclose((forward * e).sum(), (dg * g).sum(), rtol=1e-13, atol=0)


@numba_only
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_numba_transforms_give_the_reference_bits(dtype):
    for case in CASES + [((3, 2, 5, 33, 30), (1, 1))]:
        x, w, padding, dy = _case(case, dtype)
        tiles = winograd.tiles(*dy.shape[2:])
        Et = kernels.get("winograd_gradient", dy)(dy, tiles)  # tiles first: (4, 4, P, O)
        want = winograd.transform_gradient(dy, tiles).transpose(0, 1, 3, 2)
        assert Et.shape == want.shape and Et.dtype == want.dtype and Et.flags.c_contiguous, case
        assert np.array_equal(Et, want), case
        Vt = kernels.get("winograd_input_t", x)(x, padding, tiles)
        want = winograd.transform_input(x, padding, tiles).transpose(0, 1, 3, 2)
        assert Vt.shape == want.shape and Vt.dtype == want.dtype and Vt.flags.c_contiguous, case
        assert np.array_equal(Vt, want), case
        # into the caller's buffer (the engine reuses one from chunk to chunk)
        buffer = np.full(Et.size + 3, 7.0, dtype)
        assert kernels.get("winograd_gradient", dy)(dy, tiles, buffer[: Et.size].reshape(Et.shape)) is not None
        assert np.array_equal(buffer[: Et.size].reshape(Et.shape), Et) and (buffer[Et.size :] == 7).all(), case
        buffer = np.full(Vt.size, 7.0, dtype).reshape(Vt.shape)
        assert (
            np.array_equal(kernels.get("winograd_input_t", x)(x, padding, tiles, buffer), Vt) and (buffer == Vt).all()
        )
        strided = np.asfortranarray(dy)  # any layout in, the same values out
        assert np.array_equal(kernels.get("winograd_gradient", dy)(strided, tiles), Et), case
    with pytest.raises(ValueError, match=r"winograd_gradient out must have shape"):
        kernels.get("winograd_gradient", dy)(dy, tiles, np.empty((4, 4, 1, 1), dtype))
    with pytest.raises(TypeError, match=r"winograd_input_t input and out must share a dtype"):
        kernels.get("winograd_input_t", x)(x, padding, tiles, np.empty(Vt.shape, np.float16))
    with pytest.raises(ValueError, match=r"C-contiguous out only"):
        kernels.get("winograd_gradient", dy)(dy, tiles, np.empty(Et.shape[::-1], dtype).T)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunk, split", [(1, False), (2, False), (100, False), (1, True), (2, True)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_engine_equals_the_gemm_in_chunks(case, chunk, split, dtype):
    """The engine's dW by "winograd/<n>" / "winograd-split/<n>" against im2col + GEMM's: each chunk's
    products add into M in another order than one whole-batch GEMM, still a sum of the same
    products (float32 bound as in test_float32_agrees_with_the_gemm_to_rounding)."""
    x, w, padding, dy = _case(case, dtype)
    with kernels.reference_only():
        _, cache = conv2d_forward(x, w, None, 1, padding)
        want = im2col_gemm_backward(dy, x, cache, need_input_grad=False)[1]
    _, cache = conv2d_forward(x, w, None, 1, padding)
    name = f"{'winograd-split' if split else 'winograd'}/{chunk}"
    dx, got = run_gradients(dy, cache, weight_algorithm=name)
    assert dx is None and got.shape == want.shape and got.dtype == want.dtype
    bound = 1e-13 if dtype == np.float64 else 1e-5
    assert _relative_error(got, want) <= bound, (name, _relative_error(got, want))
    # both gradients by the same name: dx by Winograd F(2x2, 3x3), dW by its transpose
    dx_want = im2col_gemm_backward(dy, x, cache, need_weight_grad=False)[0]
    dx, dw = run_gradients(dy, cache, input_algorithm=name, weight_algorithm=name)
    assert _relative_error(dw, want) <= bound and _relative_error(dx, dx_want) <= bound


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_chunk_is_the_reference_to_rounding(dtype):
    """The whole batch in one chunk: the reference's transforms (the Numba kernels' values, bit for
    bit) and the same products, M^T = V @ E^T instead of M = E @ V^T, so BLAS may sum them in
    another order; with the NumPy transforms too (``reference_only``: E^T is then a view)."""
    x, w, padding, dy = _case(((3, 5, 4, 9, 7), (1, 2)), dtype)
    want = winograd.weight_gradient(dy, x, padding)
    bound = 1e-14 if dtype == np.float64 else 1e-6
    assert _relative_error(winograd_weight_gradient(dy, x, padding=padding, samples=3), want) <= bound
    with kernels.reference_only():
        assert _relative_error(winograd_weight_gradient(dy, x, padding=padding, samples=3), want) <= bound


@numba_only
def test_the_split_at_two_threads_equals_the_gemm_and_repeats_its_bits():
    """ "winograd-split/<n>" at two threads: a slice of the batch per thread, chunks that must stop at
    the slice's end (N = 5 in slices of 3 and 2, chunks of 2), the slices' M added in slice order."""
    code = """
        import numpy as np
        from npresnet.engine import batch_threads, runtime
        from npresnet.engine.conv import run_gradients
        from npresnet.functional.conv import conv2d_forward, im2col_gemm_backward
        runtime.set_num_threads(2)
        assert batch_threads.available(np) and batch_threads.threads() == 2
        rng = np.random.default_rng(0)
        for N, padding in ((5, (1, 2)), (3, (0, 1)), (8, (1, 1))):
            x, w = rng.standard_normal((N, 5, 9, 7)), rng.standard_normal((4, 5, 3, 3))
            y, cache = conv2d_forward(x, w, None, 1, padding)
            dy = rng.standard_normal(y.shape)
            want = im2col_gemm_backward(dy, x, cache, need_input_grad=False)[1]
            for name in ("winograd-split/1", "winograd-split/2", "winograd/2"):
                runs = [run_gradients(dy, cache, weight_algorithm=name)[1] for _ in range(2)]
                assert np.array_equal(runs[0], runs[1]), name
                error = np.abs(runs[0] - want).max() / np.abs(want).max()
                assert error <= 1e-13, (N, name, error)
        print("ok")
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "NUMBA_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
