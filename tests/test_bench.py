"""``python -m npresnet.bench`` runs end to end on a tiny configuration and writes the JSON it promises.

Speed itself is never asserted here (timings belong in benchmarks); what is checked is that the
command works, compares against torch after checking the logits agree, profiles, measures memory,
and reports the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from npresnet import bench, models, nn

pytest.importorskip("torch")
pytest.importorskip("threadpoolctl")


@pytest.mark.slow  # a whole bench run in a subprocess, torch included
def test_bench_command_writes_the_promised_json(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "npresnet.bench",
            "--model",
            "resnet20",
            "--input-shape",
            "4,3,16,16",
            "--repeat",
            "2",
            "--warmup-runs",
            "1",
            "--compare",
            "torch",
            "--profile",
            "--memory",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The output names its figures: which way the ratio goes, and which memory is which.
    assert "ratio: npresnet time / torch time" in done.stdout and "ratio npresnet/torch" in done.stdout
    assert "torch channels_last" in done.stdout and "choosing" in done.stdout
    assert "traced peak" in done.stdout and "resident memory of a step (fresh process)" in done.stdout
    report = json.loads(out.read_text())
    machine = report["machine"]
    for key in ("cpu", "threads", "blas", "numba_pool", "versions", "gemm_peak_gflops"):
        assert key in machine, f"machine info lacks {key!r}: {sorted(machine)}"
    assert {"numpy", "torch"} <= set(machine["versions"])
    assert [r["mode"] for r in report["results"]] == ["forward", "train"]
    for row in report["results"]:
        for key in (
            "model",
            "mode",
            "batch",
            "image_size",
            "backend",
            "dtype",
            "npresnet_s",
            "images_per_s",
            "gflops",
            "torch_s",
            "ratio",
            "torch_channels_last_s",
            "ratio_channels_last",
            "first_call_s",
            "choosing_s",
            "profile_ms",
            "rss_peak_mb",
            "torch_rss_peak_mb",
        ):
            assert key in row, f"result lacks {key!r}"
        assert row["model"] == "resnet20" and row["batch"] == 4 and row["image_size"] == 16
        assert row["npresnet_s"] > 0 and row["torch_s"] > 0
        assert row["ratio"] == pytest.approx(row["npresnet_s"] / row["torch_s"])
        assert row["ratio_channels_last"] == pytest.approx(row["npresnet_s"] / row["torch_channels_last_s"])
        assert 0 <= row["choosing_s"] <= row["first_call_s"]
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


def test_counting_macs_decides_no_algorithm():
    """The count runs one sample; in measure mode its winners would stand for the real batch too."""
    from npresnet.engine import autotune

    previous = autotune.set_mode("measure")
    autotune.clear()
    try:
        bench.forward_macs(models.resnet20(seed=0), (64, 3, 32, 32), np.float32)
        assert autotune.choices() == {} and autotune.mode() == "measure"
    finally:
        autotune.set_mode(previous)
        autotune.clear()


def test_checking_the_logits_decides_no_algorithm():
    """The torch comparison's logits check runs before the timing; the first timed step chooses."""
    import torch

    from npresnet.bench.compare import check_same_logits, torch_setup
    from npresnet.engine import autotune

    model = bench.build_npresnet("resnet20", "float32", "numpy")
    previous, torch_threads = autotune.set_mode("measure"), torch.get_num_threads()
    autotune.clear()
    try:
        torch, tmodel, device, _ = torch_setup("resnet20", model, "float32", torch_threads, "numpy")
        x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
        assert check_same_logits(model, tmodel, torch, x, device, "float32") < 1e-3
        assert autotune.choices() == {} and autotune.mode() == "measure"
    finally:
        autotune.set_mode(previous)
        autotune.clear()


def test_bench_rejects_an_unknown_model():
    with pytest.raises(SystemExit, match="unknown model"):
        bench.build_npresnet("resnet19", "float32", "numpy")


def test_runtime_sets_blas_and_numba_threads_together():
    import numba
    from threadpoolctl import threadpool_info

    from npresnet import kernels
    from npresnet.engine import runtime

    limiter = runtime.set_num_threads(1)
    try:
        assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")
        if kernels.active() == "numba":
            assert numba.get_num_threads() == 1
    finally:
        limiter.restore_original_limits()
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        runtime.set_num_threads(0)


ALLOCATOR_PROBE = textwrap.dedent("""
    import hashlib, sys
    import numpy as np
    from npresnet import models
    from npresnet.engine import runtime

    def resident():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

    tuned = runtime.tune_allocator() if sys.argv[1] == "tuned" else False
    before = resident()
    block = np.ones(64 * 2**20 // 8)                  # 64 MB, above glibc's largest dynamic mmap threshold
    del block
    kept = (resident() - before) / 2**20              # what freeing it left resident
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    model = models.resnet20(seed=0)
    model.eval()
    print(tuned, round(kept), hashlib.sha256(model(x).tobytes()).hexdigest())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tune_allocator is glibc's mallopt")
def test_tune_allocator_keeps_freed_memory_and_changes_no_result():
    """Two fresh processes, one tuned: the tuned one keeps a freed 64 MB block resident (glibc's default
    gives it back to the OS), and both compute the same logits, bit for bit."""
    runs = {}
    for mode in ("default", "tuned"):
        done = subprocess.run(
            [sys.executable, "-c", ALLOCATOR_PROBE, mode], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        applied, kept_mb, digest = done.stdout.split()
        runs[mode] = (applied, int(kept_mb), digest)
    assert runs["tuned"][0] == "True" and runs["default"][0] == "False"
    assert runs["default"][1] < 16, f"without tuning, {runs['default'][1]} MB of a freed 64 MB block stayed"
    assert runs["tuned"][1] >= 60, f"tune_allocator applied, but only {runs['tuned'][1]} MB of 64 MB stayed"
    assert runs["tuned"][2] == runs["default"][2]


def test_profiler_uses_public_hooks_and_removes_them():
    """op_profile times layers through Module hooks and kernels through kernels.set_observer, and puts
    everything back: afterwards no observer is left and a step adds nothing to the times."""
    from collections import defaultdict

    from npresnet import kernels
    from npresnet.bench import op_profile

    model = models.resnet20(seed=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    times = defaultdict(float)
    with op_profile(model, times):
        model(x)
        model.backward(np.ones((2, 10), np.float32))
    for kind in ("conv", "batchnorm", "relu", "linear"):
        assert times[f"{kind} forward"] > 0 and times[f"{kind} backward"] > 0, kind
    if kernels.active() == "numba":  # kernels seen through the observer, with the layer's direction
        assert times["im2col forward"] > 0 and times["col2im backward"] > 0
    assert kernels.set_observer(None) is None
    seen = dict(times)
    model(x)
    model.backward(np.ones((2, 10), np.float32))
    assert dict(times) == seen


def test_profiler_counts_winograd_under_its_own_kind_and_its_gemms_under_gemm():
    """In measure mode a conv may run as Winograd: its transforms are a kind of their own, and the
    rest of the conv's time (the 16 GEMMs) is GEMM."""
    from collections import defaultdict

    from npresnet import kernels
    from npresnet.bench import op_profile
    from npresnet.bench.profiler import profile_ms
    from npresnet.engine import autotune

    if kernels.active() != "numba":
        pytest.skip("no kernels to observe")
    profile = profile_ms({"conv forward": 0.010, "winograd forward": 0.004, "im2col forward": 0.001}, 1, 0.02)
    assert profile["winograd forward"] == pytest.approx(4.0) and profile["GEMM forward"] == pytest.approx(5.0)
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    x = np.random.default_rng(0).standard_normal((2, 8, 10, 10)).astype(np.float32)
    times = defaultdict(float)
    previous = autotune.set_mode("measure")
    autotune.clear()
    try:
        with op_profile(conv, times):
            conv(x)  # times every candidate once, Winograd among them
    finally:
        autotune.set_mode(previous)
        autotune.clear()
    assert times["winograd forward"] > 0


def test_profiler_counts_kernels_on_the_models_thread_only():
    """Under a batch split the other slices run the same kernels at the same time on other threads;
    counting those too would add their wall time twice, so only the model's own thread counts."""
    import threading
    from collections import defaultdict

    from npresnet import kernels
    from npresnet.bench import op_profile

    if kernels.active() != "numba":
        pytest.skip("no kernels to observe")
    model = models.resnet20(seed=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    times = defaultdict(float)
    with op_profile(model, times):
        im2col = kernels.get("im2col", x)
        other = threading.Thread(target=lambda: im2col(x, (3, 3), (1, 1), (1, 1), (1, 1)))
        other.start()
        other.join()
        assert times["im2col forward"] == 0.0
        im2col(x, (3, 3), (1, 1), (1, 1), (1, 1))
        assert times["im2col forward"] > 0.0


def _bench_error(code, *args):
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr.strip().splitlines()


RUN_BENCH = "import runpy, sys; sys.argv[0] = 'npresnet.bench'; runpy.run_module('npresnet.bench', run_name='__main__')"


def test_unknown_model_is_an_argparse_error_before_anything_is_measured():
    code, out, err = _bench_error(RUN_BENCH, "--model", "resnet20", "resnet51")
    assert code == 2 and out == "", out  # not even the machine line: nothing ran
    assert err[0].startswith("usage: python -m npresnet.bench "), err
    prefix = "python -m npresnet.bench: error: unknown model 'resnet51'; did you mean resnet50? "
    assert err[-1].startswith(prefix), err
    assert "resnext50_32x4d" in err[-1] and "ResNet" not in err[-1]  # the real model names, not classes


def test_compare_torch_without_torch_is_a_one_line_error_with_the_install_command():
    hide_torch = "import sys; sys.modules['torch'] = None; " + RUN_BENCH
    code, out, err = _bench_error(hide_torch, "--model", "resnet20", "--compare", "torch")
    assert code == 2 and out == "", out
    assert err[-1].startswith("python -m npresnet.bench: error: --compare torch needs PyTorch"), err
    assert "pip install torch==2.13.0" in err[-1]


def test_the_memory_probe_can_forget_a_peak_that_came_before_the_step():
    """``memory_probe`` forgets its warm-up step's peak (the kernels' loading) by resetting VmHWM: a
    freed 256 MB block no longer counts once the peak is reset."""
    from npresnet.bench.memory import _reset_peak, _rss_bytes

    block = np.ones(256 * 2**20 // 8)
    assert _rss_bytes("VmHWM") >= block.nbytes
    del block
    if not _reset_peak():
        pytest.skip("this kernel has no /proc/self/clear_refs")
    assert _rss_bytes("VmHWM") < _rss_bytes("VmRSS") + 64 * 2**20


def test_steps_timed_together_alternate_and_none_is_always_first():
    from npresnet.bench import timed_together

    calls = []
    results = timed_together([lambda: calls.append("a"), lambda: calls.append("b")], warmup=2, repeat=4)
    assert calls[:4] == ["a", "a", "b", "b"]  # first call + warm-up of each
    assert calls[4:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # rounds alternate who starts
    assert [len(times) for _, times in results] == [4, 4]
    assert all(first >= 0 and min(times) >= 0 for first, times in results)
