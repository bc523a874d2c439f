"""The datasets and transforms a ``TrainConfig`` names (digits, CIFAR-10 or an image folder)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import data as D
from .config import TrainConfig

__all__ = ["build_transforms", "load_datasets"]


def load_datasets(config: TrainConfig) -> D.Splits:
    """The (train, test) datasets named by ``config.data``."""
    if config.data == "digits":
        return D.digits()
    root = config.data_root
    if not root:  # TrainConfig checks this too, when it is made
        raise ValueError(f"--data {config.data} needs --data-root (a local folder; nothing is downloaded)")
    if config.data == "cifar10":
        return D.cifar10(root)
    test_dir = next((os.path.join(root, d) for d in ("test", "val") if os.path.isdir(os.path.join(root, d))), None)
    if not os.path.isdir(os.path.join(root, "train")) or test_dir is None:
        raise FileNotFoundError(
            f"--data imagefolder expects {root}/train/<class>/... and {root}/test/<class>/... (or val/)"
        )
    train_set = D.ImageFolder(os.path.join(root, "train"))
    return D.Splits(train_set, D.ImageFolder(test_dir, size=train_set.size))


def build_transforms(config: TrainConfig, train_set: Any) -> tuple[Any, Any]:
    """(train transform, test transform). Normalisation first, so crops pad with the mean (zero)."""
    C, H, W = train_set.image_shape
    steps: list[Callable[[Any, np.random.Generator], Any]] = []  # transform(x, rng) -> x
    if config.normalize == "channel":
        mean, std = train_set.statistics()
        steps.append(D.Normalize(mean, np.maximum(std, 1e-8)))
    elif config.normalize == "pixel-mean":
        mean, _ = train_set.statistics(per_pixel=True)
        steps.append(D.Normalize(mean))
    test_transform = D.Compose(list(steps)) if steps else None
    if config.augment:
        if config.data == "digits":  # 8x8 digits: shift by up to 1 pixel; no mirror images
            steps.append(D.RandomCrop((H, W), padding=1))
        else:  # natural images: the paper's pad-4 crop and flip
            steps += [D.RandomCrop((H, W), padding=max(1, H // 8)), D.RandomHorizontalFlip()]
    return (D.Compose(steps) if steps else None), test_transform
