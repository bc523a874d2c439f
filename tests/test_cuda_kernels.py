"""The Numba CUDA kernels (kernels/cuda_im2col.py, kernels/cuda_pool.py) equal the NumPy references, bit for bit.

No GPU is needed: the kernels run in Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which
executes every CUDA thread as a Python thread on NumPy arrays. The variable must be set before
``numba.cuda`` is first imported, so a plain ``python -m pytest`` session (no simulator) runs this
file once more in a child pytest process with the variable set, and fails if the child fails,
skips or deselects anything. Run the simulator cases directly with::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/test_cuda_kernels.py

Every comparison is bitwise (same bytes: also the sign of zero and the NaN payloads), against the
references in ``npresnet.functional`` run inside ``kernels.reference_only()``. The cases cover each
kernel with each argument: stride, padding, dilation, non-square kernels, H != W, batch 1, one
channel, ceil_mode with its extra padding, count_include_pad and divisor_override, windows that
read only padding, pixels that no window reads, an empty im2col; max-pool ties (first maximum),
+0.0/-0.0 ties, NaNs (several, with distinct payloads: the last one wins), -inf and all -inf windows;
float32 and float64; plus random configurations (hypothesis). Groups never reach the kernels
(conv2d runs one im2col over all channels), so they are covered by running nn layers, conv2d with
groups included, with the CUDA kernels routed in. The simulator launches blocks of 32 threads, at
most 3 blocks, so the grid-stride loops run several rounds in nearly every case.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")
HERE = Path(__file__).resolve()
SIMULATOR_CASES = 60  # test items the child must pass (each hypothesis test counts once)
ROOT = HERE.parent.parent


def _numba_cuda_missing() -> str | None:
    """Why the simulator cannot run here (None when it can)."""
    for package in ("numba", "numba_cuda"):
        if importlib.util.find_spec(package) is None:
            return f"{package.replace('_', '-')} is not installed (pip install numba-cuda)"
    return None


if not SIMULATOR:

    @pytest.mark.slow  # a child pytest running every kernel case in Numba's CUDA simulator
    def test_simulator_suite_passes_in_a_child_process():
        """Run this file under NUMBA_ENABLE_CUDASIM=1 in a fresh interpreter; every case must pass."""
        missing = _numba_cuda_missing()
        if missing is not None:
            print(f"CUDA simulator tests skipped: {missing}")
            pytest.skip(f"CUDA simulator tests not run: {missing}")
        env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONHASHSEED": "0"}
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "error::RuntimeWarning",
            str(HERE),
        ]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        output = result.stdout + result.stderr
        summary = output.strip().splitlines()[-1] if output.strip() else "(no output)"
        print(f"CUDA simulator child: {summary}")
        assert result.returncode == 0, f"simulator tests failed:\n{output[-8000:]}"
        passed = re.search(r"(\d+) passed", summary)
        assert passed and int(passed.group(1)) >= SIMULATOR_CASES, f"too few simulator cases ran: {summary}"
        assert not re.search(r"skipped|deselected|xfail|xpass|error", summary), f"not all cases ran: {summary}"

    def test_kernels_compile_to_ptx_that_keeps_the_references_arithmetic():
        """The simulator runs the kernels as Python; this compiles them for a real GPU (sm_90, with
        CuPy-like C-contiguous arrays, int64 geometry and a typed zero) and reads the PTX: float32
        kernels must not widen to float64 (a float64 accumulator would round differently from the
        reference), nothing may be fused into an FMA, and divisions must be IEEE round-to-nearest
        (div.rn), so the GPU can reproduce the NumPy references bit for bit. Needs NVVM and NVRTC
        (a CUDA toolkit, or pip's nvidia-cuda-nvrtc), not a GPU."""
        missing = _numba_cuda_missing()
        if missing is not None:
            pytest.skip(f"PTX check not run: {missing}")
        from numba import cuda, types

        cuda_im2col = importlib.import_module("npresnet.kernels.cuda_im2col")
        cuda_pool = importlib.import_module("npresnet.kernels.cuda_pool")
        i64 = types.int64
        for ft, name in ((types.float32, "f32"), (types.float64, "f64")):
            a2, a4, a6, i4 = ft[:, ::1], ft[:, :, :, ::1], ft[:, :, :, :, :, ::1], types.int32[:, :, :, ::1]
            geometry = (i64,) * 8
            signatures = {
                cuda_im2col.im2col_kernel: (a4, a6, *geometry[:6], ft),
                cuda_im2col.col2im_kernel: (a6, a4, *geometry[:6], ft),
                cuda_pool.maxpool_forward_kernel: (a4, a4, i4, *geometry, ft),
                cuda_pool.maxpool_backward_kernel: (a4, i4, a4, *geometry, ft),
                cuda_pool.avgpool_forward_kernel: (a4, a2, a4, *geometry, ft),
                cuda_pool.avgpool_backward_kernel: (a4, a2, a4, *geometry, ft),
            }
            for kernel, signature in signatures.items():
                try:
                    ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0))
                except Exception as exc:  # no NVVM / NVRTC on this machine
                    if "nvrtc" in str(exc).lower() or "nvvm" in str(exc).lower():
                        print(f"PTX check skipped: {type(exc).__name__}: {exc}")
                        pytest.skip(f"PTX check not run: no NVVM/NVRTC ({type(exc).__name__})")
                    raise
                what = f"{kernel.py_func.__name__} ({name})"
                assert ".entry" in ptx, what
                if name == "f32":
                    assert ".f64" not in ptx, f"{what}: float64 arithmetic in a float32 kernel"
                assert "fma." not in ptx, f"{what}: fused multiply-add"
                assert not re.search(r"\bdiv\.(approx|full)", ptx), f"{what}: approximate division"
                assert not re.search(r"\.ftz\b", ptx), f"{what}: subnormals flushed to zero"
                if "avgpool" in kernel.py_func.__name__:
                    assert f"div.rn.f{name[1:]}" in ptx, f"{what}: the IEEE division is missing"

else:
    from cases import AVGPOOL_CASES, IM2COL_CASES, MAXPOOL_CASES, pool_input
    from hypothesis import HealthCheck, given, settings

    from npresnet import functional as F
    from npresnet import kernels, nn
    from npresnet.engine import batch_threads
    from npresnet.functional.im2col import col2im, im2col
    from npresnet.functional.pooling import (
        avgpool2d_backward,
        avgpool2d_forward,
        maxpool2d_backward,
        maxpool2d_forward,
    )
    from npresnet.testing.strategies import conv2d_configs, pool2d_configs

    # The CUDA modules (importing them imports numba.cuda, here in simulator mode).
    cuda_im2col, cuda_launch, cuda_pool = (
        importlib.import_module(f"npresnet.kernels.{name}") for name in ("cuda_im2col", "cuda_launch", "cuda_pool")
    )
    DTYPES = [np.float64, np.float32]
    DTYPE_IDS = ["f64", "f32"]
    LAUNCHERS = {
        "im2col": cuda_im2col.im2col,
        "col2im": cuda_im2col.col2im,
        "maxpool2d_forward": cuda_pool.maxpool2d_forward,
        "maxpool2d_backward": cuda_pool.maxpool2d_backward,
        "avgpool2d_forward": cuda_pool.avgpool2d_forward,
        "avgpool2d_backward": cuda_pool.avgpool2d_backward,
    }
    HYPOTHESIS = settings(
        max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
    )

    def assert_bitwise(got: np.ndarray, want: np.ndarray) -> None:
        """Same shape, dtype and bytes (so also the same NaNs and signs of zero)."""
        assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
        np.testing.assert_array_equal(got, want, strict=True)  # a readable report of the values
        same = np.ascontiguousarray(got).view(np.uint8) == np.ascontiguousarray(want).view(np.uint8)
        assert same.all(), "equal values but different bits (a -0.0 or a NaN payload)"

    def test_running_in_the_simulator():
        assert cuda_launch.SIMULATOR
        assert (cuda_launch.THREADS, cuda_launch.MAX_BLOCKS) == (32, 3)
        assert cuda_launch.grid_for(1) == (1, 32) and cuda_launch.grid_for(10_000) == (3, 32)

    # ------------------------------------------------------------------------------------------
    # im2col / col2im

    @pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
    @pytest.mark.parametrize("shape, ksize, stride, padding, dilation", IM2COL_CASES)
    def test_im2col_col2im_exact(shape, ksize, stride, padding, dilation, dtype, rng):
        x = rng.standard_normal(shape).astype(dtype)
        with kernels.reference_only():
            cols_ref = im2col(x, ksize, stride, padding, dilation)
        cols = cuda_im2col.im2col(x, ksize, stride, padding, dilation)
        assert_bitwise(cols, cols_ref)
        assert cols.flags.c_contiguous

        dcols = rng.standard_normal(cols_ref.shape).astype(dtype)
        with kernels.reference_only():
            dx_ref = col2im(dcols, shape, stride, padding, dilation)
        dx = cuda_im2col.col2im(dcols, shape, stride, padding, dilation)
        assert_bitwise(dx, np.ascontiguousarray(dx_ref))
        assert dx.flags.c_contiguous

    def test_im2col_col2im_non_contiguous_inputs(rng):
        x = rng.standard_normal((5, 3, 9, 8)).transpose(1, 0, 3, 2)[:, ::2]  # (3, 3, 8, 9), strided
        args = ((3, 2), (2, 1), (1, 1), (1, 1))
        with kernels.reference_only():
            cols_ref = im2col(x, *args)
        assert_bitwise(cuda_im2col.im2col(x, *args), cols_ref)
        dcols = rng.standard_normal(cols_ref.shape[::-1]).T  # Fortran-ordered
        with kernels.reference_only():
            dx_ref = col2im(dcols, x.shape, *args[1:])
        assert_bitwise(cuda_im2col.col2im(dcols, x.shape, *args[1:]), np.ascontiguousarray(dx_ref))

    def test_col2im_sums_overlaps_in_the_reference_order():
        """Values whose float32 sum depends on the order: only the reference's order gives its bits."""
        x_shape, args = (1, 1, 6, 6), ((1, 1), (1, 1), (1, 1))
        cols = np.zeros((1, 3, 3, 1, 6, 6), np.float32)
        cols[:, 0] = 1e8  # the first offset row adds +1e8, the last row -1e8
        cols[:, 1] = 1.0
        cols[:, 2] = -1e8
        with kernels.reference_only():
            dx_ref = col2im(cols, x_shape, *args)
        dx = cuda_im2col.col2im(cols, x_shape, *args)
        assert_bitwise(dx, np.ascontiguousarray(dx_ref))
        assert (dx[0, 0, 1:-1] == 0).all()  # 1e8 + 1 + ... rounds the ones away in float32 (order matters)

    # im2col sees all channels at once: one group. Small sizes: the simulator runs a Python thread per element.
    IM2COL_CONFIGS = conv2d_configs(
        batch=(1, 2), groups=1, channels_per_group=(1, 3), dilation=(1, 2), extra=(0, 4), dtypes=DTYPES
    )

    @HYPOTHESIS
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
        assert_bitwise(cuda_im2col.im2col(x, ksize, stride, padding, dilation), cols_ref)
        dcols = rng.standard_normal(cols_ref.shape).astype(dtype)
        with kernels.reference_only():
            dx_ref = col2im(dcols, shape, stride, padding, dilation)
        assert_bitwise(cuda_im2col.col2im(dcols, shape, stride, padding, dilation), np.ascontiguousarray(dx_ref))

    # ------------------------------------------------------------------------------------------
    # max pooling

    @pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
    @pytest.mark.parametrize("shape, ksize, stride, padding, dilation, ceil_mode", MAXPOOL_CASES)
    def test_maxpool_exact(shape, ksize, stride, padding, dilation, ceil_mode, dtype, rng):
        x = pool_input(shape, dtype, rng)
        with kernels.reference_only():
            y_ref, cache = maxpool2d_forward(x, ksize, stride, padding, dilation, ceil_mode)
        y, argmax = cuda_pool.maxpool2d_forward(x, cache.geometry)
        assert_bitwise(y, y_ref)
        assert_bitwise(argmax, cache.argmax)
        assert np.isnan(y).any() and (argmax > 0).any()  # the NaN and the tie rule were exercised

        dy = rng.standard_normal(y.shape).astype(dtype)
        with kernels.reference_only():
            dx_ref = maxpool2d_backward(dy, cache)
        dx = cuda_pool.maxpool2d_backward(dy, argmax, shape, cache.geometry)
        assert_bitwise(dx, np.ascontiguousarray(dx_ref))

    @pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
    def test_maxpool_several_nans_last_one_wins(dtype):
        """Two NaNs with different payloads in one window: the reference records the last, bit for bit."""
        bits = np.uint32 if dtype == np.float32 else np.uint64
        quiet = np.array([np.nan], dtype).view(bits)[0]
        x = np.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
        x[0, 0, 0, 1] = np.array([quiet | 1], bits).view(dtype)[0]
        x[0, 0, 1, 0] = np.array([quiet | 2], bits).view(dtype)[0]
        with kernels.reference_only():
            y_ref, cache = maxpool2d_forward(x, 2, 2)
        y, argmax = cuda_pool.maxpool2d_forward(x, cache.geometry)
        assert_bitwise(y, y_ref)
        assert argmax[0, 0, 0, 0] == 2 and y[0, 0, 0, 0:1].view(bits)[0] == quiet | 2

    # Beyond what torch takes (torch_valid=False): padding up to half the dilated kernel, windows of padding only.
    def pool_configs(kind: str):
        return pool2d_configs(
            kind=kind,
            batch=(1, 2),
            channels=(1, 3),
            dilation=(1, 2),
            extra=(0, 4),
            torch_valid=False,
            divisor_override=False,
            dtypes=DTYPES,
        )

    @HYPOTHESIS
    @given(pool_configs("max"))
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
        with kernels.reference_only():
            y_ref, cache = maxpool2d_forward(x, ksize, stride, padding, dilation, ceil_mode)
        y, argmax = cuda_pool.maxpool2d_forward(x, cache.geometry)
        assert_bitwise(y, y_ref)
        assert_bitwise(argmax, cache.argmax)
        dy = rng.standard_normal(y.shape).astype(dtype)
        with kernels.reference_only():
            dx_ref = maxpool2d_backward(dy, cache)
        assert_bitwise(cuda_pool.maxpool2d_backward(dy, argmax, shape, cache.geometry), np.ascontiguousarray(dx_ref))

    # ------------------------------------------------------------------------------------------
    # average pooling

    @pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
    @pytest.mark.parametrize("shape, ksize, stride, padding, ceil_mode, include_pad, override", AVGPOOL_CASES)
    def test_avgpool_exact(shape, ksize, stride, padding, ceil_mode, include_pad, override, dtype, rng):
        x = rng.standard_normal(shape).astype(dtype)
        with kernels.reference_only():
            y_ref, cache = avgpool2d_forward(x, ksize, stride, padding, ceil_mode, include_pad, override)
        y = cuda_pool.avgpool2d_forward(x, cache.divisor, cache.geometry)
        assert_bitwise(y, y_ref)

        dy = rng.standard_normal(y.shape).astype(dtype)
        with kernels.reference_only():
            dx_ref = avgpool2d_backward(dy, cache)
        dx = cuda_pool.avgpool2d_backward(dy, cache.divisor, shape, cache.geometry)
        assert_bitwise(dx, np.ascontiguousarray(dx_ref))

    @HYPOTHESIS
    @given(pool_configs("avg"))
    def test_avgpool_random_configurations(config):
        shape, ksize, stride, padding, ceil_mode, include_pad = (
            config.input_shape,
            config.kernel_size,
            config.stride,
            config.padding,
            config.ceil_mode,
            config.count_include_pad,
        )
        dtype, rng = config.dtype, np.random.default_rng(config.seed)
        x = rng.standard_normal(shape).astype(dtype)
        with kernels.reference_only():
            y_ref, cache = avgpool2d_forward(x, ksize, stride, padding, ceil_mode, include_pad)
        assert_bitwise(cuda_pool.avgpool2d_forward(x, cache.divisor, cache.geometry), y_ref)
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        with kernels.reference_only():
            dx_ref = avgpool2d_backward(dy, cache)
        assert_bitwise(
            cuda_pool.avgpool2d_backward(dy, cache.divisor, shape, cache.geometry), np.ascontiguousarray(dx_ref)
        )

    # ------------------------------------------------------------------------------------------
    # bad input, routing through kernels.get, and the layers end to end

    def test_launchers_reject_bad_input():
        x = np.zeros((1, 1, 4, 4), np.float32)
        with pytest.raises(TypeError, match="CUDA im2col expects a float32 or float64 array, got int64"):
            cuda_im2col.im2col(x.astype(np.int64), (2, 2), (1, 1), (0, 0), (1, 1))
        with pytest.raises(ValueError, match=re.escape("im2col expects an (N, C, H, W) array, got shape (4, 4)")):
            cuda_im2col.im2col(x[0, 0], (2, 2), (1, 1), (0, 0), (1, 1))
        with pytest.raises(ValueError, match=re.escape("col2im cols must have shape (1, 2, 2, 1, 3, 3), got")):
            cuda_im2col.col2im(np.zeros((1, 2, 2, 1, 3, 2), np.float32), (1, 1, 4, 4), (1, 1), (0, 0), (1, 1))
        _, cache = F.maxpool2d_forward(x, 2)
        message = "max_pool2d dout must have shape (1, 1, 2, 2), got (1, 1, 3, 2)"
        with pytest.raises(ValueError, match=re.escape(message)):
            cuda_pool.maxpool2d_backward(np.zeros((1, 1, 3, 2), np.float32), cache.argmax, x.shape, cache.geometry)
        _, cache = F.avgpool2d_forward(x, 2)
        with pytest.raises(ValueError, match=re.escape("avg_pool2d divisor must have shape (2, 2), got (2, 3)")):
            cuda_pool.avgpool2d_forward(x, np.ones((2, 3)), cache.geometry)

    class FakeCupyArray:
        """What a CuPy array looks like to ``kernels.get`` (its type's top-level module is 'cupy')."""

        __module__ = "cupy._core.core"

        def __init__(self, dtype):
            self.dtype = np.dtype(dtype)

    def test_get_serves_the_cuda_kernels_for_cupy_arrays(monkeypatch):
        assert kernels.cuda_active() == "numba-cuda" and kernels.cuda_problem() is None
        for dtype in DTYPES:
            for name in kernels.KERNELS:
                fast = kernels.get(name, FakeCupyArray(dtype))
                assert fast is LAUNCHERS.get(name), name  # batch norm: None (CuPy reductions)
            assert kernels.get("im2col", np.zeros(1, dtype)) is not LAUNCHERS["im2col"]  # NumPy: CPU kernel
        assert kernels.get("im2col", FakeCupyArray(np.float16)) is None
        assert kernels.get("im2col", FakeCupyArray(np.int32)) is None
        with kernels.reference_only():
            assert kernels.cuda_active() == "cupy"
            assert kernels.get("im2col", FakeCupyArray(np.float32)) is None
        monkeypatch.setattr(kernels, "REQUESTED", "numpy")
        assert kernels.get("col2im", FakeCupyArray(np.float32)) is None
        with pytest.raises(ValueError, match="unknown kernel 'im2colx'"):
            kernels.get("im2colx", FakeCupyArray(np.float32))

    def _run_layers(model, x, dy):
        y = model(x)
        model.zero_grad()
        dx = model.backward(dy)
        return y, dx, {name: p.grad.copy() for name, p in model.named_parameters()}

    @pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
    def test_layers_end_to_end_through_the_cuda_kernels(dtype, monkeypatch, rng):
        """nn layers (conv with groups, stride, padding, dilation; both pools) run with ``kernels.get``
        handing NumPy arrays to the CUDA launchers, as it hands CuPy arrays on a GPU, and match the
        reference path bit for bit: forward, dL/dx and every parameter gradient."""
        model = nn.Sequential(
            nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, rng=rng),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
            nn.Conv2d(6, 4, 3, padding=1, groups=2, rng=rng),
            nn.AvgPool2d((2, 3), stride=(1, 2), padding=(1, 1), ceil_mode=True, count_include_pad=False),
            nn.Conv2d(4, 3, 1, stride=2, rng=rng),
        ).to(dtype)
        x = rng.standard_normal((2, 4, 9, 7)).astype(dtype)
        # No batch split, for both runs: the simulator's kernels are not thread-safe, and a split
        # (what the fixed rule does with NumPy convs at 2 threads; CuPy arrays never split) sums dW
        # in another order than the one-loop path the CUDA run must match bit for bit.
        monkeypatch.setattr(batch_threads, "ENABLED", False)
        with kernels.reference_only():
            y_ref = model(x)
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        with kernels.reference_only():
            want = _run_layers(model, x, dy)

        calls = []

        def route_to_cuda(name, array):
            calls.append(name)
            is_float = isinstance(array, np.ndarray) and array.dtype in (np.float32, np.float64)
            return LAUNCHERS.get(name) if is_float else None

        monkeypatch.setattr(kernels, "get", route_to_cuda)
        got = _run_layers(model, x, dy)
        assert set(calls) >= set(LAUNCHERS), f"the layers asked for {sorted(set(calls))}"
        assert_bitwise(got[0], want[0])
        assert_bitwise(got[1], want[1])
        assert got[2].keys() == want[2].keys()
        for name in want[2]:
            assert_bitwise(got[2][name], want[2][name])
