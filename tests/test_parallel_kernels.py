"""The Numba kernels on Numba's thread pool: the same bits as serially, and as the NumPy references.

Every ``prange`` kernel is built twice (``kernels/_numba.py``'s ``ParallelKernel``): serially,
used at one Numba thread, and for the thread pool, used above one. The builds split the work only
over independent outputs (planes, rows, column blocks, rows of a batch norm) and each output sums
the same numbers in the same order, so the two must agree bit for bit, on every kernel: im2col,
col2im (a gather), max/avg pooling, ReLU backward, batch norm, the direct 3x3 convolution (and
its dot-product weight gradient, whose blocks do not depend on the thread count) and the Winograd
transforms. Each check runs in a fresh interpreter with ``NUMBA_NUM_THREADS=2`` (the parent test
process may have started Numba with one thread), on the awkward shapes of tests/test_kernels.py (H != W, stride 2,
dilation, batch 1, 1-3 channels, odd sizes) plus shapes large enough to give both threads work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from npresnet import kernels

pytestmark = pytest.mark.skipif(kernels.active() != "numba", reason="Numba kernels not active")
TESTS = Path(__file__).resolve().parent


def run_with_two_threads(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) in a fresh interpreter with 2 Numba threads and 1 BLAS thread."""
    prelude = f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import numba
        import numpy as np
        import cases  # tests/cases.py
        from npresnet import kernels
        from npresnet.kernels import _numba
        assert numba.config.NUMBA_NUM_THREADS == 2, numba.config.NUMBA_NUM_THREADS

        def serial_and_parallel(compute):
            numba.set_num_threads(1)
            serial = compute()
            numba.set_num_threads(2)
            parallel = compute()
            return serial, parallel

        def same_bits(a, b, what):
            a, b = (a,) if isinstance(a, np.ndarray) else a, (b,) if isinstance(b, np.ndarray) else b
            for i, (u, v) in enumerate(zip(a, b)):
                if u is None and v is None:
                    continue
                assert u.shape == v.shape and u.dtype == v.dtype, (what, i, u.shape, v.shape)
                assert (np.ascontiguousarray(u).view(np.uint8) == np.ascontiguousarray(v).view(np.uint8)).all(), \\
                    f"{{what}}: output {{i}} differs between 1 and 2 threads (max diff {{abs(u - v).max()}})"
    """
    env = {
        **{k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"},
        "NUMBA_NUM_THREADS": "2",
        "OPENBLAS_NUM_THREADS": "1",
        "NPRESNET_PARALLEL_MIN_BYTES": "0",
        **env,
    }  # small shapes go parallel too
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(prelude) + textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        result.stdout[-2000:],
        result.stderr[-4000:],
    )


def test_every_kernel_gives_the_same_bits_at_one_and_two_threads():
    assert_ok(
        run_with_two_threads("""
        from npresnet.engine.conv import direct_gradients
        from npresnet.functional import (avgpool2d_backward, avgpool2d_forward, batchnorm2d_backward,
                                         batchnorm2d_forward, conv2d_backward, conv2d_forward, maxpool2d_backward,
                                         maxpool2d_forward, relu_backward, relu_forward)
        rng = np.random.default_rng(0)
        big = [((2, 3, 64, 48), (3, 3), (1, 1), (1, 1), (1, 1)),     # same-width path, many planes
               ((3, 2, 33, 31), (3, 3), (2, 2), (1, 1), (1, 1)),     # stride 2, odd sizes
               ((1, 1, 40, 27), (3, 2), (1, 2), (2, 1), (2, 1))]     # batch 1, one channel, dilation
        for dtype in (np.float64, np.float32):
            for shape, k, s, p, d in cases.IM2COL_CASES + big:
                x = rng.standard_normal(shape).astype(dtype)
                cols = serial_and_parallel(lambda: kernels.get("im2col", x)(x, k, s, p, d))
                same_bits(*cols, f"im2col {shape}")
                with kernels.reference_only():
                    from npresnet.functional.im2col import col2im, im2col
                    want = im2col(x, k, s, p, d)
                    want_dx = col2im(want, shape, s, p, d)
                same_bits(cols[1], want, f"im2col {shape} vs reference")
                dx = serial_and_parallel(lambda: kernels.get("col2im", want)(want, shape, s, p, d))
                same_bits(*dx, f"col2im {shape}")
                same_bits(dx[1], want_dx, f"col2im {shape} vs reference")
            for shape, k, s, p, d, ceil_mode in cases.MAXPOOL_CASES + [((2, 3, 41, 30), 3, 2, 1, 1, True)]:
                x = cases.pool_input(shape, dtype, rng)
                dy = rng.standard_normal(maxpool2d_forward(x, k, s, p, d, ceil_mode)[0].shape).astype(dtype)
                def max_pool():
                    y, cache = maxpool2d_forward(x, k, s, p, d, ceil_mode)
                    return y, cache.argmax, maxpool2d_backward(dy, cache)
                got = serial_and_parallel(max_pool)
                same_bits(*got, f"max pool {shape}")
                with kernels.reference_only():
                    same_bits(got[1], max_pool(), f"max pool {shape} vs reference")
            for shape, k, s, p, ceil_mode, include_pad, override in cases.AVGPOOL_CASES + [
                ((2, 3, 41, 30), 3, 2, 1, True, False, None)
            ]:
                x = rng.standard_normal(shape).astype(dtype)
                dy = rng.standard_normal(avgpool2d_forward(x, k, s, p, ceil_mode, include_pad, override)[0].shape)
                dy = dy.astype(dtype)
                def avg_pool():
                    y, cache = avgpool2d_forward(x, k, s, p, ceil_mode, include_pad, override)
                    return y, avgpool2d_backward(dy, cache)
                got = serial_and_parallel(avg_pool)
                same_bits(*got, f"avg pool {shape}")
                with kernels.reference_only():
                    same_bits(got[1], avg_pool(), f"avg pool {shape} vs reference")
            for shape in cases.BN_SHAPES + [(4, 6, 17, 13)]:
                C = shape[1]
                x = rng.standard_normal(shape).astype(dtype) * 2 + 5
                w, b, dy = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype), \\
                    rng.standard_normal(shape).astype(dtype)
                def batch_norm():
                    y, cache = batchnorm2d_forward(x, w, b, np.zeros(C, dtype), np.ones(C, dtype), True)
                    return (y, *batchnorm2d_backward(dy, cache))
                got = serial_and_parallel(batch_norm)
                same_bits(*got, f"batch norm {shape}")
                with kernels.reference_only():
                    want = batch_norm()
                bound = 1e-12 if dtype == np.float64 else 1e-4
                for g, r in zip(got[1], want):
                    assert abs(g - r).max() <= bound * max(abs(r).max(), 1), (shape, abs(g - r).max())
            for shape in [(1, 1, 1, 1), (2, 3, 7, 5), (3, 50000), (5, 7, 64, 33)]:
                x = rng.standard_normal(shape).astype(dtype)
                x[0, 0] = 0.0
                dy = rng.standard_normal(shape).astype(dtype)
                got = serial_and_parallel(lambda: relu_backward(dy, relu_forward(x)[1]))
                same_bits(*got, f"relu backward {shape}")
                same_bits(got[1], np.where(x > 0, dy, 0).astype(dtype), f"relu backward {shape} vs where")
                got = serial_and_parallel(lambda: kernels.get("relu_forward", x)(x))
                same_bits(*got, f"relu forward {shape}")
                same_bits(got[1], np.maximum(x, 0), f"relu forward {shape} vs maximum")
                if x.ndim == 4:
                    scale, shift = dy[0, :, 0, 0].copy(), dy[-1, :, -1, -1].copy()
                    got = serial_and_parallel(lambda: kernels.get("channel_affine", x)(x, scale, shift))
                    same_bits(*got, f"channel affine {shape}")
            for (N, C, O, H, W), p, d in cases.DIRECT_CASES:
                x = rng.standard_normal((N, C, H, W)).astype(dtype)
                w = rng.standard_normal((O, C, 3, 3)).astype(dtype)
                def direct():
                    y, cache = conv2d_forward(x, w, None, 1, p, d)
                    assert direct_gradients(cache)
                    return (y, *conv2d_backward(np.cos(y), cache)[:2])
                same_bits(*serial_and_parallel(direct), f"direct 3x3 {(N, C, O, H, W)}")
            # the dot-product weight gradient: fixed blocks, so the same bits at any thread count
            dots = kernels.get("conv3x3_backward_weight_dots", x)
            for (N, C, O, H, W), p, d in cases.DIRECT_CASES + [((9, 16, 16, 32, 32), (1, 1), (1, 1)),
                                                               ((7, 3, 16, 31, 33), (1, 1), (1, 1))]:
                x = rng.standard_normal((N, C, H, W)).astype(dtype)
                dy = rng.standard_normal((N, O, H + 2 * p[0] - 2 * d[0], W + 2 * p[1] - 2 * d[1])).astype(dtype)
                same_bits(*serial_and_parallel(lambda: dots(dy, x, p, d)), f"dw dots {(N, C, O, H, W)}")
        # both builds of every prange kernel really ran
        import npresnet.kernels.batchnorm_cpu, npresnet.kernels.conv3x3_cpu, npresnet.kernels.im2col_cpu, \\
            npresnet.kernels.pool_cpu, npresnet.kernels.relu_cpu
        built = [(module.__name__, name, kernel) for module in (npresnet.kernels.batchnorm_cpu,
                 npresnet.kernels.conv3x3_cpu, npresnet.kernels.im2col_cpu, npresnet.kernels.pool_cpu,
                 npresnet.kernels.relu_cpu) for name, kernel in vars(module).items()
                 if isinstance(kernel, _numba.ParallelKernel)]
        assert len(built) == 17, [b[:2] for b in built]
        from npresnet.kernels import _tbb  # TBB where its library loads (test_an_installed_tbb_...)
        # Without the tbb package Numba may still find a libtbb on the interpreter's own library path
        # (a base Python with tbb installed, seen from a venv): TBB or the workqueue, never omp.
        default_layers = ("tbb",) if _tbb.load() is not None else ("tbb", "workqueue")
        assert numba.threading_layer() in default_layers, (numba.threading_layer(), _tbb.reason(default_layers[-1]))
        for module, name, kernel in built:
            assert kernel.serial.signatures and kernel.parallel.signatures, (module, name)
        print("ok")
    """)
    )


def test_the_winograd_transforms_give_the_same_bits_at_one_and_two_threads():
    assert_ok(
        run_with_two_threads("""
        from npresnet.functional import winograd
        from test_winograd import TRANSFORM_CASES, _case
        for dtype in (np.float64, np.float32):
            for case in TRANSFORM_CASES + [((3, 7, 5, 33, 30), (1, 1))]:
                x, w, padding = _case(case, dtype)
                N, C, H, W = x.shape
                out = (H + 2 * padding[0] - 2, W + 2 * padding[1] - 2)
                tiles = winograd.tiles(*out)
                V = serial_and_parallel(lambda: kernels.get("winograd_input", x)(x, padding, tiles))
                same_bits(*V, f"winograd input {case}")
                same_bits(V[1], winograd.transform_input(x, padding, tiles), f"winograd input {case} vs reference")
                M = np.random.default_rng(1).standard_normal((4, 4, w.shape[0], N * tiles[0] * tiles[1])).astype(dtype)
                y = serial_and_parallel(lambda: kernels.get("winograd_output", M)(M, N, out))
                same_bits(*y, f"winograd output {case}")
                same_bits(y[1], winograd.transform_output(M, N, out), f"winograd output {case} vs reference")
        print("ok")
        """)
    )


def test_the_winograd_weight_gradient_transforms_give_the_same_bits_at_one_and_two_threads():
    assert_ok(
        run_with_two_threads("""
        from npresnet.functional import winograd
        from test_winograd_weight import CASES, _case
        for dtype in (np.float64, np.float32):
            for case in CASES + [((3, 7, 5, 33, 30), (1, 1)), ((2, 16, 16, 32, 32), (1, 1))]:
                x, w, padding, dy = _case(case, dtype)
                tiles = winograd.tiles(*dy.shape[2:])
                E = serial_and_parallel(lambda: kernels.get("winograd_gradient", dy)(dy, tiles))
                same_bits(*E, f"winograd gradient {case}")
                want = winograd.transform_gradient(dy, tiles).transpose(0, 1, 3, 2)  # tiles first
                same_bits(E[1], want, f"winograd gradient {case} vs reference")
                V = serial_and_parallel(lambda: kernels.get("winograd_input_t", x)(x, padding, tiles))
                same_bits(*V, f"winograd input_t {case}")
                want = winograd.transform_input(x, padding, tiles).transpose(0, 1, 3, 2)
                same_bits(V[1], want, f"winograd input_t {case} vs reference")
        print("ok")
        """)
    )


@pytest.mark.parametrize("layer", ["default", "workqueue"])
def test_a_training_step_gives_the_same_bits_at_one_and_two_threads(layer):
    """End to end: two SGD steps of a CIFAR ResNet (train-mode BatchNorm, the direct 3x3 and im2col
    paths, pooling, ReLU) with BLAS at one thread: every weight, running statistic and the logits
    are identical whether the kernels ran on one Numba thread or two, on the default threading
    layer (TBB where installed) and on the workqueue fallback."""
    env = {} if layer == "default" else {"NUMBA_THREADING_LAYER": layer}
    assert_ok(
        run_with_two_threads(
            """
        from npresnet import models, nn
        from npresnet.engine import autotune
        from npresnet.optim import SGD
        assert autotune.mode() == "fixed"

        def train():
            model = models.resnet20(seed=0)
            x = np.random.default_rng(0).standard_normal((6, 3, 20, 18)).astype(np.float32)
            target = np.arange(6) % 10
            optimizer, criterion = SGD(model.parameters(), lr=0.1, momentum=0.9), nn.CrossEntropyLoss()
            for _ in range(2):
                optimizer.zero_grad()
                criterion(model(x), target)
                model.backward(criterion.backward())
                optimizer.step()
            model.eval()
            return (model(x), *(v for _, v in sorted(model.state_dict().items())))

        serial, parallel = serial_and_parallel(train)
        same_bits(serial, parallel, "training step")
        print("ok")
    """,
            **env,
        )
    )


@pytest.mark.parametrize("layer", ["default", "workqueue"])
def test_two_python_threads_may_run_kernels_at_once(layer):
    """The workqueue layer aborts the process when two threads launch parallel work at once; the
    kernels hand the pool to one thread at a time (the other runs the serial build)."""
    env = {} if layer == "default" else {"NUMBA_THREADING_LAYER": layer}
    assert_ok(
        run_with_two_threads(
            """
        import threading
        x = np.random.default_rng(0).standard_normal((8, 16, 32, 32)).astype(np.float32)
        want = kernels.get("im2col", x)(x, (3, 3), (1, 1), (1, 1), (1, 1))
        failures = []

        def work():
            for _ in range(40):
                got = kernels.get("im2col", x)(x, (3, 3), (1, 1), (1, 1), (1, 1))
                if not np.array_equal(got, want):
                    failures.append("wrong columns")
        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        work()
        for t in threads:
            t.join()
        assert not failures, failures
        print("ok")
    """,
            **env,
        )
    )


@pytest.mark.parametrize("layer", ["workqueue", "omp"])
def test_the_thread_pool_probe_names_the_layer_and_times_a_hand_off(layer):
    """``kernels.thread_pool()`` (the bench prints and records it) reports the layer Numba runs and a
    positive median hand-off time, in microseconds."""
    assert_ok(
        run_with_two_threads(
            """
        import os
        name, threads, handoff_us = kernels.thread_pool()
        assert name == numba.threading_layer() == os.environ["PROBE_LAYER"], name
        assert threads == 2 and 0 < handoff_us < 1e6, (threads, handoff_us)
        from npresnet.engine import runtime
        note = runtime.slow_pool_note()  # a note only for a slow workqueue, and then it says why
        assert note is None or (name == "workqueue" and note.endswith("NUMBA_THREADING_LAYER=workqueue chose it")), note
        numba.set_num_threads(1)
        assert runtime.slow_pool_note() is None  # one thread: serial builds, nothing to say
        print("ok")
    """,
            NUMBA_THREADING_LAYER=layer,
            PROBE_LAYER=layer,
        )
    )


def test_serial_switch_and_a_chosen_threading_layer_are_respected():
    result = run_with_two_threads(
        """
        from npresnet.kernels import im2col_cpu
        im2col_cpu.im2col(np.ones((4, 3, 9, 9)), (3, 3), (1, 1), (1, 1), (1, 1))
        assert im2col_cpu.im2col_kernel.serial.signatures and not im2col_cpu.im2col_kernel.parallel.signatures
        print("ok")
    """,
        NPRESNET_NUMBA_PARALLEL="0",
    )
    assert_ok(result)
    result = run_with_two_threads(
        """
        from npresnet.kernels import im2col_cpu
        im2col_cpu.im2col(np.ones((4, 3, 9, 9)), (3, 3), (1, 1), (1, 1), (1, 1))
        assert im2col_cpu.im2col_kernel.parallel.signatures
        assert numba.threading_layer() == "omp", numba.threading_layer()
        print("ok")
    """,
        NUMBA_THREADING_LAYER="omp",
    )
    assert_ok(result)


def test_omp_num_threads_limits_the_kernels_unless_numba_num_threads_is_set():
    code = "import numba\nfrom npresnet.kernels import im2col_cpu\nprint(numba.get_num_threads())"
    base = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}
    for extra, expected in (({"OMP_NUM_THREADS": "1"}, "1"), ({"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}, "2")):
        done = subprocess.run(
            [sys.executable, "-c", code], env={**base, **extra}, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0 and done.stdout.strip() == expected, (extra, done.stdout, done.stderr[-2000:])


def test_small_calls_stay_serial():
    """Below PARALLEL_MIN_BYTES the hand-off to the pool would cost more than the work."""
    assert_ok(
        run_with_two_threads(
            """
        from npresnet.kernels import relu_cpu
        assert _numba.PARALLEL_MIN_BYTES == 1 << 20
        small, large = np.ones(1000, np.float32), np.ones(1 << 18, np.float32)    # 4 KB, 1 MB per array
        relu_cpu.relu_forward(small)
        assert relu_cpu.relu_forward_kernel.serial.signatures and not relu_cpu.relu_forward_kernel.parallel.signatures
        relu_cpu.relu_forward(large)
        assert relu_cpu.relu_forward_kernel.parallel.signatures
        print("ok")
    """,
            NPRESNET_PARALLEL_MIN_BYTES=str(1 << 20),
        )
    )


def test_a_bad_parallel_setting_is_an_error():
    result = run_with_two_threads("print('ok')", NPRESNET_NUMBA_PARALLEL="yes")
    expected = "NPRESNET_NUMBA_PARALLEL='yes' is not valid: expected auto, 0 or 1"
    assert result.returncode != 0 and expected in result.stderr
    result = run_with_two_threads("print('ok')", NPRESNET_PARALLEL_MIN_BYTES="1MB")
    assert (
        result.returncode != 0
        and "NPRESNET_PARALLEL_MIN_BYTES='1MB' is not valid: expected a whole number of bytes" in result.stderr
    )


def test_cached_builds_are_named_by_every_kernel_source_and_the_build_options(tmp_path, monkeypatch):
    """Numba's disk cache checks a kernel's own source file only; the builds' names carry a hash of
    every file in kernels/ and of the build options, so an edit to a helper in _numba.py (inlined
    into kernels of other files) or a new option (nogil) cannot serve old machine code."""
    import shutil

    from npresnet.kernels import _numba, relu_cpu

    folder = Path(_numba.__file__).resolve().parent
    copy = tmp_path / "kernels"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = _numba._sources_digest(copy)
    assert before == _numba._sources_digest(folder)
    with open(copy / "_numba.py", "a") as f:
        f.write("\n# an edit to a shared helper file\n")
    assert _numba._sources_digest(copy) != before

    function = next(v for v in vars(relu_cpu).values() if isinstance(v, _numba.ParallelKernel)).py_func
    names = lambda k: (k.serial.py_func.__qualname__, k.parallel.py_func.__qualname__)  # noqa: E731
    plain = names(_numba.ParallelKernel(function))
    assert plain[0] != plain[1] and all(name.startswith(function.__qualname__ + "__") for name in plain)
    assert names(_numba.ParallelKernel(function, fastmath={"contract"})) != plain  # another option
    monkeypatch.setattr(_numba, "SOURCES_DIGEST", _numba.SOURCES_DIGEST + "edited")
    assert names(_numba.ParallelKernel(function)) != plain  # another kernels/ source


def test_cached_build_names_are_the_same_in_every_process():
    """A name that changed with Python's string hashing (a fastmath set's order) would miss the
    cache in half of all processes and compile the kernel again."""
    code = (
        "from npresnet.kernels import conv3x3_cpu as k; "
        "print(k.weight_dots_kernel.serial.py_func.__qualname__, k.conv3x3_wide_kernel.parallel.py_func.__qualname__)"
    )
    names = set()
    for seed in ("1", "2", "3", "4"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        names.add(done.stdout.strip())
    assert len(names) == 1, names


def test_an_installed_tbb_is_loaded_and_runs_the_pool():
    """pip's tbb wheel puts libtbb outside the loader's search path (a virtual environment's lib/);
    npresnet.kernels._tbb loads it from the distribution's recorded files, so an installed tbb is the
    layer Numba runs, with no reason printed against it."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("tbb")
    except PackageNotFoundError:
        pytest.skip("the tbb package is not installed")
    assert_ok(
        run_with_two_threads("""
        from npresnet.kernels import _tbb
        path = _tbb.load()
        assert path is not None and path.endswith(_tbb.LIBRARY), _tbb.reason()
        layer = kernels.thread_pool()[0]
        assert layer == numba.threading_layer() == "tbb", (layer, _tbb.reason(layer))
        assert _tbb.reason(layer) is None
        print("ok")
    """)
    )


def test_tbb_reasons_name_the_cause_and_advise_installing_only_what_is_missing(monkeypatch):
    """Each reason TBB is not used, in one line; "pip install" only when tbb is not installed."""
    import importlib.metadata

    from npresnet.kernels import _tbb

    class Listed:  # a tbb distribution whose recorded files lack the library
        version, files = "2099.0", []

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.delenv("NUMBA_THREADING_LAYER", raising=False)
    for distribution, expected in [
        (missing, "the tbb package is not installed (pip install tbb"),
        (lambda name: Listed(), f"the tbb 2099.0 package lists no {_tbb.LIBRARY}"),
    ]:
        monkeypatch.setattr(_tbb, "_state", {})
        monkeypatch.setattr(importlib.metadata, "distribution", distribution)
        reason = _tbb.reason("workqueue")
        assert reason is not None and reason.startswith(expected) and "\n" not in reason, reason
        assert _tbb.load() is None
        assert ("pip install" in reason) == (distribution is missing), reason
    monkeypatch.setenv("NUMBA_THREADING_LAYER", "omp")
    assert _tbb.reason("omp") == "NUMBA_THREADING_LAYER=omp chose it"
    assert _tbb.reason("tbb") is None
