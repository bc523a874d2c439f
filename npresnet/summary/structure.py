"""What a model is built of, read from its modules: blocks, stages, shortcuts, classifier, weighted layers.

Nothing here is looked up by model name; every figure comes from the module tree and the calls
of one forward pass:

* **Blocks** are the modules that declare themselves one (``npresnet.models.ResidualBlock``:
  BasicBlock, Bottleneck, CifarBlock, or a block of your own); a block is residual unless it says
  otherwise (``is_residual``: the plain networks). A **stage** is a child of the model that holds
  blocks (torchvision's ``layer1`` ... ``layer4``).
* **Shortcut branches** are what each block declares as ``shortcut_branch``; in a model without
  declared blocks, a module path with a component named ``downsample``, ``shortcut`` or
  ``projection`` (:data:`SHORTCUT_NAMES`).
* **Weighted layers** are the convolutions and linear layers on the main path, i.e. not on a
  shortcut branch: the depth in a ResNet's name (ResNet-50 = 1 stem conv + 16 blocks x 3 convs
  + 1 fc, He et al. 2015, Table 1). A projection shortcut's 1x1 conv is not counted.
* The **classifier** is the child of the model, outside every block, that holds its last linear
  layer (``fc``; a fine-tuning head such as ``Sequential(Linear, ReLU, Dropout, Linear)``
  as a whole).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import nn
from ..models.blocks import ResidualBlock

if TYPE_CHECKING:
    from .record import LayerRow

#: In a model whose blocks do not declare their shortcut, a conv or linear layer whose dotted path has one
#: of these components sits on a shortcut branch (torchvision's ``downsample``; ``shortcut``/``projection``
#: elsewhere) and is not counted in :attr:`Structure.weighted_layers`.
SHORTCUT_NAMES = frozenset({"downsample", "shortcut", "projection"})


@dataclasses.dataclass(frozen=True)
class StageRow:
    """One row of the per-stage table: the stem, a stage of blocks, or the head."""

    name: str  # "stem", "layer1", ..., "head"
    members: tuple[str, ...]  # the model's children in it ("conv1", "bn1", "relu", "maxpool")
    output_shape: tuple
    blocks: int
    params: int
    macs: int


@dataclasses.dataclass(frozen=True)
class Structure:
    stages: tuple[str, ...]  # children of the model that hold blocks
    blocks_per_stage: tuple[int, ...]
    block_types: tuple[str, ...]  # "Bottleneck (1x1, 3x3, 1x1 convs)", one per distinct kind
    residual: bool  # False: the blocks have no shortcut (a plain network)
    weighted_layers: int
    stem_layers: int  # weighted layers called before the first block
    block_layers: tuple[int, ...]  # weighted layers on each block's main path
    head_layers: int  # weighted layers called after the last block
    weighted_convs: int  # of weighted_layers, the convolutions (the rest are linear)
    projection_shortcuts: int  # shortcut branches with weights (not counted)
    shortcut_kinds: tuple[str, ...]  # "Identity", "ShortcutA", "Sequential(Conv2d 1x1, BatchNorm2d)"
    classifier: str  # the classifier's name ("fc"), "" if none
    classifier_text: str  # "Linear 2048 -> 1000"
    classifier_params: int

    @property
    def blocks(self) -> int:
        return sum(self.blocks_per_stage)

    @property
    def weighted_layers_counted_as(self) -> str:
        """'1 stem conv + 16 x 3 convs + 1 fc' (the terms add up to :attr:`weighted_layers`)."""
        if not self.blocks_per_stage:
            linears = self.weighted_layers - self.weighted_convs
            return f"{self.weighted_convs} conv + {linears} linear"
        terms = []
        if self.stem_layers:
            terms.append(f"{self.stem_layers} stem conv{'s' if self.stem_layers > 1 else ''}")
        if self.block_layers:
            kinds = set(self.block_layers)
            per_block = kinds.pop() if len(kinds) == 1 else None
            terms.append(
                f"{len(self.block_layers)} x {per_block} convs"
                if per_block is not None
                else f"{sum(self.block_layers)} convs in {len(self.block_layers)} blocks"
            )
        if self.head_layers:
            where = self.classifier or "head"
            terms.append(f"1 {where}" if self.head_layers == 1 else f"{self.head_layers} layers in {where}")
        return " + ".join(terms) if terms else "0"


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _inside(name: str, roots: set[str]) -> bool:
    return any(prefix in roots for prefix in _prefixes(name)) if name else "" in roots


def _conv_text(conv: nn.Conv2d) -> str:
    KH, KW = conv.kernel_size
    return f"{KH}x{KW}" + (f"/{conv.groups} groups" if conv.groups > 1 else "")


def _shortcut_kind(branch: nn.Module | None) -> str:
    """'identity' (None or nn.Identity), 'conv 1x1 + BatchNorm2d' (a projection), else the class name."""
    if branch is None or isinstance(branch, nn.Identity):
        return "identity"
    layers = [m for m in branch.modules() if not any(True for _ in m.children())]
    if not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in layers):
        return type(branch).__name__
    return " + ".join(f"conv {_conv_text(m)}" if isinstance(m, nn.Conv2d) else type(m).__name__ for m in layers)


def classifier_name(model: nn.Module) -> str:
    """The name of the model's child, outside every block, that holds its last linear layer ("fc"); "" if none."""
    blocks = {name for name, m in model.named_modules() if isinstance(m, ResidualBlock)}
    linears = [
        name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name and not _inside(name, blocks)
    ]
    return linears[-1].split(".")[0] if linears else ""


def describe(model: nn.Module, rows: Sequence[LayerRow]) -> Structure:
    """Read the structure of ``model``; ``rows`` are its leaf calls from one forward pass, in order."""
    named = dict(model.named_modules())
    blocks = [(name, m) for name, m in named.items() if isinstance(m, ResidualBlock) and name]
    block_names = [name for name, _ in blocks]

    # Shortcut branches: declared by the blocks, else found by name.
    shortcut_roots: set[str] = set()
    shortcut_kinds: list[str] = []
    projections = 0
    by_id = {id(m): name for name, m in named.items()}
    for _, block in blocks:
        if not block.is_residual:
            continue
        branch = block.shortcut_branch
        kind = _shortcut_kind(branch)
        if kind not in shortcut_kinds:
            shortcut_kinds.append(kind)
        if branch is not None:
            shortcut_roots.add(by_id[id(branch)])
            projections += any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in branch.modules())
    if not blocks:
        shortcut_roots = {name for name in named if name and name.split(".")[-1] in SHORTCUT_NAMES}

    # Weighted layers on the main path, in call order (a module called twice counts once).
    weighted: list[str] = []
    for row in rows:
        if row.type in ("Conv2d", "Linear") and row.name not in weighted and not _inside(row.name, shortcut_roots):
            if isinstance(named[row.name], (nn.Conv2d, nn.Linear)):
                weighted.append(row.name)
    in_block = [next((b for b in block_names if _inside(w, {b})), None) for w in weighted]
    first = next((i for i, b in enumerate(in_block) if b is not None), len(weighted))
    last = max((i for i, b in enumerate(in_block) if b is not None), default=-1)
    stem_layers = sum(1 for i, b in enumerate(in_block) if b is None and i < first)
    head_layers = sum(1 for i, b in enumerate(in_block) if b is None and i > last)
    block_layers = tuple(sum(1 for b in in_block if b == name) for name in block_names)

    # Stages: the model's children that hold blocks, in order.
    stages: list[str] = []
    for name in block_names:
        top = name.split(".")[0]
        if top not in stages:
            stages.append(top)
    blocks_per_stage = tuple(sum(1 for b in block_names if b.split(".")[0] == s) for s in stages)

    block_types: list[str] = []
    for name, block in blocks:
        convs = [m for n, m in block.named_modules(name) if isinstance(m, nn.Conv2d) and not _inside(n, shortcut_roots)]
        text = f"{type(block).__name__} ({', '.join(_conv_text(c) for c in convs)} convs)"
        if text not in block_types:
            block_types.append(text)

    classifier = classifier_name(model)
    classifier_text, classifier_params = "", 0
    if classifier:
        head = named[classifier]
        layers = [m for m in head.modules() if not any(True for _ in m.children())]
        classifier_text = ", ".join(
            f"Linear {m.in_features} -> {m.out_features}" if isinstance(m, nn.Linear) else type(m).__name__
            for m in layers
        )
        classifier_params = sum(p.size for p in head.parameters())

    return Structure(
        stages=tuple(stages),
        blocks_per_stage=blocks_per_stage,
        block_types=tuple(block_types),
        residual=any(block.is_residual for _, block in blocks),
        weighted_layers=len(weighted),
        stem_layers=stem_layers if blocks else 0,
        block_layers=block_layers,
        head_layers=head_layers if blocks else 0,
        weighted_convs=sum(1 for w in weighted if isinstance(named[w], nn.Conv2d)),
        projection_shortcuts=projections,
        shortcut_kinds=tuple(shortcut_kinds),
        classifier=classifier,
        classifier_text=classifier_text,
        classifier_params=classifier_params,
    )


def stage_table(calls: Sequence[LayerRow], structure: Structure) -> list[StageRow]:
    """The per-stage rows from the model's children's calls: the stem (every child called before the
    first stage), each stage, the head (every child called after the last). Empty without stages."""
    if not structure.stages:
        return []
    top = [call for call in calls if call.depth == 1]
    stage_index = [i for i, call in enumerate(top) if call.name in structure.stages]
    blocks = dict(zip(structure.stages, structure.blocks_per_stage))
    groups: list[tuple[str, list[LayerRow]]] = []
    if top[: stage_index[0]]:
        groups.append(("stem", top[: stage_index[0]]))
    groups.extend((call.name, [call]) for call in top[stage_index[0] : stage_index[-1] + 1])
    if top[stage_index[-1] + 1 :]:
        groups.append(("head", top[stage_index[-1] + 1 :]))
    return [
        StageRow(
            name,
            tuple(c.name for c in members),
            members[-1].output_shape,
            blocks.get(name, 0) if name not in ("stem", "head") else 0,
            sum(c.params for c in members),
            sum(c.macs for c in members),
        )
        for name, members in groups
    ]
