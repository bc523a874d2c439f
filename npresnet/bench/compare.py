"""PyTorch as the yardstick (``--compare torch``): the same model and weights, checked logits, and its time."""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import nn, no_grad
from ..backend import to_numpy
from ..engine import autotune
from .timing import timed

__all__ = [
    "TORCH_INSTALL",
    "check_same_logits",
    "make_torch_step",
    "torch_missing",
    "torch_setup",
    "torch_step",
    "torch_time",
]

TORCH_INSTALL = "pip install torch==2.13.0 (or the test extra: pip install -e '.[test]')"


def torch_missing() -> str | None:
    """None if PyTorch imports; else the error for ``--compare torch``, with the install command."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        return f"--compare torch needs PyTorch ({exc}): {TORCH_INSTALL}"
    return None


def make_torch_step(torch: Any, tmodel: Any, mode: str, x: Any, target: Any) -> Callable[[], None]:
    """The same unit for the torch model: a no-grad evaluation forward, or forward + cross-entropy +
    backward + SGD (lr 1e-3, momentum 0.9) in training mode."""
    if mode == "forward":
        tmodel.eval()

        def forward() -> None:
            with torch.no_grad():
                tmodel(x)

        return forward
    tmodel.train()
    optimizer = torch.optim.SGD(tmodel.parameters(), lr=1e-3, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(tmodel(x), target).backward()
        optimizer.step()

    return train_step


def torch_setup(name: str, model: nn.Module, dtype: Any, threads: int, backend: str):
    import torch

    from .. import torch_reference

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_num_threads(threads)
    device = "cuda" if backend == "cupy" else "cpu"
    tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(dtype)]
    tmodel = torch_reference.build(name).to(device=device, dtype=tdtype)
    tmodel.load_state_dict({k: torch.as_tensor(to_numpy(v)) for k, v in model.state_dict().items()})
    return torch, tmodel, device, tdtype


def check_same_logits(model: nn.Module, tmodel: Any, torch: Any, x: Any, device: str, dtype: Any) -> float:
    model.eval()
    tmodel.eval()
    # By the fixed rule: in measure mode this forward would choose the layers' algorithms, and the
    # timed first step would then show neither that choosing nor its cost.
    previous = autotune.set_mode("fixed")
    try:
        with no_grad():
            ours = to_numpy(model(x)).astype(np.float64)
    finally:
        autotune.set_mode(previous)
    with torch.no_grad():
        theirs = tmodel(torch.as_tensor(to_numpy(x), device=device)).double().cpu().numpy()
    model.train()
    tmodel.train()
    error = float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))
    limit = 1e-3 if np.dtype(dtype) == np.float32 else 1e-9
    if error > limit:
        raise SystemExit(f"npresnet and torch disagree on the logits: max relative error {error:.2e} > {limit:g}")
    return error


def torch_step(compare: tuple, mode: str, x: Any, target: Any, channels_last: bool = False) -> Callable[[], None]:
    """One PyTorch step on the same data (synchronised on a GPU), ready to time. ``channels_last``:
    on a copy of the model and the input converted to torch's channels_last memory format (NHWC
    strides), as torch's CPU performance guide advises; the same weights, its own optimizer."""
    torch, tmodel, device, _ = compare
    tx = torch.as_tensor(to_numpy(x), device=device)
    tt = torch.as_tensor(to_numpy(target), device=device)
    if channels_last:
        tmodel = copy.deepcopy(tmodel).to(memory_format=torch.channels_last)
        tx = tx.contiguous(memory_format=torch.channels_last)
    step_once = make_torch_step(torch, tmodel, mode, tx, tt)

    def step() -> None:
        step_once()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def torch_time(compare: tuple, mode: str, x: Any, target: Any, args: argparse.Namespace) -> float:
    """PyTorch's median seconds per step, timed like npresnet's (on its own; the bench's CLI times
    the two in alternation, ``timing.timed_together``)."""
    _, times = timed(torch_step(compare, mode, x, target), args.warmup, args.repeat)
    return statistics.median(times)
