"""The exercises of ``python -m npresnet.learn``, in the order they build on each other.

Each ``Exercise`` says what the learner's file must define (a forward and a backward function),
how to call them on a case, npresnet's reference for the forward (``npresnet.functional``), which
arrays the backward returns gradients for, the cases the grader runs (ordinary first, then the
awkward ones: batch 1, H != W, stride 2, padding, odd sizes, a square weight, overlapping pool
windows), the classic mistakes it recognises, and the hints ``hint NAME`` hands out one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import functional as F
from ..testing.inputs import kink_free, tie_free

Inputs = dict[str, Any]


@dataclass(frozen=True)
class Case:
    """One configuration the grader runs: a label for messages and a builder of the inputs."""

    label: str
    build: Callable[[np.random.Generator], Inputs]


@dataclass
class Attempt:
    """What a mistake detector sees: the case, the upstream gradient, the learner's gradients and
    the right ones (finite differences), all float64 NumPy, keyed by gradient name."""

    inputs: Inputs
    upstream: Any
    yours: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]


@dataclass(frozen=True)
class Mistake:
    """A classic mistake: its name, what to do about it, and a test on an ``Attempt``."""

    name: str
    advice: str
    detect: Callable[[Attempt], bool]
    array: str = "dx"  # the gradient it makes wrong: named only when that one fails


@dataclass(frozen=True)
class Exercise:
    name: str
    title: str
    forward_name: str
    backward_name: str
    call_forward: Callable[[Callable[..., Any], Inputs], tuple[Any, Any]]  # -> (y, cache)
    call_backward: Callable[[Callable[..., Any], Any, Any, Inputs], Any]  # (fn, upstream, cache, inputs)
    reference: Callable[[Inputs], Any]  # npresnet's forward output, float64
    grads: dict[str, str]  # gradient name -> the input it is the gradient of
    unpack: Callable[[Any], dict[str, Any]]  # the backward's result -> {gradient name: array}
    cases: tuple[Case, ...]
    hints: tuple[str, ...]
    mistakes: tuple[Mistake, ...] = ()
    channel_axis: int | None = None  # NCHW gradients: 1, for "a factor constant per channel"
    overlap: Callable[[Inputs], dict[str, np.ndarray]] | None = None  # grad name -> overlap mask
    branches: Callable[[Inputs, Any], dict[str, dict[str, np.ndarray]]] | None = None  # grad -> {branch: part}
    ties: Case | None = None  # a case with exact ties, checked against npresnet's backward
    ties_reference: Callable[[Inputs, Any], np.ndarray] | None = None
    ties_mistakes: tuple[Mistake, ...] = ()
    tutorial: str = ""  # the tutorial section that derives it
    swapped_in: str = ""  # what `learn train` does with it
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return f"{self.name}.py"


def _close(a: np.ndarray, b: np.ndarray, atol: float = 1e-6, rtol: float = 1e-4) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= atol + rtol * np.abs(b)))


def _call(*names: str) -> Callable[[Callable[..., Any], Inputs], tuple[Any, Any]]:
    return lambda fn, inputs: fn(*(inputs[n] for n in names))


def _backward(fn: Callable[..., Any], upstream: Any, cache: Any, inputs: Inputs) -> Any:
    return fn(upstream, cache)


def _tuple_of(*names: str) -> Callable[[Any], dict[str, Any]]:
    def unpack(result: Any) -> dict[str, Any]:
        if len(names) == 1:
            return {names[0]: result}
        if not isinstance(result, tuple) or len(result) != len(names):
            got = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
            raise TypeError(f"the backward must return the tuple ({', '.join(names)}), got {got}")
        return dict(zip(names, result))

    return unpack


def _normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


# ------------------------------------------------------------------------------------------- linear
def _linear_case(n: int, d: int, m: int) -> Callable[[np.random.Generator], Inputs]:
    return lambda rng: {"x": _normal(rng, n, d), "w": _normal(rng, m, d), "b": _normal(rng, m)}


def _linear_transposed_dw(t: Attempt) -> bool:
    dw = t.yours["dw"]
    return dw.shape == t.expected["dw"].T.shape and dw.ndim == 2 and _close(dw, t.expected["dw"].T)


def _linear_dx_with_wt(t: Attempt) -> bool:
    w = t.inputs["w"]
    return w.shape[0] == w.shape[1] and _close(t.yours["dx"], t.upstream @ w.T)


LINEAR = Exercise(
    name="linear",
    title="Linear layer: y = x @ w.T + b",
    forward_name="linear_forward",
    backward_name="linear_backward",
    call_forward=_call("x", "w", "b"),
    call_backward=_backward,
    reference=lambda i: F.linear_forward(i["x"], i["w"], i["b"])[0],
    grads={"dx": "x", "dw": "w", "db": "b"},
    unpack=_tuple_of("dx", "dw", "db"),
    cases=(
        Case("N=4, D=3, M=2", _linear_case(4, 3, 2)),
        Case("batch 1: N=1, D=5, M=3", _linear_case(1, 5, 3)),
        Case("a square weight: N=3, D=M=4 (a wrong product can have the right shape)", _linear_case(3, 4, 4)),
        Case("odd sizes: N=7, D=2, M=5", _linear_case(7, 2, 5)),
    ),
    hints=(
        "Write y[n, m] = sum_d x[n, d] * w[m, d] + b[m] and differentiate one element: which y's does "
        "x[n, d] appear in, and with what coefficient?",
        "dL/dx[n, d] = sum_m dy[n, m] * w[m, d]: that is a matrix product of dy (N, M) and w (M, D).",
        "dL/dw[m, d] = sum_n dy[n, m] * x[n, d]: the sum runs over the batch, so it is dy.T @ x, of "
        "w's shape (M, D). db sums dy over the batch.",
        "Shapes alone do not decide: with a square w, dy @ w.T has the right shape and is wrong. Check "
        "each product against the index form.",
    ),
    mistakes=(
        Mistake(
            "a transposed dW",
            "dw must have w's layout (M, D): dw = dy.T @ x, not x.T @ dy",
            _linear_transposed_dw,
            "dw",
        ),
        Mistake(
            "dx computed with w transposed",
            "dx[n, d] = sum_m dy[n, m] w[m, d] is dy @ w; dy @ w.T only has the right shape because w is square",
            _linear_dx_with_wt,
        ),
    ),
    tutorial="1. Linear",
    swapped_in="the final fully connected layer (fc)",
)

# --------------------------------------------------------------------------------------------- relu
RELU = Exercise(
    name="relu",
    title="ReLU: y = max(x, 0)",
    forward_name="relu_forward",
    backward_name="relu_backward",
    call_forward=_call("x"),
    call_backward=_backward,
    reference=lambda i: F.relu_forward(i["x"])[0],
    grads={"dx": "x"},
    unpack=_tuple_of("dx"),
    cases=(
        Case("x of shape (2, 3, 4, 5)", lambda rng: {"x": kink_free((2, 3, 4, 5), rng)}),
        Case("x of shape (1, 7)", lambda rng: {"x": kink_free((1, 7), rng)}),
    ),
    hints=(
        "Each y[i] depends on x[i] only, so dx[i] = dy[i] * (slope of max(x, 0) at x[i]).",
        "The slope is 1 where x > 0 and 0 where x < 0. Keep what you need to know the sign in the cache.",
        "dx = dy * (x > 0): the mask is of the *input* (or of the output, y > 0 is the same set).",
    ),
    mistakes=(
        Mistake(
            "the mask taken from dy instead of x",
            "which elements pass the gradient depends on the forward's input (x > 0), not on dy",
            lambda t: _close(t.yours["dx"], t.upstream * (t.upstream > 0)),
        ),
    ),
    tutorial="2. ReLU",
    swapped_in="every ReLU",
)


# ------------------------------------------------------------------------------------ cross-entropy
def _ce_case(n: int, k: int) -> Callable[[np.random.Generator], Inputs]:
    return lambda rng: {"z": 2 * _normal(rng, n, k), "t": rng.integers(0, k, n)}


def _ce_reference(i: Inputs) -> Any:
    return F.cross_entropy_forward(i["z"], np.asarray(i["t"]))[0]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


CROSS_ENTROPY = Exercise(
    name="cross_entropy",
    title="Softmax cross-entropy from logits, the mean over the batch",
    forward_name="cross_entropy_forward",
    backward_name="cross_entropy_backward",
    call_forward=_call("z", "t"),
    call_backward=_backward,
    reference=_ce_reference,
    grads={"dz": "z"},
    unpack=_tuple_of("dz"),
    cases=(
        Case("N=4, K=3", _ce_case(4, 3)),
        Case("batch 1: N=1, K=5", _ce_case(1, 5)),
        Case("N=6, K=10", _ce_case(6, 10)),
    ),
    hints=(
        "Write the loss of one row: L_n = -log p[n, t_n] = -z[n, t_n] + log sum_k exp(z[n, k]).",
        "Differentiate L_n by z[n, k]: the log-sum-exp gives p[n, k]; the first term gives -1 only for "
        "k = t_n. So dL_n/dz[n, k] = p[n, k] - [k == t_n].",
        "The loss is the mean over the batch, L = (1/N) sum_n L_n: every row's gradient is divided by N.",
        "The backward gets dloss (the gradient of whatever comes after the loss; 1.0 for the loss itself) "
        "and multiplies by it.",
    ),
    mistakes=(
        Mistake(
            "a softmax cross-entropy not divided by N",
            "the loss is the mean over the N rows, so every row's gradient carries a factor 1/N",
            lambda t: t.inputs["z"].shape[0] > 1 and _close(t.yours["dz"], t.expected["dz"] * t.inputs["z"].shape[0]),
            "dz",
        ),
        Mistake(
            "the upstream gradient dloss ignored",
            "the backward gets dloss (the gradient of whatever comes after the loss) and must multiply by it",
            lambda t: _close(t.yours["dz"], t.expected["dz"] / float(t.upstream)),
            "dz",
        ),
        Mistake(
            "the -1 at the target class forgotten",
            "dL/dz[n, k] = (p[n, k] - [k == t_n]) / N: subtract 1 at the target class of each row",
            lambda t: _close(t.yours["dz"], _softmax(t.inputs["z"]) * float(t.upstream) / t.inputs["z"].shape[0]),
            "dz",
        ),
    ),
    tutorial="8. Softmax cross-entropy",
    swapped_in="the loss",
)


# ------------------------------------------------------------------------------------------ pooling
def _pool_case(shape: tuple[int, ...], k: int, s: int, tied: bool = False) -> Callable[[np.random.Generator], Inputs]:
    def build(rng: np.random.Generator) -> Inputs:
        x = rng.integers(0, 3, shape).astype(np.float64) if tied else tie_free(shape, rng)
        return {"x": x, "k": k, "s": s}

    return build


def _window_counts(inputs: Inputs) -> np.ndarray:
    """How many windows cover each input element (N, C, H, W)."""
    N, C, H, W = inputs["x"].shape
    k, s = inputs["k"], inputs["s"]
    counts = np.zeros((H, W), int)
    for i in range((H - k) // s + 1):
        for j in range((W - k) // s + 1):
            counts[i * s : i * s + k, j * s : j * s + k] += 1
    return np.broadcast_to(counts, (N, C, H, W))


def _pool_overlap(inputs: Inputs) -> dict[str, np.ndarray]:
    return {"dx": _window_counts(inputs) > 1}


def _wrong_only_where_windows_overlap(t: Attempt) -> bool:
    wrong = np.abs(t.yours["dx"] - t.expected["dx"]) > 1e-6 + 1e-4 * np.abs(t.expected["dx"])
    return bool(wrong.any()) and not bool((wrong & (_window_counts(t.inputs) <= 1)).any())


_ASSIGNED = Mistake(
    "contributions assigned instead of accumulated",
    "where windows overlap an input receives one share from every window that covers it: add (+=), never assign (=)",
    _wrong_only_where_windows_overlap,
)

_POOL_CASES = (
    ("2x2 windows, stride 2 (no overlap), x (2, 3, 6, 4)", (2, 3, 6, 4), 2, 2),
    ("batch 1, H != W, overlapping 3x3 windows with stride 2, x (1, 2, 7, 5)", (1, 2, 7, 5), 3, 2),
    ("overlapping 2x2 windows with stride 1, x (2, 1, 4, 5)", (2, 1, 4, 5), 2, 1),
)

AVGPOOL = Exercise(
    name="avgpool",
    title="Average pooling (k x k windows, stride s, no padding)",
    forward_name="avgpool_forward",
    backward_name="avgpool_backward",
    call_forward=_call("x", "k", "s"),
    call_backward=_backward,
    reference=lambda i: F.avgpool2d_forward(i["x"], i["k"], i["s"])[0],
    grads={"dx": "x"},
    unpack=_tuple_of("dx"),
    cases=tuple(Case(label, _pool_case(shape, k, s)) for label, shape, k, s in _POOL_CASES),
    hints=(
        "y[n, c, i, j] is the mean of the k*k inputs of window (i, j), so each of them gets dy[n, c, i, j] / k^2.",
        "Loop over the output positions (i, j) and add the share to the window's slice of dx.",
        "With stride s < k the windows overlap: an input covered by two windows gets both shares. Use +=.",
    ),
    mistakes=(
        _ASSIGNED,
        Mistake(
            "a share of dy / k instead of dy / k^2",
            "the window has k*k inputs: each gets 1/(k*k) of dy",
            lambda t: _close(t.yours["dx"], t.expected["dx"] * t.inputs["k"]),
        ),
    ),
    channel_axis=1,
    overlap=_pool_overlap,
    tutorial="4. Average pooling",
    swapped_in="the global average pool before fc (a window the size of the image)",
)


def _maxpool_ties_reference(inputs: Inputs, upstream: np.ndarray) -> np.ndarray:
    _, cache = F.maxpool2d_forward(inputs["x"], inputs["k"], inputs["s"])
    return F.maxpool2d_backward(upstream, cache)


def _to_every_tie(inputs: Inputs, upstream: np.ndarray) -> np.ndarray:
    x, k, s = inputs["x"], inputs["k"], inputs["s"]
    dx = np.zeros_like(x)
    for i in range(upstream.shape[2]):
        for j in range(upstream.shape[3]):
            window = x[:, :, i * s : i * s + k, j * s : j * s + k]
            top = window == window.max(axis=(2, 3), keepdims=True)
            dx[:, :, i * s : i * s + k, j * s : j * s + k] += top * upstream[:, :, i : i + 1, j : j + 1]
    return dx


MAXPOOL = Exercise(
    name="maxpool",
    title="Max pooling (k x k windows, stride s, no padding; the first maximum wins a tie)",
    forward_name="maxpool_forward",
    backward_name="maxpool_backward",
    call_forward=_call("x", "k", "s"),
    call_backward=_backward,
    reference=lambda i: F.maxpool2d_forward(i["x"], i["k"], i["s"])[0],
    grads={"dx": "x"},
    unpack=_tuple_of("dx"),
    cases=tuple(Case(label, _pool_case(shape, k, s)) for label, shape, k, s in _POOL_CASES),
    hints=(
        "Only the maximum of a window moved y; the other inputs of that window get nothing from it.",
        "Remember in the forward *which* element won each window (np.argmax over the flattened window), "
        "and route dy[n, c, i, j] to that element in the backward.",
        "Overlapping windows can choose the same element: add (+=) what each window routes to it.",
        "On a tie the first maximum in row-major order wins (np.argmax returns the first): one element gets "
        "the gradient, not every tied one (the total would be counted twice).",
    ),
    mistakes=(_ASSIGNED,),
    channel_axis=1,
    overlap=_pool_overlap,
    ties=Case(
        "exact ties: x of small integers (2, 2, 5, 5), 3x3 windows, stride 2", _pool_case((2, 2, 5, 5), 3, 2, True)
    ),
    ties_reference=_maxpool_ties_reference,
    ties_mistakes=(
        Mistake(
            "max pooling that routes to every tied element",
            "when several inputs tie for the maximum, give the whole gradient to the first (row-major), as "
            "np.argmax picks it: routing to every tied input counts the gradient several times",
            lambda t: _close(t.yours["dx"], _to_every_tie(t.inputs, t.upstream)),
        ),
    ),
    tutorial="3. Max-pooling",
    swapped_in="not used by ResNet-20 on the digits (no max pooling there)",
)


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
    from .layout import im2col

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


# ---------------------------------------------------------------------------------------- batchnorm
def _bn_case(shape: tuple[int, int, int, int]) -> Callable[[np.random.Generator], Inputs]:
    def build(rng: np.random.Generator) -> Inputs:
        C = shape[1]
        return {
            "x": 2 * _normal(rng, *shape) + rng.uniform(-1, 1, (1, C, 1, 1)),
            "gamma": rng.uniform(0.5, 1.5, C) * rng.choice([-1, 1], C),
            "beta": _normal(rng, C),
        }

    return build


def _bn_parts(t: Attempt) -> tuple[np.ndarray, ...]:
    x, gamma, g = t.inputs["x"], t.inputs["gamma"], t.upstream
    mu = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    invstd = 1 / np.sqrt(var + 1e-5)
    xhat = (x - mu) * invstd
    dxhat = g * gamma.reshape(1, -1, 1, 1)
    mean_d = dxhat.mean(axis=(0, 2, 3), keepdims=True)
    mean_dx = (dxhat * xhat).mean(axis=(0, 2, 3), keepdims=True)
    n = x.size // x.shape[1]
    return xhat, invstd, dxhat, mean_d, mean_dx, var, np.asarray(n)


def _bn_no_mean(t: Attempt) -> bool:
    xhat, invstd, dxhat, mean_d, mean_dx, _, _ = _bn_parts(t)
    return _close(t.yours["dx"], (dxhat - xhat * mean_dx) * invstd)


def _bn_no_var(t: Attempt) -> bool:
    xhat, invstd, dxhat, mean_d, mean_dx, _, _ = _bn_parts(t)
    return _close(t.yours["dx"], (dxhat - mean_d) * invstd)


def _bn_unbiased(t: Attempt) -> bool:
    xhat, invstd, dxhat, mean_d, mean_dx, var, n = _bn_parts(t)
    staged = (dxhat - mean_d - xhat * mean_dx * n / (n - 1)) * invstd  # d var/dx with 1/(n-1)
    rescaled = t.expected["dx"] * np.sqrt((var + 1e-5) / (var * n / (n - 1) + 1e-5))  # 1/std with n-1
    return _close(t.yours["dx"], staged) or _close(t.yours["dx"], rescaled)


BATCHNORM = Exercise(
    name="batchnorm",
    title="BatchNorm in training mode (statistics of the batch, per channel)",
    forward_name="batchnorm_forward",
    backward_name="batchnorm_backward",
    call_forward=_call("x", "gamma", "beta"),
    call_backward=_backward,
    reference=lambda i: F.batchnorm2d_forward(i["x"], i["gamma"], i["beta"], None, None, training=True)[0],
    grads={"dx": "x", "dgamma": "gamma", "dbeta": "beta"},
    unpack=_tuple_of("dx", "dgamma", "dbeta"),
    cases=(
        Case("x (4, 3, 2, 3)", _bn_case((4, 3, 2, 3))),
        Case("batch 1, H != W: x (1, 2, 3, 5)", _bn_case((1, 2, 3, 5))),
        Case("1x1 pixels: x (5, 4, 1, 1)", _bn_case((5, 4, 1, 1))),
    ),
    hints=(
        "Stage the forward: mu, var, xhat = (x - mu) / sqrt(var + eps), y = gamma * xhat + beta. dbeta and "
        "dgamma come straight from the last line (sums over N, H, W).",
        "x reaches xhat three ways: directly, through mu and through var. Go back through the stages: "
        "dxhat = gamma * dy, then dvar, then dmu, then dx.",
        "Compactly, with means over N, H, W: dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / "
        "sqrt(var + eps). The first mean is the path through mu, the second the path through var.",
        "The forward normalises with the biased variance (divided by n = N*H*W): differentiate that one, "
        "with 1/n, not 1/(n - 1).",
    ),
    mistakes=(
        Mistake(
            "BatchNorm without the mean of the normalised gradient",
            "every x moves mu: subtract mean(dxhat) (the path through the mean)",
            _bn_no_mean,
        ),
        Mistake(
            "BatchNorm without the variance term",
            "every x moves var too: subtract xhat * mean(dxhat * xhat) (the path through the variance)",
            _bn_no_var,
        ),
        Mistake(
            "dgamma without xhat",
            "y = gamma * xhat + beta, so dgamma = sum(dy * xhat); sum(dy) alone is dbeta",
            lambda t: _close(t.yours["dgamma"], t.expected["dbeta"]),
            "dgamma",
        ),
        Mistake(
            "the unbiased variance in the backward",
            "the forward divides by n (the biased variance); its derivative has 1/n too, never 1/(n - 1)",
            _bn_unbiased,
        ),
    ),
    channel_axis=1,
    tutorial="6. BatchNorm",
    swapped_in="every BatchNorm in training mode (evaluation uses npresnet's, with running statistics)",
)


# ------------------------------------------------------------------------------------------- blocks
def _bn_params(rng: np.random.Generator, c: int, suffix: str) -> Inputs:
    return {f"gamma{suffix}": rng.uniform(0.5, 1.5, c), f"beta{suffix}": _normal(rng, c)}


def _block_case(shape: tuple[int, int, int, int]) -> Callable[[np.random.Generator], Inputs]:
    def build(rng: np.random.Generator) -> Inputs:
        C = shape[1]
        inputs = {
            "x": kink_free(shape, rng),
            "w1": 0.5 * _normal(rng, C, C, 3, 3),
            "w2": 0.5 * _normal(rng, C, C, 3, 3),
        }
        return inputs | _bn_params(rng, C, "1") | _bn_params(rng, C, "2")

    return build


_BLOCK_PARAMS = ("w1", "gamma1", "beta1", "w2", "gamma2", "beta2")


def _conv_bn(x: Any, w: Any, gamma: Any, beta: Any, s: int, p: int) -> Any:
    y, _ = F.conv2d_forward(x, w, None, s, p)
    return F.batchnorm2d_forward(y, gamma, beta, None, None, training=True)[0]


def _block_reference(i: Inputs) -> Any:
    h = F.relu_forward(_conv_bn(i["x"], i["w1"], i["gamma1"], i["beta1"], 1, 1))[0]
    return F.relu_forward(_conv_bn(h, i["w2"], i["gamma2"], i["beta2"], 1, 1) + i["x"])[0]


def _params_call(names: tuple[str, ...], *extra: str) -> Callable[[Callable[..., Any], Inputs], tuple[Any, Any]]:
    return lambda fn, i: fn(i["x"], {n: i[n] for n in names}, *(i[e] for e in extra))


def _dx_and_grads(names: tuple[str, ...]) -> Callable[[Any], dict[str, Any]]:
    def unpack(result: Any) -> dict[str, Any]:
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
            raise TypeError("the backward must return (dx, grads) with grads a dict {parameter name: gradient}")
        dx, grads = result
        missing = [n for n in names if n not in grads]
        if missing:
            raise TypeError(f"grads has no entry for {', '.join(missing)} (it needs one per parameter)")
        return {"dx": dx} | {f"grads[{n!r}]": grads[n] for n in names}

    return unpack


def _block_branches(i: Inputs, upstream: Any) -> dict[str, dict[str, np.ndarray]]:
    d_sum = upstream * (_block_reference(i) > 0)
    return {"dx": {"the identity shortcut": d_sum}}


def _branch_dropped(branches: Callable[[Inputs, Any], dict[str, dict[str, np.ndarray]]]) -> Callable[[Attempt], bool]:
    def detect(t: Attempt) -> bool:
        (part,) = branches(t.inputs, t.upstream)["dx"].values()
        return _close(t.yours["dx"], t.expected["dx"] - part)

    return detect


BASIC_BLOCK = Exercise(
    name="basic_block",
    title="The residual BasicBlock: y = relu(bn2(conv2(relu(bn1(conv1(x))))) + x)",
    forward_name="basic_block_forward",
    backward_name="basic_block_backward",
    call_forward=_params_call(_BLOCK_PARAMS),
    call_backward=_backward,
    reference=_block_reference,
    grads={"dx": "x"} | {f"grads[{n!r}]": n for n in _BLOCK_PARAMS},
    unpack=_dx_and_grads(_BLOCK_PARAMS),
    cases=(
        Case("x (2, 3, 4, 5)", _block_case((2, 3, 4, 5))),
        Case("batch 1, H != W: x (1, 2, 5, 3)", _block_case((1, 2, 5, 3))),
    ),
    hints=(
        "Run the forward backwards: the output ReLU first, then the sum, then each branch's layers in "
        "reverse order. npresnet.functional gives every layer's forward and backward.",
        "At the sum h + x, the gradient d_sum reaches both terms unchanged: the branch gets d_sum, and so does "
        "the shortcut.",
        "x forked in the forward (it fed conv1 and the shortcut), so dx is the sum of the two gradients "
        "that come back: dx = (gradient through conv1) + d_sum.",
    ),
    mistakes=(
        Mistake(
            "a residual block that drops the shortcut's gradient",
            "x feeds both the branch and the shortcut: add the shortcut's gradient (d_sum) to dx",
            _branch_dropped(_block_branches),
        ),
    ),
    channel_axis=1,
    branches=_block_branches,
    tutorial="7. The residual add",
    swapped_in="every ResNet-20 block with an identity shortcut (stride 1, same width), in training",
)


_BOTTLENECK_PARAMS = (
    "w1", "gamma1", "beta1", "w2", "gamma2", "beta2", "w3", "gamma3", "beta3", "w_s", "gamma_s", "beta_s"
)  # fmt: skip


def _bottleneck_case(shape: tuple[int, int, int, int], planes: int, s: int) -> Callable[[np.random.Generator], Inputs]:
    def build(rng: np.random.Generator) -> Inputs:
        C, P = shape[1], planes
        inputs = {
            "x": kink_free(shape, rng),
            "w1": 0.5 * _normal(rng, P, C, 1, 1),
            "w2": 0.5 * _normal(rng, P, P, 3, 3),
            "w3": 0.5 * _normal(rng, 4 * P, P, 1, 1),
            "w_s": 0.5 * _normal(rng, 4 * P, C, 1, 1),
            "s": s,
        }
        for suffix, c in (("1", P), ("2", P), ("3", 4 * P), ("_s", 4 * P)):
            inputs |= _bn_params(rng, c, suffix)
        return inputs

    return build


def _bottleneck_parts(i: Inputs) -> tuple[Any, Any]:
    h = F.relu_forward(_conv_bn(i["x"], i["w1"], i["gamma1"], i["beta1"], 1, 0))[0]
    h = F.relu_forward(_conv_bn(h, i["w2"], i["gamma2"], i["beta2"], i["s"], 1))[0]
    return _conv_bn(h, i["w3"], i["gamma3"], i["beta3"], 1, 0), i["x"]


def _bottleneck_reference(i: Inputs) -> Any:
    branch, x = _bottleneck_parts(i)
    return F.relu_forward(branch + _conv_bn(x, i["w_s"], i["gamma_s"], i["beta_s"], i["s"], 0))[0]


def _bottleneck_branches(i: Inputs, upstream: Any) -> dict[str, dict[str, np.ndarray]]:
    d_sum = upstream * (_bottleneck_reference(i) > 0)
    y, conv_cache = F.conv2d_forward(i["x"], i["w_s"], None, i["s"], 0)
    _, bn_cache = F.batchnorm2d_forward(y, i["gamma_s"], i["beta_s"], None, None, training=True)
    d = F.batchnorm2d_backward(d_sum, bn_cache)[0]
    dx_shortcut = F.conv2d_backward(d, conv_cache)[0]
    return {"dx": {"the projection shortcut": np.asarray(dx_shortcut)}}


BOTTLENECK = Exercise(
    name="bottleneck",
    title="The Bottleneck block with a projection shortcut (1x1, 3x3 with stride s, 1x1; shortcut 1x1 + BN)",
    forward_name="bottleneck_forward",
    backward_name="bottleneck_backward",
    call_forward=_params_call(_BOTTLENECK_PARAMS, "s"),
    call_backward=_backward,
    reference=_bottleneck_reference,
    grads={"dx": "x"} | {f"grads[{n!r}]": n for n in _BOTTLENECK_PARAMS},
    unpack=_dx_and_grads(_BOTTLENECK_PARAMS),
    cases=(
        Case("stride 2, H != W: x (2, 4, 6, 5), planes 2", _bottleneck_case((2, 4, 6, 5), 2, 2)),
        Case(
            "batch 1, stride 1 (a projection for the width only): x (1, 3, 4, 4), planes 2",
            _bottleneck_case((1, 3, 4, 4), 2, 1),
        ),
    ),
    hints=(
        "Both branches are chains of npresnet.functional layers; write each one's backward as its forward "
        "read bottom-up.",
        "The gradient at the sum, d_sum, goes into both branches: into bn3 and into the shortcut's BN.",
        "The shortcut is a layer now (a 1x1 convolution with stride s, and its BatchNorm): its parameters get "
        "gradients, and its input gradient is added to the branch's: dx = dx_branch + dx_shortcut.",
    ),
    mistakes=(
        Mistake(
            "a residual block that drops the shortcut's gradient",
            "x feeds both the branch and the projection shortcut: add the shortcut's input gradient to dx",
            _branch_dropped(_bottleneck_branches),
        ),
    ),
    channel_axis=1,
    branches=_bottleneck_branches,
    tutorial="7. The residual add",
    swapped_in="not used by ResNet-20 (its blocks are BasicBlocks)",
)

EXERCISES: tuple[Exercise, ...] = (
    LINEAR,
    RELU,
    CROSS_ENTROPY,
    AVGPOOL,
    MAXPOOL,
    CONV_LOOP,
    IM2COL,
    CONV,
    BATCHNORM,
    BASIC_BLOCK,
    BOTTLENECK,
)
BY_NAME = {e.name: e for e in EXERCISES}


def get(name: str) -> Exercise:
    """The exercise called ``name`` (a KeyError listing the names if there is none)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no exercise {name!r}; the exercises are: {', '.join(BY_NAME)}") from None
