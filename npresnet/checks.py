"""Input validation shared by the functional ops and the modules.

Every message names what was expected and what was received, so bad input never ends in a deep
NumPy traceback or, worse, a silently wrong answer.
"""

from __future__ import annotations

from typing import Any

from .backend import backend_name, check_same_backend_and_dtype


def pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(3, 1) -> (3, 1)``; anything else is a clear error."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def check_floating(x: Any, what: str = "input") -> None:
    """The array must be a NumPy/CuPy floating-point array."""
    backend_name(x)  # raises a TypeError for lists, torch tensors, ...
    if x.dtype.kind != "f":
        raise TypeError(f"{what} must be a floating-point array (float32 or float64), got dtype {x.dtype}")


def check_nchw(x: Any, channels: int | None, what: str = "input", layer: str = "layer") -> None:
    """``x`` must be a floating (N, C, H, W) array with ``channels`` channels (if given)."""
    check_floating(x, what)
    if x.ndim != 4:
        raise ValueError(f"{layer} expects a 4-D {what} of shape (N, C, H, W), got {x.ndim}-D shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        hint = " (is it NHWC? npresnet uses NCHW)" if x.shape[-1] == channels else ""
        raise ValueError(
            f"{layer} expects {what} with {channels} channels in dim 1 (N, C, H, W), got shape {tuple(x.shape)}{hint}"
        )


def check_like(x: Any, like: Any, what: str = "input", of: str = "parameters") -> None:
    """``x`` must share backend and dtype with ``like`` (a parameter)."""
    check_same_backend_and_dtype(x, like, what, of)


def check_grad_like(dout: Any, expected_shape: tuple[int, ...], like: Any, layer: str, dtype: Any = None) -> None:
    """The upstream gradient must have the forward output's shape, and ``like``'s backend and dtype
    (or ``dtype``, when given)."""
    got = backend_name(dout)
    if tuple(dout.shape) != tuple(expected_shape):
        raise ValueError(
            f"{layer}.backward expects dout of shape {tuple(expected_shape)} (the forward output's), "
            f"got {tuple(dout.shape)}"
        )
    if got != backend_name(like):
        raise TypeError(f"{layer}.backward got a {got} dout but the forward ran on {backend_name(like)}")
    expected_dtype = like.dtype if dtype is None else dtype
    if dout.dtype != expected_dtype:
        raise TypeError(f"{layer}.backward expects dout of dtype {expected_dtype}, got {dout.dtype}")
