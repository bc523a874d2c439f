"""Fully connected layer: y = x @ W.T + b, with W of shape (out, in) like PyTorch.

Backward, with g = dL/dy of shape (N, out)::

    dx = g @ W          (N, out) @ (out, in) -> (N, in)
    dW = g.T @ x        (out, N) @ (N, in)   -> (out, in)
    db = sum of g over N
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import get_array_module
from ..checks import check_floating, check_grad_like, check_like


class LinearCache(NamedTuple):
    x: Any  # (N, in), the input flattened over its leading dims
    weight: Any  # (out, in)
    x_shape: tuple[int, ...]
    has_bias: bool


def linear_forward(x: Any, weight: Any, bias: Any | None = None) -> tuple[Any, LinearCache]:
    """x: (*, in) -> y: (*, out)."""
    check_floating(x, "linear input")
    check_like(x, weight, "input", "linear weight")
    out_features, in_features = weight.shape
    if x.ndim < 1 or x.shape[-1] != in_features:
        raise ValueError(f"linear expects input of shape (*, {in_features}), got {tuple(x.shape)}")
    x2 = x.reshape(-1, in_features)
    y = x2 @ weight.T
    if bias is not None:
        check_like(bias, weight, "bias", "linear weight")
        y += bias
    return y.reshape(*x.shape[:-1], out_features), LinearCache(x2, weight, tuple(x.shape), bias is not None)


def linear_backward(
    dout: Any, cache: LinearCache, need_input_grad: bool = True, need_weight_grad: bool = True
) -> tuple[Any | None, Any | None, Any | None]:
    """Returns dx (*, in), dweight (out, in), dbias (out,) or None."""
    x, weight = cache.x, cache.weight
    out_features = weight.shape[0]
    check_grad_like(dout, (*cache.x_shape[:-1], out_features), weight, "linear")
    g = dout.reshape(-1, out_features)
    dx = dweight = dbias = None
    if need_input_grad:
        dx = (g @ weight).reshape(cache.x_shape)
    if need_weight_grad:
        dweight = g.T @ x
        if cache.has_bias:
            dbias = g.sum(axis=0)
    return dx, dweight, dbias


def flatten_forward(x: Any, start_dim: int = 1) -> tuple[Any, tuple[tuple[int, ...], tuple[int, ...]]]:
    """(N, C, H, W) -> (N, C*H*W) for start_dim=1. The cache is (input shape, output shape)."""
    get_array_module(x)
    start = start_dim % x.ndim if x.ndim else 0
    y = x.reshape(*x.shape[:start], -1)
    return y, (tuple(x.shape), tuple(y.shape))


def flatten_backward(dout: Any, cache: tuple[tuple[int, ...], tuple[int, ...]]) -> Any:
    """Un-flatten: the gradient just takes the input's shape back."""
    x_shape, y_shape = cache
    check_grad_like(dout, y_shape, dout, "flatten")
    return dout.reshape(x_shape)
