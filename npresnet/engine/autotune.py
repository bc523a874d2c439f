"""Measured kernel choice: time the candidates for a shape once, then always use the winner.

Several algorithms compute the same convolution (im2col + GEMM in chunks of various sizes, the
direct 3x3 kernels); which is fastest depends on the CPU, its caches, the thread count and the
layer's shape, so a constant threshold tuned on one machine is wrong on the next. Like
``torch.backends.cudnn.benchmark``, the first time an operation sees a shape it times every
candidate on that shape and remembers the winner for the rest of the process::

    name = autotune.choose("conv2d forward", key, candidates, fixed="gemm/4")
    # candidates: {name: zero-argument callable running that algorithm}

Modes (``set_mode`` or ``NPRESNET_AUTOTUNE``, read by ``npresnet.settings``):

``"fixed"`` (the library's default, like cudnn.benchmark's False)
    always the ``fixed`` candidate, a deterministic rule: the same algorithm, hence the same bits,
    on every run (at a given thread count: BLAS's own bits, and the batch split's, depend on it).
    Runs that must give the same bits without sharing a checkpoint or a cache rely on it.
``"measure"``
    time the candidates (``python -m npresnet.bench`` and ``python -m npresnet.train`` use this by
    default). Candidates agree to rounding, not bitwise, so two processes may pick differently and
    differ in the last bits, unless they share the cache file or replay a checkpoint's choices.

Timing is kept short, so that a first step costs little more than the next (the bench prints the
seconds spent choosing apart from the step):

* **Families first.** A candidate's name is ``method/parameter`` ("gemm/7": im2col + GEMM in chunks
  of 7 samples), and the caller may group methods into families (``conv_dispatch``: im2col + GEMM
  whole or split over threads; the direct kernels; Winograd whole or split). The first stage times
  one candidate per family, the first one listed (the caller lists its likeliest first), and the fixed
  rule's; a second stage times the winning family's others once each against its best. A conv at two
  threads with three families of up to eight candidates each times about ten candidates, not twenty.
* **On a slice of the batch.** ``work`` says how much of the whole job each candidate's timed call
  does (the caller runs it on a slice of the batch: ``conv_dispatch`` takes a few chunks per thread,
  at least ``PROBE_FLOP`` of arithmetic); times are compared per unit of work.
* **Few rounds.** A candidate runs untimed only when its method has not yet run for this operation
  in this process (Numba compiles once per method, not per shape; the rule's method first, which
  also pages in the memory that later calls reuse). After the first timed round a
  candidate slower than ``PRUNE_FACTOR`` times the best leaves the race (timing noise on a shared VM
  is tens of percent), and at most ``TIMED_ROUNDS`` rounds count, each a candidate's best.
* **Similar shapes.** ``similar`` names a shape class (a convolution's key without its batch size)
  and the batch size: a smaller batch of a class already decided in this process (an epoch's last
  batch) takes the method of that decision without timing anything. A larger one is timed: a
  batch-1 call (a summary, a smoke test) must not choose for the training batch.

The rounds go round the candidates in turn, so a slow spell of the machine does not hit one
candidate only. The fixed rule's candidate wins unless another one is faster by more than
``KEEP_FIXED_WITHIN`` (15%). On a small shared VM the candidates of a layer often lie within 10-20% of
each other, and then the isolated timing names a different winner in each process and does not carry
over to the model (the whole forward was no faster, and varied more, with the plain fastest: the
figures are in docs/performance.md); clear wins (Winograd on ResNet-50's 3x3 layers) still count.

On-disk cache (on by default; ``NPRESNET_AUTOTUNE_CACHE`` or ``set_cache_file``: ``"default"``,
``None`` for off, or a file path). The winners are written to a JSON file, in a section keyed by
the machine: CPU model name and ``runtime.cpu_id()`` (family, model, stepping, cache sizes: one
name covers several generations), and the versions of Python, NumPy, Numba, npresnet and NumPy's
BLAS (with the OpenBLAS variables that select its kernels). By default the file is
``$XDG_CACHE_HOME/npresnet/autotune/<machine digest>.json`` (``~/.cache`` without XDG_CACHE_HOME),
one file per machine key, so a home folder shared between machines never serves one machine's
winners to another. A later process on the same machine reads its section and times nothing it
finds there; sections of other machines or versions are ignored (and kept). Each entry's key
holds the thread counts (Numba's and BLAS's), so a run at 2 threads never takes a 1-thread winner.
A file that cannot be parsed is ignored with a one-line warning and rewritten with this process's
winners. Writes are atomic (``npresnet.atomic_write``) and merge with the file as it is just before
the write, so two processes racing lose at most each other's newest entries, never the file.

``replay(choices)`` makes this process use a recorded set of winners (a checkpoint's: see
npresnet.training.resume) before anything is timed or read from disk. ``agreeing(share)`` makes
the processes of a data-parallel job use one process's choices: inside it, every entry not yet
agreed on goes through ``share(winner)``, a broadcast from the leading rank (the others pass None
and time nothing). It is a collective: use it only where every process chooses the same entries in
the same order (the training steps of equal shards, not an evaluation of unequal ones).

This module is ``npresnet.engine.autotune`` (``npresnet.autotune`` is a deprecated alias of it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .. import settings
from .runtime import cpu_id, cpu_model

__all__ = [
    "agreeing",
    "cache_file",
    "choices",
    "choose",
    "choosing_seconds",
    "clear",
    "default_cache_file",
    "mode",
    "replay",
    "set_cache_file",
    "set_mode",
    "thread_counts",
    "timed_keys",
]

MODES = ("fixed", "measure")
FORMAT = "npresnet-autotune/1"
#: Timed runs of each candidate at most (interleaved: see ``_best_times``); its best counts.
TIMED_ROUNDS = 2
#: A candidate whose run takes longer than this is timed once (not ``TIMED_ROUNDS`` times).
LONG_RUN_S = 0.05
#: The fixed rule's candidate is kept unless another one's best time is shorter by more than this
#: fraction of it: within that margin the timings on a small VM pick a different winner in every
#: process, and the isolated timing does not carry over to the model (see the module docstring).
KEEP_FIXED_WITHIN = 0.15
#: After the first timed round, a candidate slower than this many times the best one is timed no more.
PRUNE_FACTOR = 1.3

_mode = settings.AUTOTUNE
_cache_setting: str | None = None if settings.AUTOTUNE_CACHE == "off" else settings.AUTOTUNE_CACHE
_cache_path: str | None = None  # _cache_setting resolved (the default's name needs machine())
_choices: dict[str, str] = {}  # entry key -> winner, this process
_choosing_s = 0.0  # seconds spent timing candidates in this process
_share: Callable[[str | None], str] | None = None  # set inside agreeing()
_leads = True
_agreed: set[str] = set()  # entries agreed on with the other processes
_timed: list[str] = []  # entry keys timed in this process, in order
_disk: dict[str, str] | None = None  # this machine's section of the cache file, once read
_similar: dict[
    str, tuple[str, int]
] = {}  # shape class (op, class, threads) -> (winner, batch) of its largest decided batch
_warm: set[tuple[str, str]] = set()  # (op, method) that have run in this process: compiled, no untimed run
_machine: dict[str, Any] | None = None


def mode() -> str:
    """'fixed' or 'measure' (see the module docstring)."""
    return _mode


def set_mode(new_mode: str) -> str:
    """Switch between 'fixed' and 'measure'; returns the previous mode."""
    global _mode
    if new_mode not in MODES:
        raise ValueError(f"autotune mode must be one of {MODES}, got {new_mode!r}")
    previous, _mode = _mode, new_mode
    return previous


def set_cache_file(path: str | os.PathLike | None) -> None:
    """Keep the winners in this JSON file, in ``"default"`` (``default_cache_file()``), or nowhere
    but memory (None). Re-read on the next lookup."""
    global _cache_setting, _cache_path, _disk
    _cache_setting = os.fspath(path) if path is not None else None
    _cache_path = None
    _disk = None


def default_cache_file() -> str:
    """This machine's file in the user's cache directory (XDG_CACHE_HOME, else ~/.cache)."""
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(json.dumps(machine(), sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(home, "npresnet", "autotune", f"{digest}.json")


def cache_file() -> str | None:
    """The cache file in use (resolved), or None where the cache is off."""
    global _cache_path
    if _cache_setting is None:
        return None
    if _cache_path is None:
        _cache_path = default_cache_file() if _cache_setting == "default" else _cache_setting
    return _cache_path


def clear() -> None:
    """Forget every winner of this process (the cache file stays)."""
    global _disk, _choosing_s
    _choices.clear()
    _timed.clear()
    _agreed.clear()
    _similar.clear()
    _warm.clear()
    _disk = None
    _choosing_s = 0.0


def replay(recorded: Mapping[str, str]) -> None:
    """Use these winners (entry key -> candidate name, as ``choices()`` returns them) in this
    process: a later ``choose`` of one of these entries returns the recorded name without timing or
    reading the cache file. Entries of other thread counts simply never match."""
    _choices.update({str(k): str(v) for k, v in recorded.items()})


@contextlib.contextmanager
def agreeing(share: Callable[[str | None], str], leads: bool) -> Iterator[None]:
    """Inside: each entry not yet agreed on is chosen by the leading process (``leads``) and sent to
    the others through ``share`` (a broadcast: the leader passes its winner, the others None, and
    every process gets the leader's). See the module docstring for where it may be used."""
    global _share, _leads
    previous = _share, _leads
    _share, _leads = share, leads
    try:
        yield
    finally:
        _share, _leads = previous


def choosing_seconds() -> float:
    """Seconds this process has spent timing candidates (the part of a first step that is choosing)."""
    return _choosing_s


def choices() -> dict[str, str]:
    """Every entry key decided in this process (timed, or read from the cache file) -> its winner."""
    return dict(_choices)


def timed_keys() -> list[str]:
    """The entry keys timed in this process so far (for tests and the bench)."""
    return list(_timed)


def choose(
    op: str,
    key: Any,
    candidates: Mapping[str, Callable[[], Any]],
    fixed: str,
    *,
    work: Mapping[str, float] | None = None,
    similar: tuple[Any, int] | None = None,
    families: Mapping[str, str] | None = None,
) -> str:
    """The name of the candidate to run for ``op`` on ``key`` (a repr-able description of the
    shape): ``fixed`` in fixed mode or when there is nothing to choose, else the measured winner.

    ``candidates`` maps ``method/parameter`` names to zero-argument callables; ``families`` groups
    them (name -> family; default: the method), each family's first name timed first; ``work`` the
    share of the whole job each callable does (default 1: the whole job); ``similar`` (a repr-able
    shape class, a batch size): a key of the class with a batch no larger than one decided reuses
    that decision's method."""
    if fixed not in candidates:
        raise ValueError(f"autotune: the fixed choice {fixed!r} is not a candidate of {op} ({sorted(candidates)})")
    if _mode == "fixed" or len(candidates) == 1:
        return fixed
    threads = _thread_counts()
    entry = f"{op} | {key!r} | threads {threads} | candidates {sorted(candidates)}"
    shape_class = None if similar is None else (f"{op} | {similar[0]!r} | threads {threads}", int(similar[1]))
    if _share is not None and entry not in _agreed:
        winner = _share(_winner(entry, shape_class, candidates, fixed, work, families) if _leads else None)
        if winner not in candidates:  # another thread count here: other candidates; the bits differ anyway
            winner = fixed
        _agreed.add(entry)
        _choices[entry] = winner
        return winner
    return _winner(entry, shape_class, candidates, fixed, work, families)


def _method(name: str) -> str:
    return name.split("/", 1)[0]


def _winner(
    entry: str,
    shape_class: tuple[str, int] | None,
    candidates: Mapping[str, Callable[[], Any]],
    fixed: str,
    work: Mapping[str, float] | None,
    families: Mapping[str, str] | None,
) -> str:
    """This process's winner of ``entry``: remembered, read from the cache file, taken from a similar
    shape's decision, or timed now."""
    winner = _choices.get(entry) or _read_disk().get(entry)
    if winner is None or winner not in candidates:
        winner = _from_similar(shape_class, candidates)
    if winner is None:
        global _choosing_s
        op = entry.split(" | ", 1)[0]
        start = time.perf_counter()
        best = _time_by_family(op, candidates, fixed, work or {}, families or {})
        _choosing_s += time.perf_counter() - start
        winner = min(best, key=best.__getitem__)
        if best.get(fixed, float("inf")) <= (1 + KEEP_FIXED_WITHIN) * best[winner]:
            winner = fixed  # not clearly faster: keep the rule's choice
        _timed.append(entry)
        _write_disk(entry, winner)
    _choices[entry] = winner
    if shape_class is not None:
        name, batch = shape_class
        if batch >= _similar.get(name, ("", 0))[1]:  # the largest batch decided stands for the class
            _similar[name] = (winner, batch)
    return winner


def _from_similar(shape_class: tuple[str, int] | None, candidates: Mapping[str, Callable[[], Any]]) -> str | None:
    """The candidate of the method that won for another shape of this class (the same name if it is
    a candidate here, else the method's first), or None where there is none."""
    if shape_class is None or shape_class[0] not in _similar:
        return None
    decided, batch = _similar[shape_class[0]]
    if shape_class[1] > batch:  # a larger batch than any decided: time it
        return None
    if decided in candidates:
        return decided
    return next((name for name in candidates if _method(name) == _method(decided)), None)


def _time_by_family(
    op: str,
    candidates: Mapping[str, Callable[[], Any]],
    fixed: str,
    work: Mapping[str, float],
    families: Mapping[str, str],
) -> dict[str, float]:
    """Best time per unit of work of the candidates timed: first each family's first candidate
    and the fixed one, then the winning family's others against its winner."""

    def family(name: str) -> str:
        return families.get(name, _method(name))

    firsts: dict[str, str] = {}
    for name in candidates:
        firsts.setdefault(family(name), name)
    first_stage = dict.fromkeys([fixed, *firsts.values()])  # the rule's first: its untimed run comes first
    best = _best_times(op, {name: candidates[name] for name in first_stage}, work, keep=fixed)
    leader = min(best, key=best.__getitem__)
    rest = [name for name in candidates if family(name) == family(leader) and name not in best]
    if rest:
        race = {name: candidates[name] for name in [leader, *rest]}
        best.update(_best_times(op, race, work, known={leader: best[leader]}, rounds=1))
    return best


def _best_times(
    op: str,
    candidates: Mapping[str, Callable[[], Any]],
    work: Mapping[str, float],
    known: Mapping[str, float] | None = None,
    rounds: int = TIMED_ROUNDS,
    keep: str | None = None,
) -> dict[str, float]:
    """Each candidate's best time (seconds per unit of ``work``) over up to ``TIMED_ROUNDS`` rounds,
    each round running every candidate once in turn: a slow spell of a shared machine (seconds, on
    a VM) then hits all candidates alike instead of all runs of one. A candidate slower than
    ``LONG_RUN_S`` stays out of further rounds, and so does one slower than ``PRUNE_FACTOR`` times
    the best of the round before (its time stays as measured, so it cannot win), except ``keep``
    (the fixed rule's: the margin it keeps needs its best time). ``known``: times already measured
    of candidates that are not run again."""
    best = dict.fromkeys(candidates, float("inf"))
    best.update(known or {})
    for name, run in candidates.items():
        if (op, _method(name)) not in _warm:
            run()  # untimed: compiles this method's kernels
            _warm.add((op, _method(name)))
    racing = [name for name in candidates if name not in (known or {})]
    for _ in range(rounds if racing else 0):
        for name in racing:
            start = time.perf_counter()
            candidates[name]()
            best[name] = min(best[name], (time.perf_counter() - start) / work.get(name, 1.0))
        fastest = min(best[name] for name in racing)
        racing = [
            n
            for n in racing
            if best[n] * work.get(n, 1.0) <= LONG_RUN_S and (n == keep or best[n] <= PRUNE_FACTOR * fastest)
        ]
        if len(racing) < 2:
            break
    return best


def thread_counts() -> dict[str, int]:
    """{"numba": N, "blas": M} as set now (BLAS: the count runtime.set_num_threads last set, else
    threadpoolctl's; Numba: 1 before Numba is imported)."""
    numba_threads = 1
    if "numba" in sys.modules:
        numba_threads = sys.modules["numba"].get_num_threads()
    from . import runtime

    return {"numba": numba_threads, "blas": runtime.blas_threads()}


def _thread_counts() -> str:
    """'numba N, blas M': the part of an entry's key that says the thread counts."""
    counts = thread_counts()
    return f"numba {counts['numba']}, blas {counts['blas']}"


def machine() -> dict[str, Any]:
    """What a cache section is keyed by: the CPU (name and ``cpu_id``) and library versions (computed once)."""
    global _machine
    if _machine is None:
        import numpy as np

        from .. import __version__

        versions = {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "npresnet": __version__,
            "numba": _installed_version("numba"),
        }
        _machine = {
            "cpu": cpu_model(),
            "cpu_id": cpu_id(),
            "machine": platform.machine(),
            "versions": versions,
            "blas": _blas(),
        }
    return _machine


def _installed_version(package: str) -> str | None:
    """The installed version, read without importing the package (so it is the same whether or not
    this process has imported it yet), or None."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _blas() -> dict[str, Any]:
    """NumPy's BLAS: its build (name, version) and the OpenBLAS variables that pick its kernels at
    run time. Not threadpoolctl's list of loaded libraries, which grows when torch is imported."""
    import numpy as np

    try:
        build = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        name, version = str(build.get("name")), str(build.get("version"))
    except Exception:  # older NumPy, unusual builds: no build record
        name = version = "unknown"
    variables = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    return {"name": name, "version": version, "environment": variables}


def _load_file(path: str, *, warn: bool) -> dict[str, Any]:
    """The cache file's content; an empty one where the file is absent or cannot be used (then, if
    ``warn``, one warning line: the next write replaces it)."""
    empty: dict[str, Any] = {"format": FORMAT, "sections": []}
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        return empty
    except (OSError, ValueError) as exc:
        problem = str(exc)
    else:
        if isinstance(content, dict) and content.get("format") == FORMAT and isinstance(content.get("sections"), list):
            return content
        problem = f"not a {FORMAT} file"
    if warn:
        warnings.warn(
            f"npresnet.engine.autotune: ignoring the cache file {path} ({problem}); it will be rewritten",
            RuntimeWarning,
            stacklevel=5,
        )
    return empty


def _read_disk() -> dict[str, str]:
    global _disk
    path = cache_file()
    if path is None:
        return {}
    if _disk is None:
        _disk = {}
        for section in _load_file(path, warn=True)["sections"]:
            if isinstance(section, dict) and section.get("machine") == machine():
                choices = section.get("choices")
                if isinstance(choices, dict):
                    _disk = {str(k): str(v) for k, v in choices.items()}
    return _disk


def _write_disk(entry: str, winner: str) -> None:
    """Add ``entry`` to the file: re-read just before the atomic write, so that the entries another
    process wrote since this one read the file are kept. A file that cannot be written (a read-only
    home) turns the cache off for this process, with one warning."""
    global _cache_setting
    path = cache_file()
    if path is None:
        return
    disk = _read_disk()
    disk[entry] = winner
    content = _load_file(path, warn=False)
    ours: dict[str, str] = {}
    sections = []
    for section in content["sections"]:
        if isinstance(section, dict) and section.get("machine") == machine():
            if isinstance(section.get("choices"), dict):
                ours.update({str(k): str(v) for k, v in section["choices"].items()})
        else:
            sections.append(section)
    sections.append({"machine": machine(), "choices": {**ours, **disk}})
    from ..atomic_write import atomic_write_text

    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write_text(path, json.dumps({"format": FORMAT, "sections": sections}, indent=1) + "\n")
    except OSError as exc:
        warnings.warn(
            f"npresnet.engine.autotune: cannot write the cache file {path} ({exc}); the cache is off",
            RuntimeWarning,
            stacklevel=4,
        )
        _cache_setting = None
