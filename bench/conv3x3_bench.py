"""Micro-benchmark: the CIFAR ResNets' 3x3 convolutions, direct kernel vs im2col + GEMM vs torch.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/conv3x3_bench.py [--batch 128] [--threads 1]

For each 3x3 conv shape of ResNet-20 (batch 128, float32) it prints the median time of the forward,
the input gradient and the weight gradient, on the path npresnet picks (``direct`` where
the engine (``npresnet.engine.conv``) sends the layer to ``kernels/conv3x3_cpu.py``, ``im2col/direct``
where only the gradients go there), on im2col + GEMM
(the Numba im2col/col2im kernels and BLAS), and torch's forward and whole backward, plus how far the
chosen path is from im2col + GEMM. The direct path is used for stride 1 and at most
``DIRECT_MAX_CHANNELS`` channels; the other rows show im2col + GEMM twice. For every stride-1
shape it also times the weight gradient by Numba dot products (``dw dots``,
``conv3x3_backward_weight_dots``, a measure-mode candidate), with its error against the chosen path.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import numpy as np

from npresnet import kernels
from npresnet.engine import conv_dispatch, runtime
from npresnet.engine.conv import direct_gradients
from npresnet.functional.conv import conv2d_backward, conv2d_forward

# (C, O, H, stride): the stem, stage 1, the stride-2 entries of stages 2 and 3, stages 2 and 3.
SHAPES = [(3, 16, 32, 1), (16, 16, 32, 1), (16, 32, 32, 2), (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 8, 1)]


def median_ms(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def time_npresnet(x, w, stride, dy) -> tuple[float, float, float, bool, tuple]:
    y, cache = conv2d_forward(x, w, None, stride, 1)
    forward = median_ms(lambda: conv2d_forward(x, w, None, stride, 1))
    input_grad = median_ms(lambda: conv2d_backward(dy, cache, need_weight_grad=False))
    weight_grad = median_ms(lambda: conv2d_backward(dy, cache, need_input_grad=False))
    return forward, input_grad, weight_grad, direct_gradients(cache), (y, *conv2d_backward(dy, cache)[:2])


def time_torch(torch, x, w, stride, dy) -> tuple[float, float]:
    """torch's forward, and its backward (both gradients at once), in ms."""
    tx, tw, tdy = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_(), torch.from_numpy(dy)

    def forward_backward():
        tx.grad = tw.grad = None
        torch.nn.functional.conv2d(tx, tw, None, stride, 1).backward(tdy)

    forward = median_ms(lambda: torch.nn.functional.conv2d(tx, tw, None, stride, 1))
    return forward, median_ms(forward_backward) - forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    runtime.set_num_threads(args.threads)  # BLAS, and torch's intra-op threads (imported first)
    rng = np.random.default_rng(0)
    print(f"batch {args.batch}, float32, {args.threads} thread(s); ms: forward / input grad / weight grad")
    for C, O, H, stride in SHAPES:
        x = rng.standard_normal((args.batch, C, H, H), dtype=np.float32)
        w = rng.standard_normal((O, C, 3, 3), dtype=np.float32)
        dy = rng.standard_normal((args.batch, O, H // stride, H // stride), dtype=np.float32)
        chosen = time_npresnet(x, w, stride, dy)
        limits = conv_dispatch.DIRECT_MAX_CHANNELS, conv_dispatch.DIRECT_FORWARD_MAX_CHANNELS
        conv_dispatch.DIRECT_MAX_CHANNELS = conv_dispatch.DIRECT_FORWARD_MAX_CHANNELS = 0  # fixed rule: GEMM
        try:
            gemm = time_npresnet(x, w, stride, dy)
        finally:
            conv_dispatch.DIRECT_MAX_CHANNELS, conv_dispatch.DIRECT_FORWARD_MAX_CHANNELS = limits
        worst = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(chosen[4], gemm[4]))
        path = (
            ("direct" if max(C, O) <= conv_dispatch.DIRECT_FORWARD_MAX_CHANNELS else "im2col/direct")
            if chosen[3]
            else "im2col"
        )  # forward / gradients
        line = (
            f"{C:3d} -> {O:3d}  {H:2d}x{H:<2d} stride {stride}  {path:13s} "
            f"{chosen[0]:5.1f} / {chosen[1]:5.1f} / {chosen[2]:5.1f}   im2col+GEMM {gemm[0]:5.1f} / "
            f"{gemm[1]:5.1f} / {gemm[2]:5.1f}   (rel diff {worst:.0e})"
        )
        if stride == 1:
            dots = functools.partial(kernels.get("conv3x3_backward_weight_dots", x), dy, x, (1, 1), (1, 1))
            error = float(np.abs(dots() - chosen[4][2]).max() / np.abs(chosen[4][2]).max())
            line += f"   dw dots {median_ms(dots):5.1f} ({error:.0e})"
        if torch is not None:
            forward, backward = time_torch(torch, x, w, stride, dy)
            line += f"   torch {forward:5.1f} / {backward:5.1f} (both grads)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
