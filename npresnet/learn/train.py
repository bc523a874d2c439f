"""``python -m npresnet.learn train``: ResNet-20 learns the digits through the learner's own layers.

Every exercise whose file in the learner's folder passes ``check`` is swapped in for npresnet's layer
of that kind (the run prints which layers are whose): its forward and backward compute the training
steps. A file that is started but fails its check is refused before training (``--anyway`` swaps it
in regardless, to watch what a wrong backward does to learning). Untouched skeletons are skipped.

Evaluation, and the running statistics BatchNorm keeps for it, come from npresnet's own layers in
evaluation mode (the exercises write training mode only), with the weights the learner's backward
trained. ResNet-20 (option-A shortcuts) on scikit-learn's 8x8 digits, SGD with momentum, a cosine
schedule: a few epochs reach well above 90% test accuracy.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import functional as F
from .. import nn
from ..grad_mode import no_grad
from ..models.cifar import CifarBlock, resnet20
from .catalogue import Exercise, get
from .grader import load
from .progress import check, path_of

TARGET_ACCURACY = 0.9
DEFAULT_EPOCHS = 4
BATCH = 64
LR = 0.1
SWAPPABLE = ("linear", "relu", "cross_entropy", "avgpool", "conv", "batchnorm", "basic_block")


class _Yours(nn.Module):
    """npresnet's ``layer`` kept as a child (its parameters and buffers, and evaluation mode), with the
    learner's ``forward``/``backward`` functions computing the training steps."""

    def __init__(self, layer: nn.Module, functions: tuple[Callable[..., Any], Callable[..., Any]]) -> None:
        super().__init__()
        self.layer = layer
        object.__setattr__(self, "functions", functions)

    def extra_repr(self) -> str:
        return "the learner's forward and backward"


class YourLinear(_Yours):
    def forward(self, x: Any) -> Any:
        layer = self.layer
        y, cache = self.functions[0](x, layer.weight.data, layer.bias.data)
        self._save_for_backward(cache)
        return y

    def backward(self, dout: Any) -> Any:
        dx, dw, db = self.functions[1](dout, self._pop_cache())
        self.layer.weight.accumulate_grad(dw)
        self.layer.bias.accumulate_grad(db)
        return dx


class YourReLU(_Yours):
    def forward(self, x: Any) -> Any:
        y, cache = self.functions[0](x)
        self._save_for_backward(cache)
        return y

    def backward(self, dout: Any) -> Any:
        return self.functions[1](dout, self._pop_cache())


class YourGlobalAvgPool(_Yours):
    """The global average pool (AdaptiveAvgPool2d(1)) as one k x k window, k = H = W."""

    def forward(self, x: Any) -> Any:
        if x.shape[2] != x.shape[3]:
            raise ValueError(f"the global average pool needs a square input to be one window, got {x.shape}")
        y, cache = self.functions[0](x, x.shape[2], x.shape[2])
        self._save_for_backward(cache)
        return y

    def backward(self, dout: Any) -> Any:
        return self.functions[1](dout, self._pop_cache())


class YourConv(_Yours):
    def forward(self, x: Any) -> Any:
        conv = self.layer
        if conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1] or conv.groups != 1:
            raise ValueError(f"the exercise's convolution has one stride and one padding: {conv!r}")
        bias = conv.bias.data if conv.bias is not None else np.zeros(conv.out_channels, x.dtype)
        y, cache = self.functions[0](x, conv.weight.data, bias, conv.stride[0], conv.padding[0])
        self._save_for_backward(cache)
        return y

    def backward(self, dout: Any) -> Any:
        dx, dw, db = self.functions[1](dout, self._pop_cache())
        self.layer.weight.accumulate_grad(dw)
        if self.layer.bias is not None:
            self.layer.bias.accumulate_grad(db)
        return dx


class YourBatchNorm(_Yours):
    """Training mode: the learner's BatchNorm, with npresnet's layer run alongside without gradients
    for the running statistics. Evaluation mode: npresnet's layer."""

    def forward(self, x: Any) -> Any:
        if not self.training:
            return self.layer(x)
        with no_grad():
            self.layer(x)  # updates the running statistics exactly as npresnet does
        bn = self.layer
        y, cache = self.functions[0](x, bn.weight.data, bn.bias.data, bn.eps)
        self._save_for_backward(cache)
        return y

    def backward(self, dout: Any) -> Any:
        dx, dgamma, dbeta = self.functions[1](dout, self._pop_cache())
        self.layer.weight.accumulate_grad(dgamma)
        self.layer.bias.accumulate_grad(dbeta)
        return dx


# the exercise's parameter name -> (the CifarBlock child, its attribute)
_BLOCK_PARTS: tuple[tuple[str, str, str], ...] = (
    ("w1", "conv1", "weight"),
    ("gamma1", "bn1", "weight"),
    ("beta1", "bn1", "bias"),
    ("w2", "conv2", "weight"),
    ("gamma2", "bn2", "weight"),
    ("beta2", "bn2", "bias"),
)


class YourBlock(_Yours):
    """A CifarBlock with an identity shortcut, computed by the learner's basic_block in training mode
    (npresnet's block runs alongside without gradients for the running statistics)."""

    def forward(self, x: Any) -> Any:
        if not self.training:
            return self.layer(x)
        with no_grad():
            self.layer(x)
        block = self.layer
        params = {key: getattr(getattr(block, child), attr).data for key, child, attr in _BLOCK_PARTS}
        y, cache = self.functions[0](x, params)
        self._save_for_backward(cache)
        return y

    def backward(self, dout: Any) -> Any:
        dx, grads = self.functions[1](dout, self._pop_cache())
        for key, child, attr in _BLOCK_PARTS:
            getattr(getattr(self.layer, child), attr).accumulate_grad(grads[key])
        return dx


def _wrap(module: nn.Module, learned: dict[str, tuple[Callable[..., Any], Callable[..., Any]]]) -> nn.Module | None:
    """The learner's replacement for ``module``, or None to keep npresnet's."""
    if isinstance(module, CifarBlock) and "basic_block" in learned and isinstance(module.shortcut, nn.Identity):
        return YourBlock(module, learned["basic_block"])
    table: list[tuple[type, str, type[_Yours]]] = [
        (nn.Linear, "linear", YourLinear),
        (nn.ReLU, "relu", YourReLU),
        (nn.AdaptiveAvgPool2d, "avgpool", YourGlobalAvgPool),
        (nn.Conv2d, "conv", YourConv),
        (nn.BatchNorm2d, "batchnorm", YourBatchNorm),
    ]
    for kind, name, wrapper in table:
        if isinstance(module, kind) and name in learned:
            return wrapper(module, learned[name])
    return None


def swap_in(model: nn.Module, learned: dict[str, tuple[Callable[..., Any], Callable[..., Any]]]) -> list[str]:
    """Replace every layer of ``model`` that has a learned counterpart, in place (a block whole,
    before its layers); returns the names of the layers replaced."""
    replaced = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            if child is None:
                continue
            full = f"{prefix}.{name}" if prefix else name
            wrapper = _wrap(child, learned)
            if wrapper is None:
                visit(child, full)
            else:
                parent.replace_child(name, wrapper)
                replaced.append(full)

    visit(model, "")
    return replaced


def gather(folder: str, anyway: bool) -> tuple[dict[str, Any], list[str], list[str]]:
    """(learned functions by exercise, lines saying whose each kind of layer is, refusals)."""
    learned: dict[str, Any] = {}
    lines, refusals = [], []
    for name in SWAPPABLE:
        exercise: Exercise = get(name)
        path = path_of(folder, exercise)
        if not os.path.isfile(path):
            lines.append(f"  {name:<13} npresnet's  (no {exercise.filename} in {folder})")
            continue
        result = check(folder, exercise)
        if result.status in ("not written", "missing"):
            lines.append(f"  {name:<13} npresnet's  ({path} is not written yet)")
            continue
        if not result.passed:
            if not anyway:
                refusals.append(f"{path} does not pass its check:\n{result.message}")
                continue
            lines.append(f"  {name:<13} YOURS       ({path}: its check FAILS, swapped in because of --anyway)")
        else:
            lines.append(f"  {name:<13} YOURS       ({path}, passes its check): {exercise.swapped_in}")
        module = load(path)
        learned[name] = (getattr(module, exercise.forward_name), getattr(module, exercise.backward_name))
    return learned, lines, refusals


def _loss(learned: dict[str, Any]) -> Callable[[Any, Any], tuple[float, Any]]:
    """(loss, dlogits) for a batch: the learner's cross-entropy if they wrote it, else npresnet's."""
    if "cross_entropy" in learned:
        forward, backward = learned["cross_entropy"]

        def yours(logits: Any, target: Any) -> tuple[float, Any]:
            loss, cache = forward(logits, target)
            return float(loss), backward(1.0, cache)

        return yours

    def npresnets(logits: Any, target: Any) -> tuple[float, Any]:
        loss, cache = F.cross_entropy_forward(logits, target)
        return float(loss), F.cross_entropy_backward(np.asarray(1.0, logits.dtype), cache)

    return npresnets


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    correct = 0
    with no_grad():
        for start in range(0, len(labels), 256):
            logits = model(images[start : start + 256])
            correct += int((logits.argmax(axis=1) == labels[start : start + 256]).sum())
    return correct / len(labels)


def run(learned: dict[str, Any], epochs: int, seed: int, out: Any = None) -> tuple[float, list[float]]:
    """Train ResNet-20 on the digits with the learned layers; (test accuracy, mean loss per epoch).
    Progress goes to ``out`` (default: sys.stdout at the time of the call)."""
    out = sys.stdout if out is None else out
    from ..data import digits
    from ..optim import SGD

    train, test = digits(seed=0)
    model = resnet20(num_classes=10, seed=seed)
    replaced = swap_in(model, learned)
    print(f"{len(replaced)} layers of ResNet-20 run your code", file=out)
    optimizer = SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    loss_of = _loss(learned)
    rng = np.random.default_rng(seed)
    x_train, y_train = train.get_batch(np.arange(len(train)))
    x_test, y_test = test.get_batch(np.arange(len(test)))
    steps = epochs * math.ceil(len(y_train) / BATCH)
    step, losses = 0, list[float]()
    for epoch in range(1, epochs + 1):
        model.train()
        started, total, seen = time.perf_counter(), 0.0, 0
        for batch in np.array_split(rng.permutation(len(y_train)), math.ceil(len(y_train) / BATCH)):
            for group in optimizer.param_groups:
                group["lr"] = LR * 0.5 * (1 + math.cos(math.pi * step / steps))  # cosine to 0
            optimizer.zero_grad()
            logits = model(x_train[batch])
            loss, dlogits = loss_of(logits, y_train[batch])
            if not math.isfinite(loss):
                print(f"epoch {epoch}: the loss is {loss}: training diverged", file=out)
                return accuracy(model, x_test, y_test), [*losses, loss]
            model.backward(dlogits.astype(logits.dtype, copy=False))
            optimizer.step()
            total, seen, step = total + loss * len(batch), seen + len(batch), step + 1
        losses.append(total / seen)
        acc = accuracy(model, x_test, y_test)
        print(
            f"epoch {epoch}/{epochs}: training loss {losses[-1]:.4f}, test accuracy {100 * acc:.1f}% "
            f"({time.perf_counter() - started:.1f} s)",
            file=out,
        )
    return acc, losses


def main(folder: str, epochs: int | None = None, seed: int = 0, anyway: bool = False) -> int:
    """The ``train`` command. Exit status 0: reached TARGET_ACCURACY; 1: refused or did not learn."""
    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    learned, lines, refusals = gather(folder, anyway)
    if refusals:
        for refusal in refusals:
            print(f"refused before training: {refusal}\n", file=sys.stderr)
        print(
            "Fix the file (python -m npresnet.learn check NAME), move it out of the folder, or pass --anyway "
            "to watch what it does to training.",
            file=sys.stderr,
        )
        return 1
    print(f"ResNet-20 on the digits, {epochs} epochs, seed {seed}. Whose layers:")
    print("\n".join(lines))
    if not learned:
        print(f"(none of {folder}'s files is complete yet: this run is npresnet's alone, for comparison)")
    print("(evaluation: npresnet's layers in evaluation mode, with the weights your backward trained)")
    try:
        acc, losses = run(learned, epochs, seed)
    except ImportError as error:  # the digits ship with scikit-learn, an optional dependency
        print(f"cannot train: {error}", file=sys.stderr)
        return 1
    if acc >= TARGET_ACCURACY and math.isfinite(losses[-1]):
        print(f"reached {100 * acc:.1f}% test accuracy: the network learned through your code")
        return 0
    print(
        f"reached only {100 * acc:.1f}% test accuracy (the target is {100 * TARGET_ACCURACY:.0f}%): the network "
        "did not learn. A wrong backward in a swapped-in layer does this; check each file again."
    )
    return 1
