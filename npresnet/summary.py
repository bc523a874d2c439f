"""``summary``: a model's layers, parameters, multiply-accumulates and memory, like ``torchsummary``.

::

    print(npresnet.summary(npresnet.models.resnet50(), (1, 3, 224, 224)))
    python -m npresnet.summary resnet50 --input-shape 1,3,224,224 --variant v1      # from a shell

One forward pass of a batch of ``input_shape`` fills the table: a forward hook on every *leaf*
module (one without children) records the name, type and output shape of each call. From those:

* **MACs** (multiply-accumulates), for the whole given batch (use N = 1 for per-image figures,
  the convention of torchvision's "GFLOPS" and the ResNet paper's "multiply-adds"):

  - ``Conv2d``: N * O * OH * OW * (C/G) * KH * KW   (every output element is a dot product of
    length C/G * KH * KW);
  - ``Linear``: N * in_features * out_features   (N = all leading dimensions of the input).

  Bias additions, BatchNorm, ReLU, pooling and the residual additions are not counted; they are
  a fraction of a percent of a ResNet's total. FLOPs = 2 x MACs (a multiply and an add).
* **Weighted layers**: convolutions and linear layers on the main path, i.e. not inside a
  projection shortcut (a module path containing ``downsample``, ``shortcut`` or ``projection``).
  This is the depth in a ResNet's name: ResNet-50 = 1 stem conv + 16 blocks x 3 convs + 1 fc.
* **Memory**, in MB (2**20 bytes, as torchsummary): the input batch, the parameters and buffers,
  and the activations the layers hold for their backward pass. That last figure is *measured*,
  not estimated: the forward runs in training mode with gradients on, and the bytes of every
  distinct array held in a module's ``_cache`` are summed. An array counts once however many
  caches hold it (a ReLU's output is also the next layer's input) and a view counts as the
  buffer it views (found through ``.base`` and its data pointer). Parameters, buffers and the
  input batch, which caches also reference, are reported on their own lines and left out.

``summary`` leaves the model as it found it: each module's training flag, cache, the buffers
(BatchNorm's running statistics and batch counters, which the training forward updates) and any
random generator state are restored. ``measure_memory=False`` skips the measurement and runs the
forward in evaluation mode under ``no_grad`` (faster, nothing is cached).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from . import nn
from .backend import backend_name, get_default, is_cupy_array, xp_for
from .grad_mode import is_grad_enabled, no_grad

__all__ = ["LayerRow", "SHORTCUT_NAMES", "Summary", "held_for_backward", "summary"]

# ``npresnet/__init__`` imports this module (to export the ``summary`` function), so ``python -m
# npresnet.summary`` finds it already imported and runpy warns that the module runs a second time as
# __main__. That is harmless here (main() only prints), so that one warning is silenced.
warnings.filterwarnings("ignore", message=r"'npresnet\.summary' found in sys\.modules", category=RuntimeWarning,
                        module="runpy")

#: A conv or linear layer whose dotted path has one of these components sits on a shortcut branch
#: (torchvision's ``downsample``; ``shortcut``/``projection`` elsewhere) and is not counted in
#: :attr:`Summary.weighted_layers`.
SHORTCUT_NAMES = frozenset({"downsample", "shortcut", "projection"})

MB = 2 ** 20


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One call of a leaf module during the summary's forward pass."""

    name: str                   # dotted path, as in state_dict keys ("layer1.0.conv1")
    type: str                   # class name ("Conv2d")
    output_shape: tuple         # (N, O, OH, OW); a tuple of shapes for a multi-output layer
    params: int                 # parameter elements of the module (0 on its repeated calls)
    macs: int                   # multiply-accumulates of this call, for the whole batch


@dataclasses.dataclass
class Summary:
    """What :func:`summary` measured. ``str(summary)`` is the printed table."""

    model_name: str
    input_shape: tuple[int, ...]
    dtype: np.dtype
    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    total_macs: int             # for the whole batch input_shape[0]
    weighted_layers: int
    input_bytes: int
    param_bytes: int            # parameters and buffers
    activation_bytes: int | None  # measured; None with measure_memory=False

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def total_flops(self) -> int:
        """2 x MACs: each multiply-accumulate is one multiply and one add."""
        return 2 * self.total_macs

    @property
    def macs_per_sample(self) -> int:
        return self.total_macs // self.input_shape[0]

    @property
    def input_mb(self) -> float:
        return self.input_bytes / MB

    @property
    def params_mb(self) -> float:
        return self.param_bytes / MB

    @property
    def activations_mb(self) -> float | None:
        return None if self.activation_bytes is None else self.activation_bytes / MB

    @property
    def total_mb(self) -> float:
        return (self.input_bytes + self.param_bytes + (self.activation_bytes or 0)) / MB

    def __str__(self) -> str:
        headers = ("Layer (type)", "Output shape", "Params", "MACs")
        body = [(f"{row.name or '(model)'} ({row.type})", _format_shape(row.output_shape), f"{row.params:,}",
                 f"{row.macs:,}") for row in self.rows]
        widths = [max(len(h), *(len(line[i]) for line in body)) if body else len(h) for i, h in enumerate(headers)]
        width = sum(widths) + 2 * (len(widths) - 1)

        def line(cells: Sequence[str]) -> str:
            return "  ".join([cells[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))])

        batch = self.input_shape[0]
        activations = ("not measured (measure_memory=False)" if self.activation_bytes is None
                       else f"{self.activations_mb:,.2f}")
        out = [
            f"{self.model_name}: input {self.input_shape} {self.dtype.name}",
            "=" * width, line(headers), "=" * width,
            *(line(cells) for cells in body),
            "=" * width,
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.non_trainable_params:,}",
            f"Weighted layers (conv + linear on the main path): {self.weighted_layers}",
            f"Total MACs (multiply-accumulates, conv + linear, batch of {batch}): "
            f"{self.total_macs:,} ({_scaled(self.total_macs)})",
            f"Total FLOPs (= 2 x MACs, batch of {batch}): {self.total_flops:,} ({_scaled(self.total_flops)})",
            "-" * width,
            f"Input size (MB): {self.input_mb:,.2f}",
            f"Params + buffers size (MB): {self.params_mb:,.2f}",
            f"Activations held for backward (MB, measured): {activations}",
            f"Total size (MB): {self.total_mb:,.2f}",
            "-" * width,
        ]
        return "\n".join(out)


def _scaled(count: int) -> str:
    """3,616 -> '3.62 K'; 4,089,184,256 -> '4.09 G'."""
    for factor, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if count >= factor:
            return f"{count / factor:.2f} {unit}"
    return str(count)


def _format_shape(shape: tuple) -> str:
    if shape and all(isinstance(s, tuple) for s in shape):
        return ", ".join(_format_shape(s) for s in shape)
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _output_shape(output: Any) -> tuple:
    if isinstance(output, (tuple, list)):
        return tuple(_output_shape(o) for o in output)
    return tuple(int(s) for s in getattr(output, "shape", ()))


def _layer_macs(module: nn.Module, output: Any) -> int:
    """Multiply-accumulates of one call (see the module docstring for the formulas)."""
    if isinstance(module, nn.Conv2d):
        N, O, OH, OW = output.shape
        KH, KW = module.kernel_size
        return N * O * OH * OW * (module.in_channels // module.groups) * KH * KW
    if isinstance(module, nn.Linear):
        rows = int(np.prod(output.shape[:-1], dtype=np.int64))
        return rows * module.in_features * module.out_features
    return 0


def _on_shortcut(name: str) -> bool:
    return any(part in SHORTCUT_NAMES for part in name.split("."))


# ------------------------------------------------------------------------------------------ memory


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or is_cupy_array(x)


def _memory_of(array: Any) -> tuple[tuple[str, int], int]:
    """(identity of the memory block, its size in bytes) for an array or a view of one.

    Follows ``.base`` to the array that owns the memory (through non-array links too, such as
    the ``DummyArray`` of ``as_strided`` views), so every view of one buffer gives the same key.
    """
    owner, link = array, getattr(array, "base", None)
    while link is not None:
        if _is_array(link):
            owner = link
        link = getattr(link, "base", None)
    if isinstance(owner, np.ndarray):
        return ("numpy", owner.__array_interface__["data"][0]), int(owner.nbytes)
    return ("cupy", int(owner.data.ptr)), int(owner.nbytes)


def _arrays_in(obj: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """Every array inside a cache: arrays, tuples (NamedTuples), lists, dicts and dataclasses."""
    seen = set() if seen is None else seen
    if _is_array(obj):
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
        for array in _arrays_in(module._cache):
            key, nbytes = _memory_of(array)
            if key not in excluded:
                blocks[key] = nbytes
    return sum(blocks.values())


# ------------------------------------------------------------------------------------------ state


_REGISTRIES = ("_parameters", "_buffers", "_modules", "_forward_hooks")


def _plain_state(module: nn.Module) -> tuple[set[str], dict[str, set], list[tuple[Any, Any]]]:
    """What a forward may create or advance outside the registries: the module's attribute names,
    the keys of its dict attributes, and (generator, state) for its NumPy random generators."""
    attributes = {name: value for name, value in vars(module).items() if name not in _REGISTRIES}
    dict_keys = {name: set(value) for name, value in attributes.items() if isinstance(value, dict)}
    generators = []
    for value in attributes.values():
        for candidate in (value.values() if isinstance(value, dict) else (value,)):
            if isinstance(candidate, np.random.Generator):
                generators.append((candidate, candidate.bit_generator.state))
    return set(attributes), dict_keys, generators


@contextmanager
def _preserved_state(model: nn.Module) -> Iterator[None]:
    """Undo what a forward pass changes in ``model`` when the block exits (even on an error):
    every module's training flag and cache, the buffers (values, and the array objects
    themselves), random generator states, and attributes or dict entries created lazily (such as
    Dropout's per-backend generators)."""
    modules = list(model.modules())
    flags = [(m, m.training) for m in modules]
    caches = [(m, m._cache) for m in modules]
    buffers = [(m, name, buf, buf.copy()) for m in modules for name, buf in m._buffers.items() if buf is not None]
    plain = [(m, *_plain_state(m)) for m in modules]
    try:
        yield
    finally:
        for module, flag in flags:
            object.__setattr__(module, "training", flag)
        for module, cache in caches:
            object.__setattr__(module, "_cache", cache)
        for module, name, original, saved in buffers:
            original[...] = saved
            module._buffers[name] = original
        for module, names, dict_keys, generators in plain:
            for name in set(vars(module)) - names - set(_REGISTRIES):
                del module.__dict__[name]
            for name, keys in dict_keys.items():
                entries = module.__dict__.get(name)
                for key in (set(entries) - keys if isinstance(entries, dict) else ()):
                    del entries[key]
            for generator, state in generators:
                generator.bit_generator.state = state


# ------------------------------------------------------------------------------------------ summary


def summary(model: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224), dtype: Any = np.float32,
            measure_memory: bool = True) -> Summary:
    """Run one forward pass of a random batch of ``input_shape`` through ``model`` and tabulate it.

    Args:
        model: any npresnet ``Module``.
        input_shape: (N, C, H, W) of the batch; MACs and memory are for this whole batch.
        dtype: of the input; must match the model's parameters.
        measure_memory: run the forward in training mode with gradients on and measure the
            activations held for backward (default); False runs it in eval mode under ``no_grad``.

    Returns:
        A :class:`Summary`; ``print(summary(...))`` prints the table. The model is left unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary() expects an npresnet Module, got {type(model).__name__}")
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or min(input_shape) < 1:
        raise ValueError(f"input_shape must be positive sizes with the batch first, got {input_shape}")
    if measure_memory and not is_grad_enabled():
        raise RuntimeError("summary(measure_memory=True) measures what a forward with gradients on keeps for "
                           "backward, so it cannot run inside no_grad(); call it outside, or pass "
                           "measure_memory=False")
    dtype = np.dtype(dtype)
    params = list(model.parameters())
    buffers = list(model.buffers())
    xp = xp_for(backend_name(params[0].data) if params else get_default())
    x = xp.asarray(np.random.default_rng(0).standard_normal(input_shape).astype(dtype))

    rows: list[LayerRow] = []
    called: set[int] = set()
    weighted: set[int] = set()            # ids of the conv / linear modules on the main path

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            first_call = id(module) not in called
            called.add(id(module))
            if isinstance(module, (nn.Conv2d, nn.Linear)) and not _on_shortcut(name):
                weighted.add(id(module))
            own_params = sum(p.size for p in module.parameters()) if first_call else 0
            rows.append(LayerRow(name, type(module).__name__, _output_shape(output), own_params,
                                 _layer_macs(module, output)))
        return hook

    activation_bytes = None
    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules()
               if not any(True for _ in module.children())]
    try:
        with _preserved_state(model):
            if measure_memory:
                model.train()
                model(x)
                activation_bytes = held_for_backward(model, exclude=[x, *(p.data for p in params), *buffers])
            else:
                model.eval()
                with no_grad():
                    model(x)
    finally:
        for handle in handles:
            handle.remove()

    return Summary(
        model_name=type(model).__name__ + (f"({model.extra_repr()})" if model.extra_repr() else ""),
        input_shape=input_shape,
        dtype=dtype,
        rows=rows,
        total_params=sum(p.size for p in params),
        trainable_params=sum(p.size for p in params if p.requires_grad),
        total_macs=sum(row.macs for row in rows),
        weighted_layers=len(weighted),
        input_bytes=int(x.nbytes),
        param_bytes=sum(int(p.data.nbytes) for p in params) + sum(int(b.nbytes) for b in buffers),
        activation_bytes=activation_bytes,
    )


# ------------------------------------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m npresnet.summary",
                                     description="Print a model's layers, parameters, MACs/FLOPs and memory.")
    parser.add_argument("model", help="a factory in npresnet.models, e.g. resnet50, resnet20")
    parser.add_argument("--input-shape", default=None,
                        help="N,C,H,W (default 1,3,224,224; 1,3,32,32 for the CIFAR models)")
    parser.add_argument("--variant", choices=("v1.5", "v1"), default=None, help="ImageNet ResNets: stride placement")
    parser.add_argument("--shortcut", choices=("A", "B"), default=None, help="CIFAR ResNets: shortcut option")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the activation measurement (eval-mode forward under no_grad)")
    args = parser.parse_args(argv)

    from . import models

    cifar = getattr(models, "CIFAR_MODELS", {})
    known = {**getattr(models, "IMAGENET_MODELS", {}), **cifar}
    if args.model not in known:
        parser.error(f"unknown model {args.model!r}; choose from: {', '.join(known)}")
    kwargs = {key: value for key, value in (("variant", args.variant), ("shortcut", args.shortcut))
              if value is not None}
    model = known[args.model](**kwargs)
    if args.dtype != "float32":
        model.to(args.dtype)
    if args.input_shape is None:
        shape = (1, 3, 32, 32) if args.model in cifar else (1, 3, 224, 224)
    else:
        try:
            shape = tuple(int(s) for s in args.input_shape.split(","))
        except ValueError:
            parser.error(f"--input-shape must be comma-separated integers like 1,3,224,224, got {args.input_shape!r}")
    print(summary(model, shape, dtype=args.dtype, measure_memory=not args.no_memory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
