"""Inputs that keep a gradient check off kinks: distinct values for max-pool, values away from 0 for ReLU."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["kink_free", "tie_free"]


def tie_free(shape: tuple[int, ...], rng: np.random.Generator, dtype: Any = np.float64) -> np.ndarray:
    """Distinct values in (-1, 1), a shuffled ``arange`` (Chainer's recipe for pooling gradient checks):
    neighbours are 2/size apart, so max-pool has no ties, and no value is closer than 0.5/size to 0
    (a ReLU kink). Both gaps are far wider than gradcheck's eps."""
    size = int(np.prod(shape))
    values = (2.0 * rng.permutation(size) + 0.5) / max(size, 1) - 1.0
    return values.reshape(shape).astype(dtype)


def kink_free(
    shape: tuple[int, ...], rng: np.random.Generator, margin: float = 1e-2, dtype: Any = np.float64
) -> np.ndarray:
    """Standard normal values with none closer than ``margin`` to 0 (ReLU's kink)."""
    x = rng.standard_normal(shape)
    near = np.abs(x) < margin
    x[near] = np.copysign(margin + np.abs(x[near]), x[near] + (x[near] == 0))
    return x.astype(dtype)
