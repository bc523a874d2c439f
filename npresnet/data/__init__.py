"""Data for training: datasets, a ``DataLoader`` and batch transforms (augmentation).

::

    from npresnet.data import DataLoader, digits, transforms as T
    train, test = digits()                                   # (N, 3, 8, 8) float32 in [0, 1]
    mean, std = train.statistics()
    augment = T.Compose([T.Normalize(mean, std), T.RandomCrop(8, padding=1)])
    loader = DataLoader(train, batch_size=128, shuffle=True, seed=0, transform=augment)
    for x, y in loader:                                      # x (128, 3, 8, 8), y (128,)
        ...

See ``datasets`` (digits, cifar10, ImageFolder), ``loader`` and ``transforms``.
"""

from . import transforms
from .datasets import CIFAR10_CLASSES, ImageFolder, Splits, cifar10, digits, read_cifar10_file, stratified_split
from .loader import ArrayDataset, DataLoader
from .transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip

__all__ = [
    "CIFAR10_CLASSES",
    "ArrayDataset",
    "Compose",
    "DataLoader",
    "ImageFolder",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Splits",
    "cifar10",
    "digits",
    "read_cifar10_file",
    "stratified_split",
    "transforms",
]
