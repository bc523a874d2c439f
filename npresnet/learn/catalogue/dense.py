"""The exercises without windows: the linear layer, ReLU and the softmax cross-entropy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ... import functional as F
from ...testing.inputs import kink_free
from .exercise import Attempt, Case, Exercise, Inputs, Mistake, _backward, _call, _close, _normal, _tuple_of


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
