"""Training end to end: a short real run on digits, bit-exact resume, checkpoints (atomic, checked
before loading), divergence handling, the command line and the paper preset."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest

from npresnet import checkpoint as ckpt
from npresnet.data import ArrayDataset, digits
from npresnet.models import resnet20, resnet32
from npresnet.optim import SGD
from npresnet.schedules import MultiStepLR
from npresnet.training import (
    PRESETS,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    build_parser,
    config_from_args,
    main,
    train,
)

QUIET = dict(progress="none", prefetch=1)


def tiny_config(out_dir, **overrides):
    """ResNet-20 on the first 96 training and 64 test digits: 3 iterations per epoch."""
    values = dict(
        model="resnet20",
        data="digits",
        epochs=2,
        batch_size=32,
        eval_batch_size=64,
        lr=0.05,
        schedule="multistep",
        milestones=[1.34],
        warmup_steps=2,
        train_limit=96,
        test_limit=64,
        out_dir=str(out_dir),
        **QUIET,
    )
    values.update(overrides)
    return TrainConfig(**values)


def file_digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def silent(line):
    pass


@pytest.mark.slow  # several epochs of ResNet-20 on real digits
def test_short_digits_training_learns(tmp_path):
    """ResNet-20 on the full digits training set for 3 epochs: the loss must fall well below its start."""
    losses = []
    # out_dir in tmp_path: the default (runs/<model>-<data> under the current folder) may hold a real run
    config = TrainConfig(epochs=3, batch_size=64, lr=0.05, warmup_steps=10, out_dir=str(tmp_path / "run"), **QUIET)
    trainer = Trainer(config, log=silent)
    criterion_calls = trainer.criterion.forward

    def recording_forward(logits, target):
        loss = criterion_calls(logits, target)
        losses.append(float(loss))
        return loss

    trainer.criterion.forward = recording_forward
    trainer.save = lambda: None  # nothing written to disk in this test
    result = trainer.fit()
    assert len(losses) == 3 * 23
    start, end = np.mean(losses[:3]), np.mean(losses[-3:])
    assert end < 0.35 * start, f"training loss went from {start:.3f} to only {end:.3f}"
    assert result.history[-1]["train_acc"] > 0.8
    assert result.final_test_acc > 0.5, result.history


def test_resume_is_bit_exact(tmp_path):
    straight = train(tiny_config(tmp_path / "straight"), log=silent)
    train(tiny_config(tmp_path / "split", epochs=1), log=silent)
    resumed = train(tiny_config(tmp_path / "split", epochs=2), resume=str(tmp_path / "split"), log=silent)

    meta_a, arrays_a = ckpt.read_checkpoint(tmp_path / "straight" / "checkpoint.npz")
    meta_b, arrays_b = ckpt.read_checkpoint(tmp_path / "split" / "checkpoint.npz")
    assert sorted(arrays_a) == sorted(arrays_b)
    assert any(k.startswith("optimizer/") for k in arrays_a) and any(k.endswith("running_var") for k in arrays_a)
    for key in arrays_a:
        assert arrays_a[key].dtype == arrays_b[key].dtype
        assert np.array_equal(arrays_a[key], arrays_b[key]), f"{key} differs after resume"
    assert meta_a["scheduler"] == meta_b["scheduler"] and meta_a["optimizer"] == meta_b["optimizer"]
    assert (meta_a["epoch"], meta_a["step"]) == (meta_b["epoch"], meta_b["step"]) == (2, 6)
    timing = ("epoch_time_s", "eval_time_s", "images_per_s")
    for row_a, row_b in zip(straight.history, resumed.history, strict=True):
        assert {k: v for k, v in row_a.items() if k not in timing} == {
            k: v for k, v in row_b.items() if k not in timing
        }
    lrs = [row["lr"] for row in straight.history]
    assert lrs[0] < lrs[1], "the warm-up should have raised the lr by epoch 2"


def test_checkpoint_of_another_model_is_refused_and_nothing_changes(tmp_path):
    model, other = resnet20(seed=0), resnet32(seed=1)
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = MultiStepLR(optimizer, [5])
    path = tmp_path / "run" / "checkpoint.npz"
    ckpt.save_checkpoint(path, model, optimizer, scheduler, model_name="resnet20", epoch=1, step=3)
    digest = file_digest(path)
    before = {k: np.array(v) for k, v in other.state_dict().items()}
    other_optimizer = SGD(other.parameters(), lr=0.5)
    with pytest.raises(ckpt.CheckpointError, match=r"written for a different model \('resnet20'.*nothing was loaded"):
        ckpt.load_checkpoint(path, other, other_optimizer)
    with pytest.raises(ckpt.CheckpointError, match="holds a 'resnet20' model, not 'resnet32'"):
        ckpt.load_checkpoint(path, other, model_name="resnet32")
    assert all(np.array_equal(before[k], v) for k, v in other.state_dict().items())
    assert other_optimizer.param_groups[0]["lr"] == 0.5 and not other_optimizer.state
    assert file_digest(path) == digest

    same_arch = resnet20(seed=5)
    wrong_optimizer = SGD([p for p in same_arch.parameters()][:10], lr=0.5)
    weights = {k: np.array(v) for k, v in same_arch.state_dict().items()}
    with pytest.raises(ckpt.CheckpointError, match="optimizer state does not fit"):
        ckpt.load_checkpoint(path, same_arch, wrong_optimizer)
    assert all(np.array_equal(weights[k], v) for k, v in same_arch.state_dict().items())


def test_resume_refuses_a_run_with_other_settings(tmp_path):
    train(tiny_config(tmp_path, epochs=1), log=silent)
    digest = file_digest(tmp_path / "checkpoint.npz")
    with pytest.raises(ValueError, match=r"model: checkpoint 'resnet20', now 'resnet32'"):
        train(tiny_config(tmp_path, model="resnet32"), resume=str(tmp_path), log=silent)
    with pytest.raises(ValueError, match=r"lr: checkpoint 0.05, now 0.1"):
        train(tiny_config(tmp_path, lr=0.1), resume=str(tmp_path), log=silent)
    with pytest.raises(FileExistsError, match="already exists"):
        train(tiny_config(tmp_path), log=silent)  # a fresh run must not overwrite it
    assert file_digest(tmp_path / "checkpoint.npz") == digest


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow on the way to the NaN: the point here
def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    train_set, test_set = digits()
    train_set, test_set = train_set.subset(np.arange(96)), test_set.subset(np.arange(64))
    config = tiny_config(tmp_path, epochs=1, train_limit=None, test_limit=None)
    train(config, datasets=(train_set, test_set), log=silent)
    files = {name: file_digest(tmp_path / name) for name in ("checkpoint.npz", "metrics.csv", "metrics.json")}
    poisoned = train_set.images.copy()
    poisoned[50, 0, 3, 3] = np.nan
    bad = ArrayDataset(poisoned, train_set.labels, train_set.classes)
    with pytest.raises(
        TrainingDiverged,
        match=r"training loss is nan at iteration [456] .*last good checkpoint "
        r".*checkpoint.npz \(end of epoch 1\) is kept",
    ):
        train(
            tiny_config(tmp_path, epochs=2, train_limit=None, test_limit=None),
            datasets=(bad, test_set),
            resume=str(tmp_path),
            log=silent,
        )
    assert {name: file_digest(tmp_path / name) for name in files} == files
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]

    fresh = tmp_path / "fresh"
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet"):
        train(tiny_config(fresh, lr=1e30, warmup_steps=0), log=silent)
    assert not os.path.exists(fresh / "checkpoint.npz")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow on the way to the non-finite test loss
def test_weights_blown_up_by_the_last_step_stop_at_the_end_of_the_epoch(tmp_path):
    """One iteration per epoch; at the end of epoch 1 the schedule multiplies lr by 1e35. Epoch 2's only
    training loss is computed before that step and is finite; the step blows the weights up, and only
    the end-of-epoch check (the test loss, the weights) can see it: epoch 1's checkpoint must stay."""
    config = tiny_config(
        tmp_path, epochs=2, train_limit=32, batch_size=32, warmup_steps=0, milestones=[1.0], gamma=1e35
    )
    with pytest.raises(
        TrainingDiverged,
        match=r"the weights or the test loss became non-finite in epoch 2; the "
        r"last good checkpoint .*checkpoint.npz \(end of epoch 1\) is kept",
    ):
        train(config, log=silent)
    meta, arrays = ckpt.read_checkpoint(tmp_path / "checkpoint.npz")
    assert meta["epoch"] == 1 and meta["step"] == 1
    assert all(np.isfinite(v).all() for k, v in arrays.items() if k.startswith("model/"))
    assert len(json.loads((tmp_path / "metrics.json").read_text())["history"]) == 1


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    model = resnet20(seed=0)
    path = tmp_path / "checkpoint.npz"
    ckpt.save_checkpoint(path, model, epoch=1)
    digest = file_digest(path)

    def crash(file, **arrays):
        file.write(b"half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, model, epoch=2)
    assert file_digest(path) == digest and os.listdir(tmp_path) == ["checkpoint.npz"]
    monkeypatch.undo()
    meta, arrays = ckpt.read_checkpoint(path)
    assert meta["epoch"] == 1 and "model/fc.weight" in arrays
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ckpt.CheckpointError, match="not a readable .npz checkpoint"):
        ckpt.read_checkpoint(tmp_path / "junk.npz")


def test_command_line_run_resume_metrics_and_plot(tmp_path, capsys):
    out = tmp_path / "cli"
    args = [
        "--epochs",
        "1",
        "--batch",
        "32",
        "--train-limit",
        "64",
        "--test-limit",
        "32",
        "--lr",
        "0.05",
        "--out",
        str(out),
        "--plot",
        str(out / "curves.png"),
        "--progress",
        "plain",
        "--threads",
        "1",
    ]
    assert main(args) == 0
    assert main(["--resume", str(out), "--epochs", "2", "--progress", "plain"]) == 0
    captured = capsys.readouterr()
    assert "epoch 2/2 2/2 loss=" in captured.err and "done: final test accuracy" in captured.out
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,step,lr,train_loss,train_acc") and len(rows) == 3
    summary = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in summary["history"]] == [1, 2] and summary["config"]["epochs"] == 2
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["--data", "cifar10", "--data-root", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "CIFAR-10 directory not found" in capsys.readouterr().err


def test_every_config_field_is_one_option_with_help_and_one_default():
    parser = build_parser()
    actions = [a for a in parser._actions if a.dest != "help"]
    for field in dataclasses.fields(TrainConfig):
        owners = [a for a in actions if a.dest == field.name]
        assert len(owners) == 1, f"TrainConfig.{field.name} is {len(owners)} options of the parser, not one"
        choices = field.metadata["choices"]
        assert owners[0].choices == (list(choices) if choices else None), field.name
    for action in actions:
        assert action.help and action.help.count("(default:") <= 1, f"{action.option_strings}: {action.help!r}"
    text = " ".join(parser.format_help().split())
    assert "(default: None)" not in text
    assert text.count("(default:") == sum(a.help.count("(default:") for a in actions), (
        "the help formatter adds defaults of its own"
    )
    config, _, _ = config_from_args(
        [
            "--betas",
            "0.8",
            "0.99",
            "--eps",
            "1e-6",
            "--milestone-steps",
            "10",
            "20",
            "--nesterov",
            "--no-augment",
            "--no-decay-bn-bias",
            "--dtype",
            "float64",
        ]
    )
    assert (config.betas, config.eps, config.milestone_steps) == ((0.8, 0.99), 1e-6, [10, 20])
    assert (config.nesterov, config.augment, config.decay_bn_and_bias, config.dtype) == (True, False, False, "float64")
    with pytest.raises(ValueError, match=r"optimizer must be one of \('sgd', 'adam', 'adamw'\), got 'lion'"):
        TrainConfig(optimizer="lion")


def test_train_command_keeps_its_name(capsys):
    import npresnet.train as command

    assert command.main is main and command.TrainConfig is TrainConfig
    with pytest.raises(SystemExit) as stop:
        command.main(["--help"])
    assert stop.value.code == 0 and "usage: python -m npresnet.train" in capsys.readouterr().out


def test_cifar_paper_preset(tmp_path):
    config, resume, _ = config_from_args(["--preset", "cifar-paper", "--data-root", str(tmp_path), "--epochs", "3"])
    assert resume is None and config.epochs == 3  # explicit options win over the preset
    expected = dict(
        model="resnet20",
        data="cifar10",
        batch_size=128,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        milestone_steps=[32000, 48000],
        gamma=0.1,
        max_steps=64000,
        normalize="pixel-mean",
        augment=True,
    )
    assert {k: getattr(config, k) for k in expected} == expected and PRESETS["cifar-paper"]["epochs"] == 164
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 3, 32, 32), dtype=np.uint8)
    fake = ArrayDataset(images, rng.integers(0, 10, 300), name="fake-cifar")
    trainer = Trainer(config, datasets=(fake, fake), log=silent)
    assert trainer.scheduler.milestones == [32000, 48000] and trainer.steps_per_epoch == 3
    assert [type(t).__name__ for t in trainer.train_loader.transform.transforms] == [
        "Normalize",
        "RandomCrop",
        "RandomHorizontalFlip",
    ]
    assert trainer.train_loader.transform.transforms[1].padding == 4
    assert trainer.train_loader.transform.transforms[0].mean.shape == (3, 32, 32)


def test_mismatched_batches_and_bad_labels_are_clear_errors(tmp_path):
    class Broken(ArrayDataset):
        def get_batch(self, indices):
            x, y = super().get_batch(indices)
            return x, y[:-1]

    train_set, test_set = digits()
    broken = Broken(train_set.images[:64], train_set.labels[:64], train_set.classes)
    with pytest.raises(ValueError, match="dataset returned 32 images but 31 labels"):
        train(tiny_config(tmp_path, train_limit=None, test_limit=None), datasets=(broken, test_set), log=silent)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\), but label 10"):
        ArrayDataset(train_set.images[:4], [0, 1, 10, 2], train_set.classes)
    assert not os.path.exists(tmp_path / "checkpoint.npz")
