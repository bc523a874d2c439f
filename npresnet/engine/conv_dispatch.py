"""Which algorithm computes a convolution, its input gradient and its weight gradient.

``npresnet.engine.conv`` has six ways to compute them (its docstring says how each works):
``"gemm/<n>"`` (im2col + GEMM in chunks of ``n`` samples; the whole batch on a GPU), ``"split/<n>"``
(the same on each thread's slice of the batch: NumPy at more than one thread, unless
``NPRESNET_BATCH_SPLIT=0``), ``"direct"`` (the direct 3x3 kernels: CPU, stride 1, one group,
padding <= 2 * dilation, see ``direct_applies``), ``"direct/dots"`` (weight gradient only: the same
layout, dw as Numba dot products per (o, c), which use every thread where the small BLAS products
do not), ``"winograd/<n>"`` and ``"winograd-split/<n>"`` (measure mode only: F(2x2, 3x3) for the
forward and the input gradient, its transpose for the weight gradient, 2.25x fewer multiplications,
where ``winograd_applies``).

This module lists the candidates for a shape and asks ``autotune`` to pick one. In the ``"fixed"``
mode (the default) the pick is a rule: the direct kernels for the gradients up to
``DIRECT_MAX_CHANNELS`` input and output channels and for the forward up to
``DIRECT_FORWARD_MAX_CHANNELS``, else chunks of about ``CHUNK_BYTES`` of columns, which at more
than one thread run as "split" (a slice of the batch per thread: one hand-off per layer instead of
two per chunk; docs/performance.md has the measurements). The bits then depend on the thread count
(as OpenBLAS's do), not on the run.

In the ``"measure"`` mode every candidate is timed on the first call with a new shape: the chunk
sizes around ``CHUNK_BYTES`` (a quarter, one, four times, and the whole batch up to
``WHOLE_BATCH_MAX_BYTES``), at more than one thread the same for "split/<n>" on a slice,
"winograd/<n>" where it applies, and the direct kernels up to ``DIRECT_CANDIDATE_MAX_CHANNELS``
channels (wider, they lose by far: timing them would only slow the first step down), "direct/dots"
among them for the weight gradient. The fixed rule never picks "direct/dots" or "winograd": they
were measured on few CPUs, and the fixed rule's bits stay those of the releases before them.
Outside the Numba kernels (CuPy, ``NPRESNET_KERNELS=numpy``, ``kernels.reference_only()``) there
is one candidate and nothing is timed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .. import kernels
from ..functional.winograd import tiles
from . import autotune, batch_threads

__all__ = [
    "CHUNK_BYTES",
    "choose",
    "chunk_candidates",
    "direct_applies",
    "samples_per_chunk",
    "split_candidates",
    "winograd_applies",
    "winograd_candidates",
]

#: Fixed rule: the direct 3x3 kernels compute the gradients of convs with at most this many input
#: and output channels, and their forward up to DIRECT_FORWARD_MAX_CHANNELS (where they beat
#: im2col + GEMM on the first development machine: docs/performance.md).
DIRECT_MAX_CHANNELS = 32
DIRECT_FORWARD_MAX_CHANNELS = 16
#: Measure mode: the direct kernels are timed up to this many channels.
DIRECT_CANDIDATE_MAX_CHANNELS = 64
#: Target size of one chunk's columns on the CPU (bytes): about a core's L2 cache (fixed rule).
CHUNK_BYTES = 1 << 20
#: Measure mode on the CPU: the whole batch is a chunk candidate only up to this many bytes of
#: columns. ResNet-50's 7x7 stem at batch 16 has over a hundred MB of columns, and a measured run
#: that picked the whole batch there (within timing noise of one sample per chunk) raised the
#: step's peak memory by a quarter; below the cap the dispatch may still take the whole batch.
WHOLE_BATCH_MAX_BYTES = 64 * CHUNK_BYTES


def direct_applies(
    x: Any,
    *,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> bool:
    """Whether the direct 3x3 kernels can compute this convolution and both its gradients."""
    if (
        kernel != (3, 3)
        or stride != (1, 1)
        or groups != 1
        or padding[0] > 2 * dilation[0]
        or padding[1] > 2 * dilation[1]
    ):  # P <= 2D: see the kernel
        return False
    return kernels.get("conv3x3_forward", x) is not None


def winograd_applies(
    x: Any,
    *,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> bool:
    """Whether Winograd F(2x2, 3x3) is a candidate for this convolution's forward and gradients
    (the input gradient is a convolution with padding 2 - P, hence P <= 2)."""
    plain_3x3 = kernel == (3, 3) and stride == (1, 1) and dilation == (1, 1) and groups == 1
    if not plain_3x3 or max(padding) > 2:
        return False
    return kernels.get("winograd_input", x) is not None


def winograd_candidates(
    xp: Any, *, N: int, channels: int, out: tuple[int, int], itemsize: int
) -> tuple[list[int], list[int]]:
    """Samples per chunk worth timing for "winograd/<n>" and for "winograd-split/<n>" (each thread
    its own slice of the batch, as "split"; none where ``batch_threads`` would not split): the
    transformed tiles of a chunk (16 values per 2x2 output tile and input channel: 4x the input)
    in a quarter, one or four times ``CHUNK_BYTES``. Never the whole batch regardless of size: on
    ResNet-50's first stage that would be tens of MB of tiles and as much of products, for no
    gain measured."""
    TH, TW = tiles(*out)
    tile_bytes = 16 * channels * TH * TW * itemsize  # per sample
    whole = list(dict.fromkeys(_budget_sizes(xp, N, tile_bytes)))
    samples = _slice_samples(xp, N)
    return whole, [] if samples is None else list(dict.fromkeys(_budget_sizes(xp, samples, tile_bytes)))


def samples_per_chunk(xp: Any, *, N: int, column_bytes_per_sample: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """How many samples one im2col + GEMM round handles: all of them on a GPU, else as many as fit
    in ``chunk_bytes`` (at least one)."""
    if xp.__name__ != "numpy":
        return N
    return max(1, min(N, chunk_bytes // max(column_bytes_per_sample, 1)))


def chunk_candidates(xp: Any, *, N: int, column_bytes_per_sample: int) -> list[int]:
    """The chunk sizes worth timing; the fixed rule's first. The whole batch only where its
    columns take at most ``WHOLE_BATCH_MAX_BYTES`` on the CPU (always on a GPU)."""
    sizes = _budget_sizes(xp, N, column_bytes_per_sample)
    if xp.__name__ != "numpy" or N * column_bytes_per_sample <= WHOLE_BATCH_MAX_BYTES:
        sizes.append(N)
    return list(dict.fromkeys(int(s) for s in sizes))


def split_candidates(xp: Any, *, N: int, column_bytes_per_sample: int) -> list[int]:
    """The chunk sizes worth timing for "split/<n>": those of ``chunk_candidates`` for one thread's
    slice of the batch; none where ``batch_threads`` would not split (GPU, one thread, N = 1)."""
    samples = _slice_samples(xp, N)
    return [] if samples is None else chunk_candidates(xp, N=samples, column_bytes_per_sample=column_bytes_per_sample)


def _budget_sizes(xp: Any, N: int, bytes_per_sample: int) -> list[int]:
    """Samples per chunk for chunks of about ``CHUNK_BYTES``, a quarter of it and four times it."""
    budgets = (CHUNK_BYTES, CHUNK_BYTES // 4, CHUNK_BYTES * 4)
    return [samples_per_chunk(xp, N=N, column_bytes_per_sample=bytes_per_sample, chunk_bytes=b) for b in budgets]


def _slice_samples(xp: Any, N: int) -> int | None:
    """Samples in one thread's slice of the batch under ``batch_threads``; None where it would not
    split (GPU, one thread, N = 1)."""
    if N < 2 or not batch_threads.available(xp):
        return None
    return -(-N // batch_threads.threads())


def choose(
    what: str,
    *,
    key: Any,
    channels: tuple[int, int],
    direct_ok: bool,
    chunks: list[int],
    run: Callable[[str], Any],
    split_chunks: Sequence[int] = (),
    winograd_chunks: Sequence[int] = (),
    winograd_split_chunks: Sequence[int] = (),
) -> str:
    """The algorithm for ``what`` ("forward", "input grad" or "weight grad") of the conv ``key``.

    ``channels`` = (C, O); ``direct_ok`` from ``direct_applies``; ``chunks`` from ``chunk_candidates``,
    ``split_chunks`` from ``split_candidates``, ``winograd_chunks`` and ``winograd_split_chunks`` from
    ``winograd_candidates`` (or empty: not a candidate);
    ``run(name)`` computes the result with algorithm ``name`` (used only for timing).
    """
    limit = DIRECT_FORWARD_MAX_CHANNELS if what == "forward" else DIRECT_MAX_CHANNELS
    fixed = "direct" if direct_ok and max(channels) <= limit else f"gemm/{chunks[0]}"
    if fixed != "direct" and split_chunks:  # more than one thread: the same chunks, a slice per thread
        fixed = f"split/{split_chunks[0]}"
    names = [f"gemm/{n}" for n in chunks] + [f"split/{n}" for n in split_chunks]
    if direct_ok and max(channels) <= max(DIRECT_CANDIDATE_MAX_CHANNELS, limit):
        names.append("direct")
        if what == "weight grad":
            names.append("direct/dots")
    names += [f"winograd/{n}" for n in winograd_chunks]
    names += [f"winograd-split/{n}" for n in winograd_split_chunks]
    candidates = {name: (lambda name=name: run(name)) for name in names}
    return autotune.choose(f"conv2d {what}", key, candidates, fixed)
