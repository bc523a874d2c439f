"""One forward pass with a hook on every module: what :func:`summary` records, and the MAC formulas."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import nn
from ..backend import backend_name, get_default, xp_for
from ..grad_mode import is_grad_enabled, no_grad
from .memory import MemoryMeasurement, held_for_backward, one_value_batchnorm_to_eval
from .structure import Structure, describe

MB = 2**20


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One call of a module during the summary's forward pass."""

    name: str  # dotted path, as in state_dict keys ("layer1.0.conv1"); "" is the model
    type: str  # class name ("Conv2d")
    output_shape: tuple  # (N, O, OH, OW); a tuple of shapes for a multi-output module
    params: int  # parameter elements of the module and its children (0 on repeated calls)
    macs: int  # multiply-accumulates of this call and the calls inside it, whole batch

    @property
    def depth(self) -> int:
        """0 for the model, 1 for its children ("layer1"), 2 for theirs ("layer1.0"), ..."""
        return 0 if not self.name else self.name.count(".") + 1


@dataclasses.dataclass
class Summary:
    """What :func:`summary` measured. ``str(summary)`` is the printed report (``report.text``)."""

    model_name: str  # the class and its options, "ResNet(variant='v1.5')"
    input_shape: tuple[int, ...]
    dtype: np.dtype
    rows: list[LayerRow]  # the leaf modules' calls, in call order: the per-layer table
    calls: list[LayerRow]  # every module's calls (containers too), in the order they finished
    structure: Structure  # blocks, stages, shortcuts, classifier, weighted layers
    total_params: int
    trainable_params: int
    total_macs: int  # for the whole batch input_shape[0]
    input_bytes: int
    param_bytes: int  # parameters and buffers
    memory: MemoryMeasurement | None  # None with measure_memory=False
    label: str = ""  # what the report calls the model ("resnet50"); model_name if empty

    @property
    def name(self) -> str:
        return self.label or self.model_name

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    @property
    def non_trainable_params(self) -> int:
        """The frozen parameters (``requires_grad = False``)."""
        return self.total_params - self.trainable_params

    @property
    def weighted_layers(self) -> int:
        return self.structure.weighted_layers

    @property
    def params_without_classifier(self) -> int:
        return self.total_params - self.structure.classifier_params

    @property
    def total_flops(self) -> int:
        """2 x MACs: each multiply-accumulate is one multiply and one add."""
        return 2 * self.total_macs

    @property
    def macs_per_sample(self) -> int:
        return self.total_macs // self.batch

    @property
    def activation_bytes(self) -> int | None:
        return None if self.memory is None else self.memory.activation_bytes

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

    def table(self, depth: int | None = None) -> list[LayerRow]:
        """The per-layer table down to ``depth``, as torchinfo's ``depth``: 0 the whole network in
        one row, 1 its children (stem layers, stages, head), 2 the blocks, ...; ``None`` every leaf.
        A module at ``depth`` stands for everything inside it (its parameters and MACs summed);
        leaves above that depth are shown as they are."""
        if depth is None:
            return list(self.rows)
        leaves = {row.name for row in self.rows}
        return [call for call in self.calls if call.depth == depth or (call.depth < depth and call.name in leaves)]

    def __str__(self) -> str:
        from .report import text

        return text(self)


def layer_macs(module: nn.Module, output: Any) -> int:
    """Multiply-accumulates of one call of a leaf module, for the whole batch.

    * ``Conv2d``: N * O * OH * OW * (C/G) * KH * KW (each output element is a dot product of
      length C/G * KH * KW);
    * ``Linear``: N * in_features * out_features (N = all leading dimensions of the input);
    * everything else (BatchNorm, ReLU, pooling, the residual additions): 0, a fraction of a
      percent of a ResNet's total, left out as torchvision and He et al. do.
    """
    if isinstance(module, nn.Conv2d):
        N, O, OH, OW = output.shape
        KH, KW = module.kernel_size
        return N * O * OH * OW * (module.in_channels // module.groups) * KH * KW
    if isinstance(module, nn.Linear):
        rows = int(np.prod(output.shape[:-1], dtype=np.int64))
        return rows * module.in_features * module.out_features
    return 0


def _output_shape(output: Any) -> tuple:
    if isinstance(output, (tuple, list)):
        return tuple(_output_shape(o) for o in output)
    return tuple(int(s) for s in getattr(output, "shape", ()))


def summary(
    model: nn.Module,
    input_shape: Sequence[int] = (1, 3, 224, 224),
    dtype: Any = np.float32,
    measure_memory: bool = True,
    label: str = "",
) -> Summary:
    """Run one forward pass of a random batch of ``input_shape`` through ``model`` and tabulate it.

    Args:
        model: any npresnet ``Module``.
        input_shape: (N, C, H, W) of the batch; MACs and memory are for this whole batch.
        dtype: of the input; must match the model's parameters.
        measure_memory: run the forward in training mode with gradients on and measure the
            activations held for backward (default); False runs it in eval mode under ``no_grad``.
        label: what the report calls the model, e.g. its factory name ``"resnet50"``.

    Returns:
        A :class:`Summary`; ``print(summary(...))`` prints the report. The model is left unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary() expects an npresnet Module, got {type(model).__name__}")
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or min(input_shape) < 1:
        raise ValueError(f"input_shape must be positive sizes with the batch first, got {input_shape}")
    if measure_memory and not is_grad_enabled():
        raise RuntimeError(
            "summary(measure_memory=True) measures what a forward with gradients on keeps for "
            "backward, so it cannot run inside no_grad(); call it outside, or pass "
            "measure_memory=False"
        )
    dtype = np.dtype(dtype)
    params = list(model.parameters())
    buffers = list(model.buffers())
    xp = xp_for(backend_name(params[0].data) if params else get_default())
    x = xp.asarray(np.random.default_rng(0).standard_normal(input_shape).astype(dtype))

    named = list(model.named_modules())
    leaves = {id(module) for _, module in named if not any(True for _ in module.children())}
    rows: list[LayerRow] = []
    calls: list[LayerRow] = []
    called: set[int] = set()
    leaf_count_at_entry: dict[int, list[int]] = {}  # id(module) -> stack of len(rows) when it was entered

    def enter(module: nn.Module, inputs: tuple) -> None:
        leaf_count_at_entry.setdefault(id(module), []).append(len(rows))

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            first_call = id(module) not in called
            called.add(id(module))
            own_params = sum(p.size for p in module.parameters()) if first_call else 0
            start = leaf_count_at_entry[id(module)].pop()
            if id(module) in leaves:
                row = LayerRow(
                    name, type(module).__name__, _output_shape(output), own_params, layer_macs(module, output)
                )
                rows.append(row)
            else:
                row = LayerRow(
                    name, type(module).__name__, _output_shape(output), own_params, sum(r.macs for r in rows[start:])
                )
            calls.append(row)

        return hook

    handles = [
        handle
        for name, module in named
        for handle in (module.register_forward_pre_hook(enter), module.register_forward_hook(record(name)))
    ]
    memory = None
    try:
        with model.preserved_state():
            if measure_memory:
                model.train()
                with one_value_batchnorm_to_eval(model) as switched:
                    model(x)
                memory = MemoryMeasurement(
                    activation_bytes=held_for_backward(model, exclude=[x, *(p.data for p in params), *buffers]),
                    batchnorm_layers=sum(1 for m in model.modules() if isinstance(m, nn.BatchNorm2d)),
                    batchnorm_in_eval=tuple(switched),
                )
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
        calls=calls,
        structure=describe(model, rows),
        total_params=sum(p.size for p in params),
        trainable_params=sum(p.size for p in params if p.requires_grad),
        total_macs=sum(row.macs for row in rows),
        input_bytes=int(x.nbytes),
        param_bytes=sum(int(p.data.nbytes) for p in params) + sum(int(b.nbytes) for b in buffers),
        memory=memory,
        label=label,
    )
