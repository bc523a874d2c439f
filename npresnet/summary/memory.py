"""Measured activation memory: the bytes a training forward leaves in the modules' caches for backward.

Measured, not estimated: the forward runs in training mode with gradients on, and the bytes of
every distinct array a module holds for backward (``Module.saved_for_backward``) are summed. An
array counts once however many caches hold it (a ReLU's output is also the next layer's input) and
a view counts as the buffer it views (found through ``.base`` and its data pointer). Parameters,
buffers and the input batch, which caches also reference, are reported on their own and left out.

A BatchNorm layer cannot normalise with batch statistics when it sees one value per channel
(N * H * W = 1: ResNet-18's last stage on a 32x32 image at batch 1); PyTorch refuses to train
then. A training step at that batch can only use the layer's running statistics, so
:func:`one_value_batchnorm_to_eval` runs exactly those layers in eval mode for the measurement,
and the report names how many it switched. (Eval-mode BatchNorm keeps its input for backward
where training mode keeps the normalised input, an array of the same size, plus a copy of the
running mean: C values.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from .. import nn
from ..backend import is_array


@dataclasses.dataclass(frozen=True)
class MemoryMeasurement:
    activation_bytes: int  # held for backward after one training-mode forward
    batchnorm_layers: int  # BatchNorm2d modules in the model
    batchnorm_in_eval: tuple[str, ...] = ()  # those that saw one value per channel and used running statistics

    @property
    def method(self) -> str:
        """How the figure was measured, for the report."""
        if not self.batchnorm_in_eval:
            return "training-mode forward, batch statistics in every BatchNorm"
        return (
            f"training-mode forward; {len(self.batchnorm_in_eval)} of {self.batchnorm_layers} BatchNorm layers "
            "see one value per channel (N*H*W = 1) and used their running statistics (eval mode), "
            "as a training step at this batch must"
        )


@contextmanager
def one_value_batchnorm_to_eval(model: nn.Module) -> Iterator[list[str]]:
    """While the block runs, a BatchNorm2d in training mode whose input has N * H * W = 1 runs in eval
    mode (its running statistics) instead of failing. Yields the list of the switched modules' names,
    filled during the block; their training flags are restored on exit."""
    switched: list[str] = []
    flags: list[tuple[nn.Module, bool]] = []

    def hook_for(name: str):
        def to_eval_if_one_value(module: nn.Module, inputs: tuple) -> None:
            x = inputs[0]
            if module.training and x.ndim == 4 and x.shape[0] * x.shape[2] * x.shape[3] == 1:
                flags.append((module, module.training))
                module.training = False
                switched.append(name)

        return to_eval_if_one_value

    handles = [
        module.register_forward_pre_hook(hook_for(name))
        for name, module in model.named_modules()
        if isinstance(module, nn.BatchNorm2d)
    ]
    try:
        yield switched
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags:
            module.training = flag


def _memory_of(array: Any) -> tuple[tuple[str, int], int]:
    """(identity of the memory block, its size in bytes) for an array or a view of one.

    Follows ``.base`` to the array that owns the memory (through non-array links too, such as
    the ``DummyArray`` of ``as_strided`` views), so every view of one buffer gives the same key.
    """
    owner, link = array, getattr(array, "base", None)
    while link is not None:
        if is_array(link):
            owner = link
        link = getattr(link, "base", None)
    if isinstance(owner, np.ndarray):
        return ("numpy", owner.__array_interface__["data"][0]), int(owner.nbytes)
    return ("cupy", int(owner.data.ptr)), int(owner.nbytes)


def _arrays_in(obj: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """Every array inside a cache: arrays, tuples (NamedTuples), lists, dicts and dataclasses."""
    seen = set() if seen is None else seen
    if is_array(obj):
        yield obj
        return
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (tuple, list)):
        items: Any = obj
    elif isinstance(obj, dict):
        items = obj.values()
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    else:
        return
    for item in items:
        yield from _arrays_in(item, seen)


def held_for_backward(model: nn.Module, exclude: Sequence[Any] = ()) -> int:
    """Bytes of the distinct memory blocks held in the caches of ``model``'s modules right now,
    leaving out the blocks of ``exclude`` (e.g. the parameters and the input)."""
    excluded = {_memory_of(a)[0] for a in exclude}
    blocks: dict[tuple[str, int], int] = {}
    for module in model.modules():
        for array in _arrays_in(module.saved_for_backward):
            key, nbytes = _memory_of(array)
            if key not in excluded:
                blocks[key] = nbytes
    return sum(blocks.values())
