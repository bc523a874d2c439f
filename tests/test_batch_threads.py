"""npresnet.engine.batch_threads: one layer's work split over the batch, a slice per thread.

What is tested (no timings):
* the slices cover the batch once, in order, sizes differing by at most one, never empty;
* at two threads the slices really run in two threads at once (one waits for the other inside its
  slice), with BLAS at one thread and the Numba kernels serial in both, and everything restored
  afterwards, also when a slice raises (the error is re-raised after both slices have ended);
* a split inside a split runs inline;
* the "split/<n>" convolution is the same on every run, bit for bit, and equals "gemm/<n>" to
  rounding (forward, dx, dw), on awkward shapes including batch 1 and a batch smaller than the
  thread count; the candidates themselves against the NumPy reference are in tests/test_autotune.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from npresnet.engine import batch_threads


@pytest.mark.parametrize("N, T", [(1, 2), (2, 2), (5, 2), (7, 3), (3, 8), (128, 2)])
def test_slices_cover_the_batch_once_in_order(N, T):
    parts = batch_threads.slices(N, T)
    assert len(parts) == min(N, T)
    assert parts[0][0] == 0 and parts[-1][1] == N
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    sizes = [stop - start for start, stop in parts]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def run_at_two_threads(code: str) -> str:
    prelude = """
        import threading
        import numpy as np
        from threadpoolctl import threadpool_info
        from npresnet.engine import batch_threads, runtime
        from npresnet.kernels import _numba
        runtime.set_num_threads(2)
        def blas_threads():
            return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
    """
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(prelude) + textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_two_slices_run_at_once_with_one_blas_thread_and_serial_kernels():
    out = run_at_two_threads("""
        both_inside = threading.Barrier(2, timeout=30)  # passes only if the two slices overlap in time
        seen = {}
        def work(start, stop, t):
            both_inside.wait()
            seen[t] = (start, stop, threading.get_ident(), blas_threads(), _numba._this_thread.serial)
        assert batch_threads.run(9, work) == 2
        assert seen[0][:2] == (0, 4) and seen[1][:2] == (4, 9), seen
        assert seen[0][2] == threading.get_ident() != seen[1][2]
        assert seen[0][3] == seen[1][3] == 1 and seen[0][4] and seen[1][4]
        assert blas_threads() == 2 and not getattr(_numba._this_thread, "serial", False)
        print("ok")
    """)
    assert out.strip() == "ok"


def test_an_error_in_a_slice_is_raised_after_both_slices_end_and_settings_come_back():
    out = run_at_two_threads("""
        import time
        finished = []
        def failing(bad_slice, error):  # slice bad_slice raises at once, the other ends 0.2 s later
            def work(start, stop, t):
                if t == bad_slice:
                    raise error
                time.sleep(0.2)
                finished.append(t)
            return work
        def raised(work):
            try:
                batch_threads.run(4, work)
            except Exception as exc:
                return exc
            raise AssertionError("no error")
        exc = raised(failing(1, KeyError("slice 1 failed")))  # in the worker
        assert isinstance(exc, KeyError) and "slice 1 failed" in str(exc) and finished == [0]
        exc = raised(failing(0, ValueError("slice 0 failed")))  # on the calling thread
        assert isinstance(exc, ValueError) and finished == [0, 1]  # the worker's slice had ended first
        assert blas_threads() == 2 and not getattr(_numba._this_thread, "serial", False)
        print("ok")
    """)
    assert out.strip() == "ok"


def test_a_split_inside_a_split_runs_inline():
    out = run_at_two_threads("""
        inner = []
        def work(start, stop, t):
            inner.append(batch_threads.run(stop - start, lambda a, b, u: None))
        assert batch_threads.run(6, work) == 2
        assert inner == [1, 1], inner
        print("ok")
    """)
    assert out.strip() == "ok"


def test_split_convolutions_are_deterministic_and_match_gemm():
    out = run_at_two_threads("""
        from npresnet.engine.conv import run_forward, run_gradients
        from npresnet.functional.conv import conv2d_forward
        rng = np.random.default_rng(0)
        cases = [  # (N, C, O, H, W), kernel, stride, padding, dilation
            ((1, 3, 4, 7, 5), (3, 3), (1, 1), (1, 1), (1, 1)),
            ((5, 2, 3, 9, 6), (3, 2), (2, 1), (1, 0), (1, 1)),
            ((7, 16, 32, 12, 10), (3, 3), (2, 2), (1, 1), (1, 1)),
            ((4, 8, 8, 6, 6), (3, 3), (1, 1), (2, 2), (2, 2)),
        ]
        for (N, C, O, H, W), k, s, p, d in cases:
            for dtype, bound in ((np.float64, 1e-12), (np.float32, 2e-5)):
                x = rng.standard_normal((N, C, H, W)).astype(dtype)
                w = rng.standard_normal((O, C, *k)).astype(dtype)
                y, cache = conv2d_forward(x, w, None, s, p, d)
                dy = rng.standard_normal(y.shape).astype(dtype)
                geometry = {"stride": s, "padding": p, "dilation": d, "groups": 1}
                for n in (1, 2, 3):
                    split, gemm = f"split/{n}", f"gemm/{n}"
                    ys = [run_forward(split, x, w, **geometry) for _ in range(3)]
                    gs = [run_gradients(dy, cache, input_algorithm=split, weight_algorithm=split) for _ in range(3)]
                    assert all(np.array_equal(ys[0], other) for other in ys[1:])
                    assert all(np.array_equal(gs[0][0], g[0]) and np.array_equal(gs[0][1], g[1]) for g in gs[1:])
                    y_gemm = run_forward(gemm, x, w, **geometry)
                    dx_gemm, dw_gemm = run_gradients(dy, cache, input_algorithm=gemm, weight_algorithm=gemm)
                    for got, want in ((ys[0], y_gemm), (gs[0][0], dx_gemm), (gs[0][1], dw_gemm)):
                        assert got.shape == want.shape and got.dtype == want.dtype
                        error = np.abs(got.astype(np.float64) - want).max() / np.abs(want).max()
                        assert error <= bound, ((N, C, O, H, W), n, dtype, error)
        print("ok")
    """)
    assert out.strip() == "ok"


def test_a_forked_child_splits_with_its_own_workers():
    """The parent's worker threads do not exist in a fork: the child must start its own, not wait
    forever on a pool whose threads are gone."""
    out = run_at_two_threads("""
        import os, signal, time
        assert batch_threads.run(4, lambda a, b, t: None) == 2  # the parent's pool now has a worker
        pid = os.fork()
        if pid == 0:
            both_inside = threading.Barrier(2, timeout=20)
            seen = []
            def work(start, stop, t):
                both_inside.wait()
                seen.append(t)
            code = 0 if batch_threads.run(4, work) == 2 and sorted(seen) == [0, 1] else 3
            os._exit(code)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung in its split")
        assert os.waitstatus_to_exitcode(status) == 0, status
        print("ok")
    """)
    assert out.strip() == "ok"


@pytest.mark.parametrize("setting, expected", [("0", "False []"), ("1", "True [1, 2]"), ("yes", "error")])
def test_the_switch_turns_the_split_candidates_off(setting, expected):
    code = textwrap.dedent("""
        import numpy as np
        from npresnet.engine import batch_threads, runtime
        from npresnet.engine.conv_dispatch import split_candidates
        runtime.set_num_threads(2)
        print(batch_threads.available(np), split_candidates(np, N=4, column_bytes_per_sample=1 << 20))
    """)
    env = {**os.environ, "NPRESNET_BATCH_SPLIT": setting}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if expected == "error":
        assert done.returncode != 0 and "NPRESNET_BATCH_SPLIT='yes' is not valid: expected 0 or 1" in done.stderr
    else:
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == expected


def test_the_fixed_rule_splits_im2col_layers_at_two_threads_and_not_at_one():
    out = run_at_two_threads("""
        from npresnet import kernels
        from npresnet.engine import autotune
        from npresnet.functional.conv import conv2d_backward, conv2d_forward
        assert autotune.mode() == "fixed"
        threads_seen = set()
        def observe(name, kernel):
            def run(*args):
                threads_seen.add(threading.get_ident())
                return kernel(*args)
            return run if name in ("im2col", "col2im") else kernel
        kernels.set_observer(observe)
        x = np.random.default_rng(0).standard_normal((6, 40, 9, 7)).astype(np.float32)  # 40 ch: im2col + GEMM
        w = np.random.default_rng(1).standard_normal((40, 40, 3, 3)).astype(np.float32)
        counts = []
        for threads in (2, 1):
            runtime.set_num_threads(threads)
            threads_seen.clear()
            y, cache = conv2d_forward(x, w, None, 1, 1)
            conv2d_backward(np.cos(y), cache)
            counts.append(len(threads_seen))
        print(counts)
    """)
    assert out.strip() == "[2, 1]"
