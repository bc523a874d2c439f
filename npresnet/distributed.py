"""Data-parallel training over MPI (mpi4py): one process per rank, gradients averaged after backward.

::

    mpiexec -n 2 python -m npresnet.train --distributed --sync-bn --batch 64 ...   # global batch 128

    from npresnet.distributed import init_distributed, convert_sync_batchnorm, GradientAverager
    world = init_distributed()                 # rank and size from mpiexec (size 1 without it)
    model = convert_sync_batchnorm(model, world)
    broadcast_module(model, world)             # every rank starts from rank 0's weights
    average = GradientAverager(model.parameters(), world)
    ...  model.backward(dy); average(); optimizer.step()

Every rank runs the same program on its own shard of each batch. Data-parallel SGD is exact: with
R ranks of B images each, the averaged gradient equals the gradient of the mean loss over all
R*B images (the loss is a mean over the batch, and every rank uses the same B), so 2 ranks with
batch 32 take the same steps as 1 process with batch 64, provided the data order matches
(``DistributedSampler``) and BatchNorm sees the whole batch (``SyncBatchNorm``).

**Runtime.** MPI through mpi4py; the ``mpi`` extra (``pip install 'npresnet[mpi]'``) installs
mpi4py and MPICH from the ``mpich`` wheel, whose ``mpiexec`` lands next to ``python`` (the
environment's ``bin/``). mpi4py is imported lazily: a single process without ``--distributed``
never needs it, and ``--distributed`` without ``mpiexec`` is a world of size 1.

**Buffers.** Collectives run on contiguous NumPy buffers. CuPy arrays take the *host staging*
path: gradients are copied device -> host into the bucket buffers, reduced there and copied
back (``to_numpy`` / ``xp.asarray``). CUDA-aware MPI is not used: the mpich wheel is built
without it, and staging works with every MPI.

**Gradient averaging** (``GradientAverager``): the gradients are packed, in parameter order and
per dtype, into a few flat buckets of about ``bucket_mb`` MB each (not one call per tensor), each
bucket is summed in place with a non-blocking ``Iallreduce(MPI.IN_PLACE, bucket)`` (all buckets
in flight together), divided by the world size and unpacked into ``param.grad``.

**BatchNorm.** A plain ``BatchNorm2d`` normalises each rank's B images with their own
statistics and updates its own running statistics (torch DDP's behaviour without SyncBatchNorm):
the result equals one process running "ghost" BatchNorm on each rank's share of the batch. The
trainer broadcasts rank 0's running statistics before every evaluation and checkpoint, so the
saved model is rank 0's. ``SyncBatchNorm`` computes the statistics of the whole R*B batch.

**Faults.** Every collective here is non-blocking and polled against a deadline (``timeout``
seconds, default 300). When a rank hangs, the others print which collective timed out and call
``MPI_Abort``, which ends the job. When a rank dies, MPICH's ``mpiexec`` (hydra) notices at
once, kills the other ranks and reports ``BAD TERMINATION OF ONE OF YOUR APPLICATION
PROCESSES``; where a launcher does not, the deadline catches it. Checkpoints are written
atomically by rank 0 only, so the last one stays intact and ``--resume`` continues from it.
"""

from __future__ import annotations

import pickle
import sys
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from .backend import get_array_module, to_numpy
from .checks import check_like, check_nchw
from .data.loader import DataLoader, _generator
from .functional.batchnorm import BatchNormCache
from .nn.batchnorm import BatchNorm2d
from .nn.module import Module
from .nn.parameter import Parameter

__all__ = ["DEFAULT_BUCKET_MB", "DEFAULT_TIMEOUT_S", "SINGLE_PROCESS", "DistributedSampler", "GradientAverager",
           "ShardedDataLoader", "SyncBatchNorm", "World", "broadcast_module", "broadcast_optimizer",
           "convert_sync_batchnorm", "current_world", "data_loader", "init_distributed"]

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_BUCKET_MB = 4.0
ABORT_GRACE_S = 0.5              # pause between printing why and MPI_Abort, so the message is not lost


def _import_mpi() -> Any:
    """``mpi4py.MPI``, or an ImportError that says how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError("--distributed needs mpi4py and an MPI runtime: pip install 'npresnet[mpi]' (mpi4py and "
                          "the mpich wheel), then run: mpiexec -n 2 python -m npresnet.train --distributed ...",
                          ) from exc
    return MPI


# ---------------------------------------------------------------------------------------------- the world
class World:
    """The ranks of one data-parallel job: ``rank``, ``size`` and bounded-time collectives.

    ``World(None)`` is a single process: every collective returns its input unchanged and MPI is
    never touched. Collectives take contiguous NumPy arrays and work in place where the name ends
    in ``_``. Each one is started non-blocking and polled; if it has not completed after
    ``timeout`` seconds (a rank hung or died), ``abort`` ends the whole job with a message.
    """

    def __init__(self, comm: Any = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.comm, self.timeout = comm, float(timeout)
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self._MPI = None if comm is None else _import_mpi()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, writes checkpoints, metrics and plots."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, timeout={self.timeout:g}s)"

    # ------------------------------------------------------------------ failure
    def abort(self, message: str | None = None, code: int = 1) -> None:
        """Print ``message`` (to stderr, with this rank) and end every rank of the job (``MPI_Abort``)."""
        if message:
            print(f"[rank {self.rank}/{self.size}] npresnet.distributed: {message}", file=sys.stderr, flush=True)
        if self.comm is None:
            raise RuntimeError(message or "aborted")
        sys.stdout.flush()
        # MPI_Abort makes the launcher kill every process at once; output still in flight through its
        # I/O forwarding is lost with them (seen: about 1 run in 3 lost the message above). A moment's
        # pause lets the message reach the terminal first.
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)

    def _wait(self, requests: list[Any], what: str) -> None:
        """Poll ``requests`` until all complete; past the deadline, abort naming ``what``.

        Polling backs off from immediate re-tests to sleeps of at most 1 ms, so a rank waiting for a
        slower one does not steal its CPU (two ranks often share fewer real cores than they think).
        """
        MPI = self._MPI
        deadline = time.monotonic() + self.timeout
        pause = 0.0
        while not MPI.Request.Testall(requests):
            if time.monotonic() > deadline:
                self.abort(f"{what} did not complete within {self.timeout:g} s: another rank has died or hung "
                           "(see its output above). Stopping all ranks; the last checkpoint is intact, continue "
                           "with --resume.", code=3)
            if pause:
                time.sleep(pause)
            pause = min(1e-3, pause * 2 if pause else 2e-5)

    # ------------------------------------------------------------------ collectives
    def allreduce_(self, buffer: np.ndarray, op: str = "sum", what: str = "allreduce") -> np.ndarray:
        """Reduce a contiguous NumPy ``buffer`` over all ranks, in place (``op``: sum | max | min)."""
        if self.comm is None:
            return buffer
        _check_buffer(buffer, what)
        MPI = self._MPI
        ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
        if op not in ops:
            raise ValueError(f"op must be one of {sorted(ops)}, got {op!r}")
        self._wait([self.comm.Iallreduce(MPI.IN_PLACE, buffer, op=ops[op])], what)
        return buffer

    def broadcast_(self, buffer: np.ndarray, root: int = 0, what: str = "broadcast") -> np.ndarray:
        """Overwrite ``buffer`` on every rank with rank ``root``'s, in place."""
        if self.comm is None:
            return buffer
        _check_buffer(buffer, what)
        self._wait([self.comm.Ibcast(buffer, root=root)], what)
        return buffer

    def allgather(self, array: np.ndarray, what: str = "allgather") -> np.ndarray:
        """(size, *array.shape): every rank's ``array``, in rank order."""
        array = np.ascontiguousarray(array)
        if self.comm is None:
            return array[None].copy()
        out = np.empty((self.size, *array.shape), dtype=array.dtype)
        self._wait([self.comm.Iallgather(array, out)], what)
        return out

    def broadcast_object(self, obj: Any, root: int = 0, what: str = "broadcast of an object") -> Any:
        """Rank ``root``'s Python object (pickled; the ranks of one job trust each other) on every rank."""
        if self.comm is None:
            return obj
        payload = np.frombuffer(pickle.dumps(obj), dtype=np.uint8) if self.rank == root else None
        length = np.array([0 if payload is None else payload.size], dtype=np.int64)
        self.broadcast_(length, root, what)
        buffer = payload.copy() if payload is not None else np.empty(int(length[0]), dtype=np.uint8)
        self.broadcast_(buffer, root, what)
        return obj if self.rank == root else pickle.loads(buffer.tobytes())

    def sum(self, *values: float, what: str = "sum of statistics") -> tuple[float, ...]:
        """Each number summed over all ranks (float64); a single process returns them unchanged."""
        if self.comm is None:
            return values
        return tuple(float(v) for v in self.allreduce_(np.array(values, dtype=np.float64), "sum", what))

    def max(self, *values: float, what: str = "max of statistics") -> tuple[float, ...]:
        """Each number's maximum over all ranks; a single process returns them unchanged."""
        if self.comm is None:
            return values
        return tuple(float(v) for v in self.allreduce_(np.array(values, dtype=np.float64), "max", what))

    def barrier(self) -> None:
        if self.comm is not None:
            self._wait([self.comm.Ibarrier()], "barrier")


def _check_buffer(buffer: Any, what: str) -> None:
    if not isinstance(buffer, np.ndarray) or not buffer.flags.c_contiguous:
        kind = type(buffer).__name__ if not isinstance(buffer, np.ndarray) else "non-contiguous ndarray"
        raise TypeError(f"{what}: MPI buffers must be C-contiguous NumPy arrays, got a {kind}")


SINGLE_PROCESS = World(None)
_current: World | None = None


def init_distributed(timeout: float = DEFAULT_TIMEOUT_S) -> World:
    """The world of ``MPI.COMM_WORLD`` (initialising MPI through mpi4py); size 1 without ``mpiexec``.

    Raises ImportError (saying what to install) when mpi4py is missing. Calling it again returns
    the same world (with the new timeout).
    """
    global _current
    MPI = _import_mpi()
    if _current is None or _current.comm is None:
        _current = World(MPI.COMM_WORLD, timeout)
    _current.timeout = float(timeout)
    return _current


def current_world() -> World | None:
    """The world ``init_distributed`` made, or None if MPI was never initialised here."""
    return _current


# ---------------------------------------------------------------------------------------------- data
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

    def __init__(self, n: int, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0,
                 padding: str = "repeat") -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got rank {rank} of "
                             f"{num_replicas}")
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
        order = _generator(self.seed, epoch, 0).permutation(self.n) if self.shuffle else np.arange(self.n)
        R = self.num_replicas
        if self.padding == "repeat":
            extra = R * -(-self.n // R) - self.n
            order = np.concatenate([order, np.resize(order, extra)])       # np.resize repeats cyclically
        elif self.padding == "drop":
            order = order[:R * (self.n // R)]
        return order

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's samples in epoch ``epoch``, in the order they are served."""
        return self.global_order(epoch)[self.rank::self.num_replicas]


class ShardedDataLoader(DataLoader):
    """A ``DataLoader`` over one rank's shard (``DistributedSampler``); same arguments plus the shard's.

    Augmentation randomness: batch b of rank r draws from the generator (seed, epoch, 1 + b*R + r),
    so every rank and batch has its own stream, still independent of what was drawn before.
    """

    def __init__(self, dataset: Any, batch_size: int, *, num_replicas: int, rank: int, padding: str = "repeat",
                 shuffle: bool = False, seed: int = 0, **kwargs: Any) -> None:
        self.sampler = DistributedSampler(len(dataset), num_replicas, rank, shuffle=shuffle, seed=seed,
                                          padding=padding)
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
    return ShardedDataLoader(dataset, batch_size, num_replicas=world.size, rank=world.rank, padding=padding,
                             **kwargs)


# ---------------------------------------------------------------------------------------------- buckets
def _buckets(arrays: list[Any], bucket_bytes: float) -> list[list[int]]:
    """Indices of ``arrays`` grouped into buckets: consecutive, one dtype each, about ``bucket_bytes``.

    A bucket closes when adding the next array would pass ``bucket_bytes``; an array larger than
    that gets a bucket of its own.
    """
    buckets: dict[str, list[list[int]]] = {}
    sizes: dict[str, int] = {}
    for i, a in enumerate(arrays):
        key = np.dtype(a.dtype).str
        nbytes = int(a.size) * np.dtype(a.dtype).itemsize
        if key not in buckets or (sizes[key] and sizes[key] + nbytes > bucket_bytes):
            buckets.setdefault(key, []).append([])
            sizes[key] = 0
        buckets[key][-1].append(i)
        sizes[key] += nbytes
    return [bucket for per_dtype in buckets.values() for bucket in per_dtype]


def _pack(arrays: list[Any], indices: list[int], buffer: np.ndarray) -> None:
    """Copy ``arrays[i]`` (NumPy or CuPy; CuPy goes device -> host) one after another into ``buffer``."""
    offset = 0
    for i in indices:
        a = arrays[i]
        buffer[offset:offset + a.size] = to_numpy(a).ravel()
        offset += a.size


def _unpack(buffer: np.ndarray, arrays: list[Any], indices: list[int]) -> None:
    """The inverse of ``_pack``: write the slices of ``buffer`` back into the arrays, in place."""
    offset = 0
    for i in indices:
        a = arrays[i]
        xp = get_array_module(a)
        a[...] = xp.asarray(buffer[offset:offset + a.size].reshape(a.shape))
        offset += a.size


class GradientAverager:
    """``averager()`` replaces every ``param.grad`` by its mean over all ranks.

    Gradients are packed, in parameter order and one dtype per bucket, into flat NumPy buffers of
    about ``bucket_mb`` MB (allocated once), summed in place with ``Iallreduce(MPI.IN_PLACE, ...)``
    (every bucket in flight together, then one wait), divided by the world size and unpacked.
    ResNet-20 (0.27 M float32 parameters) fits one 4 MB bucket: a single collective per step.

    Every trainable parameter must have a gradient on every rank (as torch DDP without
    ``find_unused_parameters``); a missing one is an error naming it, since the ranks' buffers
    would no longer line up.
    """

    def __init__(self, parameters: Iterable[Parameter], world: World, bucket_mb: float = DEFAULT_BUCKET_MB) -> None:
        if not bucket_mb > 0:
            raise ValueError(f"bucket_mb must be > 0, got {bucket_mb}")
        self.world = world
        self.params = [p for p in parameters if p.requires_grad]
        self.buckets = _buckets([p.data for p in self.params], bucket_mb * 2**20)
        self.buffers = [np.empty(sum(self.params[i].size for i in bucket), dtype=self.params[bucket[0]].dtype)
                        for bucket in self.buckets]

    def __call__(self) -> None:
        if self.world.size == 1:
            return
        missing = [i for i, p in enumerate(self.params) if p.grad is None]
        if missing:
            raise RuntimeError(f"parameter {missing[0]} ({self.params[missing[0]]}) has no gradient on rank "
                               f"{self.world.rank}: every trainable parameter must take part in the loss")
        grads = [p.grad for p in self.params]
        MPI, comm = self.world._MPI, self.world.comm
        requests = []
        for bucket, buffer in zip(self.buckets, self.buffers):
            _pack(grads, bucket, buffer)
            requests.append(comm.Iallreduce(MPI.IN_PLACE, buffer, op=MPI.SUM))
        self.world._wait(requests, f"gradient allreduce ({len(self.buffers)} bucket(s))")
        for bucket, buffer in zip(self.buckets, self.buffers):
            buffer /= self.world.size
            _unpack(buffer, grads, bucket)


def _broadcast_arrays_(arrays: list[Any], world: World, what: str, root: int = 0) -> None:
    """Rank ``root``'s values of ``arrays`` on every rank, in place, bucketed like the gradients."""
    if world.size == 1 or not arrays:
        return
    for bucket in _buckets(arrays, DEFAULT_BUCKET_MB * 2**20):
        buffer = np.empty(sum(int(arrays[i].size) for i in bucket), dtype=arrays[bucket[0]].dtype)
        _pack(arrays, bucket, buffer)
        world.broadcast_(buffer, root, what)
        _unpack(buffer, arrays, bucket)


def broadcast_module(model: Module, world: World, root: int = 0, buffers: bool = True) -> None:
    """Every rank takes rank ``root``'s parameters (and buffers: BatchNorm's running statistics)."""
    arrays = [p.data for p in model.parameters()]
    if buffers:
        arrays += list(model.buffers())
    _broadcast_arrays_(arrays, world, "broadcast of the model's weights", root)


def broadcast_optimizer(optimizer: Any, world: World, root: int = 0, scheduler: Any = None) -> None:
    """Every rank takes rank ``root``'s optimizer state (momentum buffers, Adam moments, step counts)
    and hyperparameters, and its learning-rate schedule's state."""
    if world.size == 1:
        return
    payload = None
    if world.rank == root:
        state = optimizer.state_dict()
        state = {"state": {i: {k: (np.array(to_numpy(v)) if hasattr(v, "shape") else v) for k, v in s.items()}
                           for i, s in state["state"].items()},
                 "param_groups": state["param_groups"]}
        payload = {"optimizer": state, "scheduler": scheduler.state_dict() if scheduler is not None else None}
    payload = world.broadcast_object(payload, root, "broadcast of the optimizer state")
    if world.rank != root:
        optimizer.load_state_dict(payload["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(payload["scheduler"])


# ---------------------------------------------------------------------------------------------- SyncBatchNorm
class SyncBatchNorm(BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the whole batch, over all ranks.

    Notation: rank r holds x_r (N_r, C, H, W) and n_r = N_r*H*W values per channel; n = sum n_r.

    Forward (training)::

        local:      mu_r = mean(x_r),  M2_r = sum((x_r - mu_r)^2)          per channel, (C,)
        allgather   (n_r, mu_r, M2_r) from every rank (one collective of 2C+1 numbers)
        combine:    mu  = sum_r n_r mu_r / n
                    M2  = sum_r M2_r + sum_r n_r (mu_r - mu)^2              (Chan et al.; no
                    var = M2 / n                                            cancellation)
        x_hat = (x_r - mu) / sqrt(var + eps),  y = gamma x_hat + beta; running stats as BatchNorm2d,
        with the unbiased var * n / (n - 1) of the *global* n.

    Backward, with g_r = dL/dy on rank r::

        allreduce   (sum g, sum g * x_hat) over every rank's values         (one collective of 2C)
        dx_r   = gamma invstd (g_r - sum(g)/n - x_hat_r sum(g x_hat)/n)
        dgamma = sum over rank r of g_r x_hat_r,  dbeta = sum of g_r        (local sums)

    dgamma and dbeta stay local: the ``GradientAverager`` averages them with every other
    parameter. This is exact when every rank's loss is a mean over the same number B of images:
    then g_r = R * dL_global/dy, each rank's dx is R times the global one, and averaging the R
    parameter gradients divides the factor out again. The result equals ``BatchNorm2d`` on the
    concatenated batch. Evaluation mode (running statistics) involves no communication; with a
    world of size 1 this *is* ``BatchNorm2d``. Statistics are combined in float64 on the host
    (CuPy: the (C,) vectors are staged through host memory).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, world: World | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.world = world if world is not None else (current_world() or SINGLE_PROCESS)

    def forward(self, x: Any) -> Any:
        if not self.training or self.world.size == 1:
            return super().forward(x)
        check_nchw(x, self.num_features, "input", "SyncBatchNorm")
        reference = self.weight.data if self.affine else self.running_mean
        if reference is not None:
            check_like(x, reference, "input", "SyncBatchNorm parameters")
        xp = get_array_module(x)
        C = x.shape[1]
        n_local = x.size // C
        axes = (0, 2, 3)
        mean_local = x.mean(axis=axes) if n_local else xp.zeros(C, dtype=x.dtype)
        centred_local = x - mean_local.reshape(1, -1, 1, 1)
        m2_local = (centred_local * centred_local).sum(axis=axes)
        local = np.concatenate([[n_local], to_numpy(mean_local).astype(np.float64),
                                to_numpy(m2_local).astype(np.float64)])
        gathered = self.world.allgather(local, "SyncBatchNorm statistics")          # (R, 2C + 1)
        counts, means, m2s = gathered[:, 0], gathered[:, 1:C + 1], gathered[:, C + 1:]
        n = int(counts.sum())
        if n <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {n} over all ranks "
                             f"(input of shape {tuple(x.shape)} on rank {self.world.rank})")
        mean = counts @ means / n
        var = (m2s.sum(axis=0) + counts @ (means - mean) ** 2) / n                  # biased
        if self.track_running_stats:
            momentum = self.momentum if self.momentum is not None else 1.0 / (int(self.num_batches_tracked) + 1)
            self.running_mean *= 1 - momentum
            self.running_mean += xp.asarray(momentum * mean, dtype=self.running_mean.dtype)
            self.running_var *= 1 - momentum
            self.running_var += xp.asarray(momentum * var * (n / (n - 1)), dtype=self.running_var.dtype)
            self.num_batches_tracked += 1
        invstd = xp.asarray(1.0 / np.sqrt(var + self.eps), dtype=x.dtype)
        x_hat = (x - xp.asarray(mean, dtype=x.dtype).reshape(1, -1, 1, 1)) * invstd.reshape(1, -1, 1, 1)
        weight = self.weight.data if self.affine else None
        y = x_hat * weight.reshape(1, -1, 1, 1) if weight is not None else x_hat.copy()
        if self.affine:
            y += self.bias.data.reshape(1, -1, 1, 1)
        self._save_for_backward((BatchNormCache(x_hat, invstd, weight, True), n))
        return y

    def backward(self, dout: Any) -> Any:
        cache = self._pop_cache()
        if isinstance(cache, BatchNormCache):        # evaluation mode or a single process
            object.__setattr__(self, "_cache", cache)
            return super().backward(dout)
        bn_cache, n = cache
        x_hat, invstd, weight = bn_cache.x_hat, bn_cache.invstd, bn_cache.weight
        check_nchw(dout, self.num_features, "upstream gradient", "SyncBatchNorm")
        if tuple(dout.shape) != tuple(x_hat.shape):
            raise ValueError(f"SyncBatchNorm: upstream gradient must have shape {tuple(x_hat.shape)}, "
                             f"got {tuple(dout.shape)}")
        xp = get_array_module(dout)
        axes = (0, 2, 3)
        dbias = dout.sum(axis=axes)
        dweight = (dout * x_hat).sum(axis=axes)
        sums = np.concatenate([to_numpy(dbias), to_numpy(dweight)]).astype(np.float64)
        sums = self.world.allreduce_(sums, "sum", "SyncBatchNorm gradient sums")
        C = self.num_features
        mean_g = xp.asarray(sums[:C] / n, dtype=dout.dtype).reshape(1, -1, 1, 1)
        mean_gx = xp.asarray(sums[C:] / n, dtype=dout.dtype).reshape(1, -1, 1, 1)
        scale = invstd if weight is None else weight * invstd
        dx = (dout - mean_g - x_hat * mean_gx) * scale.reshape(1, -1, 1, 1)
        if self.affine:
            self.weight.accumulate_grad(dweight)
            self.bias.accumulate_grad(dbias)
        return dx

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, world_size={self.world.size}"


def convert_sync_batchnorm(model: Module, world: World | None = None) -> Module:
    """Replace every ``BatchNorm2d`` of ``model`` by a ``SyncBatchNorm`` (torch's helper of that name).

    The new layers take over the old ones' parameters and buffers (the same arrays), so weights,
    state_dict keys and the optimizer's parameters are unchanged; children keep their place, so
    ``Sequential`` order and the state_dict order are unchanged too. Returns ``model`` (or the new
    layer if ``model`` itself is a BatchNorm2d).
    """
    world = world if world is not None else (current_world() or SINGLE_PROCESS)

    def convert(module: Module) -> Module:
        if isinstance(module, BatchNorm2d) and not isinstance(module, SyncBatchNorm):
            sync = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats, world=world)
            for name in ("weight", "bias"):
                sync._parameters[name] = module._parameters.get(name)
            for name, value in module._buffers.items():
                sync._buffers[name] = value
            sync.train(module.training)
            return sync
        for name, child in list(module._modules.items()):
            if child is not None:
                module._modules[name] = convert(child)       # in place: keeps the children's order
        return module

    return convert(model)
