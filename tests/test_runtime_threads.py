"""npresnet.engine.runtime's thread settings: BLAS, Numba and torch together, and OpenBLAS's idle spin.

Each check runs in a fresh interpreter: the settings are process-wide.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("threadpoolctl")


def run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "NUMBA_NUM_THREADS")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**env, "NUMBA_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_set_num_threads_sets_every_library_and_shortens_openblas_spin():
    done = run("""
        import ctypes, os
        import numba
        import numpy as np
        from threadpoolctl import threadpool_info, threadpool_limits
        from npresnet.engine import runtime
        blas = [i for i in threadpool_info() if i["internal_api"] == "openblas" and "numpy" in i["filepath"]]
        if not blas or blas[0]["threading_layer"] != "pthreads":
            print("no pthreads OpenBLAS under numpy"); raise SystemExit(0)
        timeout = ctypes.CDLL(blas[0]["filepath"]).openblas_thread_timeout
        a = np.random.default_rng(0).standard_normal((300, 200))
        with threadpool_limits(2):
            before = a @ a.T                                     # 2 BLAS threads, OpenBLAS's own spin
        assert timeout() == 0                                    # OpenBLAS's default spin
        limiter = runtime.set_num_threads(2)
        assert numba.get_num_threads() == 2 and runtime.blas_threads() == 2
        assert [i["num_threads"] for i in threadpool_info() if i["filepath"] == blas[0]["filepath"]] == [2]
        assert timeout() == runtime.BLAS_SPIN_EXPONENT and os.environ["OPENBLAS_THREAD_TIMEOUT"] == "14"
        assert np.array_equal(a @ a.T, before)                   # the restarted pool computes the same
        assert runtime.set_blas_spin(None) and timeout() == 0
        runtime.set_num_threads(1)
        assert numba.get_num_threads() == 1 and timeout() == 0   # one thread: nothing to share, left alone
        print("ok")
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() in ("ok", "no pthreads OpenBLAS under numpy")


def test_the_slow_pool_note_says_why_only_for_a_slow_workqueue_at_several_threads(monkeypatch):
    """``runtime.slow_pool_note`` on given measurements (layer, Numba threads, us per hand-off): it
    ends with the reason TBB is not in use, and advises installing tbb only where it is not installed."""
    from npresnet.kernels import _tbb

    from npresnet.engine import runtime

    monkeypatch.delenv("NUMBA_THREADING_LAYER", raising=False)
    monkeypatch.setattr(_tbb, "_state", {"path": None, "reason": "the tbb package is not installed (pip install tbb)"})
    note = runtime.slow_pool_note(("workqueue", 2, 90.0))
    assert note is not None and "90 us" in note and note.endswith("TBB is not in use: " + _tbb._state["reason"])
    assert "pip install" not in runtime.slow_pool_note(("workqueue", 2, 90.0), why=False)
    monkeypatch.setenv("NUMBA_THREADING_LAYER", "workqueue")
    note = runtime.slow_pool_note(("workqueue", 2, 90.0))
    assert note.endswith("TBB is not in use: NUMBA_THREADING_LAYER=workqueue chose it") and "pip" not in note
    assert runtime.slow_pool_note(("workqueue", 1, 90.0)) is None  # one thread: serial builds
    assert runtime.slow_pool_note(("workqueue", 2, runtime.SLOW_HANDOFF_US)) is None
    assert runtime.slow_pool_note(("tbb", 2, 500.0)) is None
