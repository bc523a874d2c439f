"""The command line ``python -m npresnet.train``: a parser generated from ``TrainConfig``, and ``main``.

Every ``TrainConfig`` field is one option, built from the field's type, default and metadata
(``npresnet.training.config.option``): ``int``/``float``/``str`` take one value, ``int | None``
and the like too, ``list[...]`` one or more, ``tuple[float, float]`` two, and a boolean is a flag
(``--nesterov`` sets a ``False`` default; ``--no-augment`` clears a ``True`` one). Options left
out stay unset (``argparse.SUPPRESS``), so a preset or a resumed checkpoint can fill them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import Any

from .. import distributed as dist
from ..checkpoint import read_checkpoint
from ..commands import command_parser
from ..engine import autotune, runtime
from .agreement import RanksDisagree
from .config import PRESETS, TrainConfig
from .interrupts import StopRequest, TrainingInterrupted, stop_on_signals
from .lock import RunFolderBusy
from .resume import recorded_engine
from .trainer import TrainingDiverged, train

__all__ = ["build_parser", "config_from_args", "main"]

DESCRIPTION = "Train a ResNet: python -m npresnet.train and the Python API behind it (npresnet.training)."


def _argument(field: dataclasses.Field[Any], kind: Any) -> tuple[str, dict[str, Any]]:
    """(flag, ``add_argument`` keywords) of one ``TrainConfig`` field of type ``kind``."""
    meta = field.metadata
    flag = meta["flag"] or "--" + field.name.replace("_", "-")
    spec: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS}
    arguments = [a for a in typing.get_args(kind) if a is not type(None)]
    if kind is bool:
        spec["action"] = "store_false" if field.default else "store_true"
    elif typing.get_origin(kind) is tuple:  # tuple[float, float]
        spec.update(type=arguments[0], nargs=len(arguments))
    elif typing.get_origin(kind) is list or (arguments and typing.get_origin(arguments[0]) is list):
        item = typing.get_args(kind if typing.get_origin(kind) is list else arguments[0])[0]
        spec.update(type=item, nargs="+")  # list[float], list[int] | None
    else:  # str, int, float, and X | None
        spec["type"] = arguments[0] if arguments else kind
    if meta["choices"] is not None:
        spec["choices"] = list(meta["choices"])
    shown = meta["default_text"]
    if shown is None and kind is not bool and field.default not in (None, dataclasses.MISSING):
        shown = " ".join(map(str, field.default)) if isinstance(field.default, tuple) else str(field.default)
    spec["help"] = meta["help"] + (f" (default: {shown})" if shown is not None else "")
    return flag, spec


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m npresnet.train``: ``--preset``, one option per ``TrainConfig`` field,
    then ``--resume``, ``--overwrite`` and ``--threads`` (properties of this invocation, not of the run)."""
    p = command_parser(
        "train",
        DESCRIPTION + " Each epoch writes checkpoint.npz, metrics.csv and metrics.json to the run folder "
        "(--out; default runs/<model>-<data>, printed at the start).",
        examples=[
            "python -m npresnet.train --model resnet20 --data digits --epochs 30 --lr 0.05 --out runs/digits",
            "python -m npresnet.train --resume runs/digits",
            "python -m npresnet.train --preset cifar-paper --data-root ~/data/cifar-10-batches-bin",
            "mpiexec -n 2 python -m npresnet.train --distributed --data digits --out runs/digits-2ranks",
        ],
        exit_status=[
            "0    done",
            "2    a mistake in the options (the usage line and 'error: ...'), or a problem with a file or the",
            "     run (one line 'error: ...': a bad checkpoint, a busy run folder, ranks that disagree, divergence)",
            "130  stopped by Ctrl-C (SIGINT) after the current step or write; the --resume command is printed",
            "143  stopped by SIGTERM, likewise",
        ],
    )
    p.add_argument(
        "--preset", choices=sorted(PRESETS), default=argparse.SUPPRESS, help="a recipe; explicit options override it"
    )
    kinds = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag, spec = _argument(field, kinds[field.name])
        p.add_argument(flag, **spec)
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="continue from a checkpoint file or run folder (without PATH: the --out folder)",
    )
    p.add_argument("--overwrite", action="store_true", help="start afresh even if the run folder has a checkpoint")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of this process for BLAS, Numba's kernels and torch together (npresnet.engine.runtime); "
        "without it the libraries' defaults stay: all cores, unless OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / "
        "NUMBA_NUM_THREADS say otherwise; on --resume, the checkpoint's thread counts",
    )
    p.add_argument(
        "--autotune",
        choices=["measure", "fixed"],
        default=None,
        help="kernel choice: time the candidates per layer shape (default of a new run), or the fixed rule "
        "(the library's default); on --resume, the checkpoint's, whose measured choices are replayed "
        "(npresnet.engine.autotune)",
    )
    p.add_argument(
        "--no-autotune-cache",
        action="store_true",
        help="measure: time every layer shape in this process, neither reading nor writing the cache "
        "of winners (default: kept per machine in the user's cache directory; NPRESNET_AUTOTUNE_CACHE)",
    )
    return p


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, str | None, bool]:
    """(config, resume path or None, overwrite) from command-line arguments."""
    args = vars(build_parser().parse_args(argv))
    resume, overwrite = args.pop("resume"), args.pop("overwrite")
    for name in ("threads", "autotune", "no_autotune_cache"):  # this process's, not the run's (see main)
        args.pop(name, None)
    values: dict[str, Any] = {}
    preset = args.pop("preset", None)
    if resume is not None:
        path = resume or args.get("out_dir")
        if not path:
            raise ValueError("--resume needs a checkpoint file or run folder: --resume PATH (or --out PATH)")
        checkpoint = os.path.join(path, "checkpoint.npz") if os.path.isdir(path) else path
        meta, _ = read_checkpoint(checkpoint)
        saved = meta["extra"].get("config", {})
        if not isinstance(saved, dict):
            raise ValueError(f"{checkpoint}: the saved run settings must be a JSON object, got {saved!r:.60}")
        try:
            TrainConfig.from_dict(saved)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{checkpoint}: the saved run settings are invalid: {exc}") from exc
        values.update(saved)
        values["out_dir"] = os.path.dirname(os.path.abspath(checkpoint))  # keep writing where it was
        resume = checkpoint
    elif preset is not None:
        values.update(PRESETS[preset])
    values.update(args)
    try:
        return TrainConfig.from_dict(values), resume, overwrite
    except TypeError as exc:  # e.g. a checkpoint whose saved settings have the wrong types
        raise ValueError(f"invalid run settings{f' in {resume}' if resume else ''}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code.

    0: done. 2: a mistake in the options (argparse's usage line and ``error: ...``), or a problem
    with the files or the run (a corrupt checkpoint, a busy run folder, ranks that disagree,
    divergence), printed as one line ``error: ...``.
    130 / 143 (128 + the signal's number): stopped by SIGINT (Ctrl-C) / SIGTERM after the current
    step or write, with the intact checkpoint and the ``--resume`` command printed.

    The autotune mode and cache it sets (``_set_engine``) are restored on return, so a caller in
    the same process (a test, a notebook) keeps its own.
    """
    mode, cache = autotune.mode(), autotune.cache_file()
    try:
        return _main(argv)
    finally:
        autotune.set_mode(mode)
        autotune.set_cache_file(cache)


def _main(argv: list[str] | None) -> int:
    stop = StopRequest()
    with stop_on_signals(stop):
        try:
            parser = build_parser()
            try:
                config, resume, overwrite = config_from_args(argv)
            except ValueError as exc:
                if parser.parse_args(argv).resume is None:  # the options alone are wrong: argparse's format
                    parser.error(str(exc))
                raise  # a checkpoint's problem: one line, below
            options = parser.parse_args(argv)
            _set_engine(options, resume)
            note = runtime.slow_pool_note()  # workqueue on a machine where its hand-off is slow
            if note is not None:
                print(note, file=sys.stderr)
            runtime.tune_allocator()  # keep freed activation memory for the next step (npresnet.engine.runtime)
            result = train(config, resume=resume, overwrite=overwrite, stop=stop)
        except TrainingInterrupted as exc:
            world = dist.current_world()
            if world is None or world.is_main:  # mpiexec passes the signal to every rank: one report
                print(f"{exc}", file=sys.stderr)
            return _stop_other_ranks(exc.exit_code)
        except KeyboardInterrupt:  # a second Ctrl-C: stopped at once; files are whole (atomic writes)
            print(
                "stopped at once by a second signal; every file in the run folder is either its previous or "
                "its new version; continue with --resume",
                file=sys.stderr,
            )
            return _stop_other_ranks(130)
        except RanksDisagree as exc:  # raised on every rank alike: no rank is left waiting
            world = dist.current_world()
            if world is None or world.is_main:
                print(f"error: {exc}", file=sys.stderr)
            return 2
        except (TrainingDiverged, RunFolderBusy, FileNotFoundError, FileExistsError, ValueError, ImportError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return _stop_other_ranks(2)
        except BaseException:
            _stop_other_ranks(3, traceback=True)  # returns only without a multi-rank MPI world
            raise
    world = dist.current_world()
    if not config.distributed or world is None or world.is_main:
        print(
            f"done: final test accuracy {100 * result.final_test_acc:.2f}% (best {100 * result.best_test_acc:.2f}%), "
            f"{result.wall_time_s:.0f}s; checkpoint {result.checkpoint}"
        )
    return 0


def _set_engine(options: argparse.Namespace, resume: str | None) -> None:
    """Threads and kernel choice of this process: as the options say, else on --resume as the
    checkpoint recorded them (``npresnet.training.resume``: the run continues bit for bit), else
    the libraries' thread defaults and measured kernels."""
    engine = recorded_engine(read_checkpoint(resume)[0]) if resume is not None else None
    if options.threads is not None:
        runtime.set_num_threads(options.threads)
    elif engine is not None and isinstance(engine.get("threads"), dict):
        recorded = engine["threads"]
        runtime.set_num_threads(int(recorded["blas"]), numba_threads=int(recorded["numba"]))
    if options.autotune is not None:
        autotune.set_mode(options.autotune)
    elif resume is not None:  # a checkpoint without a record was trained by the fixed rule (the old default)
        autotune.set_mode(str(engine.get("autotune", "fixed")) if engine is not None else "fixed")
    else:
        autotune.set_mode("measure")
    if options.no_autotune_cache:
        autotune.set_cache_file(None)


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
