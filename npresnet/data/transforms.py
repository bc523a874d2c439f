"""Batch transforms for data augmentation: vectorised over the batch, seeded, on the batch's backend.

Every transform is called as ``x = transform(x, rng)`` on a whole batch x (N, C, H, W) (NumPy or
CuPy), with ``rng`` a NumPy ``Generator``. Random choices (N crop offsets, N flip coins) are drawn
on the host from ``rng`` and applied to the batch with array operations on its own backend
(``xp = get_array_module(x)``), so the same seed gives the same batch on the CPU and the GPU.
``DataLoader`` hands each batch its own generator, derived from (seed, epoch, batch index).

    RandomCrop(size, padding)     zero-pad every side by ``padding``, cut a random size x size window
    RandomHorizontalFlip(p)       mirror each image left-right with probability p
    Normalize(mean, std)          (x - mean) / std, per channel (C,) or per pixel (C, H, W)
    Compose([t1, t2, ...])        apply in order, all drawing from the same generator
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backend import backend_name, get_array_module, to_backend
from ..checks import check_nchw, pair

__all__ = ["Compose", "Normalize", "RandomCrop", "RandomHorizontalFlip"]


class Compose:
    """Apply ``transforms`` in order; each gets the same ``rng`` (so draws are sequential)."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any, rng: np.random.Generator) -> Any:
        for transform in self.transforms:
            x = transform(x, rng)
        return x

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


class RandomCrop:
    """Pad with zeros by ``padding`` on every side, then cut a random ``size`` window per image.

    (N, C, H, W) -> (N, C, OH, OW) with (OH, OW) = ``size``. Image i's window starts at row
    ``top[i]`` and column ``left[i]`` of the padded image, drawn uniformly from every position
    where it fits. The crop is one gather for the whole batch::

        out[i, c, r, s] = padded[i, c, top[i] + r, left[i] + s]
    """

    def __init__(self, size: int | tuple[int, int], padding: int = 0) -> None:
        self.size = pair(size, "size")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = int(padding)

    def __call__(self, x: Any, rng: np.random.Generator) -> Any:
        check_nchw(x, None, "batch", "RandomCrop")
        xp = get_array_module(x)
        N, C, H, W = x.shape
        OH, OW = self.size
        p = self.padding
        if OH > H + 2 * p or OW > W + 2 * p:
            raise ValueError(f"RandomCrop of size {self.size} does not fit images of size {H}x{W} padded by {p}")
        padded = xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
        top = xp.asarray(rng.integers(0, H + 2 * p - OH + 1, size=N))
        left = xp.asarray(rng.integers(0, W + 2 * p - OW + 1, size=N))
        rows = top[:, None] + xp.arange(OH)  # (N, OH)
        cols = left[:, None] + xp.arange(OW)  # (N, OW)
        return padded[
            xp.arange(N)[:, None, None, None],
            xp.arange(C)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror image i left-right (``x[i, :, :, ::-1]``) when its coin ``u[i] < p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, x: Any, rng: np.random.Generator) -> Any:
        check_nchw(x, None, "batch", "RandomHorizontalFlip")
        xp = get_array_module(x)
        flip = xp.asarray(rng.random(x.shape[0]) < self.p)
        return xp.where(flip[:, None, None, None], x[:, :, :, ::-1], x)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """``(x - mean) / std`` (torchvision's formula). ``mean`` and ``std`` are per channel, shape
    (C,), or per pixel, shape (C, H, W); ``std=1`` only subtracts (the paper's per-pixel mean)."""

    def __init__(self, mean: Any, std: Any = 1.0) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.broadcast_to(np.asarray(std, dtype=np.float64), self.mean.shape).copy()
        if self.mean.ndim not in (1, 3):
            raise ValueError(f"Normalize mean must have shape (C,) or (C, H, W), got {self.mean.shape}")
        if np.any(self.std <= 0):
            raise ValueError("Normalize std must be > 0 everywhere")
        self._converted: dict[tuple[str, str], tuple[Any, Any]] = {}

    def _constants(self, x: Any) -> tuple[Any, Any]:
        """mean and std as (1, C, 1, 1) or (1, C, H, W) arrays on x's backend and dtype (cached)."""
        key = (backend_name(x), x.dtype.name)
        if key not in self._converted:
            shape = (1, -1, 1, 1) if self.mean.ndim == 1 else (1, *self.mean.shape)
            self._converted[key] = tuple(
                to_backend(a.astype(x.dtype).reshape(shape), key[0]) for a in (self.mean, self.std)
            )
        return self._converted[key]

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        check_nchw(x, None, "batch", "Normalize")
        expected = self.mean.shape[0]
        if x.shape[1] != expected or (self.mean.ndim == 3 and tuple(x.shape[1:]) != self.mean.shape):
            raise ValueError(
                f"Normalize has statistics of shape {self.mean.shape}, got a batch of shape {tuple(x.shape)}"
            )
        mean, std = self._constants(x)
        return (x - mean) / std

    def __repr__(self) -> str:
        kind = "per channel" if self.mean.ndim == 1 else "per pixel"
        return f"Normalize({kind}, shape={self.mean.shape})"
