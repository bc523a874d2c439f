"""What defines a run: ``TrainConfig``, the recipes in ``PRESETS``, and what may change on resume.

Each field declares its command-line option once, in its metadata (``option(...)``): the flag, the
allowed choices, and the help text. ``TrainConfig`` validates the choices from there, and
``npresnet.training.cli`` builds the whole parser from it, so a field cannot be added, renamed or
restricted in one place and forgotten in another.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any

import numpy as np

from ..distributed import DEFAULT_TIMEOUT_S

__all__ = ["PRESETS", "RESUMABLE_CHANGES", "TrainConfig", "option"]


def option(
    help: str, *, flag: str | None = None, choices: tuple[str, ...] | None = None, default_text: str | None = None
) -> dict[str, Any]:
    """The metadata of a ``TrainConfig`` field: how it appears on the command line.

    ``flag`` defaults to ``--`` plus the field name with ``-`` for ``_`` (a ``True`` boolean gets a
    ``--no-...`` flag that turns it off); ``choices`` are the allowed values (checked by
    ``TrainConfig`` too); ``default_text`` replaces the default shown in ``--help``.
    """
    return {"help": help, "flag": flag, "choices": choices, "default_text": default_text}


def _field(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=option(help, **kwargs))
    return dataclasses.field(default=default, metadata=option(help, **kwargs))


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run. Steps are optimizer iterations; epochs are passes over the data."""

    model: str = _field("resnet20", "a model of npresnet.models (get_model)")
    data: str = _field("digits", "the dataset", choices=("digits", "cifar10", "imagefolder"))
    data_root: str | None = _field(
        None,
        "cifar10: the folder of the .bin files; imagefolder: the folder holding "
        "train/ and test/ (nothing is downloaded)",
    )
    epochs: int = _field(30, "passes over the training set")
    batch_size: int = _field(128, "images per iteration (per rank with --distributed)", flag="--batch")
    eval_batch_size: int = _field(500, "images per evaluation batch", flag="--eval-batch")
    optimizer: str = _field("sgd", "the optimizer", choices=("sgd", "adam", "adamw"))
    lr: float = _field(0.1, "peak learning rate")
    momentum: float = _field(0.9, "sgd: momentum")
    nesterov: bool = _field(False, "sgd: Nesterov momentum")
    betas: tuple[float, float] = _field((0.9, 0.999), "adam, adamw: the two moment decay rates")
    eps: float = _field(1e-8, "adam, adamw: added to the denominator")
    weight_decay: float = _field(5e-4, "L2 penalty (adamw: decoupled weight decay)")
    decay_bn_and_bias: bool = _field(
        True, "no weight decay on BatchNorm weights/biases and biases", flag="--no-decay-bn-bias"
    )
    schedule: str = _field("cosine", "the learning-rate schedule", choices=("cosine", "multistep", "constant"))
    milestones: list[float] = _field([], "multistep: epochs where lr *= gamma")
    milestone_steps: list[int] | None = _field(None, "multistep: iterations where lr *= gamma (overrides --milestones)")
    gamma: float = _field(0.1, "multistep: the factor at each milestone")
    warmup_steps: int = _field(0, "iterations of warm-up before the schedule")
    warmup: str = _field(
        "linear",
        "warm-up: linear (from warmup-factor * lr up to lr) or constant (warmup-factor * lr)",
        choices=("linear", "constant"),
    )
    warmup_factor: float = _field(0.1, "warm-up: the factor of lr it starts from")
    max_steps: int | None = _field(None, "stop after this many iterations (the paper's 64k)")
    label_smoothing: float = _field(
        0.0, "cross-entropy label smoothing: the target puts this much probability mass spread evenly over all classes"
    )
    augment: bool = _field(True, "no random crop (and flip for natural images)", flag="--no-augment")
    normalize: str = _field(
        "channel",
        "channel (mean/std per channel), pixel-mean (subtract the mean image) or none",
        choices=("channel", "pixel-mean", "none"),
    )
    seed: int = _field(0, "seeds the initial weights, and with the epoch the data order and augmentation")
    dtype: str = _field(
        "float32", "floating-point type of the weights, activations and gradients", choices=("float32", "float64")
    )
    backend: str = _field("numpy", "array library: numpy (CPU) or cupy (CUDA GPU)", choices=("numpy", "cupy"))
    train_limit: int | None = _field(None, "use only the first N training images (quick runs)")
    test_limit: int | None = _field(None, "use only the first N test images")
    prefetch: int = _field(1, "batches prepared ahead by a background thread")
    out_dir: str | None = _field(None, "run folder", flag="--out", default_text="runs/<model>-<data>")
    progress: str = _field(
        "auto",
        "progress display (auto: tqdm if installed, else plain lines)",
        choices=("auto", "tqdm", "plain", "none"),
    )
    plot: str | None = _field(None, "write loss/accuracy curves to this .png after every epoch")
    distributed: bool = _field(
        False,
        "data-parallel over MPI: mpiexec -n R python -m npresnet.train --distributed "
        "... (--batch is per rank; needs pip install 'npresnet[mpi]')",
    )
    sync_bn: bool = _field(False, "with --distributed: BatchNorm statistics over the global batch (SyncBatchNorm)")
    dist_timeout: float = _field(
        DEFAULT_TIMEOUT_S, "seconds a collective may wait for the other ranks before the job is aborted"
    )

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):  # e.g. a checkpoint's saved settings with "lr": "fast"
            if not _has_type(getattr(self, field.name), hints[field.name]):
                raise ValueError(
                    f"{field.name} must be of type {_type_name(hints[field.name])}, got "
                    f"{getattr(self, field.name)!r:.60}"
                )
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.milestones = list(self.milestones)
        for field in dataclasses.fields(self):
            allowed = field.metadata.get("choices")
            if allowed is not None and getattr(self, field.name) not in allowed:
                raise ValueError(f"{field.name} must be one of {allowed}, got {getattr(self, field.name)!r}")
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


def _has_type(value: Any, kind: Any) -> bool:
    """Whether ``value`` fits a field type: ``int``, ``float`` (an int too), ``bool``, ``str``,
    ``list[X]``, ``tuple[X, ...]`` (or a list, as JSON gives it back) and ``X | None``."""
    arguments = typing.get_args(kind)
    if type(None) in arguments:
        return value is None or _has_type(value, next(a for a in arguments if a is not type(None)))
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        return (
            isinstance(value, (list, tuple))
            and (origin is list or len(value) == len(arguments))
            and all(_has_type(v, arguments[0]) for v in value)
        )
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    if kind is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if kind is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    return isinstance(value, kind)


def _type_name(kind: Any) -> str:
    return str(getattr(kind, "__name__", kind)) if typing.get_origin(kind) is None else str(kind).replace("typing.", "")


# Fields that may change when a run is resumed: they do not alter the computation up to the stop.
RESUMABLE_CHANGES = (
    "epochs",
    "max_steps",
    "out_dir",
    "progress",
    "plot",
    "prefetch",
    "eval_batch_size",
    "distributed",
    "dist_timeout",
)  # the number of ranks itself must not change

PRESETS: dict[str, dict[str, Any]] = {
    # He et al. 2015, section 4.2 (docs/figures.md): SGD lr 0.1, momentum 0.9, weight decay 1e-4 on
    # every weight, batch 128, lr / 10 at 32k and 48k iterations, stop at 64k; 4-pixel padding,
    # random 32x32 crop, horizontal flip; per-pixel mean subtraction.
    # 164 epochs x 391 iterations (50,000 / 128) covers the 64k. ResNet-110 adds the paper's warm-up
    # (lr 0.01 for 400 iterations) via --warmup-steps 400 --warmup constant.
    "cifar-paper": dict(
        data="cifar10",
        model="resnet20",
        epochs=164,
        batch_size=128,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=1e-4,
        decay_bn_and_bias=True,
        schedule="multistep",
        milestone_steps=[32000, 48000],
        gamma=0.1,
        max_steps=64000,
        augment=True,
        normalize="pixel-mean",
        label_smoothing=0.0,
    ),
}
