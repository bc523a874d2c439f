"""Data-parallel training over MPI (``npresnet.distributed``).

Without MPI: sharding (every sample exactly once per epoch, the documented padding), the loader's
global-batch property, bucketing, ``convert_sync_batchnorm``, and ``SyncBatchNorm`` against
``BatchNorm2d`` on the concatenated batch with two ranks simulated by threads.

With real processes (``mpiexec -n 2`` on loopback, each bounded by a subprocess timeout; skipped,
with the reason, when mpi4py or the mpiexec next to this Python is missing):

* 2 ranks x batch 32 == 1 process x batch 64 for 10 SGD steps of ResNet-20 (float64): with
  SyncBatchNorm, the same losses and weights as plain BatchNorm on the whole batch; without it,
  the same as one process running BatchNorm separately on each rank's half ("ghost" BatchNorm).
* ``mpiexec -n 2 python -m npresnet.train --distributed --sync-bn`` == ``python -m npresnet.train``
  with the doubled batch (checkpoint weights).
* a rank killed (SIGKILL) or hung mid-epoch: the job ends with a clear error in bounded time, the
  checkpoint on disk loads, and ``--resume`` continues from it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from npresnet import distributed as dist
from npresnet.checkpoint import load_checkpoint, read_checkpoint
from npresnet.data import ArrayDataset, DataLoader
from npresnet.functional.batchnorm import channel_moments, combine_channel_moments
from npresnet.models import get_model
from npresnet.nn import BatchNorm2d, CrossEntropyLoss
from npresnet.optim import SGD

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("n", [640, 641, 643, 7])
@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_every_sample_exactly_once_per_epoch(n, ranks):
    for epoch in (0, 1):
        shards = [
            dist.DistributedSampler(n, ranks, r, shuffle=True, seed=5, padding="none").indices(epoch)
            for r in range(ranks)
        ]
        assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(n))  # exactly once
        assert max(map(len, shards)) - min(map(len, shards)) <= 1

        # "repeat" (training): equal shards of ceil(n / R); the first R*ceil(n/R) - n of the epoch's
        # order are seen twice, every other sample exactly once.
        samplers = [dist.DistributedSampler(n, ranks, r, shuffle=True, seed=5) for r in range(ranks)]
        shards = [s.indices(epoch) for s in samplers]
        size = -(-n // ranks)
        assert all(len(s) == len(shard) == size for s, shard in zip(samplers, shards))
        counts = np.bincount(np.concatenate(shards), minlength=n)
        order = DataLoader(
            ArrayDataset(np.zeros((n, 1, 1, 1), np.float32), np.zeros(n, np.int64)), 1, shuffle=True, seed=5
        ).order(epoch)
        twice = order[: ranks * size - n]
        assert np.all(counts[twice] == 2) and counts.sum() == ranks * size
        assert np.all(np.delete(counts, twice) == 1)

        # "drop": floor(n / R) each, no sample twice
        shards = [
            dist.DistributedSampler(n, ranks, r, shuffle=True, seed=5, padding="drop").indices(epoch)
            for r in range(ranks)
        ]
        counts = np.bincount(np.concatenate(shards), minlength=n)
        assert all(len(s) == n // ranks for s in shards) and counts.max() == 1 and counts.sum() == n - n % ranks


def test_shuffling_is_seeded_and_differs_between_epochs():
    a = dist.DistributedSampler(100, 2, 1, shuffle=True, seed=1)
    b = dist.DistributedSampler(100, 2, 1, shuffle=True, seed=1)
    assert np.array_equal(a.indices(3), b.indices(3))
    assert not np.array_equal(a.indices(3), a.indices(4))
    assert np.array_equal(dist.DistributedSampler(10, 2, 1, shuffle=False).indices(0), [1, 3, 5, 7, 9])


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank 2 of 2"):
        dist.DistributedSampler(10, 2, 2)
    with pytest.raises(ValueError, match="padding must be one of"):
        dist.DistributedSampler(10, 2, 0, padding="wrap")
    with pytest.raises(ValueError, match="cannot shard 1 samples over 2 ranks"):
        dist.DistributedSampler(1, 2, 0)


def test_ranks_batches_together_are_the_single_process_batch():
    """Step b of R ranks with batch B covers exactly batch b of one process with batch R*B."""
    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.standard_normal((200, 1, 2, 2)).astype(np.float32), np.arange(200) % 10)
    single = list(DataLoader(data, 64, shuffle=True, seed=9))
    ranks = [list(dist.ShardedDataLoader(data, 32, num_replicas=2, rank=r, shuffle=True, seed=9)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 4
    for b in range(3):  # full batches: interleaved, exactly equal
        x = np.empty_like(single[b][0])
        x[0::2], x[1::2] = ranks[0][b][0], ranks[1][b][0]
        assert np.array_equal(x, single[b][0])


# ---------------------------------------------------------------------------------------------- buckets, conversion
def test_buckets_group_by_dtype_and_size():
    arrays = [
        np.zeros(100, np.float32),
        np.zeros(100, np.float32),
        np.zeros(3, np.float64),
        np.zeros(300, np.float32),
        np.zeros(10, np.float32),
    ]
    buckets = dist.bucket_indices(arrays, bucket_bytes=1000)
    assert buckets == [[0, 1], [3], [4], [2]]  # 800 B fit, 1200 B alone, then the rest; float64 apart
    assert dist.bucket_indices(arrays, bucket_bytes=1e9) == [[0, 1, 3, 4], [2]]


def test_convert_sync_batchnorm_keeps_weights_keys_and_order():
    model = get_model("resnet20", num_classes=10, seed=0)
    before = model.state_dict()
    params = list(model.parameters())
    converted = dist.convert_sync_batchnorm(model)
    assert converted is model
    kinds = {type(m).__name__ for m in model.modules()}
    assert "SyncBatchNorm" in kinds and "BatchNorm2d" not in kinds
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(a is b for a, b in zip(model.parameters(), params))  # the optimizer's parameters still hold
    assert all(after[k] is before[k] for k in before)


def test_convert_sync_batchnorm_keeps_non_affine_and_untracked_layers_as_they_are():
    from npresnet.nn import Sequential

    model = Sequential(BatchNorm2d(4, affine=False, track_running_stats=False), BatchNorm2d(3, momentum=None))
    model[1].eval()
    before = model.state_dict()
    dist.convert_sync_batchnorm(model)
    first, second = model[0], model[1]
    assert isinstance(first, dist.SyncBatchNorm) and isinstance(second, dist.SyncBatchNorm)
    assert first.weight is None and first.running_mean is None and list(first.parameters()) == []
    assert (second.momentum, second.training) == (None, False)
    assert list(model.state_dict()) == list(before) and all(model.state_dict()[k] is before[k] for k in before)


def test_single_process_world_is_a_no_op_and_missing_mpi4py_is_a_clear_error(monkeypatch):
    world = dist.SINGLE_PROCESS
    assert (world.rank, world.size, world.is_main) == (0, 1, True)
    assert world.sum(1.5, 2) == (1.5, 2) and world.max(3.0) == (3.0,)
    buffer = np.arange(3.0)
    assert world.allreduce_(buffer) is buffer and np.array_equal(buffer, [0, 1, 2])
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'npresnet\[mpi\]'"):
        dist.init_distributed()


def test_distributed_flag_without_mpi4py_is_a_clear_command_line_error(monkeypatch, capsys, tmp_path):
    from npresnet.training import main

    monkeypatch.setitem(sys.modules, "mpi4py", None)
    assert main(["--distributed", "--out", str(tmp_path), "--epochs", "1"]) == 2
    assert "--distributed needs mpi4py and an MPI runtime: pip install 'npresnet[mpi]'" in capsys.readouterr().err
    assert not (tmp_path / "checkpoint.npz").exists()


def test_resuming_with_another_number_of_ranks_is_refused(tmp_path):
    from npresnet.training import TrainConfig, Trainer

    config = TrainConfig(
        data="digits",
        train_limit=64,
        test_limit=16,
        epochs=1,
        batch_size=16,
        out_dir=str(tmp_path),
        progress="none",
        prefetch=0,
    )
    Trainer(config, log=lambda line: None).save()  # a checkpoint of a 1-rank run

    class TwoRanks(dist.World):  # rank 0 of 2; no collective is reached
        def __init__(self):
            self.rank, self.size, self.comm, self.timeout = 0, 2, None, 1.0

    trainer = Trainer(config, log=lambda line: None, world=TwoRanks())
    assert len(trainer.train_loader) == 2  # its shard: 32 of the 64 images
    with pytest.raises(ValueError, match=r"written by a run of 1 rank\(s\), this run has 2; resume with mpiexec -n 1"):
        trainer.resume(str(tmp_path))


class _ThreadWorld(dist.World):
    """R 'ranks' as threads of this process: allgather/allreduce through a shared table and a barrier."""

    def __init__(self, rank, shared):
        self.rank, self.size, self.comm, self.timeout, self.shared = rank, shared["size"], None, 10.0, shared

    def _exchange(self, array):
        self.shared["slots"][self.rank] = np.array(array, copy=True)
        self.shared["barrier"].wait()
        out = np.stack(self.shared["slots"])
        self.shared["barrier"].wait()
        return out

    def allgather(self, array, what=""):
        return self._exchange(array)

    def allreduce_(self, buffer, op="sum", what=""):
        buffer[...] = self._exchange(buffer).sum(axis=0)
        return buffer


def test_combined_moments_of_the_parts_are_the_moments_of_the_whole(rng):
    """The statistics SyncBatchNorm combines over ranks: parts of 0, 1, 3 and 6 images against the whole batch."""
    x = rng.standard_normal((10, 3, 4, 5)) * 5 + 100  # a large mean: E[x^2] - mu^2 would cancel
    parts = [channel_moments(x[a:b]) for a, b in ((0, 0), (0, 1), (1, 4), (4, 10))]
    mean, var = combine_channel_moments(
        np.array([p[0] for p in parts], dtype=np.float64),
        np.stack([p[1] for p in parts]),
        np.stack([p[2] for p in parts]),
    )
    n, whole_mean, whole_m2, centred = channel_moments(x)
    assert n == 10 * 4 * 5 and np.array_equal(centred, x - whole_mean.reshape(1, -1, 1, 1))
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-14)
    np.testing.assert_allclose(var, x.var(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(whole_m2 / n, var, rtol=1e-12)


def test_sync_batchnorm_equals_batchnorm_on_the_concatenated_batch(rng):
    """Two ranks (threads) with 3 and 5 images vs one BatchNorm2d on all 8, with a random upstream gradient."""
    C = 4
    x = rng.standard_normal((8, C, 3, 5)) * 3 + 1
    g = rng.standard_normal(x.shape)
    weight, bias = rng.standard_normal(C), rng.standard_normal(C)
    reference = BatchNorm2d(C).to(np.float64)
    reference.weight.data[...], reference.bias.data[...] = weight, bias
    y_ref = reference(x)
    dx_ref = reference.backward(g)
    shared = {"size": 2, "slots": [None, None], "barrier": threading.Barrier(2)}
    parts, results = [slice(0, 3), slice(3, 8)], [None, None]

    def run(rank):
        bn = dist.SyncBatchNorm(C, world=_ThreadWorld(rank, shared)).to(np.float64)
        bn.weight.data[...], bn.bias.data[...] = weight, bias
        y = bn(x[parts[rank]])
        # the upstream gradient of the whole batch, split: the ranks' parameter gradients must sum to the reference
        dx = bn.backward(g[parts[rank]])
        results[rank] = (y, dx, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r is not None for r in results), "a simulated rank failed"
    y = np.concatenate([results[0][0], results[1][0]])
    dx = np.concatenate([results[0][1], results[1][1]])
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(results[0][2] + results[1][2], reference.weight.grad, rtol=1e-12)
    np.testing.assert_allclose(results[0][3] + results[1][3], reference.bias.grad, rtol=1e-12)
    for r in range(2):  # every rank holds the global running statistics
        np.testing.assert_allclose(results[r][4], reference.running_mean, rtol=1e-12)
        np.testing.assert_allclose(results[r][5], reference.running_var, rtol=1e-12)


# ---------------------------------------------------------------------------------------------- real processes
def _run(args: list[str], timeout: float, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    start = time.monotonic()
    try:
        proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args)} did not finish within {timeout} s:\n{exc.stdout}\n{exc.stderr}")
    return proc, time.monotonic() - start


PARITY_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from npresnet import distributed as dist
    from npresnet.data import ArrayDataset
    from npresnet.models import get_model
    from npresnet.nn import CrossEntropyLoss
    from npresnet.optim import SGD

    out = sys.argv[1]
    world = dist.init_distributed(timeout=60)
    assert world.size == 2, f"expected 2 ranks, got {world.size} (mpiexec and mpi4py from different MPIs?)"
    rng = np.random.default_rng(7)
    data = ArrayDataset(rng.standard_normal((640, 3, 8, 8)), rng.integers(0, 10, 640), num_classes=10)
    for mode in ("sync", "local"):
        model = get_model("resnet20", num_classes=10, seed=world.rank).to(np.float64)   # different on purpose:
        dist.broadcast_module(model, world)                                             # rank 0's must win
        if mode == "sync":
            dist.convert_sync_batchnorm(model, world)
        criterion = CrossEntropyLoss()
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        average = dist.GradientAverager(model.parameters(), world)
        loader = dist.ShardedDataLoader(data, 32, num_replicas=2, rank=world.rank, shuffle=True, seed=3,
                                        dtype=np.float64)
        losses = []
        for step, (x, y) in zip(range(10), loader):
            loss = float(criterion(model(x), y))
            opt.zero_grad()
            model.backward(criterion.backward())
            average()
            opt.step()
            losses.append(world.sum(loss)[0] / world.size)
        state = {k: np.asarray(v) for k, v in model.state_dict().items()}
        np.savez(f"{out}/{mode}-rank{world.rank}.npz", losses=np.array(losses), buckets=len(average.buffers),
                 **{"model/" + k: v for k, v in state.items()})
""")


def _reference_run(mode: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One process, batch 64, the same data order; ``local``: BatchNorm per half ([0::2], [1::2]) as rank 0 sees it."""
    rng = np.random.default_rng(7)
    data = ArrayDataset(rng.standard_normal((640, 3, 8, 8)), rng.integers(0, 10, 640), num_classes=10)
    model = get_model("resnet20", num_classes=10, seed=0).to(np.float64)
    criterion = CrossEntropyLoss()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(data, 64, shuffle=True, seed=3, dtype=np.float64)
    losses = []
    for _, (x, y) in zip(range(10), loader):
        opt.zero_grad()
        if mode == "sync":
            losses.append(float(criterion(model(x), y)))
            model.backward(criterion.backward())
        else:  # rank 1's half first, then undo its running-statistics update: rank 0's stay
            buffers = [np.array(b, copy=True) for b in model.buffers()]
            loss1 = float(criterion(model(x[1::2]), y[1::2]))
            model.backward(criterion.backward())
            for b, saved in zip(model.buffers(), buffers):
                b[...] = saved
            loss0 = float(criterion(model(x[0::2]), y[0::2]))
            model.backward(criterion.backward())
            for p in model.parameters():
                p.grad /= 2
            losses.append((loss0 + loss1) / 2)
        opt.step()
    return np.array(losses), {k: np.asarray(v) for k, v in model.state_dict().items()}


def _max_rel_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert list(a) == list(b)
    return max(float(np.max(np.abs(a[k] - b[k]))) / max(float(np.max(np.abs(b[k]))), 1e-30) for k in b)


@pytest.mark.slow  # about 40 s of CPU: 4 x 10 float64 ResNet-20 steps, 2 of them on 2 ranks
def test_two_ranks_equal_one_process_with_the_doubled_batch(tmp_path, mpiexec):
    (tmp_path / "parity.py").write_text(PARITY_SCRIPT)
    proc, _ = _run([mpiexec, "-n", "2", sys.executable, "parity.py", str(tmp_path)], timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for mode in ("sync", "local"):
        ranks = []
        for r in range(2):
            with np.load(tmp_path / f"{mode}-rank{r}.npz") as f:
                ranks.append((f["losses"], {k[6:]: f[k] for k in f.files if k.startswith("model/")}, int(f["buckets"])))
        assert ranks[0][2] == 1  # ResNet-20 float64 (2.2 MB): one bucket, one call
        ref_losses, ref_state = _reference_run(mode)
        np.testing.assert_allclose(ranks[0][0], ref_losses, rtol=1e-10, atol=0)
        assert _max_rel_diff(ranks[0][1], ref_state) < 1e-9, mode
        params = [k for k in ref_state if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        for k in params:  # the ranks hold the same weights
            np.testing.assert_array_equal(ranks[0][1][k], ranks[1][1][k])
        running = [k for k in ref_state if k.endswith("running_mean")]
        same_stats = all(np.array_equal(ranks[0][1][k], ranks[1][1][k]) for k in running)
        assert same_stats == (mode == "sync")  # per-rank BN keeps per-rank running statistics


BROADCAST_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from npresnet import distributed as dist, nn
    from npresnet.optim import SGD
    from npresnet.schedules import MultiStepLR

    world = dist.init_distributed(timeout=60)
    model = nn.Linear(3, 2)
    optimizer = SGD(model.parameters(), lr=0.1 * (world.rank + 1), momentum=0.9)
    scheduler = MultiStepLR(optimizer, milestones=[1, 2], gamma=0.5)
    rng = np.random.default_rng(world.rank)
    for _ in range(world.rank + 1):                  # rank r: r + 1 steps with gradients of its own
        optimizer.zero_grad()
        for p in model.parameters():
            p.accumulate_grad(rng.standard_normal(p.shape).astype(p.dtype))
        optimizer.step()
        scheduler.step()

    def snapshot():
        state = optimizer.state_dict()
        buffers = {f"buffer{i}": s["momentum_buffer"].tolist() for i, s in state["state"].items()}
        return {**buffers, "lr": state["param_groups"][0]["lr"], "schedule": scheduler.state_dict()}

    before = snapshot()
    dist.broadcast_optimizer(optimizer, world, scheduler=scheduler)
    with open(f"{sys.argv[1]}/optimizer-rank{world.rank}.json", "w") as f:
        json.dump({"before": before, "after": snapshot()}, f)
""")


def test_broadcast_optimizer_gives_every_rank_the_state_of_rank_0(tmp_path, mpiexec):
    """Ranks that took different steps (momentum buffers, lr, schedule position) hold rank 0's state after it."""
    (tmp_path / "broadcast.py").write_text(BROADCAST_SCRIPT)
    proc, _ = _run([mpiexec, "-n", "2", sys.executable, "broadcast.py", str(tmp_path)], timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = [json.loads((tmp_path / f"optimizer-rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["before"] != ranks[1]["before"]  # the test starts from states that differ
    assert ranks[0]["after"] == ranks[0]["before"]  # rank 0 keeps its own
    assert ranks[1]["after"] == ranks[0]["before"], "rank 1 did not take rank 0's optimizer and schedule state"
    assert ranks[1]["after"]["schedule"]["last_epoch"] == 1 and ranks[1]["after"]["lr"] == 0.05


def _train_args(out: Path, *extra: str) -> list[str]:
    return [
        "--data",
        "digits",
        "--train-limit",
        "256",
        "--test-limit",
        "64",
        "--epochs",
        "1",
        "--no-augment",
        "--dtype",
        "float64",
        "--progress",
        "none",
        "--prefetch",
        "0",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.slow  # two mpiexec training runs of the CLI
def test_command_line_distributed_run_equals_single_process(tmp_path, mpiexec):
    proc, _ = _run(
        [
            mpiexec,
            "-n",
            "2",
            sys.executable,
            "-m",
            "npresnet.train",
            *_train_args(tmp_path / "two", "--batch", "32", "--distributed", "--sync-bn"),
        ],
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("done: final test accuracy") == 1  # rank 0 alone prints
    assert "data-parallel over 2 MPI ranks: batch 32 per rank, global batch 64, SyncBatchNorm" in proc.stdout
    from npresnet.training import main

    assert main(_train_args(tmp_path / "one", "--batch", "64")) == 0
    metas, states = [], []
    for name in ("two", "one"):
        meta, arrays = read_checkpoint(tmp_path / name / "checkpoint.npz")
        metas.append(meta)
        states.append({k: v for k, v in arrays.items() if k.startswith("model/")})
    assert metas[0]["step"] == metas[1]["step"] == 4 and metas[0]["extra"]["world_size"] == 2
    assert _max_rel_diff(states[0], states[1]) < 1e-9
    two, one = metas[0]["extra"]["history"][0], metas[1]["extra"]["history"][0]
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-10)
    assert two["test_acc"] == one["test_acc"] and two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-9)
    assert not list((tmp_path / "two").glob("*.tmp"))


MEASURED_SCRIPT = textwrap.dedent("""
    import json, sys
    from npresnet.distributed import current_world
    from npresnet.engine import autotune
    from npresnet.training import main

    code = main(sys.argv[1:])
    world = current_world()
    print(f"rank {world.rank} timed {len(autotune.timed_keys())} chose {json.dumps(autotune.choices())}")
    sys.exit(code)
""")


@pytest.mark.slow  # an mpiexec training run of the CLI, measuring
def test_a_measured_distributed_run_takes_rank_0s_choices(tmp_path, mpiexec):
    """Rank 0 times the candidates of each training shape and every rank runs its winners: rank 1
    times nothing (its evaluation, on a shard of its own size, takes the fixed rule), and the
    checkpoint records rank 0's choices, which rank 1 holds too."""
    (tmp_path / "measured.py").write_text(MEASURED_SCRIPT)
    args = _train_args(tmp_path / "run", "--batch", "16", "--distributed", "--dtype", "float32", "--threads", "1")
    proc, _ = _run([mpiexec, "-n", "2", sys.executable, "measured.py", *args], timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {int(m.group(1)): m for m in re.finditer(r"rank (\d) timed (\d+) chose (.*)", proc.stdout)}
    assert int(lines[0].group(2)) > 0 and int(lines[1].group(2)) == 0, proc.stdout
    engine = read_checkpoint(tmp_path / "run" / "checkpoint.npz")[0]["extra"]["engine"]
    assert engine["autotune"] == "measure"
    train_choices = {k: v for k, v in engine["choices"].items() if "(16, " in k.split(" | ")[1][:6]}
    assert train_choices and set(train_choices.items()) <= set(json.loads(lines[1].group(3)).items())


FAULT_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from npresnet.training import TrainConfig, Trainer

    mode, out = sys.argv[1], sys.argv[2]
    config = TrainConfig(model="resnet20", data="digits", train_limit=128, test_limit=32, epochs=3, batch_size=16,
                         out_dir=out, progress="none", prefetch=0, distributed=True, dist_timeout=15)
    trainer = Trainer(config)
    average = trainer.average_gradients

    def fail_mid_epoch_two():
        if trainer.world.rank == 1 and trainer.step == trainer.steps_per_epoch + 1:
            print(f"rank 1: {mode} at step {trainer.step}", flush=True)
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(600)
        average()

    trainer.average_gradients = fail_mid_epoch_two
    trainer.fit()
""")


@pytest.mark.slow  # a fault, a timeout (15 s for "hang") and a resume, each under mpiexec
@pytest.mark.parametrize("mode", ["kill", "hang"])
def test_a_failed_rank_stops_the_job_and_the_checkpoint_resumes(tmp_path, mpiexec, mode):
    (tmp_path / "fault.py").write_text(FAULT_SCRIPT)
    out = tmp_path / "run"
    proc, seconds = _run([mpiexec, "-n", "2", sys.executable, "fault.py", mode, str(out)], timeout=120, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert f"rank 1: {mode} at step 5" in output
    if mode == "kill":
        assert "BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES" in output  # MPICH's mpiexec
    else:
        assert "gradient allreduce (1 bucket(s)) did not complete within 15 s" in output
        assert "another rank has died or hung" in output
    assert seconds < 90, f"the job took {seconds:.0f} s to stop"
    meta = load_checkpoint(out / "checkpoint.npz", get_model("resnet20", num_classes=10), model_name="resnet20")
    assert meta["epoch"] == 1 and meta["step"] == 4  # the end of epoch 1, intact
    if mode == "kill":  # continue it on 2 ranks
        proc, _ = _run(
            [mpiexec, "-n", "2", sys.executable, "-m", "npresnet.train", "--resume", str(out), "--epochs", "2"],
            timeout=180,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert read_checkpoint(out / "checkpoint.npz")[0]["epoch"] == 2
