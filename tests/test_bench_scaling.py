"""``python -m npresnet.bench --threads 1,2`` / ``--scaling``: runs at each thread count and the speed-ups.

No speed is asserted (the bench measures, tests do not): the command runs at each count, every row
says its thread count, and the ``scaling`` entries are the quotients of the recorded times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from npresnet.bench.scaling import parse_threads, speedups

pytest.importorskip("torch")


def test_parse_threads():
    assert parse_threads("3", 8) == [3]
    assert parse_threads("1,2,4", 8) == [1, 2, 4]
    assert parse_threads("1, all", 8) == [1, 8]
    assert parse_threads("2,2", 8) == [2]
    for bad in ("0", "1,", "two", "-1", "1.5"):
        with pytest.raises(ValueError, match=f"--threads takes thread counts >= 1 .* got '{bad}'"):
            parse_threads(bad, 8)


def test_speedups_are_the_quotients_of_the_times():
    rows = [
        {"model": "m", "mode": "train", "batch": 2, "image_size": 8, "threads": t, "npresnet_s": n, "torch_s": p}
        for t, n, p in ((2, 3.0, 1.0), (1, 4.5, 2.0))
    ]
    one, two = speedups(rows)
    assert one["threads"] == 1 and one["npresnet_speedup"] == 1.0 and one["share"] == 1.0
    assert two["npresnet_speedup"] == pytest.approx(1.5) and two["torch_speedup"] == pytest.approx(2.0)
    assert two["share"] == pytest.approx(0.75) and two["ratio"] == pytest.approx(3.0)


def test_bench_runs_at_each_thread_count(tmp_path):
    out = tmp_path / "scaling.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "npresnet.bench",
            "--model",
            "resnet20",
            "--batch",
            "2",
            "--size",
            "8",
            "--steps",
            "forward",
            "--repeat",
            "1",
            "--threads",
            "1,2",
            "--compare",
            "torch",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "scaling (speed-up" in done.stdout
    report = json.loads(out.read_text())
    assert report["machine"]["threads"] == [1, 2] and report["machine"]["autotune"] == "measure"
    assert [row["threads"] for row in report["results"]] == [1, 2]
    pools = report["machine"]["numba_pool"]  # Numba's layer and hand-off cost at each count
    assert set(pools) == {"1", "2"} and all(
        p["layer"] in ("tbb", "workqueue") and p["handoff_us"] > 0 for p in pools.values()
    )
    chosen = report["machine"]["autotune_choices"]  # the measured algorithm of each conv shape
    assert chosen and all(key.startswith("conv2d forward") for key in chosen)
    (one, two) = report["scaling"]
    first, second = report["results"]
    assert two["npresnet_speedup"] == pytest.approx(first["npresnet_s"] / second["npresnet_s"])
    assert two["torch_speedup"] == pytest.approx(first["torch_s"] / second["torch_s"])


def test_bad_thread_counts_stop_the_bench_before_measuring():
    done = subprocess.run(
        [sys.executable, "-m", "npresnet.bench", "--threads", "1,x"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "python -m npresnet.bench: error: --threads takes thread counts >= 1 separated by commas (or 'all'), got '1,x'"
    )
    assert done.stdout == ""


def test_memory_probes_reuse_the_timed_runs_choices(tmp_path):
    """A fresh process with the same cache file times nothing, even though the first one had torch
    imported (another BLAS library loaded) and the second has not."""
    cache = tmp_path / "autotune.json"
    step = (
        "import numpy as np\n"
        "from npresnet import nn\n"
        "from npresnet.engine import autotune, runtime\n"
        "from npresnet.bench.workloads import build_npresnet, make_step\n"
        "from npresnet.optim import SGD\n"
        "runtime.set_num_threads(1)\n"
        "model = build_npresnet('resnet20', 'float32', 'numpy')\n"
        "x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)\n"
        "make_step('train', model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.1), x, np.array([1, 2]))()\n"
        "print(len(autotune.timed_keys()), len(autotune.choices()))\n"
    )
    env = {**os.environ, "NPRESNET_AUTOTUNE": "measure", "NPRESNET_AUTOTUNE_CACHE": str(cache)}
    first = subprocess.run(
        [sys.executable, "-c", "import torch\n" + step], env=env, capture_output=True, text=True, timeout=300
    )
    assert first.returncode == 0, first.stderr[-2000:]
    timed, chosen = map(int, first.stdout.split())
    assert timed == chosen > 0
    second = subprocess.run([sys.executable, "-c", step], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.split() == ["0", str(chosen)]
