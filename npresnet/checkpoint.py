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

Writing is atomic: a temporary file in the destination's folder is written, flushed to disk
(``fsync``) and renamed over the destination (``os.replace``), so a crash leaves either the old
checkpoint or the new one, never a torn file. Loading checks everything (model name, keys,
shapes, optimizer groups, schedule type) *before* changing anything: a checkpoint of another
model is an error that leaves the model, optimizer and schedule untouched.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import numpy as np

from .backend import to_numpy
from .nn.dropout import Dropout
from .nn.module import Module
from .optim import Optimizer
from .schedules import LRScheduler

__all__ = ["CheckpointError", "atomic_savez", "load_checkpoint", "read_checkpoint", "save_checkpoint"]

FORMAT = "npresnet-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the given model/optimizer/schedule (nothing was changed)."""


def atomic_savez(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez(path, **arrays)`` via a temporary file, ``fsync`` and ``os.replace``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp_path = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp_path, "xb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
    try:                                   # make the rename itself durable (POSIX)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _module_rng_states(model: Module) -> dict[str, Any]:
    """The NumPy random-generator state of every ``Dropout`` in ``model``, keyed ``"name:numpy"``."""
    states = {}
    for name, module in model.named_modules():
        if isinstance(module, Dropout):
            for backend, state in module.rng_state().items():
                states[f"{name}:{backend}"] = state
    return states


def _restore_module_rng_states(model: Module, states: dict[str, Any]) -> None:
    modules = dict(model.named_modules())
    per_module: dict[str, dict[str, Any]] = {}
    for key, state in states.items():
        name, backend = key.rsplit(":", 1)
        per_module.setdefault(name, {})[backend] = state
    for name, module_states in per_module.items():
        module = modules.get(name)
        if isinstance(module, Dropout):
            module.load_rng_state(module_states)


def save_checkpoint(path: str | os.PathLike, model: Module, optimizer: Optimizer | None = None,
                    scheduler: LRScheduler | None = None, *, model_name: str | None = None, epoch: int = 0,
                    step: int = 0, rng: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> None:
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
        optimizer_meta = {"type": type(optimizer).__name__, "param_groups": state_dict["param_groups"],
                          "scalars": scalars}
    meta = {
        "format": FORMAT, "version": VERSION,
        "model": {"name": model_name or type(model).__name__, "class": type(model).__name__},
        "optimizer": optimizer_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch), "step": int(step),
        "rng": {**(rng or {}), "modules": _module_rng_states(model)},
        "extra": extra or {},
    }
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_savez(path, arrays)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) of a checkpoint file, without loading it into anything."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"{path} is not a readable .npz checkpoint ({exc})") from exc
    if "meta" not in arrays:
        raise CheckpointError(f"{path} has no 'meta' entry: not an npresnet checkpoint (a weights file from "
                              "npresnet.save? load it with npresnet.io.load)")
    meta = json.loads(str(arrays.pop("meta")[()]))
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta['version']} is newer than this npresnet reads "
                              f"({VERSION})")
    return meta, arrays


def _check_model(path: str, meta: dict[str, Any], model_arrays: dict[str, np.ndarray], model: Module,
                 model_name: str | None) -> None:
    saved_name = meta["model"]["name"]
    if model_name is not None and saved_name != model_name:
        raise CheckpointError(f"{path} holds a {saved_name!r} model, not {model_name!r}; nothing was loaded")
    current = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = [k for k in current if k not in model_arrays and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in model_arrays if k not in current]
    wrong = [f"{k}: model {current[k]}, checkpoint {tuple(model_arrays[k].shape)}"
             for k in current if k in model_arrays and tuple(model_arrays[k].shape) != current[k]]
    if missing or unexpected or wrong:
        problems = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                shown = "; ".join(items[:5]) + (f"; ... ({len(items)} in all)" if len(items) > 5 else "")
                problems.append(f"{label}: {shown}")
        raise CheckpointError(f"{path} was written for a different model ({saved_name!r}, {meta['model']['class']}) "
                              f"than {type(model).__name__}; nothing was loaded.\n  " + "\n  ".join(problems))


def load_checkpoint(path: str | os.PathLike, model: Module, optimizer: Optimizer | None = None,
                    scheduler: LRScheduler | None = None, *, model_name: str | None = None) -> dict[str, Any]:
    """Load a checkpoint into ``model`` (and ``optimizer``, ``scheduler``); returns its meta dict.

    Everything is validated first; on any mismatch a ``CheckpointError`` is raised and nothing is
    changed. Build the schedule before loading (as with torch), so the loaded lr wins.
    """
    path = os.fspath(path)
    meta, arrays = read_checkpoint(path)
    model_arrays = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    _check_model(path, meta, model_arrays, model, model_name)

    optimizer_state = None
    if optimizer is not None:
        saved = meta.get("optimizer")
        if saved is None:
            raise CheckpointError(f"{path} holds no optimizer state; nothing was loaded")
        if saved["type"] != type(optimizer).__name__:
            raise CheckpointError(f"{path} holds {saved['type']} state, not {type(optimizer).__name__}; "
                                  "nothing was loaded")
        state: dict[int, dict[str, Any]] = {}
        for key, value in arrays.items():
            if key.startswith("optimizer/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = value
        for index, entries in saved["scalars"].items():
            state.setdefault(int(index), {}).update(entries)
        optimizer_state = {"state": state, "param_groups": saved["param_groups"]}
    if scheduler is not None:
        saved = meta.get("scheduler")
        if saved is None or saved.get("type") != type(scheduler).__name__:
            kind = None if saved is None else saved.get("type")
            raise CheckpointError(f"{path} holds schedule state of type {kind!r}, not {type(scheduler).__name__}; "
                                  "nothing was loaded")

    if optimizer_state is not None:
        try:
            optimizer.load_state_dict(optimizer_state)       # validates fully before changing anything
        except ValueError as exc:
            raise CheckpointError(f"{path}: optimizer state does not fit this optimizer: {exc}; "
                                  "nothing was loaded") from exc
    model.load_state_dict(model_arrays)                      # cannot fail now: keys and shapes checked
    if scheduler is not None:
        scheduler.load_state_dict(meta["scheduler"])
    _restore_module_rng_states(model, meta.get("rng", {}).get("modules", {}))
    return meta
