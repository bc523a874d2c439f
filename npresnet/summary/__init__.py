"""``summary``: a model's layers, stages, parameters, multiply-accumulates and memory, and the answers to
the questions people ask about ResNets (how many blocks, what the "50" counts, the parameters without
the classifier), like ``torchsummary`` / ``torchinfo``.

::

    print(npresnet.summary.summary(npresnet.models.resnet50(), (1, 3, 224, 224)))
    python -m npresnet.summary --model resnet50 --input-shape 1,3,224,224 --variant v1   # from a shell
    python -m npresnet.summary --model resnet18 resnet34 resnet50 --format markdown  # side by side

One forward pass of a batch of ``input_shape`` fills the report: a forward hook on every module
records the name, type and output shape of each call (``record``). From those:

* **MACs** (multiply-accumulates), for the whole given batch (use N = 1 for per-image figures,
  the convention of torchvision's "GFLOPS" and the ResNet paper's "multiply-adds"): convolutions
  N * O * OH * OW * (C/G) * KH * KW, linear layers N * in * out; FLOPs = 2 x MACs
  (``record.layer_macs``).
* **Structure** (``structure``): the blocks and stages, the shortcut branches, the weighted
  layers on the main path and the classifier, read from the modules (never from a table of
  known models), and the per-stage table.
* **Memory** (``memory``), in MB (2**20 bytes, as torchsummary): the input batch, the parameters
  and buffers, and the activations the layers hold for backward, *measured* after a training-mode
  forward.
* **Report** (``report``): text, markdown or JSON; several models side by side (``cli``).

``summary`` leaves the model as it found it (``Module.preserved_state``: training flags, caches,
buffers such as BatchNorm's running statistics, random generators). ``measure_memory=False``
skips the measurement and runs the forward in evaluation mode under ``no_grad``.
"""

from .._callable_module import make_callable
from .cli import main
from .memory import MemoryMeasurement, held_for_backward
from .record import LayerRow, Summary, layer_macs, summary
from .report import answers, as_dict, markdown, to_json
from .structure import SHORTCUT_NAMES, StageRow, Structure, stage_table

__all__ = [
    "LayerRow",
    "MemoryMeasurement",
    "SHORTCUT_NAMES",
    "StageRow",
    "Structure",
    "Summary",
    "answers",
    "as_dict",
    "held_for_backward",
    "layer_macs",
    "main",
    "markdown",
    "stage_table",
    "summary",
    "to_json",
]

make_callable(__name__)  # the 0.1 spelling npresnet.summary(model) still works in 0.2, with a DeprecationWarning
