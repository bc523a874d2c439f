"""``ArrayDataset`` (images and labels in memory) and ``DataLoader`` (batches, shuffling, prefetch).

A dataset is anything with ``len(dataset)``, ``dataset.num_classes`` and
``dataset.get_batch(indices) -> (x, y)``: x float32 (B, C, H, W), y int64 (B,), NumPy arrays.
Fetching a whole batch at once keeps the work vectorised (one fancy-index, not B Python calls).

``DataLoader`` randomness is *counter-based*: epoch e's order comes from the generator seeded by
(seed, e), and batch b's augmentation from (seed, e, b). Nothing depends on how many batches
were drawn before, so an epoch can be replayed exactly (``set_epoch``), a resumed run sees the
same batches as an uninterrupted one, and the background prefetch thread changes nothing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np

from ..backend import to_backend

__all__ = ["ArrayDataset", "DataLoader", "dataset_statistics", "shuffled_order"]


class ArrayDataset:
    """Images (N, C, H, W) and integer labels (N,) held in memory.

    ``images`` may be uint8 (0..255, scaled to [0, 1] float32 per batch, which keeps CIFAR-10's
    50,000 images at 150 MB instead of 600 MB) or floating point (converted to float32 as is).
    Labels must lie in [0, num_classes); ``num_classes`` defaults to ``len(classes)`` or max + 1.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Any,
        classes: Sequence[str] | None = None,
        num_classes: int | None = None,
        name: str = "dataset",
    ) -> None:
        images, labels = np.asarray(images), np.asarray(labels)
        self.name = name
        if images.ndim != 4:
            raise ValueError(f"{name}: images must be 4-D (N, C, H, W), got shape {images.shape}")
        if images.dtype != np.uint8 and images.dtype.kind != "f":
            raise TypeError(f"{name}: images must be uint8 or floating point, got dtype {images.dtype}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise TypeError(
                f"{name}: labels must be a 1-D integer array, got dtype {labels.dtype} and shape {labels.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels; they must match one to one")
        if num_classes is None:
            num_classes = len(classes) if classes is not None else (int(labels.max()) + 1 if len(labels) else 0)
        self.num_classes = int(num_classes)
        if len(labels):
            bad = np.flatnonzero((labels < 0) | (labels >= self.num_classes))
            if bad.size:
                raise ValueError(
                    f"{name}: labels must lie in [0, {self.num_classes}), but label {int(labels[bad[0]])} "
                    f"at index {int(bad[0])} does not ({bad.size} bad label(s) in all)"
                )
        self.images, self.labels = images, labels.astype(np.int64)
        self.classes = list(classes) if classes is not None else [str(i) for i in range(self.num_classes)]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        C, H, W = self.images.shape[1:]
        return C, H, W

    def get_batch(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """x float32 (B, C, H, W), y int64 (B,) for the given indices."""
        x = self.images[indices]
        x = x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else x.astype(np.float32)
        return x, self.labels[indices]

    def subset(self, indices: Any, name: str | None = None) -> ArrayDataset:
        """A new dataset of the given samples (e.g. a quick run on the first 500 images)."""
        indices = np.asarray(indices)
        return ArrayDataset(
            self.images[indices], self.labels[indices], self.classes, self.num_classes, name or self.name
        )

    def statistics(self, per_pixel: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """mean and std of the images as ``get_batch`` returns them: per channel (C,) or per pixel (C, H, W)."""
        return dataset_statistics(self, per_pixel)

    def __repr__(self) -> str:
        shape, classes = self.image_shape, self.num_classes
        return f"ArrayDataset({self.name!r}, {len(self)} images of shape {shape}, {classes} classes)"


def dataset_statistics(dataset: Any, per_pixel: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (biased) std over a dataset's ``get_batch`` images, in float64, 4096 images at a time:
    per channel, shape (C,), or per pixel, shape (C, H, W)."""
    axes = 0 if per_pixel else (0, 2, 3)
    shape = tuple(dataset.image_shape) if per_pixel else tuple(dataset.image_shape)[:1]
    total, squares, count = np.zeros(shape), np.zeros(shape), 0
    for start in range(0, len(dataset), 4096):
        x, _ = dataset.get_batch(np.arange(start, min(start + 4096, len(dataset))))
        x = x.astype(np.float64)
        total += x.sum(axis=axes)
        squares += (x * x).sum(axis=axes)
        count += x.shape[0] * (1 if per_pixel else x.shape[2] * x.shape[3])
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - mean * mean, 0.0))


def _generator(seed: int, *counters: int) -> np.random.Generator:
    """An independent generator for (seed, counters...): counter-based, no shared state."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=counters)))


def shuffled_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of ``n`` samples in epoch ``epoch``: a permutation of ``arange(n)`` (int64, (n,)).

    It depends only on (seed, epoch): the generator seeded by (seed, epoch, 0), independent of
    every other draw. ``DataLoader(shuffle=True, seed=seed)`` serves epoch e in this order, and
    ``npresnet.distributed.DistributedSampler`` shards this same order over the ranks.
    """
    return _generator(seed, epoch, 0).permutation(n)


class DataLoader:
    """Batches from a dataset: ``for x, y in loader`` gives x (B, C, H, W) and y (B,) on ``backend``.

    Args:
        dataset: an ``ArrayDataset`` (or anything with ``__len__``, ``get_batch``, ``num_classes``).
        batch_size: B; the last batch is smaller unless ``drop_last``.
        shuffle: a new order every epoch, from (seed, epoch).
        seed: the root of all randomness here (order and augmentation).
        transform: ``transform(x, rng)`` applied to each batch on its backend, with the batch's own
            generator (see ``transforms``).
        prefetch: batches prepared ahead by a background thread (0: none, everything inline).
        backend, dtype: where and as what x is delivered ("numpy" or "cupy"; float32 or float64).

    Each ``iter(loader)`` runs one epoch, by default the next one; ``set_epoch(e)`` chooses it.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        transform: Callable[[Any, np.random.Generator], Any] | None = None,
        prefetch: int = 0,
        backend: str = "numpy",
        dtype: Any = np.float32,
    ) -> None:
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        if len(dataset) == 0:
            raise ValueError(f"the dataset {getattr(dataset, 'name', '')!r} is empty")
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, int(seed)
        self.transform, self.prefetch = transform, int(prefetch)
        self.backend, self.dtype = backend, np.dtype(dtype)
        self.epoch = 0
        if len(self) == 0:
            raise ValueError(f"drop_last with batch_size {batch_size} leaves no batch of the {len(dataset)} samples")

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """The next ``iter(loader)`` runs epoch ``epoch`` (its order and augmentation)."""
        self.epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of an epoch, in the order they are served."""
        n = len(self.dataset)
        return shuffled_order(n, self.seed, epoch) if self.shuffle else np.arange(n)

    def make_batch(self, epoch: int, index: int, indices: np.ndarray) -> tuple[Any, Any]:
        """Batch ``index`` of ``epoch``: fetch, move to the backend, transform."""
        x, y = self.dataset.get_batch(indices)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"dataset returned {x.shape[0]} images but {y.shape[0]} labels for one batch")
        x = to_backend(np.ascontiguousarray(x, dtype=self.dtype), self.backend)
        y = to_backend(np.ascontiguousarray(y, dtype=np.int64), self.backend)
        if self.transform is not None:
            x = self.transform(x, _generator(self.seed, epoch, 1 + index))
        return x, y

    def __iter__(self) -> Generator[tuple[Any, Any], None, None]:
        epoch = self.epoch
        self.epoch += 1
        order = self.order(epoch)
        starts = range(0, len(self) * self.batch_size, self.batch_size)
        jobs = [(epoch, i, order[s : s + self.batch_size]) for i, s in enumerate(starts)]
        if self.prefetch == 0:
            return (self.make_batch(*job) for job in jobs)
        return _prefetched(self.make_batch, jobs, self.prefetch)

    def __repr__(self) -> str:
        return (
            f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, seed={self.seed}, prefetch={self.prefetch}, backend={self.backend!r})"
        )


def _prefetched(make: Callable[..., Any], jobs: list[tuple], depth: int) -> Generator[Any, None, None]:
    """Run ``make(*job)`` for each job in a background thread, at most ``depth`` results ahead.

    Results come out in job order. An exception in the thread is raised here, in the consumer.
    Abandoning the loop early (``break``) stops the thread.
    """
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for job in jobs:
                if not put(("ok", make(*job))):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(("error", exc))
            return
        put(("ok", done))

    thread = threading.Thread(target=work, name="npresnet-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = results.get()
            if kind == "error":
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()
