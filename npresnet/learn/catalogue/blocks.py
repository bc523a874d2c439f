"""The residual block exercises: the BasicBlock (identity shortcut) and the Bottleneck (projection
shortcut)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ... import functional as F
from ...testing.inputs import kink_free
from .exercise import Attempt, Case, Exercise, Inputs, Mistake, _backward, _close, _normal


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
