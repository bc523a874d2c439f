"""ResNets with hand-written backward passes.

ImageNet models (torchvision's architecture, names, state_dict keys and initialisation)::

    resnet18  resnet34  resnet50  resnet101  resnet152  resnext50_32x4d  wide_resnet50_2

CIFAR-10 models (He et al. 2015, section 4.2), with shortcut option "A" (default) or "B", and the
plain networks without shortcuts::

    resnet20  resnet32  resnet44  resnet56  resnet110
    plain20   plain32   plain44   plain56   plain110

Every factory takes keyword arguments only (``num_classes=``, ``seed=`` or ``rng=``, ...); see
``ResNet`` and ``CifarResNet``. ``get_model(name, **kwargs)`` builds one by name.

Example::

    import numpy as np
    from npresnet import models, nn
    model = models.resnet20(seed=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    logits = model(x)                                          # (2, 10)
    criterion = nn.CrossEntropyLoss()
    loss = criterion(logits, np.array([3, 7]))
    dx = model.backward(criterion.backward())                  # dL/dx, and every param.grad
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from .. import nn
from .blocks import BasicBlock, Bottleneck, ResidualBlock, conv1x1, conv3x3
from .cifar import (
    CifarBlock,
    CifarResNet,
    ShortcutA,
    plain20,
    plain32,
    plain44,
    plain56,
    plain110,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from .resnet import (
    ResNet,
    init_weights,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    wide_resnet50_2,
)

IMAGENET_MODELS: dict[str, Callable[..., ResNet]] = {
    f.__name__: f for f in (resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d, wide_resnet50_2)
}
CIFAR_MODELS: dict[str, Callable[..., CifarResNet]] = {
    f.__name__: f
    for f in (resnet20, resnet32, resnet44, resnet56, resnet110, plain20, plain32, plain44, plain56, plain110)
}


def model_names() -> list[str]:
    """Every name ``get_model`` takes: the ImageNet family, then the CIFAR family."""
    return [*IMAGENET_MODELS, *CIFAR_MODELS]


def unknown_model_message(name: str) -> str | None:
    """None if ``name`` is a model; else the error text, with the likely intended name: a name it
    begins (``resnext50`` -> resnext50_32x4d), else the most similar one, among equals the nearest
    depth (``resnet51`` -> "did you mean resnet50?")."""
    names = model_names()
    if name in names:
        return None
    completions = [n for n in names if n.startswith(name)]  # resnext50 -> resnext50_32x4d
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = ""
    if completions:
        hint = f"did you mean {min(completions, key=len)}? "
    elif close:
        digits = "".join(c for c in name if c.isdigit())

        def depth_gap(candidate: str) -> int:
            theirs = "".join(c for c in candidate if c.isdigit())
            return abs(int(theirs) - int(digits)) if theirs and digits else 0

        similarity = {c: difflib.SequenceMatcher(None, name, c).ratio() for c in close}
        hint = f"did you mean {min(close, key=lambda c: (-similarity[c], depth_gap(c)))}? "
    return f"unknown model {name!r}; {hint}models: {', '.join(names)}"


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by its factory name, e.g. ``get_model("resnet50", num_classes=10, seed=0)``."""
    problem = unknown_model_message(name)
    if problem is not None:
        raise ValueError(problem)
    return {**IMAGENET_MODELS, **CIFAR_MODELS}[name](**kwargs)


__all__ = [
    "CIFAR_MODELS",
    "IMAGENET_MODELS",
    "BasicBlock",
    "Bottleneck",
    "CifarBlock",
    "CifarResNet",
    "ResNet",
    "ResidualBlock",
    "ShortcutA",
    "conv1x1",
    "conv3x3",
    "get_model",
    "model_names",
    "unknown_model_message",
    "init_weights",
    "plain20",
    "plain32",
    "plain44",
    "plain56",
    "plain110",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet101",
    "resnet110",
    "resnet152",
    "resnext50_32x4d",
    "wide_resnet50_2",
]
