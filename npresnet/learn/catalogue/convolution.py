"""The convolution exercises: the loops, im2col with its adjoint col2im, and im2col + one matrix
product."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ... import functional as F
from .exercise import Attempt, Case, Exercise, Inputs, Mistake, _backward, _call, _normal, _tuple_of


# -------------------------------------------------------------------------------------- convolution
def _conv_case(
    x_shape: tuple[int, int, int, int], f: int, k: int, s: int, p: int
) -> Callable[[np.random.Generator], Inputs]:
    def build(rng: np.random.Generator) -> Inputs:
        return {
            "x": _normal(rng, *x_shape),
            "w": _normal(rng, f, x_shape[1], k, k),
            "b": _normal(rng, f),
            "s": s,
            "p": p,
        }

    return build


def _conv_reference(i: Inputs) -> Any:
    return F.conv2d_forward(i["x"], i["w"], i["b"], i["s"], i["p"])[0]


_CONV_CASES = (
    Case("x (2, 3, 5, 6), w (4, 3, 3, 3), stride 1, padding 1", _conv_case((2, 3, 5, 6), 4, 3, 1, 1)),
    Case("batch 1, H != W, stride 2, padding 1: x (1, 2, 7, 5), w (3, 2, 3, 3)", _conv_case((1, 2, 7, 5), 3, 3, 2, 1)),
    Case("a 1x1 kernel, no padding: x (2, 3, 4, 4), w (2, 3, 1, 1)", _conv_case((2, 3, 4, 4), 2, 1, 1, 0)),
    Case("odd sizes, stride 2, no padding: x (3, 1, 5, 5), w (2, 1, 3, 3)", _conv_case((3, 1, 5, 5), 2, 3, 2, 0)),
)


def _conv_overlap(inputs: Inputs) -> dict[str, np.ndarray]:
    w, s, p = inputs["w"], inputs["s"], inputs["p"]
    N, C, H, W = inputs["x"].shape
    k = w.shape[2]
    counts = np.zeros((H + 2 * p, W + 2 * p), int)
    for i in range((H + 2 * p - k) // s + 1):
        for j in range((W + 2 * p - k) // s + 1):
            counts[i * s : i * s + k, j * s : j * s + k] += 1
    return {"dx": np.broadcast_to(counts[p : p + H, p : p + W] > 1, (N, C, H, W))}


def _only_where(t: Attempt, mask: np.ndarray, grad: str = "dx") -> bool:
    wrong = np.abs(t.yours[grad] - t.expected[grad]) > 1e-6 + 1e-4 * np.abs(t.expected[grad])
    return bool(wrong.any()) and not bool((wrong & ~mask).any())


_ASSIGNED_CONV = Mistake(
    "contributions assigned instead of accumulated",
    "where windows overlap one input pixel feeds several outputs: add (+=) every contribution to dx",
    lambda t: _only_where(t, _conv_overlap(t.inputs)["dx"]),
)

_CONV_HINTS = (
    "Write one output element as a sum: y[n, f, i, j] = b[f] + sum_{c, a, e} w[f, c, a, e] * "
    "xp[n, c, i*s + a, j*s + e], with xp the zero-padded input.",
    "For dw read the same sum with w as the variable: dw[f, c, a, e] = sum_{n, i, j} dy[n, f, i, j] * "
    "xp[n, c, i*s + a, j*s + e]. db sums dy over n, i, j.",
    "For dx, every (n, f, i, j) adds dy[n, f, i, j] * w[f] to the window of dxp it read; windows overlap, "
    "so add (+=). Cut the padding off dxp at the end.",
)

CONV_LOOP = Exercise(
    name="conv_loop",
    title="Convolution written as loops (cross-correlation, stride s, zero padding p)",
    forward_name="conv_forward_loop",
    backward_name="conv_backward_loop",
    call_forward=_call("x", "w", "b", "s", "p"),
    call_backward=_backward,
    reference=_conv_reference,
    grads={"dx": "x", "dw": "w", "db": "b"},
    unpack=_tuple_of("dx", "dw", "db"),
    cases=_CONV_CASES,
    hints=_CONV_HINTS,
    mistakes=(_ASSIGNED_CONV,),
    channel_axis=1,
    overlap=_conv_overlap,
    tutorial="5. Convolution",
    swapped_in="not swapped in (too slow for training: exercise conv is the fast one)",
)


# ------------------------------------------------------------------------------------------- im2col
def _im2col_case(x_shape: tuple[int, int, int, int], k: int, s: int, p: int) -> Callable[[np.random.Generator], Inputs]:
    return lambda rng: {"x": _normal(rng, *x_shape), "kh": k, "kw": k, "s": s, "p": p}


def _im2col_reference(i: Inputs) -> Any:
    from ..layout import im2col

    return im2col(i["x"], i["kh"], i["kw"], i["s"], i["p"])


def _im2col_forward(fn: Callable[..., Any], i: Inputs) -> tuple[Any, Any]:
    return fn(i["x"], i["kh"], i["kw"], i["s"], i["p"]), None


def _col2im_backward(fn: Callable[..., Any], upstream: Any, cache: Any, i: Inputs) -> Any:
    return fn(upstream, tuple(i["x"].shape), i["kh"], i["kw"], i["s"], i["p"])


def _im2col_overlap(inputs: Inputs) -> dict[str, np.ndarray]:
    w = np.zeros((1, 1, inputs["kh"], inputs["kw"]))
    return _conv_overlap({"x": inputs["x"], "w": w, "s": inputs["s"], "p": inputs["p"]})


IM2COL = Exercise(
    name="im2col",
    title="im2col and its adjoint col2im (the forward and backward of copying windows into columns)",
    forward_name="im2col",
    backward_name="col2im",
    call_forward=_im2col_forward,
    call_backward=_col2im_backward,
    reference=_im2col_reference,
    grads={"dx": "x"},
    unpack=_tuple_of("dx"),
    cases=(
        Case("x (2, 3, 5, 6), 3x3 windows, stride 1, padding 1", _im2col_case((2, 3, 5, 6), 3, 1, 1)),
        Case("batch 1, H != W, stride 2, padding 1: x (1, 2, 7, 5)", _im2col_case((1, 2, 7, 5), 3, 2, 1)),
        Case("2x2 windows, stride 2 (no overlap): x (2, 1, 6, 4)", _im2col_case((2, 1, 6, 4), 2, 2, 0)),
        Case("odd sizes, no padding: x (1, 1, 5, 4), 3x3 windows", _im2col_case((1, 1, 5, 4), 3, 1, 0)),
    ),
    hints=(
        "Row r = (c*kh + a)*kw + e, column q = (n*OH + i)*OW + j holds xp[n, c, i*s + a, j*s + e]. "
        "Build a (C, kh, kw, N, OH, OW) array and reshape it at the end.",
        "For one kernel offset (a, e), every output pixel's entry is a strided slice of xp: "
        "xp[:, :, a : a + s*(OH-1) + 1 : s, e : e + s*(OW-1) + 1 : s], of shape (N, C, OH, OW).",
        "col2im is the adjoint: the same slices, written back with += into a zero-padded array (a pixel "
        "in several windows gets every entry that came from it), then the padding cut off.",
    ),
    mistakes=(
        Mistake(
            "col2im that assigns instead of accumulating",
            "a pixel copied into several columns (overlapping windows) gets every one of them back: add (+=), "
            "never assign (=)",
            lambda t: _only_where(t, _im2col_overlap(t.inputs)["dx"]),
        ),
    ),
    channel_axis=1,
    overlap=_im2col_overlap,
    tutorial="5. Convolution",
    swapped_in="inside your conv.py if it imports it; otherwise not used directly",
)

CONV = Exercise(
    name="conv",
    title="Convolution as im2col + one matrix product",
    forward_name="conv_forward",
    backward_name="conv_backward",
    call_forward=_call("x", "w", "b", "s", "p"),
    call_backward=_backward,
    reference=_conv_reference,
    grads={"dx": "x", "dw": "w", "db": "b"},
    unpack=_tuple_of("dx", "dw", "db"),
    cases=_CONV_CASES,
    hints=(
        "Forward: cols = im2col(x) is (C*KH*KW, N*OH*OW); w.reshape(F, -1) @ cols gives (F, N*OH*OW). "
        "Reshape to (F, N, OH, OW) and move F behind N.",
        "Backward: bring dy to the same layout G (F, N*OH*OW). Then dw = G @ cols.T (reshaped to w's shape) "
        "and db = G summed over its columns.",
        "dx = col2im(w.reshape(F, -1).T @ G): the gradient of the columns, added back into the pixels.",
    ),
    mistakes=(_ASSIGNED_CONV,),
    channel_axis=1,
    overlap=_conv_overlap,
    tutorial="5. Convolution",
    swapped_in="every convolution",
)
