"""Micro-benchmark: NumPy reference ops vs the Numba kernels of ``npresnet.kernels``, on ResNet-50 shapes.

    python bench/kernels_microbench.py [--batch 16] [--dtype float32] [--repeats 5] [--threads 1 2] [--clock cpu]

For each op it prints the median wall (or CPU) time of the reference (npresnet.functional) and of the Numba
kernel with each thread count (``numba.set_num_threads``), the speedups, and how closely the two
results agree ("bitwise" or the worst relative difference). Kernels are compiled and warmed up
before timing. The reference ops are single-threaded NumPy (no BLAS), so their time does not
depend on the thread count.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np


def median_ms(fn, repeats: int, clock=time.perf_counter) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return 1e3 * statistics.median(times)


def agreement(ref, fast) -> str:
    ref = ref if isinstance(ref, tuple) else (ref,)
    fast = fast if isinstance(fast, tuple) else (fast,)
    if all(np.array_equal(a, b, equal_nan=True) for a, b in zip(ref, fast)):
        return "bitwise"
    worst = max(
        float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(float(np.max(np.abs(a))), 1e-300))
        for a, b in zip(ref, fast)
    )
    return f"{worst:.1e} rel"


def cases(batch: int, dtype, rng):
    """(name, shape label, reference thunk, kernel thunk) for ResNet-50-like shapes."""
    from npresnet import kernels
    from npresnet.functional import batchnorm as bn
    from npresnet.functional import pooling as pool
    from npresnet.functional.im2col import col2im, im2col

    def rand(*shape):
        return rng.standard_normal(shape).astype(dtype)

    for label, (C, H, K, S, P) in {
        "3x3 s1 p1, x %dx64x56x56": (64, 56, 3, 1, 1),
        "1x1, x %dx256x56x56": (256, 56, 1, 1, 0),
        "1x1 s2 (downsample), x %dx256x56x56": (256, 56, 1, 2, 0),
        "conv1 7x7 s2 p3, x %dx3x224x224": (3, 224, 7, 2, 3),
    }.items():
        x = rand(batch, C, H, H)
        args = ((K, K), (S, S), (P, P), (1, 1))
        fast_im2col, fast_col2im = kernels.get("im2col", x), kernels.get("col2im", x)
        cols = im2col(x, *args)
        dcols = rand(*cols.shape)
        yield ("im2col", label % batch, lambda x=x, a=args: im2col(x, *a), lambda x=x, a=args, f=fast_im2col: f(x, *a))
        yield (
            "col2im",
            label % batch,
            lambda d=dcols, s=x.shape, a=args: col2im(d, s, *a[1:]),
            lambda d=dcols, s=x.shape, a=args, f=fast_col2im: f(d, s, *a[1:]),
        )
        del cols

    x = rand(batch, 64, 112, 112)
    label = f"3x3 s2 p1, x {batch}x64x112x112"
    y, cache = pool.maxpool2d_forward(x, 3, 2, 1)
    dy = rand(*y.shape)
    fwd, bwd = kernels.get("maxpool2d_forward", x), kernels.get("maxpool2d_backward", x)
    yield (
        "maxpool fwd",
        label,
        lambda: (lambda y, c: (y, c.argmax))(*pool.maxpool2d_forward(x, 3, 2, 1)),
        lambda: fwd(x, cache.geometry),
    )
    yield (
        "maxpool bwd",
        label,
        lambda: pool.maxpool2d_backward(dy, cache),
        lambda: bwd(dy, cache.argmax, x.shape, cache.geometry),
    )

    x = rand(batch, 64, 56, 56)
    label = f"3x3 s1 p1, x {batch}x64x56x56"
    y, acache = pool.avgpool2d_forward(x, 3, 1, 1)
    dy = rand(*y.shape)
    afwd, abwd = kernels.get("avgpool2d_forward", x), kernels.get("avgpool2d_backward", x)
    yield (
        "avgpool fwd",
        label,
        lambda: pool.avgpool2d_forward(x, 3, 1, 1)[0],
        lambda: afwd(x, acache.divisor, acache.geometry),
    )
    yield (
        "avgpool bwd",
        label,
        lambda: pool.avgpool2d_backward(dy, acache),
        lambda: abwd(dy, acache.divisor, x.shape, acache.geometry),
    )

    x = rand(batch, 256, 56, 56)
    label = f"train, x {batch}x256x56x56"
    gamma, beta = rand(256), rand(256)
    y, bcache = bn.batchnorm2d_forward(x, gamma, beta, None, None, True)
    dy = rand(*y.shape)
    bfwd, bbwd = kernels.get("batchnorm2d_train_forward", x), kernels.get("batchnorm2d_train_backward", x)
    yield (
        "batchnorm fwd",
        label,
        lambda: bn.batchnorm2d_forward(x, gamma, beta, None, None, True)[0],
        lambda: bfwd(x, gamma, beta, 1e-5)[0],
    )
    yield (
        "batchnorm bwd",
        label,
        lambda: bn.batchnorm2d_backward(dy, bcache),
        lambda: bbwd(dy, bcache.x_hat, bcache.invstd, gamma),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: process CPU time (all threads summed), robust to other processes "
        "on a shared machine; a perfectly parallel kernel keeps it constant",
    )
    args = parser.parse_args()

    import numba

    from npresnet import kernels

    if kernels.active() != "numba":
        raise SystemExit(f"npresnet.kernels.active() is {kernels.active()!r}: nothing to compare")
    print(
        f"numpy {np.__version__}, numba {numba.__version__}, python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, dtype {args.dtype}, median {args.clock} time of {args.repeats}, "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}, load average {os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'op':<14} {'shape':<36} {'numpy ms':>9}"
        + "".join(f" {f'numba {t}T ms':>12} {'speedup':>8}" for t in args.threads)
        + "  agreement"
    )
    print(header)
    print("-" * len(header))
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    rng = np.random.default_rng(0)
    for name, label, reference, fast in cases(args.batch, np.dtype(args.dtype), rng):
        with kernels.reference_only():  # the NumPy path, even once functional/ calls the kernels
            ref_result = reference()
            ref_ms = median_ms(reference, args.repeats, clock)
        agree = agreement(ref_result, fast())  # also compiles the kernel
        del ref_result
        row = f"{name:<14} {label:<36} {ref_ms:9.1f}"
        for threads in args.threads:
            numba.set_num_threads(threads)
            fast_ms = median_ms(fast, args.repeats, clock)
            row += f" {fast_ms:12.1f} {ref_ms / fast_ms:7.1f}x"
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        print(row + f"  {agree}", flush=True)
    print(
        f"numba threading layer: {numba.threading_layer()}; load average now {os.getloadavg()[0]:.1f} "
        f"(other processes on these {os.cpu_count()} CPUs skew the multi-thread column)"
    )


if __name__ == "__main__":
    main()
