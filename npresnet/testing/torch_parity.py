"""``assert_matches_torch``: does my layer compute what the torch layer computes, forward and backward?

One call copies your module's parameters and buffers into the torch module (matched by
``state_dict`` key, so name them as torch does), runs forward and backward in both with the same
random upstream gradient ``dy``, and compares, element by element with ``|a - t| <= atol + rtol*|t|``:

    output      input gradient(s)      every parameter gradient      every buffer after the forward

A mismatch raises ``TorchMismatchError`` (an AssertionError) in the style of
``torch.testing.assert_close``: per array, how many elements fail, the worst one's index and both
values, and the three error measures gradcheck reports, plus a hint at the likely bug. torch is
imported only when you call it; without torch the call raises one ImportError saying so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np

from ..backend import get_array_module, to_numpy
from ..gradcheck.report import ArrayReport, compare, where_to_look
from ..nn import Module

#: torch.testing.assert_close's defaults, per dtype: (rtol, atol).
DEFAULT_TOLERANCES = {
    np.dtype(np.float64): (1e-7, 1e-7),
    np.dtype(np.float32): (1.3e-6, 1e-5),
    np.dtype(np.float16): (1e-3, 1e-5),
}


class TorchMismatchError(AssertionError):
    """Your module and the torch module disagree (an AssertionError: pytest shows a failed assertion)."""


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "assert_matches_torch needs PyTorch as the referee, and it is not installed: "
            "pip install torch (the CPU wheel is enough)"
        ) from error
    return torch


def assert_matches_torch(
    module: Module,
    torch_module: Any,
    x: Any,
    *,
    train: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
) -> None:
    """Assert that ``module`` and ``torch_module`` agree on ``x``: output, input gradient(s), every
    parameter gradient and every buffer.

    Args:
        module: your ``npresnet.nn.Module``; left as it was (parameters, buffers, ``.grad``, mode).
        torch_module: the ``torch.nn.Module`` to compare with, with the same ``state_dict`` keys. Its
            parameters and buffers are overwritten with copies of yours, cast to your dtype.
        x: the input array, or a tuple of arrays for a module with several inputs.
        train: run both in training mode (True: batch statistics, running averages updated) or eval.
        rtol, atol: acceptance ``|a - t| <= atol + rtol * |t|``; default torch.testing's for the
            dtype (float64: 1e-7, 1e-7; float32: 1.3e-6, 1e-5).
        seed: seeds the upstream gradient ``dy``.

    Raises:
        TorchMismatchError: some array differs (all differing arrays are listed).
        ValueError: the two modules' state_dict keys differ, or outputs have different shapes.
        ImportError: torch is not installed.
    """
    torch = _import_torch()
    if not isinstance(module, Module):
        raise TypeError(f"assert_matches_torch: module must be an npresnet.nn.Module, got {type(module).__name__}")
    if not isinstance(torch_module, torch.nn.Module):
        raise TypeError(
            f"assert_matches_torch: torch_module must be a torch.nn.Module, got {type(torch_module).__name__}"
        )
    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    dtype = _dtype_of(module, xs)
    default_rtol, default_atol = DEFAULT_TOLERANCES.get(dtype, (1e-7, 1e-7))
    rtol, atol = (default_rtol if rtol is None else rtol), (default_atol if atol is None else atol)

    params = list(module.named_parameters())
    saved_grads = [p.grad for _, p in params]
    with ExitStack() as stack:
        stack.enter_context(module.preserved_state())
        stack.callback(_put_back_gradients, params, saved_grads)
        device = next((t.device for t in torch_module.parameters()), torch.device("cpu"))
        if device.type == "cuda":  # TF32 would make the referee itself inexact on a GPU
            stack.enter_context(_no_tf32(torch))
        torch_dtype = getattr(torch, dtype.name)
        torch_module.to(torch_dtype)
        _copy_state(module, torch_module, torch)
        module.train(train)
        torch_module.train(train)
        module.zero_grad()
        torch_module.zero_grad()

        def to_torch(a: Any) -> Any:
            tensor = torch.from_numpy(np.array(to_numpy(a), copy=True)).to(device)
            return tensor.requires_grad_(tensor.is_floating_point())

        xts = [to_torch(a) for a in xs]
        y = module(*xs)
        yt = torch_module(*xts)
        if tuple(y.shape) != tuple(yt.shape):
            raise ValueError(
                f"assert_matches_torch: output shapes differ: npresnet {tuple(y.shape)}, torch {tuple(yt.shape)}"
            )
        dy = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
        dx = module.backward(get_array_module(y).asarray(dy))
        yt.backward(torch.from_numpy(dy).to(device))

        dxs = dx if isinstance(dx, tuple) else (dx,)
        float_inputs = [(i, xt) for i, xt in enumerate(xts) if xt.is_floating_point()]
        pairs = [("output", y, yt.detach())]
        for (i, xt), g in zip(float_inputs, dxs):
            name = "input gradient" if len(float_inputs) == 1 else f"input {i} gradient"
            pairs.append((name, g, xt.grad if xt.grad is not None else torch.zeros_like(xt)))
        torch_params = dict(torch_module.named_parameters())
        for name, p in params:
            reference = torch_params[name].grad
            ours = p.grad if p.grad is not None else np.zeros(p.shape, p.dtype)
            pairs.append(
                (f"{name}.grad", ours, reference if reference is not None else torch.zeros_like(torch_params[name]))
            )
        torch_buffers = dict(torch_module.named_buffers())
        pairs += [(f"{name} (buffer)", buf, torch_buffers[name]) for name, buf in module.named_buffers()]
        reports = [_compare(name, ours, reference, atol, rtol) for name, ours, reference in pairs]

    failed = [r for r in reports if not r.allclose]
    agreeing_gradients = [r.name for r in reports if r.allclose and r.name.endswith(".grad")]
    if failed:
        raise TorchMismatchError(
            f"assert_matches_torch ({dtype}, train={train}, rtol={rtol:g}, atol={atol:g}): {len(failed)} of "
            f"{len(reports)} arrays differ from torch (a = npresnet, n = torch):\n  "
            + "\n  ".join(r.describe(atol, rtol, labels=("npresnet", "torch")) for r in failed)
            + "\nagree: "
            + (", ".join(r.name for r in reports if r.allclose) or "nothing")
            + where_to_look([r.name for r in failed], agreeing_gradients, forks=any(True for _ in module.children()))
        )


def _put_back_gradients(params: list, saved: list) -> None:
    for (_, p), grad in zip(params, saved):
        p.grad = grad


def _dtype_of(module: Module, xs: tuple) -> np.dtype:
    for _, p in module.named_parameters():
        return np.dtype(p.dtype)
    for a in xs:
        if getattr(a, "dtype", None) is not None and np.dtype(a.dtype).kind == "f":
            return np.dtype(a.dtype)
    return np.dtype(np.float64)


def _copy_state(module: Module, torch_module: Any, torch: Any) -> None:
    """Load module's parameters and buffers into torch_module, after checking both have the same keys."""
    ours = module.state_dict()
    theirs = torch_module.state_dict()
    missing, unexpected = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
    if missing or unexpected:
        raise ValueError(
            "assert_matches_torch matches parameters and buffers by state_dict key, and the keys "
            f"differ: only in torch: {missing or 'none'}; only in npresnet: {unexpected or 'none'}"
        )
    for key, value in ours.items():
        if tuple(value.shape) != tuple(theirs[key].shape):
            raise ValueError(
                f"assert_matches_torch: {key} has shape {tuple(value.shape)} in npresnet but "
                f"{tuple(theirs[key].shape)} in torch"
            )
    with torch.no_grad():
        for key, value in ours.items():
            theirs[key].copy_(torch.from_numpy(np.array(to_numpy(value), copy=True)))


def _compare(name: str, ours: Any, reference: Any, atol: float, rtol: float) -> ArrayReport:
    a = np.asarray(to_numpy(ours))
    t = reference.detach().cpu().numpy()
    if a.shape != t.shape:
        raise TorchMismatchError(f"assert_matches_torch: {name} has shape {a.shape} in npresnet but {t.shape} in torch")
    exact = a.dtype.kind in "iub"  # integer buffers (num_batches_tracked) must be equal
    return compare(name, a, t, 0.0 if exact else atol, 0.0 if exact else rtol, labels=("npresnet", "torch"))


@contextmanager
def _no_tf32(torch: Any) -> Iterator[None]:
    """Full float32 precision in cuDNN convolutions and cuBLAS matmuls for the duration."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
