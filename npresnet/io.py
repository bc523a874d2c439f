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

Saving is atomic: the arrays go to a temporary file in the destination's directory, which is
flushed to disk (``fsync``) and then renamed over the destination (``os.replace``). A crash or an
error mid-save leaves the previous file intact and no temporary file behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping

import numpy as np

from .backend import to_numpy
from .nn.module import IncompatibleKeys, Module

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
    arrays = {key: np.asarray(to_numpy(value)) for key, value in module.state_dict().items()}
    clashes = [key for key in arrays if key in _SAVEZ_RESERVED]
    if clashes:
        raise ValueError(f"state_dict keys {clashes} clash with np.savez's own arguments {_SAVEZ_RESERVED}")
    objects = [key for key, array in arrays.items() if array.dtype.hasobject]
    if objects:
        raise TypeError(f"state_dict entries {objects} hold Python objects, not numeric arrays")

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = _create_temporary(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _create_temporary(directory: str, name: str) -> tuple[int, str]:
    """A new, exclusively created ``.<name>.<random>.tmp`` in ``directory``: (descriptor, path).

    Created with mode 0o666 so the umask applies, as for a file opened normally (``mkstemp``
    would leave the saved weights readable by their owner only).
    """
    while True:
        tmp_path = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            return os.open(tmp_path, flags, 0o666), tmp_path
        except FileExistsError:
            continue


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(module: Module, path: str | os.PathLike, strict: bool = True) -> IncompatibleKeys:
    """Load an ``.npz`` written by :func:`save` into ``module`` (in place), via ``load_state_dict``.

    With ``strict`` (the default) every missing or unexpected key is an error, and a wrongly
    shaped array always is; the error lists all of them at once. Values are converted to each
    parameter's backend and dtype. Returns the missing and unexpected keys.
    """
    if not isinstance(module, Module):
        raise TypeError(f"load() expects an npresnet Module, got {type(module).__name__}")
    archive = np.load(os.fspath(path), allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{os.fspath(path)!r} holds a single .npy array, not an .npz archive of a state_dict")
    with archive:
        state_dict = {key: archive[key] for key in archive.files}
    return module.load_state_dict(state_dict, strict=strict)


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
