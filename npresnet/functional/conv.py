"""2-D convolution (cross-correlation, as in PyTorch) as im2col + GEMM.

Notation: N batch, C input channels, O output channels, G groups, Cg = C/G and Og = O/G channels
per group, H x W input, KH x KW kernel, OH x OW output, K = Cg*KH*KW, L = N*OH*OW output pixels.

Forward, per group g (weight is (O, Cg, KH, KW), PyTorch's OIHW layout, no kernel flip)::

    cols = im2col(x)                                # (C, KH, KW, N, OH, OW), seen as (G, K, L)
    Y[g] = W[g] @ cols[g]                           # (Og, K) @ (K, L) -> (Og, L)
    y[n, o, oh, ow] = Y[o, n*OH*OW + oh*OW + ow] + b[o]

Backward, given dY = dL/dy regrouped to (G, Og, L)::

    dW[g]    = dY[g] @ cols[g].T                    # (Og, L) @ (L, K)
    dcols[g] = W[g].T @ dY[g]                       # (K, Og) @ (Og, L)
    dx       = col2im(dcols)                        # adjoint of im2col: accumulate overlaps
    db       = sum of dy over N, OH, OW

These choices keep memory and time down; all but the last leave the arithmetic exactly as above:

* The cache holds the input x, not its columns: cols is KH*KW times larger than x, and backward
  rebuilds it with one more im2col (as cuDNN-style implementations do). x is usually alive anyway
  (it is the previous ReLU's cached output), so a conv costs almost no memory of its own.
* A 1x1 convolution without padding needs no im2col at all: its columns *are* the (strided)
  input. Per sample n, with X[n] = x[n, :, ::SH, ::SW] seen as (C, OH*OW)::

      y[n] = W @ X[n]        dX[n] = W.T @ dy[n]        dW = sum_n dy[n] @ X[n].T

  and the output comes out in (N, O, OH, OW) order with no transpose.
* On the CPU the batch is processed in chunks of a few samples whose columns fit in the L2 cache:
  im2col writes a block, the GEMM reads it back while it is still in cache, and the next chunk
  reuses the memory. One big im2col of the whole batch would stream KH*KW times the input through
  main memory twice; chunking measured up to 2x faster on ResNet-20's 16-channel layers. On a GPU
  the whole batch is one chunk (one big GEMM per launch).
* On the CPU, a thin 3x3 convolution (stride 1, one group) can instead use the direct kernels of
  ``npresnet.kernels.conv3x3_cpu``: the forward and dx as a convolution of the wide rows (dx: of
  dy with the flipped weights), dw as nine small GEMMs over shifted views or (measure mode only)
  as nine Numba dot products per channel pair, no im2col. There
  im2col's GEMM has only 16-32 rows and runs at a quarter of BLAS's peak. Same math, products
  summed in another order.

* On the CPU a 3x3 stride-1 convolution can also run as Winograd's F(2x2, 3x3)
  (``npresnet.functional.winograd``): 16 GEMMs over transformed 4x4 input tiles, 2.25x fewer
  multiplications, for the forward and dx (a convolution of dy too). dw stays with the others.

* At more than one thread on the CPU, the chunk loop can instead run on each thread's own slice of
  the batch, with a one-thread GEMM ("split": ``npresnet.batch_threads``): the samples are
  independent, and dW adds the slices' sums in slice order.

Which algorithm (and chunk size) computes the forward, dx and dw of a layer is chosen per shape by
``npresnet.functional.conv_dispatch``: a fixed rule by default, or the fastest candidate timed on
this machine (``npresnet.autotune``, "measure" mode). All of them agree to rounding.

Every GEMM is a plain 2-D product of C-contiguous matrices (or their .T views), which BLAS runs at
full speed; a batched matmul over a transposed 3-D view can fall off BLAS onto a slow loop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import batch_threads, kernels
from ..backend import get_array_module
from ..checks import check_grad_like, check_like, check_nchw, pair
from . import conv_dispatch
from .conv_dispatch import (
    CHUNK_BYTES,
    DIRECT_FORWARD_MAX_CHANNELS,
    DIRECT_MAX_CHANNELS,
    chunk_candidates,
    direct_applies,
    samples_per_chunk,
    split_candidates,
    winograd_applies,
    winograd_candidates,
)
from .conv_dispatch import choose as choose_algorithm
from .im2col import col2im, conv_output_size, im2col
from .winograd import conv3x3_winograd

__all__ = [
    "CHUNK_BYTES",
    "DIRECT_FORWARD_MAX_CHANNELS",
    "DIRECT_MAX_CHANNELS",
    "ConvCache",
    "conv2d_backward",
    "conv2d_forward",
    "samples_per_chunk",
]


class ConvCache(NamedTuple):
    x: Any  # (N, C, H, W) the input; for a 1x1 conv its strided samples (N, C, OH, OW)
    weight: Any  # (O, Cg, KH, KW)
    x_shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    has_bias: bool
    pointwise: bool  # True: 1x1, no padding, one group -> no im2col (see module docstring)
    direct_ok: bool  # True: the direct 3x3 kernels can compute the gradients
    key: tuple  # the layer's shape, for conv_dispatch

    @property
    def direct_grads(self) -> bool:
        """Whether the fixed rule takes the gradients from the direct 3x3 kernels."""
        return self.direct_ok and max(self.x_shape[1], self.weight.shape[0]) <= conv_dispatch.DIRECT_MAX_CHANNELS


def _is_pointwise(kernel: tuple[int, int], padding: tuple[int, int], groups: int) -> bool:
    return kernel == (1, 1) and padding == (0, 0) and groups == 1


def _grouped_matmul(a: Any, b: Any, xp: Any, transpose_a: bool = False, transpose_b: bool = False) -> Any:
    """out[g] = op(a[g]) @ op(b[g]) for each group g, each a 2-D BLAS GEMM. a, b: (G, ., .)."""
    products = []
    for g in range(a.shape[0]):
        left = a[g].T if transpose_a else a[g]
        right = b[g].T if transpose_b else b[g]
        products.append(left @ right)
    return products[0][None] if len(products) == 1 else xp.stack(products)


def conv2d_forward(
    x: Any,
    weight: Any,
    bias: Any | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> tuple[Any, ConvCache]:
    """y = conv2d(x, weight) + bias, like ``torch.nn.functional.conv2d``.

    Args:
        x: (N, C, H, W). weight: (O, C/G, KH, KW). bias: (O,) or None.

    Returns:
        y: (N, O, OH, OW) and the cache for :func:`conv2d_backward`.
    """
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    check_nchw(x, None, "input", "conv2d")
    check_like(x, weight, "input", "conv2d weight")
    if weight.ndim != 4:
        raise ValueError(f"conv2d weight must be 4-D (O, C/groups, KH, KW), got shape {tuple(weight.shape)}")
    N, C, H, W = x.shape
    O, Cg, KH, KW = weight.shape
    G = groups
    if G < 1 or O % G:
        raise ValueError(f"groups={G} must be >= 1 and divide out_channels={O}")
    if Cg * G != C:
        hint = " (is it NHWC? npresnet uses NCHW)" if x.shape[-1] == Cg * G else ""
        raise ValueError(
            f"conv2d expects input with {Cg * G} channels in dim 1 (weight {tuple(weight.shape)}, "
            f"groups={G}), got input of shape {tuple(x.shape)}{hint}"
        )
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"conv2d needs stride>=1, dilation>=1, padding>=0; got {stride}, {dilation}, {padding}")
    OH = conv_output_size(H, KH, stride[0], padding[0], dilation[0])
    OW = conv_output_size(W, KW, stride[1], padding[1], dilation[1])
    if OH < 1 or OW < 1:
        raise ValueError(
            f"conv2d input of spatial size {H}x{W} (padding {padding}) is smaller than the "
            f"dilated kernel {dilation[0] * (KH - 1) + 1}x{dilation[1] * (KW - 1) + 1}"
        )
    if bias is not None:
        check_like(bias, weight, "bias", "conv2d weight")
        if tuple(bias.shape) != (O,):
            raise ValueError(f"conv2d bias must have shape ({O},), got {tuple(bias.shape)}")
    xp = get_array_module(x)

    key = ((N, C, H, W), tuple(weight.shape), stride, padding, dilation, G, x.dtype.str)
    direct_ok = direct_applies(x, (KH, KW), stride, padding, dilation, G)
    pointwise = _is_pointwise((KH, KW), padding, G)
    if pointwise:
        x_used = x if stride == (1, 1) else xp.ascontiguousarray(x[:, :, :: stride[0], :: stride[1]])
        y = xp.matmul(weight.reshape(O, C), x_used.reshape(N, C, OH * OW)).reshape(N, O, OH, OW)
    else:
        x_used = x
        column_bytes = C * KH * KW * OH * OW * x.dtype.itemsize
        chunks, split_chunks = chunk_candidates(xp, N, column_bytes), split_candidates(xp, N, column_bytes)
        winograd_ok = winograd_applies(x, (KH, KW), stride, padding, dilation, G)
        winograd_chunks, winograd_split = (
            winograd_candidates(xp, N, C, (OH, OW), x.dtype.itemsize) if winograd_ok else ([], [])
        )
        args = (x, weight, stride, padding, dilation, G, (OH, OW))
        algorithm = choose_algorithm(
            "forward",
            key,
            (C, O),
            direct_ok,
            chunks,
            lambda name: _forward(name, *args),
            split_chunks,
            winograd_chunks,
            winograd_split,
        )
        y = _forward(algorithm, *args)
    if bias is not None:
        y += bias.reshape(1, O, 1, 1)
    cache = ConvCache(
        x_used, weight, (N, C, H, W), stride, padding, dilation, G, bias is not None, pointwise, direct_ok, key
    )
    return y, cache


def _forward(
    algorithm: str,
    x: Any,
    weight: Any,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    G: int,
    out: tuple[int, int],
) -> Any:
    """y (N, O, OH, OW) without bias, by ``algorithm``: "direct", "gemm/<samples per chunk>",
    "split/<samples per chunk>" (the gemm loop on each thread's slice of the batch: batch_threads),
    "winograd/<samples per chunk>" or "winograd-split/<samples per chunk>"."""
    if algorithm == "direct":
        return kernels.get("conv3x3_forward", x)(x, weight, padding, dilation)
    if algorithm.startswith("winograd"):  # "winograd/<n>" or "winograd-split/<n>"
        method, samples = algorithm.split("/")
        return conv3x3_winograd(x, weight, padding, int(samples), split=method == "winograd-split")
    xp = get_array_module(x)
    N = x.shape[0]
    O, Cg, KH, KW = weight.shape
    (OH, OW), K, L = out, Cg * KH * KW, out[0] * out[1]  # K per group, L per sample
    weight_g = weight.reshape(G, O // G, K)
    y = xp.empty((N, O, OH, OW), dtype=x.dtype)
    method, samples = algorithm.split("/")
    chunk = int(samples)

    def forward_samples(begin: int, end: int, _slice: int = 0) -> None:
        for start in range(begin, end, chunk):
            x_chunk = x[start : min(start + chunk, end)]
            n = x_chunk.shape[0]
            cols = im2col(x_chunk, (KH, KW), stride, padding, dilation).reshape(G, K, n * L)
            y_chunk = _grouped_matmul(weight_g, cols, xp)  # (G, Og, n*L)
            y[start : start + n] = y_chunk.reshape(O, n, OH, OW).transpose(1, 0, 2, 3)

    if method == "split":
        batch_threads.run(N, forward_samples)
    else:
        forward_samples(0, N)
    return y


def conv2d_backward(
    dout: Any, cache: ConvCache, need_input_grad: bool = True, need_weight_grad: bool = True
) -> tuple[Any | None, Any | None, Any | None]:
    """Gradients of a convolution.

    Args:
        dout: (N, O, OH, OW) upstream gradient dL/dy.
        cache: from :func:`conv2d_forward`.
        need_input_grad / need_weight_grad: skip the GEMM whose result is not wanted.

    Returns:
        dx (N, C, H, W), dweight (O, C/G, KH, KW), dbias (O,) or None (for no bias / not needed).
    """
    weight, x_shape = cache.weight, cache.x_shape
    N, C, H, W = x_shape
    O, Cg, KH, KW = weight.shape
    OH = conv_output_size(H, KH, cache.stride[0], cache.padding[0], cache.dilation[0])
    OW = conv_output_size(W, KW, cache.stride[1], cache.padding[1], cache.dilation[1])
    check_grad_like(dout, (N, O, OH, OW), weight, "conv2d")
    xp = get_array_module(dout)
    dbias = dout.sum(axis=(0, 2, 3)) if cache.has_bias and need_weight_grad else None
    if cache.pointwise:
        dx, dweight = _pointwise_backward(dout, cache, need_input_grad, need_weight_grad, xp)
        return dx, dweight, dbias

    column_bytes = C * KH * KW * OH * OW * dout.dtype.itemsize
    chunks, split_chunks = chunk_candidates(xp, N, column_bytes), split_candidates(xp, N, column_bytes)
    direct_ok = cache.direct_ok and kernels.get("conv3x3_backward_input", dout) is not None  # not in reference_only()
    input_algorithm = weight_algorithm = None
    if need_input_grad:
        winograd_ok = winograd_applies(dout, (KH, KW), cache.stride, cache.padding, cache.dilation, cache.groups)
        winograd_chunks, winograd_split = (
            winograd_candidates(xp, N, O, (H, W), dout.dtype.itemsize) if winograd_ok else ([], [])
        )
        input_algorithm = choose_algorithm(
            "input grad",
            cache.key,
            (C, O),
            direct_ok,
            chunks,
            lambda name: _gradients(dout, cache, name, None),
            split_chunks,
            winograd_chunks,
            winograd_split,
        )
    if need_weight_grad:
        weight_algorithm = choose_algorithm(
            "weight grad",
            cache.key,
            (C, O),
            direct_ok,
            chunks,
            lambda name: _gradients(dout, cache, None, name),
            split_chunks,
        )
    if input_algorithm == weight_algorithm and input_algorithm is not None:
        dx, dweight = _gradients(dout, cache, input_algorithm, weight_algorithm)  # one pass over the chunks
    else:
        dx = _gradients(dout, cache, input_algorithm, None)[0] if input_algorithm else None
        dweight = _gradients(dout, cache, None, weight_algorithm)[1] if weight_algorithm else None
    return dx, dweight, dbias


def _gradients(
    dout: Any, cache: ConvCache, input_algorithm: str | None, weight_algorithm: str | None
) -> tuple[Any | None, Any | None]:
    """(dx, dweight) by the given algorithms ("direct", "gemm/<samples per chunk>", for dx also
    "winograd/<samples per chunk>" and "winograd-split/<n>", for dweight also "direct/dots"; None: skip).
    Two gemm or split algorithms must be the same: they share one loop."""
    weight, x_shape, G = cache.weight, cache.x_shape, cache.groups
    dx = dweight = None
    if input_algorithm == "direct":
        dx = kernels.get("conv3x3_backward_input", dout)(dout, weight, cache.padding, cache.dilation)
        input_algorithm = None
    if input_algorithm is not None and input_algorithm.startswith("winograd"):
        # stride 1: dx = conv(dy, w'), w'[c, o, i, k] = w[o, c, 2-i, 2-k], padding 2 - P (conv3x3_cpu)
        flipped = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
        adjoint_padding = (2 - cache.padding[0], 2 - cache.padding[1])
        method, samples = input_algorithm.split("/")
        dx = conv3x3_winograd(dout, flipped, adjoint_padding, int(samples), split=method == "winograd-split")
        input_algorithm = None
    if weight_algorithm in ("direct", "direct/dots"):
        name = "conv3x3_backward_weight" if weight_algorithm == "direct" else "conv3x3_backward_weight_dots"
        dweight = kernels.get(name, dout)(dout, cache.x, cache.padding, cache.dilation)
        weight_algorithm = None
    if input_algorithm is None and weight_algorithm is None:
        return dx, dweight
    method, samples = (input_algorithm or weight_algorithm or "").split("/")
    chunk = int(samples)
    need_input_grad, need_weight_grad = input_algorithm is not None, weight_algorithm is not None
    xp = get_array_module(dout)
    N, C, H, W = x_shape
    O, Cg, KH, KW = weight.shape
    OH, OW = dout.shape[2:]
    # Per chunk of samples, with dY regrouped like the forward GEMM's output,
    # (n, O, OH, OW) -> (G, Og, n*OH*OW), and the columns rebuilt from the cached x.
    K, L = Cg * KH * KW, OH * OW
    weight_g = weight.reshape(G, O // G, K)
    dx_all = xp.empty(x_shape, dtype=dout.dtype) if need_input_grad else None
    dweight_parts: dict[int, Any] = {}  # slice -> its samples' sum of dW (one slice unless split)

    def gradient_samples(begin: int, end: int, part: int = 0) -> None:
        dweight_g = xp.zeros((G, O // G, K), dtype=dout.dtype) if need_weight_grad else None
        for start in range(begin, end, chunk):
            dout_chunk = dout[start : min(start + chunk, end)]
            n = dout_chunk.shape[0]
            dout_g = xp.ascontiguousarray(dout_chunk.transpose(1, 0, 2, 3)).reshape(G, O // G, n * L)
            if dweight_g is not None:
                cols = im2col(cache.x[start : start + n], (KH, KW), cache.stride, cache.padding, cache.dilation)
                dweight_g += _grouped_matmul(dout_g, cols.reshape(G, K, n * L), xp, transpose_b=True)
            if dx_all is not None:
                dcols = _grouped_matmul(weight_g, dout_g, xp, transpose_a=True)  # (G, K, n*L)
                dx_all[start : start + n] = col2im(
                    dcols.reshape(C, KH, KW, n, OH, OW), (n, C, H, W), cache.stride, cache.padding, cache.dilation
                )
        dweight_parts[part] = dweight_g

    if method == "split":
        batch_threads.run(N, gradient_samples)
    else:
        gradient_samples(0, N)
    if need_weight_grad:
        parts = [dweight_parts[t] for t in sorted(dweight_parts)]
        dweight_g = parts[0]
        for part in parts[1:]:  # in slice order: the same bits on every run
            dweight_g += part
        dweight = dweight_g.reshape(weight.shape)
    return (dx if dx_all is None else dx_all), dweight


def _pointwise_backward(
    dout: Any, cache: ConvCache, need_input_grad: bool, need_weight_grad: bool, xp: Any
) -> tuple[Any | None, Any | None]:
    """Backward of a 1x1 convolution with X = the cached strided input (N, C, OH, OW)::

    dX[n] = W.T @ dy[n]        dW = sum_n dy[n] @ X[n].T        (dx = dX scattered back at the stride)
    """
    N, C, H, W = cache.x_shape
    O = cache.weight.shape[0]
    x_used = cache.x
    OH, OW = x_used.shape[2:]
    dout3 = xp.ascontiguousarray(dout).reshape(N, O, OH * OW)
    x3 = x_used.reshape(N, C, OH * OW)
    dx = dweight = None
    if need_weight_grad:
        dweight = dout3[0] @ x3[0].T
        for n in range(1, N):
            dweight += dout3[n] @ x3[n].T
        dweight = dweight.reshape(O, C, 1, 1)
    if need_input_grad:
        weight_t = xp.ascontiguousarray(cache.weight.reshape(O, C).T)  # (C, O)
        dx_used = xp.matmul(weight_t, dout3).reshape(N, C, OH, OW)
        if cache.stride == (1, 1):
            dx = dx_used
        else:
            dx = xp.zeros(cache.x_shape, dtype=dout.dtype)
            dx[:, :, :: cache.stride[0], :: cache.stride[1]] = dx_used
    return dx, dweight
