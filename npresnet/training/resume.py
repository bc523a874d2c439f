"""Resuming a run: the checks that a checkpoint continues *this* run, made before anything is loaded.

A checkpoint (``Trainer.save``) holds the weights, buffers, optimizer and schedule state, the epoch,
the step, the run's config, its history and its number of MPI ranks. ``Trainer.resume`` continues it
only when:

* the number of ranks is the same (the global batch and the data shards depend on it);
* every setting equals the checkpoint's, except ``RESUMABLE_CHANGES`` (the run's length, output,
  display, prefetching, evaluation batch: none changes a training step); a setting added after the
  checkpoint was written counts as its default;
* the history holds one row of numbers per finished epoch (a damaged file is refused, not trained on).

Then it loads the state and rewrites the records (``record_paths``) from the checkpoint's history.

The engine's choices are part of the run (``engine_record``, saved in every checkpoint): the
autotune mode and every measured algorithm choice, the thread counts (Numba's and BLAS's) and the
BLAS kernel NumPy's BLAS runs (threadpoolctl's "architecture"). A resume replays the algorithm
choices (``npresnet.engine.autotune.replay``), so a measured run continues with the algorithms
it measured; the command line also replays the thread counts when ``--threads`` is not given.
Whatever still differs (other threads, another BLAS kernel, the other autotune mode) is named by
``engine_differences``, in the one line the resume prints: the bits will differ from those of the
uninterrupted run.
"""

from __future__ import annotations

import os
from typing import Any

from ..checkpoint import CheckpointError
from ..engine import autotune
from ..state_checks import setting_problem
from .config import RESUMABLE_CHANGES, TrainConfig


def check_resumable(
    path: str, meta: dict[str, Any], config: TrainConfig, world_size: int
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the checkpoint's config as a dict or None, its history), or a ``ValueError`` / ``CheckpointError``
    saying why the checkpoint at ``path`` (its ``meta``) cannot continue a run of ``config`` on
    ``world_size`` ranks."""
    saved = meta.get("extra", {}).get("config")
    saved_world = meta.get("extra", {}).get("world_size", 1)
    if saved_world != world_size:
        raise ValueError(
            f"cannot resume {path}: it was written by a run of {saved_world} rank(s), this run has "
            f"{world_size}; resume with mpiexec -n {saved_world} (the global batch and the "
            "data shards depend on it)"
        )
    if saved is not None:
        defaults = TrainConfig(data="digits").to_dict()  # fields added after the checkpoint was written
        differences = [
            f"{k}: checkpoint {saved.get(k, defaults[k])!r}, now {v!r}"
            for k, v in config.to_dict().items()
            if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != v
        ]
        if differences:
            allowed = ", ".join(RESUMABLE_CHANGES)
            raise ValueError(
                f"cannot resume {path}: the run's settings differ from the checkpoint's (only "
                f"{allowed} may change): " + "; ".join(differences)
            )
    history = meta["extra"].get("history", [])
    rows_ok = isinstance(history, list) and all(
        isinstance(row, dict) and not any(setting_problem(k, v, "number") for k, v in row.items()) for row in history
    )
    if not rows_ok or len(history) != meta["epoch"]:
        raise CheckpointError(
            f"{path}: the saved history must hold one row of numbers per finished epoch "
            f"({meta['epoch']}), got {history!r:.80}"
        )
    return saved, history


def record_paths(out_dir: str, config: TrainConfig) -> list[str]:
    """The files a run writes: the checkpoint, metrics.csv, metrics.json and the plot (if any)."""
    paths = [os.path.join(out_dir, n) for n in ("checkpoint.npz", "metrics.csv", "metrics.json")]
    return paths + ([config.plot] if config.plot else [])


def blas_kernels() -> list[str]:
    """NumPy's BLAS as threadpoolctl reports it: "<library> <version> <kernel>" per library loaded
    from NumPy's own folder (torch's, loaded or not, does not count); [] without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    found = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    numpy_own = [i for i in found if "numpy" in str(i.get("filepath", "")).lower()]
    return sorted(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}" for i in numpy_own or found)


def engine_record() -> dict[str, Any]:
    """What decides the bits of a step besides the weights and data: saved in every checkpoint."""
    return {
        "autotune": autotune.mode(),
        "threads": autotune.thread_counts(),
        "blas": blas_kernels(),
        "choices": autotune.choices(),
    }


def engine_differences(recorded: dict[str, Any]) -> list[str]:
    """What this process does differently from the ``recorded`` engine (``engine_record``), in words."""
    now = engine_record()
    differences = []
    if recorded.get("autotune") != now["autotune"]:
        differences.append(f"autotune {recorded.get('autotune')} then, {now['autotune']} now")
    then_threads = recorded.get("threads") or {}
    if then_threads != now["threads"]:
        shown = ", ".join(f"{k} {then_threads.get(k)} -> {v}" for k, v in now["threads"].items())
        differences.append(f"threads {shown}")
    if recorded.get("blas") and recorded.get("blas") != now["blas"]:
        differences.append(f"BLAS {'; '.join(recorded['blas'])} then, {'; '.join(now['blas']) or 'unknown'} now")
    return differences


def recorded_engine(meta: dict[str, Any]) -> dict[str, Any] | None:
    """A checkpoint's engine record (``engine_record``), or None (written before it was recorded)."""
    engine = meta.get("extra", {}).get("engine")
    if engine is None:
        return None
    if not (isinstance(engine, dict) and isinstance(engine.get("choices", {}), dict)):
        raise CheckpointError(f"the saved engine record must be an object with a 'choices' object, got {engine!r:.80}")
    return engine
