"""``python -m npresnet.bench``: how fast npresnet runs ResNets, measured against the machine and PyTorch.

For each model it times, after warm-up, the forward pass in evaluation mode (under ``no_grad``)
and the training step (forward + cross-entropy + backward + SGD update), and reports the median
seconds per batch, images/s, achieved GFLOP/s (FLOPs = 2 x MACs of the convolutions and the fc
layer; a training step counts 3 x the forward's: forward, input gradient and weight gradient) and
its share of the single-GEMM peak measured at start-up. The first (compile / warm-up) call is
timed separately. ``--compare torch`` runs the same model with the same weights and threads in
PyTorch after checking both give the same logits; ``--profile`` splits the time by op kind.

``--threads N`` (default: all the machine's cores) sets BLAS, Numba and torch to N together;
``--threads 1,2,...`` (or ``--scaling``: 1 and all cores) repeats the runs at each count and reports
the speed-ups (``scaling``). ``--autotune measure`` (default) times the convolution algorithms per
layer shape first (``npresnet.engine.autotune``), ``fixed`` uses the fixed rule. glibc's allocator is
tuned to keep freed activation memory (``--no-tune-allocator`` to compare).
Memory: the NumPy peak of one untimed step (tracemalloc), and with ``--memory`` each framework's
resident-memory peak of a step in a fresh process. The OpenBLAS variables
``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` slow numpy's GEMM on some machines; the bench reports the
BLAS kernel in use, and you may unset them for the benchmark command only.

The ratio column is npresnet time / torch time (above 1: npresnet is slower); the two frameworks'
steps are timed in alternation (``timing.timed_together``), so both medians come from the same
minutes of a machine whose speed may drift. The package:
``workloads`` (models, steps, MACs), ``timing`` (first call, median, traced NumPy peak),
``memory`` (resident memory in a fresh process), ``machine`` (CPU, BLAS, GEMM peak), ``compare``
(PyTorch), ``profiler`` (``--profile`` through the layers' hooks and ``npresnet.kernels.set_observer``)
and ``cli`` (the command). The repository's top-level ``bench/`` folder holds benchmark scripts
and recorded results; it is not this package.
"""

from .cli import check_args, main, parse_args, run
from .compare import check_same_logits, make_torch_step, torch_setup, torch_step, torch_time
from .machine import gemm_peak_gflops, machine_info
from .memory import measure_memory, memory_probe
from .profiler import op_profile, profile_ms, profile_table
from .timing import quartiles, step_peak_memory, synchronize, timed, timed_together
from .workloads import (
    DEFAULT_MODELS,
    build_npresnet,
    default_batch,
    default_size,
    forward_macs,
    make_step,
    model_names,
    training_step,
)

__all__ = [
    "DEFAULT_MODELS",
    "build_npresnet",
    "check_args",
    "check_same_logits",
    "default_batch",
    "default_size",
    "forward_macs",
    "gemm_peak_gflops",
    "machine_info",
    "main",
    "make_step",
    "make_torch_step",
    "measure_memory",
    "memory_probe",
    "model_names",
    "op_profile",
    "parse_args",
    "profile_ms",
    "profile_table",
    "quartiles",
    "run",
    "step_peak_memory",
    "synchronize",
    "timed",
    "timed_together",
    "torch_setup",
    "torch_step",
    "torch_time",
    "training_step",
]
