"""Every ``NPRESNET_*`` environment variable, read here, once, when this module is first imported
(by the first part of npresnet that needs a setting: the layers, the kernels, the engine).

The rest of the library reads the parsed values below (``settings.AUTOTUNE``, ...), never the
environment, so this file is the one list of what can be set; ``docs/settings.md`` is generated
from ``SETTINGS`` (``markdown_table()``, checked by a test). A bad value is an error at
import, in one format: ``NPRESNET_X='value' is not valid: expected <what>``.

Code that starts a child process with a setting uses ``variable(...)``, not a spelled-out name::

    env = {**os.environ, settings.variable("AUTOTUNE"): "measure"}

This module imports the standard library only: ``npresnet.kernels`` (the leaf of the import
graph) reads it too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = [
    "AUTOTUNE",
    "AUTOTUNE_CACHE",
    "BACKEND",
    "BATCH_SPLIT",
    "BLAS_SPIN",
    "KERNELS",
    "NUMBA_CACHE",
    "NUMBA_PARALLEL",
    "PARALLEL_MIN_BYTES",
    "SETTINGS",
    "Setting",
    "markdown_table",
    "parse",
    "variable",
]

PREFIX = "NPRESNET_"


class Setting(NamedTuple):
    key: str  # the variable is PREFIX + key
    default: str  # what an unset (or empty) variable means
    expected: str  # the accepted values, in words (for the docs and the error message)
    convert: Callable[[str], Any]  # value (stripped) -> setting; raises ValueError on a bad one
    meaning: str  # one sentence for the docs

    @property
    def variable(self) -> str:
        return PREFIX + self.key


def _choice(*options: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if value.lower() not in options:
            raise ValueError
        return value.lower()

    return convert


def _switch(value: str) -> bool:
    if value not in ("0", "1"):
        raise ValueError
    return value == "1"


def _count(value: str) -> int:
    if not value.isdigit():
        raise ValueError
    return int(value)


def _spin(value: str) -> int | None:
    if value.lower() == "default":
        return None
    if not value.isdigit() or not 4 <= int(value) <= 30:
        raise ValueError
    return int(value)


def _cache(value: str) -> str:
    """'default' (the user's cache directory), 'off', or a file path."""
    if value.lower() in ("default", "off"):
        return value.lower()
    if value in ("0", "1"):  # a switch's spelling: off, or on where it is by default
        return "off" if value == "0" else "default"
    return value


SETTINGS = (
    Setting(
        "BACKEND",
        "numpy",
        "numpy or cupy",
        _choice("numpy", "cupy"),
        "the array library of new models and tensors (npresnet.backend)",
    ),
    Setting(
        "KERNELS",
        "auto",
        "auto, numba or numpy",
        _choice("auto", "numba", "numpy"),
        "the hot loops: Numba kernels when installed (auto), required (numba), or the NumPy references "
        "only, importing no Numba (numpy)",
    ),
    Setting(
        "NUMBA_PARALLEL",
        "auto",
        "auto, 0 or 1",
        _choice("auto", "0", "1"),
        "run the kernels' parallel builds at more than one Numba thread (auto, 1) or always the serial ones (0)",
    ),
    Setting(
        "PARALLEL_MIN_BYTES",
        str(1 << 20),
        "a whole number of bytes",
        _count,
        "kernel calls on fewer bytes than this run serially: a hand-off to the thread pool costs more "
        "than it saves there",
    ),
    Setting(
        "NUMBA_CACHE",
        "1",
        "0 or 1",
        _switch,
        "keep compiled kernels on disk (kernels/__pycache__, or NUMBA_CACHE_DIR) for later processes",
    ),
    Setting(
        "AUTOTUNE",
        "fixed",
        "fixed or measure",
        _choice("fixed", "measure"),
        "the convolution algorithm per layer shape: a fixed rule (same bits on every run) or the fastest "
        "candidate timed on this machine (npresnet.engine.autotune)",
    ),
    Setting(
        "AUTOTUNE_CACHE",
        "default",
        "default, off (or 0), or a file path",
        _cache,
        "where the measured winners are kept for later processes on the same machine: a file per machine "
        "in the user's cache directory ($XDG_CACHE_HOME, else ~/.cache, then npresnet/autotune/), none "
        "(off), or this JSON file",
    ),
    Setting(
        "BATCH_SPLIT",
        "1",
        "0 or 1",
        _switch,
        "at more than one thread, let a layer's im2col + GEMM run on each thread's own slice of the batch "
        "(npresnet.engine.batch_threads)",
    ),
    Setting(
        "BLAS_SPIN",
        "14",
        "4..30 or default",
        _spin,
        "at more than one thread, OpenBLAS's idle workers spin 2**this CPU cycles before they sleep "
        "(default: OpenBLAS's own 2**28), so they do not hold the cores the Numba kernels need",
    ),
)

_BY_KEY = {s.key: s for s in SETTINGS}


def variable(key: str) -> str:
    """The environment variable of the setting ``key`` ("AUTOTUNE" -> "NPRESNET_AUTOTUNE")."""
    return _BY_KEY[key].variable


def parse(key: str, environ: Any = None) -> Any:
    """The setting ``key`` as read from ``environ`` (default ``os.environ``); ValueError if it is bad."""
    setting = _BY_KEY[key]
    value = (os.environ if environ is None else environ).get(setting.variable, "").strip() or setting.default
    try:
        return setting.convert(value)
    except ValueError:
        raise ValueError(f"{setting.variable}={value!r} is not valid: expected {setting.expected}") from None


def markdown_table() -> str:
    """The table of docs/settings.md."""
    rows = ["| Variable | Values | Default | What it sets |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "unset"
        rows.append(f"| `{s.variable}` | {s.expected} | {default} | {s.meaning} |")
    return "\n".join(rows) + "\n"


BACKEND: str = parse("BACKEND")
KERNELS: str = parse("KERNELS")
NUMBA_PARALLEL: str = parse("NUMBA_PARALLEL")
PARALLEL_MIN_BYTES: int = parse("PARALLEL_MIN_BYTES")
NUMBA_CACHE: bool = parse("NUMBA_CACHE")
AUTOTUNE: str = parse("AUTOTUNE")
AUTOTUNE_CACHE: str = parse("AUTOTUNE_CACHE")
BATCH_SPLIT: bool = parse("BATCH_SPLIT")
BLAS_SPIN: int | None = parse("BLAS_SPIN")
