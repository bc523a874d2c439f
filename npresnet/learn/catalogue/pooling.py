"""The pooling exercises: average pooling and max pooling (overlapping windows, exact ties)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ... import functional as F
from ...testing.inputs import tie_free
from .exercise import Attempt, Case, Exercise, Inputs, Mistake, _backward, _call, _close, _tuple_of


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
