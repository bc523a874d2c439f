"""Stateful layers shaped like ``torch.nn``, each with a hand-written ``backward``."""

from .activation import ReLU
from .batchnorm import BatchNorm2d
from .container import Identity, Sequential
from .conv import Conv2d
from .dropout import Dropout
from .linear import Flatten, Linear
from .loss import CrossEntropyLoss
from .module import CheckedStateDict, IncompatibleKeys, Module
from .parameter import Parameter
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

__all__ = [
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "Identity",
    "CheckedStateDict",
    "IncompatibleKeys",
    "Linear",
    "MaxPool2d",
    "Module",
    "Parameter",
    "ReLU",
    "Sequential",
]
