"""The convolution's algorithms: how the engine computes what ``npresnet.functional.conv`` defines.

``functional.conv`` computes y = W @ im2col(x) and the backward's three products by its reference,
``im2col_gemm`` / ``im2col_gemm_backward``, and hands the whole layer to :func:`forward` and
:func:`gradients` here, its one door to the engine. These run the algorithm that
``conv_dispatch`` picks for the layer's shape; every one equals the reference to rounding:

``gemm/<n>``
    the reference itself, on chunks of ``n`` samples: a chunk's columns fit in the L2 cache, so
    im2col writes a block and the GEMM reads it back while it is still there, and the next chunk
    reuses the memory (one im2col of the whole batch would stream KH*KW times the input through
    main memory twice). On a GPU the whole batch is one chunk.
``split/<n>``
    the same loop on each thread's own slice of the batch, one BLAS thread per slice
    (``batch_threads``): one hand-off per layer instead of two per chunk; dW adds the slices'
    partial sums in slice order, so a thread count gives the same bits on every run.
``direct``, ``direct/dots``
    the direct 3x3 kernels of ``npresnet.kernels.conv3x3_cpu`` (thin layers, where im2col's GEMM
    has only 16-32 rows and runs far below BLAS's peak): same products, summed in another order.
``winograd/<n>``, ``winograd-split/<n>``
    Winograd's F(2x2, 3x3) (``npresnet.functional.winograd`` teaches it) for the forward and dx
    (a convolution of dy with the flipped filters), and its transpose for dW
    (:func:`winograd_weight_gradient`), in chunks of ``n`` samples, optionally split.

The 1x1 convolutions never come here: ``functional.conv`` computes them as one GEMM per sample.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import kernels
from ..backend import get_array_module
from ..functional import conv as textbook
from ..functional import winograd as winograd_math
from . import batch_threads, conv_dispatch

__all__ = [
    "Plan",
    "direct_gradients",
    "forward",
    "gradients",
    "run_forward",
    "run_gradients",
    "winograd",
    "winograd_weight_gradient",
]


class Plan(NamedTuple):
    """What the forward noted for the backward (kept in ``ConvCache.plan``)."""

    key: tuple  # the layer's shapes, geometry and dtype: the measured dispatch's key
    direct_ok: bool  # the direct 3x3 kernels could run this layer at the forward


def forward(
    x: Any,
    weight: Any,
    *,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> tuple[Any, Plan]:
    """y = conv2d(x, weight) without bias, (N, O, OH, OW) C-contiguous, by the algorithm the dispatch
    picks, and the plan for :func:`gradients`. Equals ``textbook.im2col_gemm`` to rounding."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    O, Cg, KH, KW = weight.shape
    geometry: dict[str, Any] = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    OH, OW = textbook.output_size(x.shape, weight.shape, stride, padding, dilation)
    plan = Plan(
        ((N, C, H, W), tuple(weight.shape), stride, padding, dilation, groups, x.dtype.str),
        conv_dispatch.direct_applies(x, kernel=(KH, KW), **geometry),
    )
    column_bytes = C * KH * KW * OH * OW * x.dtype.itemsize
    winograd_ok = conv_dispatch.winograd_applies(x, kernel=(KH, KW), **geometry)
    winograd_chunks, winograd_split = (
        conv_dispatch.winograd_candidates(xp, N=N, channels=C, out=(OH, OW), itemsize=x.dtype.itemsize)
        if winograd_ok
        else ([], [])
    )
    algorithm = conv_dispatch.choose(
        "forward",
        key=plan.key,
        channels=(C, O),
        direct_ok=plan.direct_ok,
        chunks=conv_dispatch.chunk_candidates(xp, N=N, column_bytes_per_sample=column_bytes),
        split_chunks=conv_dispatch.split_candidates(xp, N=N, column_bytes_per_sample=column_bytes),
        winograd_chunks=winograd_chunks,
        winograd_split_chunks=winograd_split,
        run=lambda name, n: run_forward(name, x[:n], weight, **geometry),
        flop_per_sample=2 * O * Cg * KH * KW * OH * OW,
        pixels=OH * OW,
    )
    return run_forward(algorithm, x, weight, **geometry), plan


def run_forward(
    algorithm: str,
    x: Any,
    weight: Any,
    *,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> Any:
    """y (N, O, OH, OW) without bias by ``algorithm`` (see the module docstring)."""
    if algorithm == "direct":
        return kernels.get("conv3x3_forward", x)(x, weight, padding, dilation)
    method, samples = algorithm.split("/")
    if method.startswith("winograd"):
        return winograd(x, weight, padding=padding, samples=int(samples), split=method == "winograd-split")
    xp = get_array_module(x)
    N, O = x.shape[0], weight.shape[0]
    OH, OW = textbook.output_size(x.shape, weight.shape, stride, padding, dilation)
    y = xp.empty((N, O, OH, OW), dtype=x.dtype)
    chunk = int(samples)

    def forward_samples(begin: int, end: int, _slice: int = 0) -> None:
        for start in range(begin, end, chunk):
            x_chunk = x[start : min(start + chunk, end)]
            n = x_chunk.shape[0]
            y[start : start + n] = textbook.im2col_gemm(x_chunk, weight, stride, padding, dilation, groups)

    if method == "split":
        batch_threads.run(N, forward_samples)
    else:
        forward_samples(0, N)
    return y


def gradients(
    dout: Any, cache: Any, *, need_input_grad: bool = True, need_weight_grad: bool = True
) -> tuple[Any | None, Any | None]:
    """(dx, dweight) of the conv whose ``functional.conv.ConvCache`` is ``cache`` (None where not
    needed), by the algorithms the dispatch picks. Equal to ``textbook.im2col_gemm_backward`` to rounding."""
    N, C, H, W = cache.x_shape
    O, Cg, KH, KW = cache.weight.shape
    OH, OW = dout.shape[2:]
    xp = get_array_module(dout)
    plan: Plan = cache.plan
    column_bytes = C * KH * KW * OH * OW * dout.dtype.itemsize
    chunks = conv_dispatch.chunk_candidates(xp, N=N, column_bytes_per_sample=column_bytes)
    split_chunks = conv_dispatch.split_candidates(xp, N=N, column_bytes_per_sample=column_bytes)
    direct_ok = plan.direct_ok and kernels.get("conv3x3_backward_input", dout) is not None  # not in reference_only()
    common: dict[str, Any] = {
        "key": plan.key,
        "channels": (C, O),
        "direct_ok": direct_ok,
        "chunks": chunks,
        "split_chunks": split_chunks,
        "flop_per_sample": 2 * O * Cg * KH * KW * OH * OW,
        "pixels": OH * OW,  # the columns per sample of dcols = W^T dY and of dW = dY cols^T
    }
    input_algorithm = weight_algorithm = None
    geometry: dict[str, Any] = {"stride": cache.stride, "padding": cache.padding, "dilation": cache.dilation}
    winograd_ok = conv_dispatch.winograd_applies(dout, kernel=(KH, KW), groups=cache.groups, **geometry)
    if need_input_grad:
        winograd_chunks, winograd_split = (
            conv_dispatch.winograd_candidates(xp, N=N, channels=O, out=(H, W), itemsize=dout.dtype.itemsize)
            if winograd_ok
            else ([], [])
        )
        input_algorithm = conv_dispatch.choose(
            "input grad",
            **common,
            winograd_chunks=winograd_chunks,
            winograd_split_chunks=winograd_split,
            run=lambda name, n: run_gradients(dout[:n], _first_samples(cache, n), input_algorithm=name),
        )
    if need_weight_grad:
        weight_winograd, weight_winograd_split = (  # a chunk's tiles: of dy (O channels) and of x (C)
            conv_dispatch.winograd_candidates(xp, N=N, channels=C + O, out=(OH, OW), itemsize=dout.dtype.itemsize)
            if winograd_ok
            else ([], [])
        )
        weight_algorithm = conv_dispatch.choose(
            "weight grad",
            **common,
            winograd_chunks=weight_winograd,
            winograd_split_chunks=weight_winograd_split,
            run=lambda name, n: run_gradients(dout[:n], _first_samples(cache, n), weight_algorithm=name),
        )
    if input_algorithm == weight_algorithm and input_algorithm is not None:  # one pass over the chunks
        return run_gradients(dout, cache, input_algorithm=input_algorithm, weight_algorithm=weight_algorithm)
    dx = run_gradients(dout, cache, input_algorithm=input_algorithm)[0] if input_algorithm else None
    dweight = run_gradients(dout, cache, weight_algorithm=weight_algorithm)[1] if weight_algorithm else None
    return dx, dweight


def run_gradients(
    dout: Any, cache: Any, *, input_algorithm: str | None = None, weight_algorithm: str | None = None
) -> tuple[Any | None, Any | None]:
    """(dx, dweight) by the given algorithms (None: skip that one). For both also "winograd/<n>" and
    "winograd-split/<n>", for dweight also "direct/dots". Two gemm or split algorithms must be the
    same: they share one loop over the chunks."""
    weight = cache.weight
    dx = dweight = None
    if input_algorithm == "direct":
        dx = kernels.get("conv3x3_backward_input", dout)(dout, weight, cache.padding, cache.dilation)
        input_algorithm = None
    if input_algorithm is not None and input_algorithm.startswith("winograd"):
        # stride 1: dx = conv(dy, w'), w'[c, o, i, k] = w[o, c, 2-i, 2-k], padding 2 - P (conv3x3_cpu)
        flipped = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
        adjoint_padding = (2 - cache.padding[0], 2 - cache.padding[1])
        method, samples = input_algorithm.split("/")
        dx = winograd(dout, flipped, padding=adjoint_padding, samples=int(samples), split=method == "winograd-split")
        input_algorithm = None
    if weight_algorithm in ("direct", "direct/dots"):
        name = "conv3x3_backward_weight" if weight_algorithm == "direct" else "conv3x3_backward_weight_dots"
        dweight = kernels.get(name, dout)(dout, cache.x, cache.padding, cache.dilation)
        weight_algorithm = None
    if weight_algorithm is not None and weight_algorithm.startswith("winograd"):
        method, samples = weight_algorithm.split("/")
        split = method == "winograd-split"
        dweight = winograd_weight_gradient(dout, cache.x, padding=cache.padding, samples=int(samples), split=split)
        weight_algorithm = None
    if input_algorithm is None and weight_algorithm is None:
        return dx, dweight
    method, samples = (input_algorithm or weight_algorithm or "").split("/")
    chunk = int(samples)
    need_input_grad, need_weight_grad = input_algorithm is not None, weight_algorithm is not None
    xp = get_array_module(dout)
    N = cache.x_shape[0]
    dx_all = xp.empty(cache.x_shape, dtype=dout.dtype) if need_input_grad else None
    dweight_parts: dict[int, Any] = {}  # slice -> its samples' sum of dW (one slice unless split)

    def gradient_samples(begin: int, end: int, part: int = 0) -> None:
        dweight_sum = xp.zeros(weight.shape, dtype=dout.dtype) if need_weight_grad else None
        for start in range(begin, end, chunk):
            dout_chunk = dout[start : min(start + chunk, end)]
            n = dout_chunk.shape[0]
            dx_chunk, dweight_chunk = textbook.im2col_gemm_backward(
                dout_chunk, cache.x[start : start + n], cache, need_input_grad, need_weight_grad
            )
            if dweight_sum is not None:
                dweight_sum += dweight_chunk
            if dx_all is not None:
                dx_all[start : start + n] = dx_chunk
        dweight_parts[part] = dweight_sum

    if method == "split":
        batch_threads.run(N, gradient_samples)
    else:
        gradient_samples(0, N)
    if need_weight_grad:
        parts = [dweight_parts[t] for t in sorted(dweight_parts)]
        dweight = parts[0]
        for part in parts[1:]:  # in slice order: the same bits on every run
            dweight += part
    return (dx if dx_all is None else dx_all), dweight


def _first_samples(cache: Any, n: int) -> Any:
    """The cache of the same conv on the batch's first n samples (for timing a candidate on them)."""
    if n == cache.x_shape[0]:
        return cache
    return cache._replace(x=cache.x[:n], x_shape=(n, *cache.x_shape[1:]))


def direct_gradients(cache: Any) -> bool:
    """Whether the fixed rule takes this conv's gradients from the direct 3x3 kernels."""
    plan = cache.plan
    if plan is None or not plan.direct_ok:
        return False
    return max(cache.x_shape[1], cache.weight.shape[0]) <= conv_dispatch.DIRECT_MAX_CHANNELS


def winograd(x: Any, weight: Any, *, padding: tuple[int, int], samples: int, split: bool = False) -> Any:
    """y = conv2d(x, weight), stride 1, dilation 1, no bias, padding <= 2, by Winograd F(2x2, 3x3)
    (``npresnet.functional.winograd``), ``samples`` samples at a time (V and M hold 16 values per
    tile and channel, 4x the input and output they stand for: chunks bound that), with the Numba
    transforms where they run (the references' bits). ``split``: each thread takes its own slice of
    the batch, with one-thread GEMMs and serial kernels (``batch_threads``)."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    O = weight.shape[0]
    OH, OW = H + 2 * padding[0] - 2, W + 2 * padding[1] - 2
    TH, TW = winograd_math.tiles(OH, OW)
    U = winograd_math.transform_weight(weight).reshape(16, O, C)
    to_tiles = kernels.get("winograd_input", x) or winograd_math.transform_input
    from_tiles = kernels.get("winograd_output", x) or winograd_math.transform_output
    y = xp.empty((N, O, OH, OW), dtype=x.dtype)

    def convolve_samples(begin: int, end: int, _slice: int = 0) -> None:
        for start in range(begin, end, samples):
            chunk = x[start : min(start + samples, end)]
            n = chunk.shape[0]
            V = to_tiles(chunk, padding, (TH, TW)).reshape(16, C, n * TH * TW)
            M = xp.matmul(U, V)  # 16 GEMMs (O, C) @ (C, n*TH*TW)
            from_tiles(M.reshape(4, 4, O, n * TH * TW), n, (OH, OW), y[start : start + n])

    if split:
        batch_threads.run(N, convolve_samples)
    else:
        convolve_samples(0, N)
    return y


def winograd_weight_gradient(dout: Any, x: Any, *, padding: tuple[int, int], samples: int, split: bool = False) -> Any:
    """dW (O, C, 3, 3) of y = conv2d(x, weight), stride 1, dilation 1, padding <= 2, by the transpose
    of Winograd's F(2x2, 3x3) (``npresnet.functional.winograd.weight_gradient``), ``samples``
    samples at a time: a chunk's dy and x tiles (16 values per tile and channel, 4x the data they
    stand for) go through the 16 GEMMs M = E @ V^T while they are still in cache, and M adds up
    over the chunks; G^T M G once at the end. The Numba kernels (``kernels/winograd_weight_cpu.py``)
    lay both sets of tiles out tiles first, (P, O) and (P, C), and the GEMMs read E through its
    transpose; where they do not run, the references' arrays go in as they are. The same values
    either way, bit for bit; BLAS sums the products in its own order. ``split``: each thread its
    own slice of the batch and its own M (one-thread GEMMs, serial kernels: ``batch_threads``),
    added in slice order."""
    xp = get_array_module(dout)
    N, O, OH, OW = dout.shape
    C = x.shape[1]
    TH, TW = winograd_math.tiles(OH, OW)
    dy_kernel, x_kernel = kernels.get("winograd_gradient", dout), kernels.get("winograd_input_t", x)

    def tiles(dy: Any, xs: Any, buffers: list[Any]) -> tuple[Any, Any]:
        """E (16, O, P) and V^T (16, P, C) of a chunk: views of tiles-first arrays that the kernels
        write into ``buffers`` (allocated at a slice's first chunk, its largest, and reused: a fresh
        megabyte or more per chunk made the allocator hand memory back and fault it in again, chunk
        after chunk)."""
        P = dy.shape[0] * TH * TW
        if dy_kernel is not None and x_kernel is not None:
            if not buffers:
                buffers += [xp.empty(16 * P * O, dout.dtype), xp.empty(16 * P * C, x.dtype)]
            Et = dy_kernel(dy, (TH, TW), buffers[0][: 16 * P * O].reshape(4, 4, P, O))
            Vt = x_kernel(xs, padding, (TH, TW), buffers[1][: 16 * P * C].reshape(4, 4, P, C))
            return Et.reshape(16, P, O).transpose(0, 2, 1), Vt.reshape(16, P, C)
        E = winograd_math.transform_gradient(dy, (TH, TW)).reshape(16, O, P)
        return E, winograd_math.transform_input(xs, padding, (TH, TW)).reshape(16, C, P).transpose(0, 2, 1)

    parts: dict[int, Any] = {}  # slice -> its samples' sum of M

    def accumulate_samples(begin: int, end: int, part: int = 0) -> None:
        M = product = None
        buffers: list[Any] = []  # this slice's tile buffers
        for start in range(begin, end, samples):
            stop = min(start + samples, end)
            E, Vt = tiles(dout[start:stop], x[start:stop], buffers)
            if M is None:  # 16 GEMMs (O, n*TH*TW) @ (n*TH*TW, C)
                M = xp.matmul(E, Vt)
                product = xp.empty_like(M)
            else:
                M += xp.matmul(E, Vt, out=product)
        parts[part] = M

    if split:
        batch_threads.run(N, accumulate_samples)
    else:
        accumulate_samples(0, N)
    M = parts[min(parts)]
    for part in sorted(parts)[1:]:  # in slice order: the same bits on every run
        M += parts[part]
    return winograd_math.transform_weight_gradient(M.reshape(4, 4, O, C))
