"""Micro-benchmark: im2col + GEMM per chunk ("gemm/<n>") against the batch split ("split/<n>").

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/batch_split_bench.py [--threads N] [--repeat 25]

For each im2col + GEMM conv shape of ResNet-20 (batch 128, float32) at N threads (default: all
cores), it times the forward and the backward (dx and dw in one pass) both ways, with the two
algorithms interleaved call by call, so that a drifting machine slows both alike, and prints the
medians and the split's speed-up. ``--after-relu`` runs a parallel ReLU kernel (TBB or workqueue)
before each timed call, as happens inside a model, where the kernel pool's workers are still
spinning. See npresnet/engine/batch_threads.py.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import numpy as np

from npresnet import kernels
from npresnet.engine import batch_threads, conv_dispatch, runtime
from npresnet.engine.conv import run_forward, run_gradients
from npresnet.functional.conv import conv2d_forward

# (C, O, H, stride): ResNet-20's stride-2 entries and its 32- and 64-channel stages; also the
# 16-channel stage (the direct kernels' domain, here by im2col + GEMM).
SHAPES = [(16, 16, 32, 1), (16, 32, 32, 2), (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 8, 1)]


def time_shape(C: int, O: int, H: int, stride: int, args: argparse.Namespace, before: Callable[[], None]) -> str:
    """One table row: median ms of forward and backward by gemm and by split, interleaved."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, C, H, H), dtype=np.float32)
    w = rng.standard_normal((O, C, 3, 3), dtype=np.float32)
    y, cache = conv2d_forward(x, w, None, stride, 1)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    chunk = conv_dispatch.samples_per_chunk(
        np, N=args.batch, column_bytes_per_sample=C * 9 * y.shape[2] * y.shape[3] * 4
    )
    names = (f"gemm/{chunk}", f"split/{chunk}")
    runs: dict[tuple[str, str], Callable[[], object]] = {}
    for name in names:
        geometry = {"stride": (stride,) * 2, "padding": (1, 1), "dilation": (1, 1), "groups": 1}
        runs["fwd", name] = functools.partial(run_forward, name, x, w, **geometry)
        runs["bwd", name] = functools.partial(run_gradients, dy, cache, input_algorithm=name, weight_algorithm=name)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    for run in runs.values():
        run()  # compile, page in
    for _ in range(args.repeat):
        for key, run in runs.items():
            before()
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    fg, fs, bg, bs = (1e3 * statistics.median(times[d, n]) for d in ("fwd", "bwd") for n in names)
    label = f"{C}->{O} {H}x{H} stride {stride}"
    return f"{label:<22} {chunk:>5} {fg:9.2f} {fs:9.2f} {fg / fs:5.2f} {bg:9.2f} {bs:9.2f} {bg / bs:5.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=runtime.default_threads())
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeat", type=int, default=25)
    p.add_argument("--after-relu", action="store_true", help="a parallel ReLU before each timed call")
    args = p.parse_args()
    runtime.set_num_threads(args.threads)
    runtime.tune_allocator()
    if not batch_threads.available(np):
        raise SystemExit("the batch split is off here (one thread, NPRESNET_BATCH_SPLIT=0 or no threadpoolctl)")
    spin = np.random.default_rng(1).standard_normal((args.batch, 16, 32, 32), dtype=np.float32)
    relu = kernels.get("relu_forward", spin)
    before = (lambda: relu(spin)) if args.after_relu and relu is not None else (lambda: None)
    print(f"{args.threads} threads, batch {args.batch}, float32, median ms of {args.repeat} interleaved calls")
    header = ("conv", "chunk", "fwd gemm", "fwd split", "x", "bwd gemm", "bwd split", "x")
    print("{:<22} {:>5} {:>9} {:>9} {:>5} {:>9} {:>9} {:>5}".format(*header))
    for C, O, H, stride in SHAPES:
        print(time_shape(C, O, H, stride, args, before))


if __name__ == "__main__":
    main()
