"""Checking saved state before loading it: one error type, arrays, settings and ``.npz`` files.

Every loader (``Module.load_state_dict``, ``npresnet.load``, the optimizers' and schedules'
``load_state_dict``, ``load_checkpoint``) follows one rule: validate everything, *then* change
anything. A problem raises ``StateError`` (both a ``ValueError`` and, as torch's
``load_state_dict``, a ``RuntimeError``) before a single value has been replaced.

What is checked:

* arrays (``convert_array``): the dtype kind (a float array where the model holds floats: no
  strings, complex numbers, integers or booleans; an integer where it holds integers), the shape,
  and, where the values must be finite (weights, optimizer state; not BatchNorm's running
  statistics, which torch loads as they are), that none is NaN or infinite;
* settings (``setting_problem``): a learning rate is a finite number, a step count an integer, a
  flag a bool, and so on;
* ``.npz`` files (``read_npz``): a readable zip, no member twice, every member a ``.npy`` whose
  header is read *before* its data, so a 100-byte member declaring an 8 TiB array is refused
  without allocating anything, and a bit flip (a CRC-32 mismatch) names its member.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from typing import Any

import numpy as np

from .backend import to_numpy

__all__ = ["StateError", "convert_array", "read_npz", "setting_problem"]

# Deflate cannot compress better than about 1032:1, so a member claiming more is lying.
_MAX_DEFLATE_RATIO = 1032


class StateError(ValueError, RuntimeError):
    """Saved state (a state_dict, a weights file, a checkpoint) that cannot be loaded; nothing was changed."""


# ---------------------------------------------------------------------------------------------- arrays
def convert_array(name: str, value: Any, like: Any, finite: bool) -> tuple[np.ndarray | None, str | None]:
    """``value`` as a NumPy array of ``like``'s dtype and shape: (array, None), or (None, the problem).

    ``like`` is the array it will replace (NumPy or CuPy). Floats may change precision (float64 ->
    float32, as torch's ``copy_``); integers must stay integers of the same value.
    """
    try:
        source = np.asarray(to_numpy(value))
    except Exception as exc:  # a list of strings, an object without __array__, ...
        return None, f"{name}: not an array ({type(value).__name__}: {exc})"
    expected = np.dtype(like.dtype)
    if expected.kind == "f" and source.dtype.kind != "f":
        return None, f"{name}: expected a {expected} array, got {source.dtype}"
    if expected.kind in "iu" and source.dtype.kind not in "iu":
        return None, f"{name}: expected an integer array ({expected}), got {source.dtype}"
    if tuple(source.shape) != tuple(like.shape):
        return None, f"{name}: expected shape {tuple(like.shape)}, got {tuple(source.shape)}"
    with np.errstate(over="ignore"):
        array = np.array(source, dtype=expected, copy=True)
    if expected.kind in "iu" and not np.array_equal(array, source):
        return None, f"{name}: values do not fit in {expected}"
    if finite and expected.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            return None, f"{name}: {bad} of {array.size} values are not finite (NaN or infinite)"
    return array, None


# ---------------------------------------------------------------------------------------------- settings
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, (float, np.floating))) and math.isfinite(value)


_KINDS = {
    "number": (_is_number, "a finite number"),
    "int": (_is_int, "an integer"),
    "count": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "bool": (lambda v: isinstance(v, (bool, np.bool_)), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "dict": (lambda v: isinstance(v, dict), "a JSON object"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "numbers": (lambda v: isinstance(v, (list, tuple)) and all(map(_is_number, v)), "a list of finite numbers"),
    "ints": (lambda v: isinstance(v, (list, tuple)) and all(map(_is_int, v)), "a list of integers"),
    "pair": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_number, v)), "a pair of numbers"),
}


def setting_problem(key: str, value: Any, kind: str) -> str | None:
    """None if ``value`` is of ``kind`` ("number", "int", "count" (an int >= 1), "bool", "str", "dict",
    "list", "numbers", "ints", "pair"), else a message such as ``lr must be a finite number, got 'fast'``."""
    test, description = _KINDS[kind]
    if test(value):
        return None
    if kind == "number" and not isinstance(value, (int, float, np.integer, np.floating)):
        description = "a number"  # "fast", None, [0.1]: not NaN or infinity
    return f"{key} must be {description}, got {value!r}"


# ---------------------------------------------------------------------------------------------- files
def read_npz(path: str | os.PathLike, what: str = "file") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, ``{name without .npy: array}``, read safely.

    ``what`` names the file in messages ("checkpoint", "weights file"). Raises
    ``FileNotFoundError`` for a missing file and ``StateError`` (naming the file, and the
    member where there is one) for anything else: not a zip, truncated, a member twice, a bit flip,
    pickled objects, or a header that declares more data than the member holds.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise StateError(
            f"{path} is not a readable .npz {what} ({exc}): truncated, or not written by np.savez"
        ) from exc
    with archive:
        file_size = os.path.getsize(path)
        members = archive.infolist()
        names = [info.filename for info in members]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise StateError(f"{path}: the archive holds member {twice[0]} more than once")
        return {info.filename[: -len(".npy")]: _read_member(path, archive, info, file_size) for info in members}


def _read_member(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, file_size: int) -> np.ndarray:
    name = info.filename
    if not name.endswith(".npy"):
        raise StateError(f"{path}: member {name} is not a .npy array")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise StateError(
            f"{path}: member {name} uses zip compression method {info.compress_type}; "
            "np.savez writes stored or deflated members only"
        )
    limit = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else _MAX_DEFLATE_RATIO)
    if info.header_offset + info.compress_size > file_size or info.file_size > limit + 64:
        raise StateError(
            f"{path}: member {name} claims {info.file_size} bytes from {info.compress_size} stored; "
            "the file is truncated or corrupt"
        )
    try:
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            header_bytes = f.tell()
        if dtype.hasobject:
            raise StateError(
                f"{path}: member {name} holds Python objects ({dtype}), which would need pickle; "
                "refused (allow_pickle=False)"
            )
        declared = math.prod(shape) * dtype.itemsize
        if header_bytes + declared != info.file_size:
            raise StateError(
                f"{path}: member {name} declares shape {shape} {dtype} ({declared} bytes) but holds "
                f"{info.file_size - header_bytes}"
            )
        with archive.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except StateError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, TypeError) as exc:
        raise StateError(f"{path}: member {name} is corrupt ({exc})") from exc
