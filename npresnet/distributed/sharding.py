"""Which samples each rank sees: ``DistributedSampler``, ``ShardedDataLoader`` and ``data_loader``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.loader import DataLoader, shuffled_order
from .world import World

__all__ = ["DistributedSampler", "ShardedDataLoader", "data_loader"]


class DistributedSampler:
    """Which of ``n`` samples each rank sees in an epoch (``torch.utils.data.DistributedSampler``).

    The epoch's *global* order is the one ``DataLoader(shuffle=True, seed=seed)`` uses: the
    permutation from (seed, epoch) (``arange(n)`` without shuffling). Rank r takes every R-th
    entry, ``order[r::R]``. With per-rank batches of B, the ranks' batch b together are therefore
    exactly ``order[b*R*B : (b+1)*R*B]``, the batch b of one process with batch R*B.

    Padding, for n not divisible by R (``padding``):

    * ``"repeat"`` (default; torch's rule): the order is extended by repeating its first
      ``R*ceil(n/R) - n`` entries, so every rank gets ``ceil(n/R)`` samples. Every sample is seen
      exactly once per epoch, except those first few, which are seen twice.
    * ``"drop"``: the last ``n mod R`` entries of the order are dropped; every rank gets
      ``floor(n/R)``; each kept sample is seen exactly once, the dropped ones (different every
      epoch when shuffling) not at all.
    * ``"none"``: no padding, so shard sizes differ by at most one and every sample is seen
      exactly once. Only for evaluation: ranks would run different numbers of training steps.
    """

    PADDINGS = ("repeat", "drop", "none")

    def __init__(
        self, n: int, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0, padding: str = "repeat"
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got rank {rank} of {num_replicas}")
        if padding not in self.PADDINGS:
            raise ValueError(f"padding must be one of {self.PADDINGS}, got {padding!r}")
        if n < num_replicas:
            raise ValueError(f"cannot shard {n} samples over {num_replicas} ranks: need at least one per rank")
        self.n, self.num_replicas, self.rank = int(n), int(num_replicas), int(rank)
        self.shuffle, self.seed, self.padding = shuffle, int(seed), padding

    def __len__(self) -> int:
        """Samples of this rank per epoch."""
        n, R = self.n, self.num_replicas
        if self.padding == "repeat":
            return -(-n // R)
        if self.padding == "drop":
            return n // R
        return len(range(self.rank, n, R))

    def global_order(self, epoch: int) -> np.ndarray:
        """The epoch's order over all ranks, padded or cut as ``padding`` says (length R * len(self))."""
        order = shuffled_order(self.n, self.seed, epoch) if self.shuffle else np.arange(self.n)
        R = self.num_replicas
        if self.padding == "repeat":
            extra = R * -(-self.n // R) - self.n
            order = np.concatenate([order, np.resize(order, extra)])  # np.resize repeats cyclically
        elif self.padding == "drop":
            order = order[: R * (self.n // R)]
        return order

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's samples in epoch ``epoch``, in the order they are served."""
        return self.global_order(epoch)[self.rank :: self.num_replicas]


class ShardedDataLoader(DataLoader):
    """A ``DataLoader`` over one rank's shard (``DistributedSampler``); same arguments plus the shard's.

    Augmentation randomness: batch b of rank r draws from the generator (seed, epoch, 1 + b*R + r),
    so every rank and batch has its own stream, still independent of what was drawn before.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        *,
        num_replicas: int,
        rank: int,
        padding: str = "repeat",
        shuffle: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self.sampler = DistributedSampler(len(dataset), num_replicas, rank, shuffle=shuffle, seed=seed, padding=padding)
        super().__init__(dataset, batch_size, shuffle=shuffle, seed=seed, **kwargs)

    def __len__(self) -> int:
        n, b = len(self.sampler), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def order(self, epoch: int) -> np.ndarray:
        return self.sampler.indices(epoch)

    def make_batch(self, epoch: int, index: int, indices: np.ndarray) -> tuple[Any, Any]:
        R, r = self.sampler.num_replicas, self.sampler.rank
        return super().make_batch(epoch, index * R + r, indices)

    def __repr__(self) -> str:
        return f"Sharded{super().__repr__()[:-1]}, rank={self.sampler.rank}/{self.sampler.num_replicas})"


def data_loader(world: World, dataset: Any, batch_size: int, *, train: bool, **kwargs: Any) -> DataLoader:
    """A ``DataLoader`` (one process) or this rank's ``ShardedDataLoader``.

    Training shards pad by repetition (equal steps on every rank); evaluation shards are exact
    (every sample once), and ``drop_last`` is decided on the shard's length: a last batch of one
    image (which BatchNorm cannot train on) is dropped.
    """
    if world.size == 1:
        n = len(dataset)
        kwargs.setdefault("drop_last", train and n % batch_size == 1)
        return DataLoader(dataset, batch_size, **kwargs)
    padding = "repeat" if train else "none"
    shard = len(DistributedSampler(len(dataset), world.size, world.rank, padding=padding))
    kwargs.setdefault("drop_last", train and shard % batch_size == 1)
    return ShardedDataLoader(dataset, batch_size, num_replicas=world.size, rank=world.rank, padding=padding, **kwargs)
