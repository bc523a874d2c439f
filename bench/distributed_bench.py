"""Speed of data-parallel training steps over MPI: ResNet-20 on digits, a global batch split over the ranks.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 mpiexec -n 1 python bench/distributed_bench.py 128 20
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 mpiexec -n 2 python bench/distributed_bench.py 128 20 [sync]

Prints the median step time (3 warm-up steps, a barrier around each step), images/s, and the cost of
the gradient allreduce alone. Compare -n 1 against -n 2 at the same global batch.
"""

import sys
import time

import numpy as np

from npresnet import distributed as dist
from npresnet.data import digits
from npresnet.models import get_model
from npresnet.nn import CrossEntropyLoss
from npresnet.optim import SGD

G, steps, warm = int(sys.argv[1]), int(sys.argv[2]), 3
sync = len(sys.argv) > 3 and sys.argv[3] == "sync"
world = dist.init_distributed(timeout=600)
train, _ = digits()
model = get_model("resnet20", num_classes=10, seed=0)
if sync:
    dist.convert_sync_batchnorm(model, world)
dist.broadcast_module(model, world)
criterion, optimizer = CrossEntropyLoss(), SGD(model.parameters(), lr=0.05, momentum=0.9)
average = dist.GradientAverager(model.parameters(), world)
loader = dist.data_loader(world, train, G // world.size, train=True, shuffle=True, seed=0)
times, comm_times = [], []
batches, epoch = iter(loader), 0
for s in range(steps + warm):
    try:
        x, y = next(batches)
    except StopIteration:
        epoch += 1
        loader.set_epoch(epoch)
        batches = iter(loader)
        x, y = next(batches)
    world.barrier()
    t0 = time.perf_counter()
    loss = criterion(model(x), y)
    optimizer.zero_grad()
    model.backward(criterion.backward())
    t1 = time.perf_counter()
    average()
    t2 = time.perf_counter()
    optimizer.step()
    world.barrier()
    if s >= warm:
        times.append(time.perf_counter() - t0)
        comm_times.append(t2 - t1)
if world.is_main:
    median = float(np.median(times))
    q1, q3 = np.percentile(times, [25, 75])
    print(
        f"ranks={world.size} global_batch={G} sync_bn={sync} median_step={median * 1e3:.1f}ms "
        f"IQR=[{q1 * 1e3:.1f},{q3 * 1e3:.1f}] img/s={G / median:.1f} "
        f"median_allreduce={np.median(comm_times) * 1e3:.2f}ms buckets={len(average.buffers)}"
    )
alone = []  # the allreduce of the gradient buckets on its own
for _ in range(30):
    world.barrier()
    t0 = time.perf_counter()
    average()
    alone.append(time.perf_counter() - t0)
if world.is_main:
    megabytes = sum(b.nbytes for b in average.buffers) / 2**20
    print(f"  allreduce alone: median {np.median(alone) * 1e3:.2f} ms for {megabytes:.2f} MB")
