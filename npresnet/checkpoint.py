"""Training checkpoints: model, optimizer, schedule, epoch and RNG state in one ``.npz`` file.

::

    save_checkpoint("run/checkpoint.npz", model, optimizer, scheduler, model_name="resnet20", epoch=3, step=36)
    meta = load_checkpoint("run/checkpoint.npz", model, optimizer, scheduler, model_name="resnet20")
    meta["epoch"], meta["step"], meta["extra"]

File layout (a plain zip of ``.npy`` arrays, loaded with ``allow_pickle=False``)::

    model/<state_dict key>          every parameter and buffer, in its own dtype (bit-exact)
    optimizer/<index>/<name>        optimizer state arrays (momentum_buffer, exp_avg, ...)
    meta                            one JSON string: format, model name, optimizer param_groups and
                                    counters, schedule state, epoch, step, RNG states, ``extra``

Writing is atomic (``npresnet.atomic_write``): a temporary file in the destination's folder is
written, flushed to disk (``fsync``) and renamed over the destination (``os.replace``), so a crash
leaves either the old checkpoint or the new one, never a torn file.

Loading checks everything *before* changing anything: the file (a readable zip, no member
declaring more data than it holds: ``npresnet.state_checks.read_npz``), the meta entry's schema and
types, the model (name, keys, shapes, dtype kinds, finite weights), the optimizer (groups,
hyperparameter types and ranges, float and finite state arrays), the schedule and the RNG states.
Any problem is a one-line ``CheckpointError`` naming the file, and the model, optimizer and
schedule are left exactly as they were.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from .atomic_write import atomic_write
from .backend import to_numpy
from .nn.dropout import Dropout
from .nn.module import CheckedStateDict, Module
from .optim import Optimizer
from .schedules import LRScheduler
from .state_checks import StateError, read_npz, setting_problem

__all__ = ["CheckpointError", "atomic_savez", "load_checkpoint", "read_checkpoint", "save_checkpoint"]

FORMAT = "npresnet-checkpoint"
VERSION = 1


class CheckpointError(StateError):
    """A checkpoint that cannot be read, or loaded into the given model/optimizer/schedule (nothing was changed)."""


def atomic_savez(path: str | os.PathLike, arrays: dict[str, Any]) -> None:
    """``np.savez(path, **arrays)`` atomically (``npresnet.atomic_write``)."""
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def _module_rng_states(model: Module) -> dict[str, Any]:
    """The NumPy random-generator state of every ``Dropout`` in ``model``, keyed ``"name:numpy"``."""
    states = {}
    for name, module in model.named_modules():
        if isinstance(module, Dropout):
            for backend, state in module.rng_state().items():
                states[f"{name}:{backend}"] = state
    return states


def save_checkpoint(
    path: str | os.PathLike,
    model: Module,
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    *,
    model_name: str | None = None,
    epoch: int = 0,
    step: int = 0,
    rng: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write model, optimizer, schedule, counters and RNG states to ``path`` atomically.

    ``rng`` and ``extra`` must be JSON-able (e.g. the loader's seed, the metrics history, the config).
    """
    arrays: dict[str, np.ndarray] = {}
    for key, value in model.state_dict().items():
        arrays[f"model/{key}"] = np.array(to_numpy(value), copy=True)
    optimizer_meta = None
    if optimizer is not None:
        state_dict = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, entries in state_dict["state"].items():
            for name, value in entries.items():
                if value is None:
                    continue
                if isinstance(value, (int, float)):
                    scalars.setdefault(str(index), {})[name] = value
                else:
                    arrays[f"optimizer/{index}/{name}"] = np.array(to_numpy(value), copy=True)
        optimizer_meta = {
            "type": type(optimizer).__name__,
            "param_groups": state_dict["param_groups"],
            "scalars": scalars,
        }
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": model_name or type(model).__name__, "class": type(model).__name__},
        "optimizer": optimizer_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "step": int(step),
        "rng": {**(rng or {}), "modules": _module_rng_states(model)},
        "extra": extra or {},
    }
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_savez(path, arrays)


# The meta entry's schema: each key, the kind of value it holds (npresnet.state_checks.setting_problem),
# and whether it may be null.
_META_SCHEMA = {
    "format": ("str", False),
    "version": ("int", False),
    "model": ("dict", False),
    "optimizer": ("dict", True),
    "scheduler": ("dict", True),
    "epoch": ("int", False),
    "step": ("int", False),
    "rng": ("dict", False),
    "extra": ("dict", False),
}


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) of a checkpoint file, without loading it into anything.

    The file and the meta entry's schema are checked: a corrupt file or a malformed meta is a
    one-line ``CheckpointError`` naming the file (a missing file is a ``FileNotFoundError``).
    """
    path = os.fspath(path)
    try:
        arrays = read_npz(path, "checkpoint")
    except CheckpointError:
        raise
    except StateError as exc:
        raise CheckpointError(str(exc)) from exc
    if "meta" not in arrays:
        raise CheckpointError(
            f"{path} has no 'meta' entry: not an npresnet checkpoint (a weights file from "
            "npresnet.save? load it with npresnet.io.load)"
        )
    raw = arrays.pop("meta")
    if raw.ndim != 0 or raw.dtype.kind != "U":
        raise CheckpointError(f"{path}: meta must be one JSON string, got a {raw.dtype} array of shape {raw.shape}")
    try:
        meta = json.loads(str(raw[()]))
    except ValueError as exc:
        raise CheckpointError(f"{path}: meta is not valid JSON ({exc})") from exc
    _check_meta(path, meta)
    return meta, arrays


def _check_meta(path: str, meta: Any) -> None:
    def fail(problem: str) -> None:
        raise CheckpointError(f"{path}: {problem}")

    if not isinstance(meta, dict):
        fail(f"meta must be a JSON object, got a {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        fail(f"unknown format {meta.get('format')!r}, expected {FORMAT!r}")
    for key, (kind, nullable) in _META_SCHEMA.items():
        if key not in meta:
            fail(f"meta lacks {key!r}")
        problem = None if (nullable and meta[key] is None) else setting_problem(key, meta[key], kind)
        if problem is not None:
            fail(f"meta {problem}")
    if meta["version"] > VERSION:
        fail(f"checkpoint version {meta['version']} is newer than this npresnet reads ({VERSION})")
    if meta["epoch"] < 0 or meta["step"] < 0:
        fail(f"meta epoch and step must be >= 0, got {meta['epoch']} and {meta['step']}")
    for key in ("name", "class"):
        problem = setting_problem(key, meta["model"].get(key), "str")
        if problem is not None:
            fail(f"meta model {problem}")
    optimizer = meta["optimizer"]
    if optimizer is not None:
        for key, kind in (("type", "str"), ("param_groups", "list"), ("scalars", "dict")):
            problem = setting_problem(key, optimizer.get(key), kind)
            if problem is not None:
                fail(f"meta optimizer {problem}")
        for index, entries in optimizer["scalars"].items():
            if not isinstance(entries, dict) or not index.isdigit():
                fail(f"meta optimizer scalars must map parameter indices to objects, got {index!r}: {entries!r:.60}")
    if setting_problem("modules", meta["rng"].get("modules", {}), "dict") is not None:
        fail(f"meta rng modules must be an object, got {meta['rng']['modules']!r:.60}")


def _check_model(
    path: str, meta: dict[str, Any], model_arrays: dict[str, np.ndarray], model: Module, model_name: str | None
) -> CheckedStateDict:
    """The checked, converted model arrays (``.apply()`` installs them), or a ``CheckpointError``."""
    saved_name = meta["model"]["name"]
    if model_name is not None and saved_name != model_name:
        raise CheckpointError(f"{path} holds a {saved_name!r} model, not {model_name!r}; nothing was loaded")
    checked = model.check_state_dict(model_arrays, strict=True)
    if checked.problems:
        shown = "; ".join(p if len(p) <= 300 else p[:300] + " ..." for p in checked.problems)
        raise CheckpointError(
            f"{path} was written for a different model ({saved_name!r}, {meta['model']['class']}) "
            f"than this {type(model).__name__}, or holds bad values; nothing was loaded: {shown}"
        )
    return checked


def _optimizer_state(
    path: str, meta: dict[str, Any], arrays: dict[str, np.ndarray], optimizer: Optimizer
) -> dict[str, Any]:
    saved = meta["optimizer"]
    if saved is None:
        raise CheckpointError(f"{path} holds no optimizer state; nothing was loaded")
    if saved["type"] != type(optimizer).__name__:
        raise CheckpointError(f"{path} holds {saved['type']} state, not {type(optimizer).__name__}; nothing was loaded")
    state: dict[int, dict[str, Any]] = {}
    for key, value in arrays.items():
        if key.startswith("optimizer/"):
            parts = key.split("/", 2)
            if len(parts) != 3 or not parts[1].isdigit():
                raise CheckpointError(f"{path}: unexpected member {key!r} (expected optimizer/<index>/<name>)")
            state.setdefault(int(parts[1]), {})[parts[2]] = value
    for index, entries in saved["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": saved["param_groups"]}


def _checked_rng_states(path: str, model: Module, states: dict[str, Any]) -> list[tuple[Dropout, dict[str, Any]]]:
    """[(Dropout module, its saved generator state)], each state tried on a scratch Dropout first."""
    modules = dict(model.named_modules())
    per_module: dict[str, dict[str, Any]] = {}
    for key, state in states.items():
        name, _, backend = key.rpartition(":")
        per_module.setdefault(name, {})[backend] = state
    checked = []
    for name, module_states in per_module.items():
        module = modules.get(name)
        if isinstance(module, Dropout):
            try:
                Dropout(module.p).load_rng_state(module_states)
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"{path}: the random-generator state of {name!r} is invalid: {exc}") from exc
            checked.append((module, module_states))
    return checked


def load_checkpoint(
    path: str | os.PathLike,
    model: Module,
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    *,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Load a checkpoint into ``model`` (and ``optimizer``, ``scheduler``); returns its meta dict.

    Everything is validated first; on any problem a one-line ``CheckpointError`` naming the file is
    raised and nothing is changed. Build the schedule before loading (as with torch), so the
    loaded lr wins.
    """
    path = os.fspath(path)
    meta, arrays = read_checkpoint(path)
    model_arrays = {k[len("model/") :]: v for k, v in arrays.items() if k.startswith("model/")}
    model_updates = _check_model(path, meta, model_arrays, model, model_name)
    optimizer_update = None
    if optimizer is not None:
        try:
            optimizer_update = optimizer.check_state_dict(_optimizer_state(path, meta, arrays, optimizer))
        except CheckpointError:
            raise
        except StateError as exc:
            raise CheckpointError(
                f"{path}: optimizer state does not fit this optimizer: {exc}; nothing was loaded"
            ) from exc
    if scheduler is not None:
        saved = meta["scheduler"]
        if saved is None or saved.get("type") != type(scheduler).__name__:
            kind = None if saved is None else saved.get("type")
            raise CheckpointError(
                f"{path} holds schedule state of type {kind!r}, not {type(scheduler).__name__}; nothing was loaded"
            )
        try:
            scheduler.check_state_dict(saved)
        except StateError as exc:
            raise CheckpointError(f"{path}: schedule state is invalid: {exc}; nothing was loaded") from exc
    rng_updates = _checked_rng_states(path, model, meta["rng"].get("modules", {}))

    # Everything checked: apply (none of these can fail now).
    if optimizer is not None and optimizer_update is not None:
        optimizer_update.apply()
    model_updates.apply()
    if scheduler is not None:
        scheduler.load_state_dict(meta["scheduler"])
    for module, state in rng_updates:
        module.load_rng_state(state)
    return meta
