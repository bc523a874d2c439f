"""What is timed: the models, their inputs' default sizes, the step (forward or training) and its MACs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import models, nn, no_grad
from ..backend import get_array_module
from ..engine import autotune
from ..models import model_names, unknown_model_message
from ..optim import SGD

__all__ = [
    "DEFAULT_MODELS",
    "build_npresnet",
    "default_batch",
    "default_size",
    "forward_macs",
    "is_cifar",
    "make_step",
    "model_names",
    "training_step",
    "unknown_model_message",
]

DEFAULT_MODELS = ("resnet18", "resnet50", "resnet20", "resnet56")
CIFAR_PREFIXES = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "plain")


def is_cifar(name: str) -> bool:
    return name.startswith(CIFAR_PREFIXES)


def default_size(name: str) -> int:
    return 32 if is_cifar(name) else 224


def default_batch(name: str) -> int:
    return 64 if is_cifar(name) else 8


def build_npresnet(name: str, dtype: Any, backend: str) -> nn.Module:
    problem = unknown_model_message(name)
    if problem is not None:
        raise SystemExit(problem)
    return models.get_model(name, seed=0).to(np.dtype(dtype)).to(backend)


def training_step(model: nn.Module, criterion: nn.CrossEntropyLoss, optimizer: SGD, x: Any, target: Any) -> Any:
    """forward + loss + backward + SGD update: one step of training."""
    optimizer.zero_grad()
    loss = criterion(model(x), target)
    model.backward(criterion.backward())
    optimizer.step()
    return loss


def make_step(
    mode: str, model: nn.Module, criterion: nn.CrossEntropyLoss, optimizer: SGD, x: Any, target: Any
) -> Callable[[], Any]:
    """The timed unit: an evaluation-mode forward without caches, or a whole training step."""
    if mode == "forward":
        model.eval()

        def forward() -> Any:
            with no_grad():
                return model(x)

        return forward
    model.train()
    return lambda: training_step(model, criterion, optimizer, x, target)


def forward_macs(model: nn.Module, input_shape: tuple[int, ...], dtype: Any) -> int:
    """Multiply-accumulates of the convolutions and linear layers for one forward of ``input_shape``."""
    total = 0

    def count(module: nn.Module, inputs: tuple, output: Any) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.size * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += output.size * module.in_features

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    xp = get_array_module(next(iter(model.parameters())).data)
    # One sample, by the fixed rule: in measure mode its layers' winners would be the batch-1
    # winners, which autotune reuses for the same layers at the real batch size (its similar shapes).
    previous = autotune.set_mode("fixed")
    try:
        with no_grad():
            model(xp.zeros((1, *input_shape[1:]), dtype=dtype))
    finally:
        autotune.set_mode(previous)
    model.train(was_training)
    for h in handles:
        h.remove()
    return total * input_shape[0]
