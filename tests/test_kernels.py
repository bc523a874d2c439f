"""The Numba kernels of npresnet.kernels equal their NumPy references in npresnet.functional.

im2col/col2im and the pooling kernels are compared bit for bit (their loops add the same numbers in
the same order as the references). Batch norm sums in float64, so it matches the float64
reference to ~1e-13 and is at least as accurate as the float32 reference. The references always
run inside ``kernels.reference_only()``, so these comparisons stay honest once functional/ calls
the kernels itself. Subprocess tests cover NPRESNET_KERNELS=numpy, lazy import, and a missing Numba.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cases import AVGPOOL_CASES, BN_SHAPES, DIRECT_CASES, IM2COL_CASES, MAXPOOL_CASES, pool_input
from hypothesis import HealthCheck, given, settings

from npresnet import kernels
from npresnet.functional.batchnorm import batchnorm2d_backward, batchnorm2d_forward
from npresnet.functional.im2col import col2im, im2col
from npresnet.functional.pooling import (
    avgpool2d_backward,
    avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)
from npresnet.testing.strategies import conv2d_configs, pool2d_configs

needs_numba = pytest.mark.skipif(kernels.active() != "numba", reason="Numba kernels not active")
DTYPES = [np.float64, np.float32]


def kernel(name: str, x: np.ndarray):
    fast = kernels.get(name, x)
    assert fast is not None, f"kernels.get({name!r}) returned None for a {x.dtype} NumPy array"
    return fast


def assert_bitwise(got: np.ndarray, want: np.ndarray) -> None:
    """Same shape, dtype and bytes (so also the same NaNs and signs of zero)."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    np.testing.assert_array_equal(got, want, strict=True)  # readable report of the values
    same_bytes = np.ascontiguousarray(got).view(np.uint8) == np.ascontiguousarray(want).view(np.uint8)
    assert same_bytes.all(), "equal values but different bits (a -0.0 or a NaN payload)"


def rel_to_max(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|, in float64."""
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    return float(diff.max() / max(np.abs(want).max(), 1e-300))


# ---------------------------------------------------------------------------------------------
# im2col / col2im


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape, ksize, stride, padding, dilation", IM2COL_CASES)
def test_im2col_col2im_bitwise(shape, ksize, stride, padding, dilation, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    with kernels.reference_only():
        cols_ref = im2col(x, ksize, stride, padding, dilation)
    cols = kernel("im2col", x)(x, ksize, stride, padding, dilation)
    assert_bitwise(cols, cols_ref)
    assert cols.flags.c_contiguous

    dcols = rng.standard_normal(cols.shape).astype(dtype)
    with kernels.reference_only():
        dx_ref = col2im(dcols, shape, stride, padding, dilation)
    dx = kernel("col2im", dcols)(dcols, shape, stride, padding, dilation)
    assert_bitwise(dx, np.ascontiguousarray(dx_ref))


@needs_numba
def test_im2col_col2im_non_contiguous_inputs():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3, 9, 8)).transpose(1, 0, 3, 2)[:, ::2]  # (3, 3, 8, 9), strided
    args = ((3, 2), (2, 1), (1, 1), (1, 1))
    with kernels.reference_only():
        cols_ref = im2col(x, *args)
    assert_bitwise(kernel("im2col", x)(x, *args), cols_ref)
    dcols = rng.standard_normal(cols_ref.shape[::-1]).T  # Fortran-ordered
    with kernels.reference_only():
        dx_ref = col2im(dcols, x.shape, *args[1:])
    assert_bitwise(kernel("col2im", dcols)(dcols, x.shape, *args[1:]), np.ascontiguousarray(dx_ref))


# im2col sees all channels at once (groups never reach it): one group; padding also beyond the
# kernel's reach (windows of padding only), input sizes from one window (output size 1) up.
IM2COL_CONFIGS = conv2d_configs(groups=1, channels_per_group=(1, 4), dilation=(1, 2), extra=(0, 8), dtypes=DTYPES)


@needs_numba
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(IM2COL_CONFIGS)
def test_im2col_col2im_random_configurations(config):
    shape, ksize, stride, padding, dilation = (
        config.input_shape,
        config.kernel_size,
        config.stride,
        config.padding,
        config.dilation,
    )
    dtype, rng = config.dtype, np.random.default_rng(config.seed)
    x = rng.standard_normal(shape).astype(dtype)
    with kernels.reference_only():
        cols_ref = im2col(x, ksize, stride, padding, dilation)
    assert_bitwise(kernel("im2col", x)(x, ksize, stride, padding, dilation), cols_ref)
    dcols = rng.standard_normal(cols_ref.shape).astype(dtype)
    with kernels.reference_only():
        dx_ref = col2im(dcols, shape, stride, padding, dilation)
    assert_bitwise(kernel("col2im", dcols)(dcols, shape, stride, padding, dilation), np.ascontiguousarray(dx_ref))


# ---------------------------------------------------------------------------------------------
# pooling


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape, ksize, stride, padding, dilation, ceil_mode", MAXPOOL_CASES)
def test_maxpool_bitwise(shape, ksize, stride, padding, dilation, ceil_mode, dtype):
    rng = np.random.default_rng(2)
    x = pool_input(shape, dtype, rng)
    with kernels.reference_only():
        y_ref, cache = maxpool2d_forward(x, ksize, stride, padding, dilation, ceil_mode)
    y, argmax = kernel("maxpool2d_forward", x)(x, cache.geometry)
    assert_bitwise(y, y_ref)
    assert_bitwise(argmax, cache.argmax)
    assert np.isnan(y).any() and (argmax > 0).any()  # the NaN and the tie rule were exercised

    dy = rng.standard_normal(y.shape).astype(dtype)
    with kernels.reference_only():
        dx_ref = maxpool2d_backward(dy, cache)
    dx = kernel("maxpool2d_backward", dy)(dy, argmax, shape, cache.geometry)
    assert_bitwise(dx, np.ascontiguousarray(dx_ref))


# Beyond what torch takes (torch_valid=False): padding up to half the dilated kernel, and windows
# that hold only padding (their maximum is -inf). The kernels must match the reference there too.
MAXPOOL_CONFIGS = pool2d_configs(channels=(1, 4), dilation=(1, 2), extra=(0, 8), torch_valid=False, dtypes=DTYPES)


@needs_numba
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MAXPOOL_CONFIGS)
def test_maxpool_random_configurations(config):
    shape, ksize, stride, padding, dilation, ceil_mode = (
        config.input_shape,
        config.kernel_size,
        config.stride,
        config.padding,
        config.dilation,
        config.ceil_mode,
    )
    dtype, rng = config.dtype, np.random.default_rng(config.seed)
    x = rng.integers(-2, 3, size=shape).astype(dtype)  # ties everywhere
    x[(x == 0) & (rng.random(shape) < 0.5)] = -0.0
    x[rng.random(shape) < 0.05] = np.nan
    x[rng.random(shape) < 0.05] = -np.inf
    with kernels.reference_only():
        y_ref, cache = maxpool2d_forward(x, ksize, stride, padding, dilation, ceil_mode)
    y, argmax = kernel("maxpool2d_forward", x)(x, cache.geometry)
    assert_bitwise(y, y_ref)
    assert_bitwise(argmax, cache.argmax)
    dy = rng.standard_normal(y.shape).astype(dtype)
    with kernels.reference_only():
        dx_ref = maxpool2d_backward(dy, cache)
    assert_bitwise(kernel("maxpool2d_backward", dy)(dy, argmax, shape, cache.geometry), np.ascontiguousarray(dx_ref))


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape, ksize, stride, padding, ceil_mode, include_pad, override", AVGPOOL_CASES)
def test_avgpool_bitwise(shape, ksize, stride, padding, ceil_mode, include_pad, override, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    with kernels.reference_only():
        y_ref, cache = avgpool2d_forward(x, ksize, stride, padding, ceil_mode, include_pad, override)
    y = kernel("avgpool2d_forward", x)(x, cache.divisor, cache.geometry)
    assert_bitwise(y, y_ref)
    dy = rng.standard_normal(y.shape).astype(dtype)
    with kernels.reference_only():
        dx_ref = avgpool2d_backward(dy, cache)
    dx = kernel("avgpool2d_backward", dy)(dy, cache.divisor, shape, cache.geometry)
    assert_bitwise(dx, np.ascontiguousarray(dx_ref))


# ---------------------------------------------------------------------------------------------
# batch norm (training mode)


def _bn_inputs(shape, affine, rng):
    C = shape[1]
    x = rng.standard_normal(shape) * 2.0 + 5.0  # an offset mean makes the sums work
    weight = rng.standard_normal(C) if affine in ("both", "weight") else None
    bias = rng.standard_normal(C) if affine in ("both", "bias") else None
    return x, weight, bias, rng.standard_normal(shape)


def _bn_reference(x, weight, bias, dy):
    with kernels.reference_only():
        y, cache = batchnorm2d_forward(x, weight, bias, None, None, True, eps=1e-5)
        dx, dweight, dbias = batchnorm2d_backward(dy, cache)
    return y, cache, dx, dweight, dbias


@needs_numba
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_float64_matches_reference(shape, affine):
    x, weight, bias, dy = _bn_inputs(shape, affine, np.random.default_rng(4))
    y_ref, cache, dx_ref, dweight_ref, dbias_ref = _bn_reference(x, weight, bias, dy)
    y, x_hat, mean, var, invstd = kernel("batchnorm2d_train_forward", x)(x, weight, bias, 1e-5)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(var, x.var(axis=(0, 2, 3)), rtol=1e-12)
    for got, want in ((y, y_ref), (x_hat, cache.x_hat), (invstd, cache.invstd)):
        assert got.dtype == np.float64 and got.shape == want.shape
        assert rel_to_max(got, want) < 1e-13
    # y is computed from x_hat exactly as the reference does (no fused multiply-add sneaking in)
    expected_y = x_hat * weight.reshape(1, -1, 1, 1) if weight is not None else x_hat.copy()
    if bias is not None:
        expected_y += bias.reshape(1, -1, 1, 1)
    assert_bitwise(y, expected_y)

    dx, dweight, dbias = kernel("batchnorm2d_train_backward", dy)(dy, cache.x_hat, cache.invstd, weight)
    assert rel_to_max(dx, dx_ref) < 1e-12
    assert rel_to_max(dweight, dweight_ref) < 1e-12
    assert rel_to_max(dbias, dbias_ref) < 1e-12


@needs_numba
@pytest.mark.parametrize("shape", [(8, 3, 32, 32), (16, 4, 9, 1)])
def test_batchnorm_float32_accumulates_in_float64(shape):
    """float32 results agree with the float32 reference to ~1e-6 and are at least as close as it
    to the float64 truth (the kernel sums in float64, the reference in float32)."""
    x, weight, bias, dy = (
        None if a is None else a.astype(np.float32) for a in _bn_inputs(shape, "both", np.random.default_rng(5))
    )
    truth = _bn_reference(*(a.astype(np.float64) for a in (x, weight, bias, dy)))
    ref32 = _bn_reference(x, weight, bias, dy)

    y, x_hat, mean, var, invstd = kernel("batchnorm2d_train_forward", x)(x, weight, bias, 1e-5)
    assert all(a.dtype == np.float32 for a in (y, x_hat, mean, var, invstd))
    dx, dweight, dbias = kernel("batchnorm2d_train_backward", dy)(dy, ref32[1].x_hat, ref32[1].invstd, weight)
    assert all(a.dtype == np.float32 for a in (dx, dweight, dbias))

    pairs = {
        "y": (y, ref32[0], truth[0]),
        "x_hat": (x_hat, ref32[1].x_hat, truth[1].x_hat),
        "dx": (dx, ref32[2], truth[2]),
        "dweight": (dweight, ref32[3], truth[3]),
        "dbias": (dbias, ref32[4], truth[4]),
    }
    for name, (got, ref, exact) in pairs.items():
        assert rel_to_max(got, ref) < 1e-6, name
        assert rel_to_max(got, exact) <= max(rel_to_max(ref, exact), 1e-7), name


# ---------------------------------------------------------------------------------------------
# the dispatch API


def test_get_rejects_unknown_names_in_every_mode():
    with pytest.raises(ValueError, match="unknown kernel 'im2colx'"):
        kernels.get("im2colx", np.zeros((1, 1, 1, 1)))
    with kernels.reference_only(), pytest.raises(ValueError, match="expected one of"):
        kernels.get("conv", np.zeros(1))


@needs_numba
def test_get_only_serves_numpy_float_arrays():
    x32 = np.zeros((1, 1, 2, 2), np.float32)
    for name in kernels.KERNELS:
        assert callable(kernels.get(name, x32))
        assert callable(kernels.get(name, x32.astype(np.float64)))
        assert kernels.get(name, x32.astype(np.float16)) is None
        assert kernels.get(name, x32.astype(np.int64)) is None
        assert kernels.get(name, x32.tolist()) is None

    class FakeCupyArray:  # what a CuPy array looks like to get(): not a numpy.ndarray
        dtype = np.dtype(np.float32)
        shape = (1, 1, 2, 2)

    assert kernels.get("im2col", FakeCupyArray()) is None
    with kernels.reference_only():
        assert kernels.active() == "numpy"
        assert kernels.get("im2col", x32) is None
        with kernels.reference_only():
            pass
        assert kernels.get("im2col", x32) is None  # still inside the outer block
    assert kernels.active() == "numba"


@needs_numba
def test_kernels_reject_inconsistent_shapes():
    """The kernels index without bounds checks, so their wrappers refuse shapes that do not fit."""
    x = np.zeros((2, 3, 6, 5))
    with kernels.reference_only():
        _, pool_cache = maxpool2d_forward(x, 2)
        _, avg_cache = avgpool2d_forward(x, 2)
    geom = pool_cache.geometry
    dy = np.zeros((2, 3, 3, 2))
    with pytest.raises(ValueError, match=r"max_pool2d dout must have shape \(4, 3, 3, 2\), got \(2, 3, 3, 2\)"):
        kernel("maxpool2d_backward", dy)(dy, pool_cache.argmax, (4, 3, 6, 5), geom)
    with pytest.raises(ValueError, match="max_pool2d argmax must have shape"):
        kernel("maxpool2d_backward", dy)(dy, pool_cache.argmax[:1], x.shape, geom)
    with pytest.raises(ValueError, match="avg_pool2d divisor must have shape"):
        kernel("avgpool2d_forward", x)(x, avg_cache.divisor[:1], avg_cache.geometry)
    with pytest.raises(ValueError, match=r"col2im cols must have shape \(3, 3, 3, 2, 4, 3\)"):
        cols = np.zeros((3, 3, 3, 2, 4, 4))
        kernel("col2im", cols)(cols, x.shape, (1, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="im2col expects an"):
        kernel("im2col", x[0])(x[0], (1, 1), (1, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match=r"batch_norm weight must have shape \(3,\)"):
        kernel("batchnorm2d_train_forward", x)(x, np.ones(4), None, 1e-5)
    with pytest.raises(ValueError, match="batch_norm x_hat must have shape"):
        kernel("batchnorm2d_train_backward", x)(x, x[:1], np.ones(3), None)
    with pytest.raises(TypeError, match="must share a dtype, got float64 and float32"):
        kernel("batchnorm2d_train_backward", x)(x, x.astype(np.float32), np.ones(3), None)


def _run_python(*snippets: str, **env: str) -> subprocess.CompletedProcess:
    """Run the snippets (each dedented, then joined) in a fresh interpreter with extra environment variables."""
    code = "\n".join(textwrap.dedent(snippet) for snippet in snippets)
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


_CONV_CHECK = """
    import numpy as np
    from npresnet.functional import conv2d_backward, conv2d_forward, maxpool2d_backward, maxpool2d_forward

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 2))
    y, cache = conv2d_forward(x, w, None, stride=(2, 1), padding=1)
    # y by direct summation over the window
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    direct = np.zeros_like(y)
    for oh in range(y.shape[2]):
        for ow in range(y.shape[3]):
            window = xp[:, :, 2 * oh:2 * oh + 3, ow:ow + 2]
            direct[:, :, oh, ow] = np.einsum("nchw,ochw->no", window, w)
    assert np.allclose(y, direct, rtol=1e-12, atol=1e-12), abs(y - direct).max()
    # backward: the adjoint identity <dy, conv(x)> = <conv_backward(dy), x> (conv is linear in x)
    dy = rng.standard_normal(y.shape)
    dx, dw, _ = conv2d_backward(dy, cache)
    assert np.isclose(np.sum(dy * y), np.sum(dx * x), rtol=1e-12), (np.sum(dy * y), np.sum(dx * x))
    assert np.isclose(np.sum(dy * y), np.sum(dw * w), rtol=1e-12)
    yp, pcache = maxpool2d_forward(x, 3, 2, 1)
    assert maxpool2d_backward(np.ones_like(yp), pcache).sum() == yp.size
"""


def test_numpy_mode_forces_the_reference():
    result = _run_python(
        """
        import sys
        import numpy as np
        from npresnet import kernels
        assert kernels.REQUESTED == "numpy" and kernels.active() == "numpy", kernels.active()
        assert kernels.get("im2col", np.zeros((1, 1, 2, 2))) is None
    """,
        _CONV_CHECK,
        """
        assert "numba" not in sys.modules, "NPRESNET_KERNELS=numpy imported numba"
        print("ok")
    """,
        NPRESNET_KERNELS="numpy",
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_import_compiles_nothing():
    result = _run_python(
        """
        import sys
        import npresnet, npresnet.kernels
        assert "numba" not in sys.modules, "importing npresnet.kernels imported numba"
        print(npresnet.kernels.active())
    """,
        NPRESNET_KERNELS="auto",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("numba" if kernels.HAVE_NUMBA else "numpy")


_BLOCK_NUMBA = """
    import sys

    class BlockNumba:                     # makes `import numba` fail, as if it were not installed
        def find_spec(self, name, path=None, target=None):
            if name == "numba" or name.startswith("numba."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, BlockNumba())
"""


def test_works_without_numba():
    result = _run_python(
        _BLOCK_NUMBA,
        """
        import numpy as np
        from npresnet import kernels
        assert not kernels.HAVE_NUMBA and kernels.active() == "numpy"
        assert all(kernels.get(name, np.zeros((1, 1, 2, 2))) is None for name in kernels.KERNELS)
    """,
        _CONV_CHECK,
        """
        assert "numba" not in sys.modules
        print("ok")
    """,
        NPRESNET_KERNELS="auto",
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


_BROKEN_NUMBA = """
    import importlib.abc, importlib.machinery, sys

    class BrokenLoader(importlib.abc.Loader):    # numba is found, but importing it fails
        def create_module(self, spec):
            return None

        def exec_module(self, module):
            raise ImportError("Numba needs NumPy 2.3 or less")

    class BrokenNumba(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            return importlib.machinery.ModuleSpec(name, BrokenLoader()) if name == "numba" else None

    sys.meta_path.insert(0, BrokenNumba())
"""


def test_broken_numba_falls_back_with_a_warning():
    result = _run_python(
        _BROKEN_NUMBA,
        """
        import warnings
        import numpy as np
        from npresnet import kernels
        assert kernels.HAVE_NUMBA and kernels.active() == "numba"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert kernels.get("im2col", np.zeros((1, 1, 2, 2))) is None
        assert kernels.active() == "numpy"
        assert len(caught) == 1 and "Numba needs NumPy 2.3 or less" in str(caught[0].message), caught
    """,
        _CONV_CHECK,
        "print('ok')",
        NPRESNET_KERNELS="auto",
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    result = _run_python(
        _BROKEN_NUMBA,
        """
        import numpy as np
        from npresnet import kernels
        kernels.get("im2col", np.zeros((1, 1, 2, 2)))
    """,
        NPRESNET_KERNELS="numba",
    )
    assert result.returncode != 0 and "Numba needs NumPy 2.3 or less" in result.stderr


def test_explicit_numba_request_without_numba_is_an_error():
    result = _run_python(_BLOCK_NUMBA, "import npresnet.kernels", NPRESNET_KERNELS="numba")
    assert result.returncode != 0
    assert (
        "NPRESNET_KERNELS=numba but numba is not installed; it is a dependency of npresnet: "
        "pip install 'numba>=0.58'" in result.stderr
    )


def test_bad_mode_is_an_error():
    result = _run_python("import npresnet.kernels\n", NPRESNET_KERNELS="fast")
    assert result.returncode != 0
    assert "NPRESNET_KERNELS='fast' is not valid: expected auto, numba or numpy" in result.stderr


# ---------------------------------------------------------------------------------------------
# ReLU backward


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 7, 5), (1, 4, 33, 65), (3, 50000)])
def test_relu_backward_bitwise(shape, dtype):
    from npresnet.functional.activation import relu_backward, relu_forward

    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[::7] = 0.0  # exact zeros: gradient 0, as torch
    x.flat[1::11] = np.nan  # NaN input: y is NaN, not > 0, gradient 0
    y, cache = relu_forward(x)
    dout = rng.standard_normal(shape).astype(dtype)
    dout.flat[2::13] = -0.0  # signs of zero must survive
    with kernels.reference_only():
        want = relu_backward(dout, cache)
    got = kernel("relu_backward", dout)(dout, cache)
    assert_bitwise(got, want)
    assert_bitwise(relu_backward(dout, cache), want)  # the functional path dispatches to the kernel


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 7, 5), (1, 4, 33, 65), (3, 50000)])
def test_relu_forward_bitwise(shape, dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[::7] = 0.0
    x.flat[3::7] = -0.0  # maximum(-0.0, 0) is +0.0 in NumPy
    x.flat[1::11] = np.nan
    x.flat[5::17] = -np.inf
    assert_bitwise(kernel("relu_forward", x)(x), np.maximum(x, 0))
    assert_bitwise(kernel("relu_forward", x)(x.T), np.maximum(x.T, 0))  # any layout in, C-contiguous out
    from npresnet.functional.activation import relu_forward

    assert_bitwise(relu_forward(x)[0], np.maximum(x, 0))  # the functional path uses it


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_channel_affine_bitwise(shape, dtype):
    """Evaluation-mode batch norm's y = x * scale + shift: the reference's two roundings, in one pass."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(dtype)
    scale, shift = rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    want = x * scale.reshape(1, -1, 1, 1)
    want += shift.reshape(1, -1, 1, 1)
    assert_bitwise(kernel("channel_affine", x)(x, scale, shift), want)
    running_mean, running_var = rng.standard_normal(shape[1]).astype(dtype), rng.random(shape[1]).astype(dtype)
    with kernels.reference_only():
        want_eval = batchnorm2d_forward(x, scale, shift, running_mean, running_var, False)[0]
    assert_bitwise(batchnorm2d_forward(x, scale, shift, running_mean, running_var, False)[0], want_eval)
    with pytest.raises(ValueError, match=rf"channel_affine shift must have shape \({shape[1]},\)"):
        kernel("channel_affine", x)(x, scale, shift[:0])


@needs_numba
def test_relu_backward_kernel_rejects_mismatched_shapes():
    y = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"relu_backward dout must have shape \(2, 3\)"):
        kernel("relu_backward", y)(np.ones((3, 2), np.float32), y)


# ---------------------------------------------------------------------------------------------
# Direct 3x3 convolution (thin layers): same math as im2col + GEMM, another summation order


def _conv_both_ways(x, w, b, padding, dilation, dy):
    """(y, dx, dw, db) through the direct kernels (asserting they were used) and through the reference."""
    from npresnet.engine.conv import direct_gradients
    from npresnet.functional.conv import conv2d_backward, conv2d_forward

    y, cache = conv2d_forward(x, w, b, 1, padding, dilation)
    assert direct_gradients(cache), "this configuration should take the direct 3x3 path"
    got = (y, *conv2d_backward(dy, cache))
    with kernels.reference_only():
        y_ref, cache_ref = conv2d_forward(x, w, b, 1, padding, dilation)
        assert not direct_gradients(cache_ref)
        want = (y_ref, *conv2d_backward(dy, cache_ref))
    return got, want


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape, padding, dilation", DIRECT_CASES)
def test_direct_conv3x3_matches_im2col_gemm(shape, padding, dilation, dtype):
    N, C, O, H, W = shape
    rng = np.random.default_rng(11)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((O, C, 3, 3)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    OH, OW = H + 2 * padding[0] - 2 * dilation[0], W + 2 * padding[1] - 2 * dilation[1]
    dy = rng.standard_normal((N, O, OH, OW)).astype(dtype)
    got, want = _conv_both_ways(x, w, b, padding, dilation, dy)
    # float64: both within a few ulps of the exact sums; float32: compare with float64 arithmetic
    exact = _conv_both_ways(*(a.astype(np.float64) for a in (x, w, b)), padding, dilation, dy.astype(np.float64))[1]
    bound = 1e-14 if dtype == np.float64 else 3e-6
    for name, g, r, e in zip(["y", "dx", "dw", "db"], got, want, exact):
        assert g.shape == r.shape and g.dtype == r.dtype and g.flags.c_contiguous, name
        assert rel_to_max(g, e) <= bound, (name, rel_to_max(g, e))
        assert rel_to_max(r, e) <= bound, (name, "reference", rel_to_max(r, e))
    # the other direct weight gradient (Numba dot products, a measure-mode candidate)
    dots = kernels.get("conv3x3_backward_weight_dots", x)(dy, x, padding, dilation)
    assert dots.shape == w.shape and dots.dtype == w.dtype and dots.flags.c_contiguous
    assert rel_to_max(dots, exact[2]) <= bound, ("dw dots", rel_to_max(dots, exact[2]))


@needs_numba
@pytest.mark.parametrize("threads", [1, 2])
def test_direct_conv3x3_gives_the_same_bits_in_chunks_of_samples(monkeypatch, threads):
    """_convolve pads and convolves a chunk of samples at a time (at least one per thread): the
    smallest chunks, chunks of two samples with one left over, and the whole batch at once give the
    same bits (forward and dx)."""
    import numba
    from npresnet.kernels import conv3x3_cpu

    rng = np.random.default_rng(13)
    x = rng.standard_normal((5, 3, 6, 9)).astype(np.float32)  # N = 5: chunks of 2 leave one over
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((5, 4, 6, 9)).astype(np.float32)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        results = {}
        for chunk_bytes in (1, 2 * 3 * (8 * 11 + 2) * 4, 1 << 30):  # max(threads, 1), 2 or N samples
            monkeypatch.setattr(conv3x3_cpu, "PAD_CHUNK_BYTES", chunk_bytes)
            y = conv3x3_cpu.conv3x3_forward(x, w, (1, 1), (1, 1))
            dx = conv3x3_cpu.conv3x3_backward_input(dy, w, (1, 1), (1, 1))
            results[chunk_bytes] = (y, dx)
    finally:
        numba.set_num_threads(before)
    (y0, dx0), *others = results.values()
    for y, dx in others:
        np.testing.assert_array_equal(y, y0)
        np.testing.assert_array_equal(dx, dx0)
    with kernels.reference_only():
        from npresnet.functional.conv import conv2d_forward

        y_ref = conv2d_forward(x, w, None, 1, 1)[0]
    assert rel_to_max(y0, y_ref) <= 3e-6


@needs_numba
def test_direct_conv3x3_takes_non_contiguous_input_and_needs_only_what_is_asked():
    from npresnet.functional.conv import conv2d_backward, conv2d_forward

    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 9, 7, 4)).transpose(0, 3, 2, 1)  # (2, 4, 7, 9), not contiguous
    w = rng.standard_normal((6, 4, 3, 3))
    dy = rng.standard_normal((2, 6, 7, 9))
    got, want = _conv_both_ways(x, w, None, (1, 1), (1, 1), dy)
    for g, r in zip(got, want):
        assert (g is None and r is None) or rel_to_max(g, r) <= 1e-14
    y, cache = conv2d_forward(x, w, None, 1, 1)
    dx, dw, db = conv2d_backward(dy, cache, need_input_grad=False)
    assert dx is None and db is None and rel_to_max(dw, want[2]) <= 1e-14
    dx, dw, _ = conv2d_backward(dy, cache, need_weight_grad=False)
    assert dw is None and rel_to_max(dx, want[1]) <= 1e-14
    with kernels.reference_only():  # kernels off between the passes
        dx, dw, _ = conv2d_backward(dy, cache)
    assert rel_to_max(dx, want[1]) <= 1e-14 and rel_to_max(dw, want[2]) <= 1e-14


@needs_numba
@pytest.mark.parametrize(
    "why_not, kwargs",
    [
        ("stride 2", dict(stride=2, padding=1)),
        ("33 output channels", dict(out_channels=33, padding=1)),
        ("64 input channels", dict(in_channels=64, padding=1)),
        ("two groups", dict(groups=2, padding=1)),
        ("padding 3 > 2 * dilation 1", dict(padding=3)),
        ("a 3x2 kernel", dict(kernel=(3, 2), padding=1)),
        ("a 5x5 kernel", dict(kernel=(5, 5), padding=2)),
    ],
)
def test_direct_conv3x3_is_used_only_where_it_applies(why_not, kwargs):
    from npresnet.engine.conv import direct_gradients
    from npresnet.functional.conv import conv2d_forward

    C, O = kwargs.pop("in_channels", 8), kwargs.pop("out_channels", 8)
    kernel_size, groups = kwargs.pop("kernel", (3, 3)), kwargs.get("groups", 1)
    x = np.ones((1, C, 9, 9))
    _, cache = conv2d_forward(x, np.ones((O, C // groups, *kernel_size)), None, **kwargs)
    assert not direct_gradients(cache), why_not
    _, cache = conv2d_forward(x[:, :8], np.ones((8, 8, 3, 3)), None, padding=1)
    assert direct_gradients(cache)


# ---------------------------------------------------------------------------------------------
# Memory safety: the kernels index without bounds checks, so an out-of-range write would corrupt
# memory silently (or only race under NPRESNET_NUMBA_PARALLEL=1). Rerun the fixed cases of every CPU
# kernel with Numba's bounds checking on (a fresh compile, so no cached unchecked build is used).


@pytest.mark.slow  # every CPU kernel recompiled under NUMBA_BOUNDSCHECK=1 in a fresh process
@needs_numba
def test_kernels_stay_in_bounds():
    result = _run_python(
        f"""
        import numpy as np
        from npresnet import kernels
        from npresnet.engine.conv import direct_gradients
        from npresnet.functional import (avgpool2d_backward, avgpool2d_forward, batchnorm2d_backward,
                                         batchnorm2d_forward, conv2d_backward, conv2d_forward, maxpool2d_backward,
                                         maxpool2d_forward, relu_backward, relu_forward)
        rng = np.random.default_rng(0)
        for shape, k, s, p, d, ceil_mode in {MAXPOOL_CASES!r}:
            y, cache = maxpool2d_forward(rng.standard_normal(shape), k, s, p, d, ceil_mode)
            maxpool2d_backward(np.ones_like(y), cache)
        for shape, k, s, p, ceil_mode, include_pad, override in {AVGPOOL_CASES!r}:
            y, cache = avgpool2d_forward(rng.standard_normal(shape), k, s, p, ceil_mode, include_pad, override)
            avgpool2d_backward(np.ones_like(y), cache)
        for shape in {BN_SHAPES!r}:
            C = shape[1]
            y, cache = batchnorm2d_forward(rng.standard_normal(shape), np.ones(C), np.zeros(C), np.zeros(C),
                                           np.ones(C), True)
            batchnorm2d_backward(rng.standard_normal(shape), cache)
            y, cache = relu_forward(y)
            relu_backward(np.ones_like(y), cache)
        for shape, k, s, p, d in {IM2COL_CASES!r}:
            x = rng.standard_normal(shape)
            cols = kernels.get("im2col", x)(x, k, s, p, d)
            kernels.get("col2im", cols)(cols, shape, s, p, d)
        for (N, C, O, H, W), p, d in {DIRECT_CASES!r}:
            x = rng.standard_normal((N, C, H, W)).astype(np.float32)
            y, cache = conv2d_forward(x, rng.standard_normal((O, C, 3, 3)).astype(np.float32), None, 1, p, d)
            assert direct_gradients(cache)
            conv2d_backward(np.ones_like(y), cache)
            kernels.get("conv3x3_backward_weight_dots", x)(np.ones_like(y), x, p, d)
        print("ok")
    """,
        NUMBA_BOUNDSCHECK="1",
        NPRESNET_NUMBA_CACHE="0",
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
