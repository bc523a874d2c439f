"""``python -m npresnet.bench`` runs end to end on a tiny configuration and writes the JSON it promises.

Speed itself is never asserted here (timings belong in benchmarks); what is checked is that the
command works, compares against torch after checking the logits agree, profiles, measures memory,
and reports the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from npresnet import bench, models

pytest.importorskip("torch")
pytest.importorskip("threadpoolctl")


def test_bench_command_writes_the_promised_json(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "npresnet.bench", "--models", "resnet20", "--batch", "4", "--size", "16",
         "--repeat", "2", "--warmup", "1", "--compare", "torch", "--profile", "--memory", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    machine = report["machine"]
    for key in ("cpu", "threads", "blas", "versions", "gemm_peak_gflops"):
        assert key in machine, f"machine info lacks {key!r}: {sorted(machine)}"
    assert {"numpy", "torch"} <= set(machine["versions"])
    assert [r["mode"] for r in report["results"]] == ["forward", "train"]
    for row in report["results"]:
        for key in ("model", "mode", "batch", "image_size", "backend", "dtype", "npresnet_s", "images_per_s",
                    "gflops", "torch_s", "ratio", "profile_ms", "rss_peak_mb", "torch_rss_peak_mb"):
            assert key in row, f"result lacks {key!r}"
        assert row["model"] == "resnet20" and row["batch"] == 4 and row["image_size"] == 16
        assert row["npresnet_s"] > 0 and row["torch_s"] > 0
        assert row["ratio"] == pytest.approx(row["npresnet_s"] / row["torch_s"])
        assert row["images_per_s"] == pytest.approx(4 / row["npresnet_s"])
        assert row["logits_max_rel_error"] < 1e-3
    train = report["results"][1]
    # A training step runs backward: the profile must have seen backward GEMMs and col2im.
    assert train["profile_ms"]["GEMM backward"] > 0 and train["profile_ms"]["col2im backward"] > 0
    assert train["peak_memory_mb"] > 0


def test_forward_macs_match_the_summary_figure():
    """The FLOP count behind the GFLOP/s column: ResNet-20 is 40.55 M MACs per 32x32 image."""
    model = models.resnet20(seed=0)
    macs = bench.forward_macs(model, (2, 3, 32, 32), np.float32)
    assert round(macs / 2 / 1e6, 2) == 40.55


def test_bench_rejects_an_unknown_model():
    with pytest.raises(SystemExit, match="unknown model"):
        bench.build_npresnet("resnet19", "float32", "numpy")


def test_runtime_sets_blas_and_numba_threads_together():
    import numba
    from threadpoolctl import threadpool_info

    from npresnet import kernels, runtime

    limiter = runtime.set_num_threads(1)
    try:
        assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")
        if kernels.active() == "numba":
            assert numba.get_num_threads() == 1
    finally:
        limiter.restore_original_limits()
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        runtime.set_num_threads(0)


def test_tune_allocator_applies_on_linux_and_changes_no_result():
    from npresnet import runtime

    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    model = models.resnet20(seed=0)
    model.eval()
    before = model(x)
    applied = runtime.tune_allocator()
    assert applied == sys.platform.startswith("linux")
    np.testing.assert_array_equal(model(x), before)
