"""Train a ResNet: ``python -m npresnet.train`` and the Python API behind it.

::

    python -m npresnet.train --model resnet20 --data digits --epochs 30 --batch 128 --lr 0.1 \\
        --out runs/digits --plot runs/digits/curves.png
    python -m npresnet.train --resume runs/digits --epochs 40        # continue, bit-exactly
    python -m npresnet.train --preset cifar-paper --data-root ~/data/cifar-10-batches-bin
    mpiexec -n 2 python -m npresnet.train --distributed --sync-bn --batch 64 ...   # 2 ranks, global batch 128

    from npresnet.training import TrainConfig, train
    result = train(TrainConfig(model="resnet20", data="digits", epochs=30, out_dir="runs/digits"))
    result.final_test_acc

The package, in the order a run uses it:

* ``config``: ``TrainConfig`` (every setting, each with its command-line option in its
  metadata), the ``PRESETS`` recipes, and which settings may change on resume;
* ``datasets``: the datasets and transforms a config names;
* ``recipe``: the optimizer and the learning-rate schedule a config names;
* ``trainer``: ``Trainer`` (one epoch, evaluation, the loop, saving and resuming) and ``train()``;
* ``resume``: the checks that a checkpoint continues this run, before anything is loaded;
* ``progress``: the per-epoch progress display (tqdm, plain lines, or none);
* ``records``: ``metrics.csv``, ``metrics.json`` and the loss/accuracy plot;
* ``cli``: the argparse parser generated from ``TrainConfig``, and ``main``.

One epoch: shuffle (seeded), augment, forward, loss, backward, ``optimizer.step()``,
``scheduler.step()`` (the schedule advances every *iteration*), then evaluate on the test set
(``eval()`` mode, no caches), append a row to ``metrics.csv``/``metrics.json``, write
``checkpoint.npz`` atomically and redraw the plot. A progress bar (tqdm if installed, else a
plain line printer) shows loss, accuracy and images/s.

``--distributed`` (under ``mpiexec``) trains data-parallel over MPI (``npresnet.distributed``):
``--batch`` is per rank, each rank takes its shard of every epoch, gradients are averaged after
backward, all ranks start from rank 0's state, evaluation is sharded and summed, and only rank 0
prints and writes. ``--sync-bn`` makes BatchNorm use the statistics of the whole global batch.
"""

from .cli import build_parser, config_from_args, main
from .config import PRESETS, RESUMABLE_CHANGES, TrainConfig
from .datasets import build_transforms, load_datasets
from .records import plot_history, write_metrics
from .trainer import Trainer, TrainingDiverged, TrainResult, train

__all__ = [
    "PRESETS",
    "RESUMABLE_CHANGES",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "build_parser",
    "build_transforms",
    "config_from_args",
    "load_datasets",
    "main",
    "plot_history",
    "train",
    "write_metrics",
]
