"""The training loop: ``Trainer`` (one run's model, data, optimizer and schedule) and ``train()``.

One epoch: shuffle (seeded), augment, forward, loss, backward, ``optimizer.step()``,
``scheduler.step()`` (the schedule advances every *iteration*), then evaluate on the test set
(``eval()`` mode, no caches), append a row to the history, write ``checkpoint.npz`` atomically,
then the metrics files and the plot (``npresnet.training.records``).

The optimizer and the schedule come from the config (``recipe``). Reproducibility: the model's
initial weights come from ``seed``; the data order and augmentation of epoch e from (seed, e) (see
``npresnet.data.loader``). The checkpoint holds weights, buffers, optimizer state, schedule state,
epoch, step and history, so ``resume`` continues exactly where it stopped (after the checks of
``npresnet.training.resume``): two epochs straight and one + resume + one give identical weights.

A non-finite loss (or weights) stops training with ``TrainingDiverged``; the last good
checkpoint (end of the previous epoch) and the metrics files are left as they were.

Safety (``train()``): the run folder is locked (``lock``: a second run with the same folder stops
at once); MPI ranks must agree on every setting (``agreement``); a stop request (``interrupts``:
SIGINT/SIGTERM under the command line) is honoured between steps and writes, raising
``TrainingInterrupted``, which names the intact checkpoint and the ``--resume`` command. The
metrics files and the plot are derived from the checkpoint's history: ``resume`` rewrites them, so
a run killed between the checkpoint and the metrics is repaired by resuming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shlex
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import data as D
from .. import distributed as dist
from ..atomic_write import remove_stale_temporaries
from ..backend import get_array_module
from ..checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from ..engine import autotune
from ..functional.loss import cross_entropy_forward
from ..grad_mode import no_grad
from ..nn import CrossEntropyLoss, Module
from .agreement import check_ranks_agree
from .config import TrainConfig
from .datasets import build_transforms, load_datasets
from .interrupts import StopRequest, TrainingInterrupted
from .lock import RunFolderLock
from .progress import make_progress
from .recipe import build_optimizer, build_scheduler
from .records import plot_history, write_metrics
from .resume import check_resumable, engine_differences, engine_record, record_paths, recorded_engine

__all__ = ["TrainResult", "Trainer", "TrainingDiverged", "train"]


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


class Trainer:
    """Holds the model, data, optimizer and schedule of one run; ``fit()`` trains it.

    ``datasets`` (a (train, test) pair) and ``model`` replace the ones ``config`` names (for custom
    data or networks); ``log`` receives one line per epoch. ``world`` (``npresnet.distributed``)
    overrides the MPI world that ``config.distributed`` would initialise. ``stop`` is checked
    after every step, evaluation batch and save; once it records a signal, the run raises
    ``TrainingInterrupted`` (see ``npresnet.training.interrupts``).
    """

    def __init__(
        self,
        config: TrainConfig,
        datasets: tuple[Any, Any] | None = None,
        model: Module | None = None,
        log: Callable[[str], None] | None = None,
        world: dist.World | None = None,
        stop: StopRequest | None = None,
    ) -> None:
        self.config = config
        self.stop = stop or StopRequest()
        self.world = world or (
            dist.init_distributed(config.dist_timeout) if config.distributed else dist.SINGLE_PROCESS
        )
        self.log = log or (lambda line: print(line, flush=True))
        if not self.world.is_main:  # only rank 0 prints
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
        self.train_loader = dist.data_loader(
            self.world,
            train_set,
            config.batch_size,
            train=True,
            shuffle=True,
            seed=config.seed,
            transform=train_transform,
            prefetch=config.prefetch,
            backend=config.backend,
            dtype=dtype,
        )
        self.test_loader = dist.data_loader(
            self.world,
            test_set,
            config.eval_batch_size,
            train=False,
            transform=test_transform,
            prefetch=config.prefetch,
            backend=config.backend,
            dtype=dtype,
        )

        if model is None:
            from ..models import get_model

            model = get_model(config.model, num_classes=train_set.num_classes, seed=config.seed)
        self.model = model.to(dtype).to(config.backend)
        if config.sync_bn:
            self.model = dist.convert_sync_batchnorm(self.model, self.world)
        self.average_gradients = dist.GradientAverager(self.model.parameters(), self.world)  # no-op for 1 rank
        self.criterion = CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.total_steps, self.steps_per_epoch)
        self.epoch, self.step = 0, 0  # completed epochs and iterations
        self.history: list[dict[str, Any]] = []
        self.out_dir = config.run_dir
        self.checkpoint_path = os.path.join(self.out_dir, "checkpoint.npz")

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self) -> dict[str, float]:
        """One pass over the training set (or up to ``total_steps``); returns loss, accuracy, speed."""
        model, criterion, opt, sched = self.model, self.criterion, self.optimizer, self.scheduler
        model.train()
        self.train_loader.set_epoch(self.epoch)
        n_batches = min(self.steps_per_epoch, self.total_steps - self.step)
        progress = make_progress(
            self.config.progress if self.world.is_main else "none",
            n_batches,
            f"epoch {self.epoch + 1}/{self.config.epochs}",
        )
        loss_sum, correct, seen = 0.0, 0, 0
        start = time.perf_counter()
        batches = iter(self.train_loader)
        agreement = contextlib.ExitStack()
        if self.world.size > 1:  # equal shards: every rank meets the same shapes, and takes rank 0's choices
            agreement.enter_context(
                autotune.agreeing(
                    lambda winner: self.world.broadcast_object(winner, what="an autotune choice"), self.world.is_main
                )
            )
        try:
            for _ in range(n_batches):
                x, y = next(batches)
                if x.shape[0] != y.shape[0]:
                    raise ValueError(f"batch of {x.shape[0]} images but {y.shape[0]} labels")
                logits = model(x)
                loss = float(criterion(logits, y))
                if not math.isfinite(loss):
                    self._diverged(
                        f"the training loss is {loss} at iteration {self.step + 1} "
                        f"(epoch {self.epoch + 1}, lr {sched.get_last_lr()[0]:.4g})"
                    )
                opt.zero_grad()
                model.backward(criterion.backward())
                self.average_gradients()
                opt.step()
                sched.step()
                self.step += 1
                self._check_stop()
                loss_sum += loss * x.shape[0]
                correct += int((logits.argmax(axis=1) == y).sum())
                seen += x.shape[0]
                elapsed = time.perf_counter() - start
                progress.update(
                    {"loss": f"{loss_sum / seen:.4f}", "acc": f"{correct / seen:.4f}", "img/s": f"{seen / elapsed:.0f}"}
                )
        finally:
            agreement.close()
            batches.close()
            progress.close()
        elapsed = time.perf_counter() - start
        loss_sum, correct_sum, seen_sum = self.world.sum(loss_sum, correct, seen)  # over all ranks (1: as is)
        (elapsed,) = self.world.max(elapsed)
        return {
            "train_loss": loss_sum / seen_sum,
            "train_acc": correct_sum / seen_sum,
            "epoch_time_s": elapsed,
            "images_per_s": seen_sum / elapsed,
        }

    def evaluate(self, loader: D.DataLoader | None = None) -> dict[str, float]:
        """Mean loss and accuracy on the test set (or ``loader``), in ``eval()`` mode without caches."""
        loader = loader or self.test_loader
        self.model.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        # Ranks after 0 evaluate unequal shards, whose shapes cannot be agreed on with rank 0 (whose
        # choices alone the checkpoint records): they use the fixed rule, the same bits on resume.
        mode = autotune.set_mode("fixed") if not self.world.is_main else autotune.mode()
        try:
            with no_grad():
                for x, y in loader:
                    logits = self.model(x)
                    loss, _ = cross_entropy_forward(logits, y, self.config.label_smoothing, "sum")
                    loss_sum += float(loss)
                    correct += int((logits.argmax(axis=1) == y).sum())
                    seen += x.shape[0]
                    self._check_stop()
        finally:
            autotune.set_mode(mode)
            self.model.train()
        loss_sum, correct_sum, seen_sum = self.world.sum(loss_sum, correct, seen)  # each rank: its shard
        return {"test_loss": loss_sum / seen_sum, "test_acc": correct_sum / seen_sum}

    def _diverged(self, what: str) -> None:
        kept = (
            f"the last good checkpoint {self.checkpoint_path} (end of epoch {self.epoch}) is kept"
            if os.path.exists(self.checkpoint_path)
            else "no checkpoint had been written yet"
        )
        raise TrainingDiverged(
            f"training stopped: {what}; {kept}. Lower the learning rate (--lr) or add "
            "warm-up (--warmup-steps) and start again."
        )

    def _check_stop(self) -> None:
        """Raise ``TrainingInterrupted`` if a stop was requested: which checkpoint is intact, how to resume."""
        if not self.stop.requested():
            return
        where = f"stopped by {self.stop.name} at iteration {self.step} (epoch {self.epoch + 1} unfinished)"
        if not os.path.exists(self.checkpoint_path):
            raise TrainingInterrupted(
                f"{where}; no checkpoint had been written yet, so there is nothing to resume: start the run again",
                self.stop.signal or 0,
            )
        c = self.config
        command = f"python -m npresnet.train --resume {shlex.quote(self.out_dir)} --epochs {c.epochs}"
        if c.max_steps is not None:
            command += f" --max-steps {c.max_steps}"
        threads = autotune.thread_counts()
        if threads["numba"] == threads["blas"]:  # bit-exact only at the same thread counts (else: replayed)
            command += f" --threads {threads['blas']}"
        if self.world.size > 1:
            command = f"mpiexec -n {self.world.size} {command}"
        raise TrainingInterrupted(
            f"{where}; the checkpoint {self.checkpoint_path} (end of epoch {self.epoch}) is "
            f"intact. Continue with: {command}",
            self.stop.signal or 0,
        )

    def _weights_finite(self) -> bool:
        return all(bool(get_array_module(p.data).isfinite(p.data).all()) for p in self.model.parameters())

    # ------------------------------------------------------------------ the loop
    def fit(self, overwrite: bool = False) -> TrainResult:
        """Train until ``epochs`` (or ``max_steps``), evaluating and checkpointing after every epoch.

        A fresh run (not resumed) refuses to replace an existing checkpoint unless ``overwrite``.
        """
        c = self.config
        if self.epoch == 0 and os.path.exists(self.checkpoint_path) and not overwrite:
            raise FileExistsError(
                f"{self.checkpoint_path} already exists: resume it (--resume {self.out_dir}), "
                "choose another --out, or pass --overwrite"
            )
        self.log(
            f"{c.model} on {c.data}: {len(self.train_set)} train / {len(self.test_set)} test images of shape "
            f"{tuple(self.train_set.image_shape)}, {self.steps_per_epoch} iterations per epoch, "
            f"{self.model.num_parameters():,} parameters; writing to {self.out_dir}"
        )
        if self.world.size > 1:  # every rank starts from rank 0's state
            self.log(
                f"data-parallel over {self.world.size} MPI ranks: batch {c.batch_size} per rank, global batch "
                f"{c.batch_size * self.world.size}, {'SyncBatchNorm' if c.sync_bn else 'BatchNorm per rank'}"
            )
            dist.broadcast_module(self.model, self.world)
            dist.broadcast_optimizer(self.optimizer, self.world, scheduler=self.scheduler)
            self.epoch, self.step, self.history = self.world.broadcast_object((self.epoch, self.step, self.history))
        while self.epoch < c.epochs and self.step < self.total_steps:
            lr = self.scheduler.get_last_lr()[0]
            train_stats = self.train_epoch()
            if self.world.size > 1 and not c.sync_bn:  # evaluate and save rank 0's running statistics
                dist.broadcast_module(self.model, self.world)
            start = time.perf_counter()
            test_stats = self.evaluate()
            eval_time = time.perf_counter() - start
            if not (math.isfinite(test_stats["test_loss"]) and self._weights_finite()):
                self._diverged(f"the weights or the test loss became non-finite in epoch {self.epoch + 1}")
            self.epoch += 1
            row = {
                "epoch": self.epoch,
                "step": self.step,
                "lr": lr,
                **train_stats,
                **test_stats,
                "eval_time_s": eval_time,
            }
            self.history.append(row)
            self.save()
            self.log(
                f"epoch {self.epoch:3d}/{c.epochs}  lr {lr:.4g}  train loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.4f}  test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}  "
                f"{row['epoch_time_s']:.1f}s ({row['images_per_s']:.0f} img/s)"
            )
            self._check_stop()
        return TrainResult(list(self.history), self.out_dir, self.checkpoint_path)

    # ------------------------------------------------------------------ saving and resuming
    def save(self) -> None:
        """Checkpoint, metrics.csv, metrics.json (each written atomically) and the plot; rank 0 only."""
        if not self.world.is_main:
            return
        os.makedirs(self.out_dir, exist_ok=True)
        save_checkpoint(
            self.checkpoint_path,
            self.model,
            self.optimizer,
            self.scheduler,
            model_name=self.config.model,
            epoch=self.epoch,
            step=self.step,
            rng={"seed": self.config.seed, "next_epoch": self.epoch},
            extra={
                "config": self.config.to_dict(),
                "history": self.history,
                "world_size": self.world.size,
                "engine": engine_record(),  # threads, BLAS kernel, algorithm choices: replayed on resume
            },
        )
        self.write_records()

    def write_records(self, config: TrainConfig | None = None) -> None:
        """metrics.csv, metrics.json and the plot from ``history`` and ``config`` (default: this run's); rank 0 only."""
        config = config or self.config
        if not self.world.is_main or not self.history:
            return
        write_metrics(self.out_dir, self.history, config)
        if config.plot:
            plot_history(self.history, config.plot, title=f"{config.model} on {config.data}")

    def resume(self, path: str) -> None:
        """Continue from a checkpoint file (or a run folder holding ``checkpoint.npz``).

        The checkpoint's config must equal this one except for ``RESUMABLE_CHANGES``; otherwise
        (or for another model) it is an error and nothing is changed. Then the metrics files and
        the plot are rewritten from the checkpoint's history (repairing a run killed between the
        checkpoint and the metrics), and temporary files of killed writers are removed.

        The checkpoint's algorithm choices are replayed (``npresnet.engine.autotune.replay``); if this
        process runs at other thread counts, another BLAS kernel or the other autotune mode, one
        line says so: its bits will differ from those of the uninterrupted run.
        """
        path = os.path.join(path, "checkpoint.npz") if os.path.isdir(path) else path
        meta, _ = read_checkpoint(path)
        saved, history = check_resumable(path, meta, self.config, self.world.size)
        engine = recorded_engine(meta)
        if engine is not None:
            autotune.replay(engine.get("choices", {}))
            differences = engine_differences(engine)
            if differences:
                self.log(
                    f"note: {path} was trained differently ({'; '.join(differences)}): the bits of this "
                    "run will differ from those of the uninterrupted run"
                )
        meta = load_checkpoint(path, self.model, self.optimizer, self.scheduler, model_name=self.config.model)
        self.epoch, self.step = meta["epoch"], meta["step"]
        self.history = list(history)
        self.checkpoint_path = os.path.join(self.out_dir, "checkpoint.npz")
        if self.world.is_main:  # the records as the checkpoint's own run wrote them
            for record in record_paths(self.out_dir, self.config):
                remove_stale_temporaries(record)
            self.write_records(TrainConfig.from_dict(saved) if saved is not None else None)


def train(
    config: TrainConfig,
    *,
    datasets: tuple[Any, Any] | None = None,
    model: Module | None = None,
    resume: str | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    stop: StopRequest | None = None,
) -> TrainResult:
    """Train as ``config`` says (see ``TrainConfig``); ``resume`` continues from a checkpoint or run folder.

    Before anything else: with several MPI ranks, every rank's settings must agree
    (``check_ranks_agree``); then the run folder is locked (rank 0, the one that writes) for the
    whole run, so a second run with the same folder fails at once with ``RunFolderBusy``.
    """
    world = dist.init_distributed(config.dist_timeout) if config.distributed else dist.SINGLE_PROCESS
    check_ranks_agree(world, config, resume=resume is not None, overwrite=overwrite)
    with RunFolderLock(config.run_dir) if world.is_main else contextlib.nullcontext():
        trainer = Trainer(config, datasets=datasets, model=model, log=log, world=world, stop=stop)
        if resume is not None:
            trainer.resume(resume)
        return trainer.fit(overwrite=overwrite)
