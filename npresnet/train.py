"""Train a ResNet: ``python -m npresnet.train`` and the Python API behind it.

::

    python -m npresnet.train --model resnet20 --data digits --epochs 30 --batch 128 --lr 0.1 \\
        --out runs/digits --plot runs/digits/curves.png
    python -m npresnet.train --resume runs/digits --epochs 40        # continue, bit-exactly
    python -m npresnet.train --preset cifar-paper --data-root ~/data/cifar-10-batches-bin
    mpiexec -n 2 python -m npresnet.train --distributed --sync-bn --batch 64 ...   # 2 ranks, global batch 128

    from npresnet.train import TrainConfig, train
    result = train(TrainConfig(model="resnet20", data="digits", epochs=30, out_dir="runs/digits"))
    result.final_test_acc

One epoch: shuffle (seeded), augment, forward, loss, backward, ``optimizer.step()``,
``scheduler.step()`` (the schedule advances every *iteration*), then evaluate on the test set
(``eval()`` mode, no caches), append a row to ``metrics.csv``/``metrics.json``, write
``checkpoint.npz`` atomically and redraw the plot. A progress bar (tqdm if installed, else a
plain line printer) shows loss, accuracy and images/s.

Reproducibility: the model's initial weights come from ``seed``; the data order and augmentation
of epoch e from (seed, e) (see ``npresnet.data.loader``). The checkpoint holds weights, buffers,
optimizer state, schedule state, epoch, step and history, so ``--resume`` continues exactly
where it stopped: two epochs straight and one + resume + one give identical weights.

A non-finite loss (or weights) stops training with ``TrainingDiverged``; the last good
checkpoint (end of the previous epoch) and the metrics files are left as they were.

``--distributed`` (under ``mpiexec``) trains data-parallel over MPI (``npresnet.distributed``):
``--batch`` is per rank, each rank takes its shard of every epoch, gradients are averaged after
backward, all ranks start from rank 0's state, evaluation is sharded and summed, and only rank 0
prints and writes. ``--sync-bn`` makes BatchNorm use the statistics of the whole global batch.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import data as D
from . import distributed as dist
from . import runtime
from .backend import get_array_module
from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .functional.loss import cross_entropy_forward
from .grad_mode import no_grad
from .nn import CrossEntropyLoss, Module
from .optim import SGD, Adam, AdamW, Optimizer, weight_decay_groups
from .schedules import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, MultiStepLR, SequentialLR

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "Trainer", "TrainingDiverged", "main", "train"]


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run. Steps are optimizer iterations; epochs are passes over the data."""

    model: str = "resnet20"              # a factory of npresnet.models (get_model)
    data: str = "digits"                 # digits | cifar10 | imagefolder
    data_root: str | None = None         # cifar10: the binary files' folder; imagefolder: holds train/ and test/
    epochs: int = 30
    batch_size: int = 128
    eval_batch_size: int = 500
    optimizer: str = "sgd"               # sgd | adam | adamw
    lr: float = 0.1
    momentum: float = 0.9                # sgd
    nesterov: bool = False               # sgd
    betas: tuple[float, float] = (0.9, 0.999)   # adam, adamw
    eps: float = 1e-8                    # adam, adamw
    weight_decay: float = 5e-4
    decay_bn_and_bias: bool = True       # False: no weight decay on BatchNorm weights/biases and biases
    schedule: str = "cosine"             # cosine | multistep | constant
    milestones: list[float] = dataclasses.field(default_factory=list)   # multistep, in epochs
    milestone_steps: list[int] | None = None   # multistep, in iterations (overrides milestones)
    gamma: float = 0.1                   # multistep factor
    warmup_steps: int = 0                # iterations of warm-up before the schedule
    warmup: str = "linear"               # linear (from warmup_factor * lr up to lr) | constant (warmup_factor * lr)
    warmup_factor: float = 0.1
    max_steps: int | None = None         # stop after this many iterations (the paper's 64k)
    label_smoothing: float = 0.0
    augment: bool = True                 # random crop (+ flip for natural images)
    normalize: str = "channel"           # channel (mean/std per channel) | pixel-mean (subtract mean image) | none
    seed: int = 0
    dtype: str = "float32"
    backend: str = "numpy"
    train_limit: int | None = None       # use only the first N training images (quick runs)
    test_limit: int | None = None
    prefetch: int = 1                    # batches prepared ahead by a background thread
    out_dir: str | None = None           # default runs/<model>-<data>
    progress: str = "auto"               # auto | tqdm | plain | none
    plot: str | None = None              # a .png path for the loss/accuracy curves
    distributed: bool = False            # data-parallel over MPI (run under mpiexec); batch_size is per rank
    sync_bn: bool = False                # BatchNorm statistics over the global batch (SyncBatchNorm)
    dist_timeout: float = dist.DEFAULT_TIMEOUT_S   # seconds a collective may wait before the job is aborted

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.milestones = list(self.milestones)
        choices = {"data": ("digits", "cifar10", "imagefolder"), "optimizer": ("sgd", "adam", "adamw"),
                   "schedule": ("cosine", "multistep", "constant"), "warmup": ("linear", "constant"),
                   "normalize": ("channel", "pixel-mean", "none"), "dtype": ("float32", "float64"),
                   "backend": ("numpy", "cupy"), "progress": ("auto", "tqdm", "plain", "none")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.data in ("cifar10", "imagefolder") and not self.data_root:
            raise ValueError(f"--data {self.data} needs --data-root (a local folder; nothing is downloaded)")

    @property
    def run_dir(self) -> str:
        return self.out_dir or os.path.join("runs", f"{self.model}-{self.data}")

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# Fields that may change when a run is resumed: they do not alter the computation up to the stop.
RESUMABLE_CHANGES = ("epochs", "max_steps", "out_dir", "progress", "plot", "prefetch", "eval_batch_size",
                     "distributed", "dist_timeout")     # the number of ranks itself must not change

PRESETS: dict[str, dict[str, Any]] = {
    # He et al. 2015, section 4.2 (shared/reference/figures.md): SGD lr 0.1, momentum 0.9, weight
    # decay 1e-4 on every weight, batch 128, lr / 10 at 32k and 48k iterations, stop at 64k;
    # 4-pixel padding, random 32x32 crop, horizontal flip; per-pixel mean subtraction.
    # 164 epochs x 391 iterations (50,000 / 128) covers the 64k. ResNet-110 adds the paper's warm-up
    # (lr 0.01 for 400 iterations) via --warmup-steps 400 --warmup constant.
    "cifar-paper": dict(data="cifar10", model="resnet20", epochs=164, batch_size=128, optimizer="sgd", lr=0.1,
                        momentum=0.9, nesterov=False, weight_decay=1e-4, decay_bn_and_bias=True,
                        schedule="multistep", milestone_steps=[32000, 48000], gamma=0.1, max_steps=64000,
                        augment=True, normalize="pixel-mean", label_smoothing=0.0),
}


class TrainingDiverged(RuntimeError):
    """The loss (or the weights) became NaN or infinite; training stopped, the last checkpoint is kept."""


@dataclasses.dataclass
class TrainResult:
    history: list[dict[str, Any]]
    out_dir: str
    checkpoint: str

    @property
    def final_test_acc(self) -> float:
        return self.history[-1]["test_acc"] if self.history else float("nan")

    @property
    def best_test_acc(self) -> float:
        return max((row["test_acc"] for row in self.history), default=float("nan"))

    @property
    def wall_time_s(self) -> float:
        return sum(row["epoch_time_s"] + row["eval_time_s"] for row in self.history)


# ---------------------------------------------------------------------------------------------- data
def load_datasets(config: TrainConfig) -> D.Splits:
    """The (train, test) datasets named by ``config.data``."""
    if config.data == "digits":
        return D.digits()
    if config.data == "cifar10":
        return D.cifar10(config.data_root)
    root = config.data_root
    test_dir = next((os.path.join(root, d) for d in ("test", "val") if os.path.isdir(os.path.join(root, d))), None)
    if not os.path.isdir(os.path.join(root, "train")) or test_dir is None:
        raise FileNotFoundError(f"--data imagefolder expects {root}/train/<class>/... and {root}/test/<class>/... "
                                "(or val/)")
    train_set = D.ImageFolder(os.path.join(root, "train"))
    return D.Splits(train_set, D.ImageFolder(test_dir, size=train_set.size))


def build_transforms(config: TrainConfig, train_set: Any) -> tuple[Any, Any]:
    """(train transform, test transform). Normalisation first, so crops pad with the mean (zero)."""
    C, H, W = train_set.image_shape
    steps = []
    if config.normalize == "channel":
        mean, std = train_set.statistics()
        steps.append(D.Normalize(mean, np.maximum(std, 1e-8)))
    elif config.normalize == "pixel-mean":
        mean, _ = train_set.statistics(per_pixel=True)
        steps.append(D.Normalize(mean))
    test_transform = D.Compose(list(steps)) if steps else None
    if config.augment:
        if config.data == "digits":                     # 8x8 digits: shift by up to 1 pixel; no mirror images
            steps.append(D.RandomCrop((H, W), padding=1))
        else:                                           # natural images: the paper's pad-4 crop and flip
            steps += [D.RandomCrop((H, W), padding=max(1, H // 8)), D.RandomHorizontalFlip()]
    return (D.Compose(steps) if steps else None), test_transform


# ---------------------------------------------------------------------------------------------- progress
class _PlainProgress:
    """A fallback progress display: one line about every 10% of the epoch."""

    def __init__(self, total: int, desc: str, stream: Any) -> None:
        self.total, self.desc, self.stream, self.n = total, desc, stream, 0
        self.every = max(1, total // 10)

    def update(self, postfix: dict[str, str]) -> None:
        self.n += 1
        if self.n % self.every == 0 or self.n == self.total:
            text = " ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"{self.desc} {self.n}/{self.total} {text}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


class _TqdmProgress:
    def __init__(self, tqdm: Any, total: int, desc: str) -> None:
        self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)

    def update(self, postfix: dict[str, str]) -> None:
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class _NoProgress:
    def update(self, postfix: dict[str, str]) -> None:
        pass

    def close(self) -> None:
        pass


def _make_progress(mode: str, total: int, desc: str) -> Any:
    if mode in ("auto", "tqdm"):
        try:
            from tqdm.auto import tqdm
            return _TqdmProgress(tqdm, total, desc)
        except ImportError:
            if mode == "tqdm":
                raise ImportError("--progress tqdm needs tqdm: pip install 'npresnet[progress]'") from None
    if mode == "none":
        return _NoProgress()
    return _PlainProgress(total, desc, sys.stderr)


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Holds the model, data, optimizer and schedule of one run; ``fit()`` trains it.

    ``datasets`` (a (train, test) pair) and ``model`` replace the ones ``config`` names (for custom
    data or networks); ``log`` receives one line per epoch. ``world`` (``npresnet.distributed``)
    overrides the MPI world that ``config.distributed`` would initialise.
    """

    def __init__(self, config: TrainConfig, datasets: tuple[Any, Any] | None = None, model: Module | None = None,
                 log: Callable[[str], None] | None = None, world: dist.World | None = None) -> None:
        self.config = config
        self.world = world or (dist.init_distributed(config.dist_timeout) if config.distributed
                               else dist.SINGLE_PROCESS)
        self.log = log or (lambda line: print(line, flush=True))
        if not self.world.is_main:                  # only rank 0 prints
            self.log = lambda line: None
        train_set, test_set = datasets if datasets is not None else load_datasets(config)
        if config.train_limit:
            train_set = train_set.subset(np.arange(min(config.train_limit, len(train_set))))
        if config.test_limit:
            test_set = test_set.subset(np.arange(min(config.test_limit, len(test_set))))
        if tuple(train_set.image_shape) != tuple(test_set.image_shape):
            raise ValueError(f"train images are {train_set.image_shape} but test images are {test_set.image_shape}")
        if train_set.num_classes != test_set.num_classes:
            raise ValueError(f"train set has {train_set.num_classes} classes but test set {test_set.num_classes}")
        self.train_set, self.test_set = train_set, test_set
        train_transform, test_transform = build_transforms(config, train_set)
        dtype = np.dtype(config.dtype)
        # One process: plain DataLoaders; several: this rank's shard of each. A last training batch of one
        # image would break BatchNorm ("more than 1 value per channel"): data_loader drops it.
        self.train_loader = dist.data_loader(self.world, train_set, config.batch_size, train=True, shuffle=True,
                                             seed=config.seed, transform=train_transform, prefetch=config.prefetch,
                                             backend=config.backend, dtype=dtype)
        self.test_loader = dist.data_loader(self.world, test_set, config.eval_batch_size, train=False,
                                            transform=test_transform, prefetch=config.prefetch,
                                            backend=config.backend, dtype=dtype)

        if model is None:
            from .models import get_model
            model = get_model(config.model, num_classes=train_set.num_classes, seed=config.seed)
        self.model = model.to(dtype).to(config.backend)
        if config.sync_bn:
            self.model = dist.convert_sync_batchnorm(self.model, self.world)
        self.average_gradients = dist.GradientAverager(self.model.parameters(), self.world)   # no-op for 1 rank
        self.criterion = CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.optimizer = self._build_optimizer()
        self.scheduler = self._build_scheduler()
        self.epoch, self.step = 0, 0                # completed epochs and iterations
        self.history: list[dict[str, Any]] = []
        self.out_dir = config.run_dir
        self.checkpoint_path = os.path.join(self.out_dir, "checkpoint.npz")

    def _build_optimizer(self) -> Optimizer:
        c = self.config
        params = (list(self.model.parameters()) if c.decay_bn_and_bias
                  else weight_decay_groups(self.model, c.weight_decay))
        if c.optimizer == "sgd":
            return SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov)
        kind = Adam if c.optimizer == "adam" else AdamW
        return kind(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)

    def _build_scheduler(self) -> LRScheduler:
        c, opt = self.config, self.optimizer
        warmup = min(c.warmup_steps, max(self.total_steps - 1, 0))
        remaining = max(self.total_steps - warmup, 1)
        if c.schedule == "cosine":
            main = CosineAnnealingLR(opt, T_max=remaining)
        elif c.schedule == "multistep":
            steps = c.milestone_steps if c.milestone_steps is not None else [
                round(m * self.steps_per_epoch) for m in c.milestones]
            main = MultiStepLR(opt, [s - warmup for s in steps if s > warmup], gamma=c.gamma)
        else:
            main = MultiStepLR(opt, [], gamma=1.0)
        if not warmup:
            return main
        if c.warmup == "linear":
            first = LinearLR(opt, start_factor=c.warmup_factor, end_factor=1.0, total_iters=warmup)
        else:
            first = ConstantLR(opt, factor=c.warmup_factor, total_iters=warmup)
        return SequentialLR(opt, [first, main], milestones=[warmup])

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self) -> dict[str, float]:
        """One pass over the training set (or up to ``total_steps``); returns loss, accuracy, speed."""
        model, criterion, opt, sched = self.model, self.criterion, self.optimizer, self.scheduler
        model.train()
        self.train_loader.set_epoch(self.epoch)
        n_batches = min(self.steps_per_epoch, self.total_steps - self.step)
        progress = _make_progress(self.config.progress if self.world.is_main else "none", n_batches,
                                  f"epoch {self.epoch + 1}/{self.config.epochs}")
        loss_sum, correct, seen = 0.0, 0, 0
        start = time.perf_counter()
        batches = iter(self.train_loader)
        try:
            for _ in range(n_batches):
                x, y = next(batches)
                if x.shape[0] != y.shape[0]:
                    raise ValueError(f"batch of {x.shape[0]} images but {y.shape[0]} labels")
                logits = model(x)
                loss = float(criterion(logits, y))
                if not math.isfinite(loss):
                    self._diverged(f"the training loss is {loss} at iteration {self.step + 1} "
                                   f"(epoch {self.epoch + 1}, lr {sched.get_last_lr()[0]:.4g})")
                opt.zero_grad()
                model.backward(criterion.backward())
                self.average_gradients()
                opt.step()
                sched.step()
                self.step += 1
                loss_sum += loss * x.shape[0]
                correct += int((logits.argmax(axis=1) == y).sum())
                seen += x.shape[0]
                elapsed = time.perf_counter() - start
                progress.update({"loss": f"{loss_sum / seen:.4f}", "acc": f"{correct / seen:.4f}",
                                 "img/s": f"{seen / elapsed:.0f}"})
        finally:
            batches.close()
            progress.close()
        elapsed = time.perf_counter() - start
        loss_sum, correct, seen = self.world.sum(loss_sum, correct, seen)        # over all ranks (1 rank: as is)
        elapsed, = self.world.max(elapsed)
        return {"train_loss": loss_sum / seen, "train_acc": correct / seen, "epoch_time_s": elapsed,
                "images_per_s": seen / elapsed}

    def evaluate(self, loader: D.DataLoader | None = None) -> dict[str, float]:
        """Mean loss and accuracy on the test set (or ``loader``), in ``eval()`` mode without caches."""
        loader = loader or self.test_loader
        self.model.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        try:
            with no_grad():
                for x, y in loader:
                    logits = self.model(x)
                    loss, _ = cross_entropy_forward(logits, y, self.config.label_smoothing, "sum")
                    loss_sum += float(loss)
                    correct += int((logits.argmax(axis=1) == y).sum())
                    seen += x.shape[0]
        finally:
            self.model.train()
        loss_sum, correct, seen = self.world.sum(loss_sum, correct, seen)        # each rank evaluated its shard
        return {"test_loss": loss_sum / seen, "test_acc": correct / seen}

    def _diverged(self, what: str) -> None:
        kept = (f"the last good checkpoint {self.checkpoint_path} (end of epoch {self.epoch}) is kept"
                if os.path.exists(self.checkpoint_path) else "no checkpoint had been written yet")
        raise TrainingDiverged(f"training stopped: {what}; {kept}. Lower the learning rate (--lr) or add "
                               "warm-up (--warmup-steps) and start again.")

    def _weights_finite(self) -> bool:
        return all(bool(get_array_module(p.data).isfinite(p.data).all()) for p in self.model.parameters())

    # ------------------------------------------------------------------ the loop
    def fit(self, overwrite: bool = False) -> TrainResult:
        """Train until ``epochs`` (or ``max_steps``), evaluating and checkpointing after every epoch.

        A fresh run (not resumed) refuses to replace an existing checkpoint unless ``overwrite``.
        """
        c = self.config
        if self.epoch == 0 and os.path.exists(self.checkpoint_path) and not overwrite:
            raise FileExistsError(f"{self.checkpoint_path} already exists: resume it (--resume {self.out_dir}), "
                                  "choose another --out, or pass --overwrite")
        self.log(f"{c.model} on {c.data}: {len(self.train_set)} train / {len(self.test_set)} test images of shape "
                 f"{tuple(self.train_set.image_shape)}, {self.steps_per_epoch} iterations per epoch, "
                 f"{self.model.num_parameters():,} parameters; writing to {self.out_dir}")
        if self.world.size > 1:                     # every rank starts from rank 0's state
            self.log(f"data-parallel over {self.world.size} MPI ranks: batch {c.batch_size} per rank, global batch "
                     f"{c.batch_size * self.world.size}, {'SyncBatchNorm' if c.sync_bn else 'BatchNorm per rank'}")
            dist.broadcast_module(self.model, self.world)
            dist.broadcast_optimizer(self.optimizer, self.world, scheduler=self.scheduler)
            self.epoch, self.step, self.history = self.world.broadcast_object((self.epoch, self.step, self.history))
        while self.epoch < c.epochs and self.step < self.total_steps:
            lr = self.scheduler.get_last_lr()[0]
            train_stats = self.train_epoch()
            if self.world.size > 1 and not c.sync_bn:   # evaluate and save rank 0's running statistics
                dist.broadcast_module(self.model, self.world)
            start = time.perf_counter()
            test_stats = self.evaluate()
            eval_time = time.perf_counter() - start
            if not (math.isfinite(test_stats["test_loss"]) and self._weights_finite()):
                self._diverged(f"the weights or the test loss became non-finite in epoch {self.epoch + 1}")
            self.epoch += 1
            row = {"epoch": self.epoch, "step": self.step, "lr": lr, **train_stats, **test_stats,
                   "eval_time_s": eval_time}
            self.history.append(row)
            self.save()
            self.log(f"epoch {self.epoch:3d}/{c.epochs}  lr {lr:.4g}  train loss {row['train_loss']:.4f} "
                     f"acc {row['train_acc']:.4f}  test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}  "
                     f"{row['epoch_time_s']:.1f}s ({row['images_per_s']:.0f} img/s)")
        return TrainResult(list(self.history), self.out_dir, self.checkpoint_path)

    # ------------------------------------------------------------------ saving and resuming
    def save(self) -> None:
        """Checkpoint, metrics.csv, metrics.json (each written atomically) and the plot; rank 0 only."""
        if not self.world.is_main:
            return
        os.makedirs(self.out_dir, exist_ok=True)
        save_checkpoint(self.checkpoint_path, self.model, self.optimizer, self.scheduler, model_name=self.config.model,
                        epoch=self.epoch, step=self.step, rng={"seed": self.config.seed, "next_epoch": self.epoch},
                        extra={"config": self.config.to_dict(), "history": self.history,
                               "world_size": self.world.size})
        write_metrics(self.out_dir, self.history, self.config)
        if self.config.plot:
            plot_history(self.history, self.config.plot, title=f"{self.config.model} on {self.config.data}")

    def resume(self, path: str) -> None:
        """Continue from a checkpoint file (or a run folder holding ``checkpoint.npz``).

        The checkpoint's config must equal this one except for ``RESUMABLE_CHANGES``; otherwise
        (or for another model) it is an error and nothing is changed.
        """
        path = os.path.join(path, "checkpoint.npz") if os.path.isdir(path) else path
        meta, _ = read_checkpoint(path)
        saved = meta.get("extra", {}).get("config")
        saved_world = meta.get("extra", {}).get("world_size", 1)
        if saved_world != self.world.size:
            raise ValueError(f"cannot resume {path}: it was written by a run of {saved_world} rank(s), this run has "
                             f"{self.world.size}; resume with mpiexec -n {saved_world} (the global batch and the "
                             "data shards depend on it)")
        if saved is not None:
            defaults = TrainConfig(data="digits").to_dict()       # fields added after the checkpoint was written
            differences = [f"{k}: checkpoint {saved.get(k, defaults[k])!r}, now {v!r}"
                           for k, v in self.config.to_dict().items()
                           if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != v]
            if differences:
                allowed = ", ".join(RESUMABLE_CHANGES)
                raise ValueError(f"cannot resume {path}: the run's settings differ from the checkpoint's (only "
                                 f"{allowed} may change):\n  " + "\n  ".join(differences))
        meta = load_checkpoint(path, self.model, self.optimizer, self.scheduler, model_name=self.config.model)
        self.epoch, self.step = meta["epoch"], meta["step"]
        self.history = list(meta.get("extra", {}).get("history", []))
        self.checkpoint_path = os.path.join(self.out_dir, "checkpoint.npz")


def write_metrics(out_dir: str, history: list[dict[str, Any]], config: TrainConfig) -> None:
    """``metrics.csv`` (one row per epoch) and ``metrics.json`` (config, history, summary), atomically."""
    if not history:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    summary = {"config": config.to_dict(), "history": history,
               "final_test_acc": history[-1]["test_acc"], "best_test_acc": max(r["test_acc"] for r in history),
               "train_time_s": sum(r["epoch_time_s"] + r["eval_time_s"] for r in history)}
    for name, text in (("metrics.csv", buffer.getvalue()), ("metrics.json", json.dumps(summary, indent=1))):
        _atomic_write_text(os.path.join(out_dir, name), text)


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def plot_history(history: list[dict[str, Any]], path: str, title: str = "") -> None:
    """Loss and accuracy curves (train and test) per epoch, saved to ``path`` (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib: pip install 'npresnet[plot]'") from exc
    epochs = [r["epoch"] for r in history]
    figure, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in history], label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log", title="loss")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in history], label="train")
    ax_acc.plot(epochs, [100 * r["test_acc"] for r in history], label="test")
    best = max(history, key=lambda r: r["test_acc"])
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)",
               title=f"accuracy (final test {100 * history[-1]['test_acc']:.2f}%, best {100 * best['test_acc']:.2f}%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.{os.getpid()}.tmp{ext or '.png'}"
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    os.replace(tmp, path)


def train(config: TrainConfig, *, datasets: tuple[Any, Any] | None = None, model: Module | None = None,
          resume: str | None = None, overwrite: bool = False, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train as ``config`` says (see ``TrainConfig``); ``resume`` continues from a checkpoint or run folder."""
    trainer = Trainer(config, datasets=datasets, model=model, log=log)
    if resume is not None:
        trainer.resume(resume)
    return trainer.fit(overwrite=overwrite)


# ---------------------------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m npresnet.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    S = argparse.SUPPRESS              # unset options stay unset, so presets and checkpoints can fill them
    p.add_argument("--preset", choices=sorted(PRESETS), default=S, help="a recipe; explicit options override it")
    p.add_argument("--model", default=S, help="a model of npresnet.models (default resnet20)")
    p.add_argument("--data", choices=["digits", "cifar10", "imagefolder"], default=S, help="default digits")
    p.add_argument("--data-root", dest="data_root", default=S, help="folder of cifar10's .bin files / imagefolder")
    p.add_argument("--epochs", type=int, default=S, help="default 30")
    p.add_argument("--batch", dest="batch_size", type=int, default=S, help="default 128")
    p.add_argument("--eval-batch", dest="eval_batch_size", type=int, default=S, help="default 500")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default=S, help="default sgd")
    p.add_argument("--lr", type=float, default=S, help="peak learning rate (default 0.1)")
    p.add_argument("--momentum", type=float, default=S, help="default 0.9")
    p.add_argument("--nesterov", action="store_true", default=S)
    p.add_argument("--betas", type=float, nargs=2, default=S, help="Adam betas (default 0.9 0.999)")
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=S, help="default 5e-4")
    p.add_argument("--no-decay-bn-bias", dest="decay_bn_and_bias", action="store_false", default=S,
                   help="no weight decay on BatchNorm parameters and biases")
    p.add_argument("--schedule", choices=["cosine", "multistep", "constant"], default=S, help="default cosine")
    p.add_argument("--milestones", type=float, nargs="+", default=S, help="multistep: epochs where lr *= gamma")
    p.add_argument("--milestone-steps", dest="milestone_steps", type=int, nargs="+", default=S,
                   help="multistep: iterations where lr *= gamma (overrides --milestones)")
    p.add_argument("--gamma", type=float, default=S, help="default 0.1")
    p.add_argument("--warmup-steps", dest="warmup_steps", type=int, default=S, help="default 0")
    p.add_argument("--warmup", choices=["linear", "constant"], default=S, help="default linear")
    p.add_argument("--warmup-factor", dest="warmup_factor", type=float, default=S, help="default 0.1")
    p.add_argument("--max-steps", dest="max_steps", type=int, default=S, help="stop after this many iterations")
    p.add_argument("--label-smoothing", dest="label_smoothing", type=float, default=S)
    p.add_argument("--no-augment", dest="augment", action="store_false", default=S)
    p.add_argument("--normalize", choices=["channel", "pixel-mean", "none"], default=S, help="default channel")
    p.add_argument("--seed", type=int, default=S, help="default 0")
    p.add_argument("--dtype", choices=["float32", "float64"], default=S)
    p.add_argument("--backend", choices=["numpy", "cupy"], default=S)
    p.add_argument("--train-limit", dest="train_limit", type=int, default=S, help="use the first N train images")
    p.add_argument("--test-limit", dest="test_limit", type=int, default=S, help="use the first N test images")
    p.add_argument("--prefetch", type=int, default=S, help="batches prepared ahead in a thread (default 1)")
    p.add_argument("--out", dest="out_dir", default=S, help="run folder (default runs/<model>-<data>)")
    p.add_argument("--progress", choices=["auto", "tqdm", "plain", "none"], default=S)
    p.add_argument("--plot", default=S, help="write loss/accuracy curves to this .png after every epoch")
    p.add_argument("--distributed", action="store_true", default=S,
                   help="data-parallel over MPI: mpiexec -n R python -m npresnet.train --distributed ... "
                        "(--batch is per rank; needs pip install 'npresnet[mpi]')")
    p.add_argument("--sync-bn", dest="sync_bn", action="store_true", default=S,
                   help="with --distributed: BatchNorm statistics over the global batch (SyncBatchNorm)")
    p.add_argument("--dist-timeout", dest="dist_timeout", type=float, default=S,
                   help="seconds a collective may wait for the other ranks before the job is aborted (default 300)")
    p.add_argument("--resume", nargs="?", const="", default=None,
                   help="continue from a checkpoint file or run folder (default: the --out folder)")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if the run folder has a checkpoint")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS/torch threads of this process (Numba stays at 1; see npresnet.runtime); "
                        "default: leave the libraries' settings alone")
    return p


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, str | None, bool]:
    """(config, resume path or None, overwrite) from command-line arguments."""
    args = vars(_parser().parse_args(argv))
    resume, overwrite = args.pop("resume"), args.pop("overwrite")
    args.pop("threads", None)                       # a property of this process, not of the run (see main)
    values: dict[str, Any] = {}
    preset = args.pop("preset", None)
    if resume is not None:
        path = resume or args.get("out_dir")
        if not path:
            raise ValueError("--resume needs a checkpoint file or run folder: --resume PATH (or --out PATH)")
        checkpoint = os.path.join(path, "checkpoint.npz") if os.path.isdir(path) else path
        meta, _ = read_checkpoint(checkpoint)
        values.update(meta.get("extra", {}).get("config", {}))
        values["out_dir"] = os.path.dirname(os.path.abspath(checkpoint))     # keep writing where it was
        resume = checkpoint
    elif preset is not None:
        values.update(PRESETS[preset])
    values.update(args)
    return TrainConfig.from_dict(values), resume, overwrite


def main(argv: list[str] | None = None) -> int:
    try:
        config, resume, overwrite = config_from_args(argv)
        threads = _parser().parse_args(argv).threads
        if threads is not None:
            runtime.set_num_threads(threads)
        runtime.tune_allocator()        # keep freed activation memory for the next step (npresnet.runtime)
        result = train(config, resume=resume, overwrite=overwrite)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _stop_other_ranks(2)
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _stop_other_ranks(1)
    except BaseException:
        _stop_other_ranks(3, traceback=True)          # returns only without a multi-rank MPI world
        raise
    if not config.distributed or dist.current_world() is None or dist.current_world().is_main:
        print(f"done: final test accuracy {100 * result.final_test_acc:.2f}% (best {100 * result.best_test_acc:.2f}%), "
              f"{result.wall_time_s:.0f}s; checkpoint {result.checkpoint}")
    return 0


def _stop_other_ranks(code: int, traceback: bool = False) -> int:
    """After an error on this rank of a multi-rank MPI job, end every rank now (``MPI_Abort``) instead of
    leaving the others waiting in a collective; otherwise return ``code``."""
    world = dist.current_world()
    if world is not None and world.size > 1:
        if traceback:
            import traceback as tb
            tb.print_exc()
        world.abort(f"stopping all {world.size} ranks after the error above on rank {world.rank}", code=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
