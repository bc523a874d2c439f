"""Saving and loading weights: ``.npz`` files of a module's ``state_dict``, and PyTorch ``.pth`` files.

::

    npresnet.save(model, "resnet50.npz")       # every parameter and buffer, under its dotted key
    npresnet.load(model, "resnet50.npz")       # strict: the keys and shapes must match the model
    model.load_state_dict(npresnet.io.load_torch("resnet50.pth"))   # torchvision weights (needs torch)

The ``.npz`` file is a plain zip of ``.npy`` arrays (``np.savez``), one per state_dict key such as
``layer1.0.conv1.weight`` or ``bn1.num_batches_tracked``. Every array keeps its dtype (float32,
float64, the int64 batch counters), so a save/load round trip is bit-exact. CuPy arrays are copied
to the host first, so a file saved from the GPU loads on the CPU and vice versa. Loading never
unpickles anything (``allow_pickle=False``).

Saving is atomic (``npresnet.atomic_write``): the arrays go to a temporary file in the
destination's directory, which is flushed to disk (``fsync``) and then renamed over the
destination (``os.replace``). An error mid-save leaves the previous file intact and no temporary
file behind; a process killed mid-save leaves its temporary file, which the next save of the same
path removes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .atomic_write import atomic_write
from .backend import to_numpy
from .nn.module import IncompatibleKeys, Module
from .state_checks import StateError, read_npz

__all__ = ["load", "load_torch", "save"]

# Keyword names of np.savez itself: a state_dict key with one of these names cannot be passed as **kwds.
_SAVEZ_RESERVED = ("file", "allow_pickle")


def save(module: Module, path: str | os.PathLike) -> None:
    """Write ``module.state_dict()`` to ``path`` as an ``.npz`` file, atomically.

    The file is written exactly at ``path`` (no ``.npz`` suffix is appended). Parameters and
    buffers are stored with their own dtypes; CuPy arrays are copied to the host.
    """
    if not isinstance(module, Module):
        raise TypeError(f"save() expects an npresnet Module, got {type(module).__name__}")
    arrays: dict[str, Any] = {key: np.asarray(to_numpy(value)) for key, value in module.state_dict().items()}
    clashes = [key for key in arrays if key in _SAVEZ_RESERVED]
    if clashes:
        raise ValueError(f"state_dict keys {clashes} clash with np.savez's own arguments {_SAVEZ_RESERVED}")
    objects = [key for key, array in arrays.items() if array.dtype.hasobject]
    if objects:
        raise TypeError(f"state_dict entries {objects} hold Python objects, not numeric arrays")

    with atomic_write(path) as f:
        np.savez(f, **arrays)


def load(module: Module, path: str | os.PathLike, strict: bool = True) -> IncompatibleKeys:
    """Load an ``.npz`` written by :func:`save` into ``module`` (in place), via ``load_state_dict``.

    With ``strict`` (the default) every missing or unexpected key is an error, and a wrongly
    shaped array, a value of the wrong kind (strings, complex or integers for float weights) or
    a NaN/infinite parameter always is; the one-line ``StateError`` names the file and lists all
    of them, and nothing is changed. So does a corrupt file (truncated, bit-flipped, a member
    declaring more data than it holds): see ``npresnet.state_checks.read_npz``. Values are
    converted to each parameter's backend and dtype. Returns the missing and unexpected keys.
    """
    if not isinstance(module, Module):
        raise TypeError(f"load() expects an npresnet Module, got {type(module).__name__}")
    path = os.fspath(path)
    if os.path.isfile(path) and _is_npy(path):
        raise StateError(f"{path!r} holds a single .npy array, not an .npz archive of a state_dict")
    state_dict = read_npz(path, "weights file")
    checked = module.check_state_dict(state_dict, strict)
    if checked.problems:
        raise StateError(
            f"{path}: cannot load into {type(module).__name__} (nothing was loaded): " + "; ".join(checked.problems)
        )
    checked.apply()
    return checked.keys


def _is_npy(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(6) == b"\x93NUMPY"


def load_torch(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a PyTorch ``.pth``/``.pt`` state_dict into ``{dotted key: numpy array}``.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)``: tensors and
    plain containers only, never arbitrary pickled objects. It may hold the state_dict itself or a
    checkpoint dict with the state_dict under ``"state_dict"`` or ``"model"``. Only this function
    needs PyTorch; pass the result to ``model.load_state_dict``.
    """
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            "npresnet.io.load_torch needs PyTorch, only to read the .pth file format "
            "(pip install torch); the rest of npresnet does not use torch, and npresnet.save/load use .npz"
        ) from exc
    loaded = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping):
        kind = type(loaded).__name__
        raise TypeError(f"{os.fspath(path)!r} holds a {kind}, expected a state_dict (a dict of tensors)")
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
            break
    arrays = {}
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{os.fspath(path)!r}: entry {key!r} is of type {type(value).__name__}, not a tensor; expected a "
                "state_dict, or a checkpoint with one under 'state_dict' or 'model'"
            )
        arrays[key] = np.array(to_numpy(value), copy=True)
    return arrays
