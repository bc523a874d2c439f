"""Data-parallel training over MPI (mpi4py): one process per rank, gradients averaged after backward.

::

    mpiexec -n 2 python -m npresnet.train --distributed --sync-bn --batch 64 ...   # global batch 128

    from npresnet.distributed import init_distributed, convert_sync_batchnorm, broadcast_module, GradientAverager
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

The package: ``world`` (``World``: rank, size, bounded-time collectives, abort), ``sharding``
(``DistributedSampler``, ``ShardedDataLoader``, ``data_loader``), ``buckets`` (``GradientAverager``,
``broadcast_module``, ``broadcast_optimizer``) and ``sync_batchnorm`` (``SyncBatchNorm``,
``convert_sync_batchnorm``).
"""

from .buckets import DEFAULT_BUCKET_MB, GradientAverager, broadcast_module, broadcast_optimizer, bucket_indices
from .sharding import DistributedSampler, ShardedDataLoader, data_loader
from .sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm
from .world import DEFAULT_TIMEOUT_S, SINGLE_PROCESS, World, current_world, init_distributed

__all__ = [
    "DEFAULT_BUCKET_MB",
    "DEFAULT_TIMEOUT_S",
    "SINGLE_PROCESS",
    "DistributedSampler",
    "GradientAverager",
    "ShardedDataLoader",
    "SyncBatchNorm",
    "World",
    "broadcast_module",
    "broadcast_optimizer",
    "bucket_indices",
    "convert_sync_batchnorm",
    "current_world",
    "data_loader",
    "init_distributed",
]
