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

In the ``"measure"`` mode the candidates are timed on the first call with a new shape: the chunk
sizes around ``CHUNK_BYTES`` (one, a quarter, four times, and the whole batch up to
``WHOLE_BATCH_MAX_BYTES``; for Winograd one, a quarter, a half), at more than one thread the same
for "split/<n>" on a slice,
"winograd/<n>" where it applies, and the direct kernels up to ``DIRECT_CANDIDATE_MAX_CHANNELS``
channels (wider, they lose by far: timing them would only slow the first step down), "direct/dots"
among them for the weight gradient (and "direct" there only up to ``DIRECT_MAX_CHANNELS``: its
small BLAS products fall far behind above). They form three families (im2col + GEMM, direct,
Winograd); ``autotune`` times one of each on a slice of the batch (``probe_samples``), then the
winning family's others, so that choosing costs a fraction of a step. The fixed rule never picks
"direct/dots" or "winograd": they were measured on few CPUs, and the fixed rule's bits stay those
of the releases before them.
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
    "probe_samples",
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
#: columns (no more than the largest budget chunk). ResNet-50's 7x7 stem at batch 16 has over a
#: hundred MB of columns, and a measured run that picked the whole batch there (within timing noise
#: of one sample per chunk) raised the step's peak memory by a quarter; and a family's members are
#: timed on the same slice of the batch (``choose``), which the whole batch would make the whole
#: layer, for every member.
WHOLE_BATCH_MAX_BYTES = 4 * CHUNK_BYTES
#: Measure mode: each candidate is timed on a slice of the batch holding at least this much
#: arithmetic (FLOP), about a millisecond's: enough to time, a fraction of the layer's cost.
PROBE_FLOP = 3e7
#: Measure mode: each family is first timed at its smallest chunk whose GEMMs have this many columns.
MIN_GEMM_COLUMNS = 256


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
    in a quarter, a half or one ``CHUNK_BYTES`` (the half: on ResNet-20's 32- and 64-channel
    layers it beat both neighbours; four times lost to it there once timed on the same samples).
    Never the whole batch regardless of size: on ResNet-50's first stage that would be tens of MB
    of tiles and as much of products, for no gain measured."""
    TH, TW = tiles(*out)
    tile_bytes = 16 * channels * TH * TW * itemsize  # per sample

    def sizes(n: int) -> list[int]:
        budgets = (CHUNK_BYTES, CHUNK_BYTES // 4, CHUNK_BYTES // 2)
        return list(
            dict.fromkeys(
                samples_per_chunk(xp, N=n, column_bytes_per_sample=tile_bytes, chunk_bytes=b) for b in budgets
            )
        )

    samples = _slice_samples(xp, N)
    return sizes(N), [] if samples is None else sizes(samples)


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
    run: Callable[[str, int], Any],
    flop_per_sample: float,
    pixels: int = 1,
    split_chunks: Sequence[int] = (),
    winograd_chunks: Sequence[int] = (),
    winograd_split_chunks: Sequence[int] = (),
) -> str:
    """The algorithm for ``what`` ("forward", "input grad" or "weight grad") of the conv ``key``.

    ``channels`` = (C, O); ``direct_ok`` from ``direct_applies``; ``chunks`` from ``chunk_candidates``,
    ``split_chunks`` from ``split_candidates``, ``winograd_chunks`` and ``winograd_split_chunks`` from
    ``winograd_candidates`` (or empty: not a candidate), each list's
    rule size first; ``run(name, n)`` computes the result with algorithm ``name`` on the batch's
    first ``n`` samples (used only for timing); ``flop_per_sample`` the conv's arithmetic per sample,
    ``pixels`` the output pixels per sample of its GEMMs (OH * OW; for dx, H * W).
    """
    limit = DIRECT_FORWARD_MAX_CHANNELS if what == "forward" else DIRECT_MAX_CHANNELS
    fixed = "direct" if direct_ok and max(channels) <= limit else f"gemm/{chunks[0]}"
    if fixed != "direct" and split_chunks:  # more than one thread: the same chunks, a slice per thread
        fixed = f"split/{split_chunks[0]}"
    if autotune.mode() == "fixed":  # the library's default, on every call: nothing more to build
        return fixed
    # Three families, each listed from its likeliest member: autotune times one per family (and
    # the fixed rule's) first, then the winning family's others (see its docstring).
    im2col_names = [f"split/{n}" for n in _likeliest_first(split_chunks, pixels)]
    im2col_names += [f"gemm/{n}" for n in _likeliest_first(chunks, pixels)]
    families = dict.fromkeys(im2col_names, "im2col")
    if direct_ok and max(channels) <= max(DIRECT_CANDIDATE_MAX_CHANNELS, limit):
        if what != "weight grad":
            families["direct"] = "direct"
        else:  # the BLAS small products get slower than im2col's GEMM by far above DIRECT_MAX_CHANNELS
            families["direct/dots"] = "direct"
            if max(channels) <= DIRECT_MAX_CHANNELS:
                families["direct"] = "direct"
    # Winograd's forward and dx GEMMs have a 2x2 output tile per 4 pixels as columns; its dW GEMMs
    # sum over the tiles, wide at any chunk: there the rule's chunk (the budget's) comes first.
    wide_first = (lambda sizes: _likeliest_first(sizes, -(-pixels // 4))) if what != "weight grad" else list
    for n in wide_first(winograd_split_chunks):
        families[f"winograd-split/{n}"] = "winograd"
    for n in wide_first(winograd_chunks):
        families[f"winograd/{n}"] = "winograd"
    names = list(families)
    op = f"conv2d {what}"
    if len(names) == 1:  # nothing to time
        return fixed
    N = key[0][0]
    samples = {name: probe_samples(name, N=N, flop_per_sample=flop_per_sample) for name in names}
    # The members of a family are compared on the same samples: a call's fixed costs (the filter
    # transform, the hand-off to the threads) weigh more on a smaller slice, which made the largest
    # chunks win the second stage although smaller ones ran the whole batch faster.
    widest = {family: 0 for family in families.values()}
    for name in names:
        widest[families[name]] = max(widest[families[name]], samples[name])
    samples = {name: widest[families[name]] for name in names}
    candidates = {name: (lambda name=name: run(name, samples[name])) for name in names}
    work = {name: samples[name] / N for name in names}
    similar = ((key[0][1:], *key[1:]), N)  # the same layer at another batch size
    return autotune.choose(op, key, candidates, fixed, work=work, similar=similar, families=families)


def _likeliest_first(sizes: Sequence[int], columns_per_sample: int) -> list[int]:
    """The chunk sizes, the likeliest fastest first: the smallest whose GEMMs have at least
    ``MIN_GEMM_COLUMNS`` columns (BLAS runs far below its peak on narrower products: ResNet-50's
    7x7 layers have 49 pixels per sample), else the largest."""
    if not sizes:
        return []
    wide = [n for n in sizes if n * columns_per_sample >= MIN_GEMM_COLUMNS]
    lead = min(wide) if wide else max(sizes)
    return [lead, *(n for n in sizes if n != lead)]


def probe_samples(name: str, *, N: int, flop_per_sample: float) -> int:
    """How many of the batch's N samples the measured dispatch times ``name`` on: whole rounds of
    its loop (a chunk, or a chunk per thread where it splits the batch; a sample per thread for the
    direct kernels), enough of them for ``PROBE_FLOP`` of arithmetic, at most N."""
    method, _, size = name.partition("/")
    threads = batch_threads.threads()
    if method == "direct":
        unit = threads
    else:
        unit = int(size) * (threads if method.endswith("split") else 1)
    rounds = max(1, -(-int(PROBE_FLOP) // max(int(flop_per_sample * unit), 1)))
    return min(N, unit * rounds)
