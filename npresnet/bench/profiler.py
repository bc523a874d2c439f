"""``--profile``: where a step's time goes, per op kind, forward and backward.

Two public hook points, nothing patched:

* the layers' own hooks (``Module.register_forward_pre_hook`` / ``register_forward_hook`` and
  the backward pair) time every ``Conv2d``, ``BatchNorm2d``, ``ReLU``, pooling and ``Linear``
  call, and set the direction (forward or backward) of what runs inside it;
* ``npresnet.kernels.set_observer`` hands each kernel that ``kernels.get`` returns through a timer:
  im2col, col2im, the direct 3x3 convolution kernels and the Winograd transforms (its 16 GEMMs
  count under GEMM), counted under the direction of the layer
  method that runs them (the im2col a convolution's backward runs to rebuild its columns counts
  as backward). Only the calls on the thread running the model count: when a layer's batch is
  split over threads (``npresnet.engine.batch_threads``), the other slices run the same kernels at the
  same time, and adding their times too would count that wall time twice.

Kernels run only where ``npresnet.kernels`` is active (Numba on the CPU, numba-cuda on the GPU):
with ``NPRESNET_KERNELS=numpy`` the NumPy reference im2col/col2im count under GEMM.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .. import kernels, nn

__all__ = ["KERNEL_KINDS", "LAYER_KINDS", "PROFILE_KINDS", "op_profile", "profile_ms", "profile_table"]

LAYER_KINDS: tuple[tuple[type, str], ...] = (
    (nn.Conv2d, "conv"),
    (nn.BatchNorm2d, "batchnorm"),
    (nn.ReLU, "relu"),
    (nn.MaxPool2d, "pooling"),
    (nn.AdaptiveAvgPool2d, "pooling"),
    (nn.Linear, "linear"),
)
KERNEL_KINDS = {
    "im2col": "im2col",
    "col2im": "col2im",
    "conv3x3_forward": "direct3x3",
    "conv3x3_backward_input": "direct3x3",
    "conv3x3_backward_weight": "direct3x3",
    "conv3x3_backward_weight_dots": "direct3x3",
    "winograd_input": "winograd",
    "winograd_output": "winograd",
    "winograd_gradient": "winograd",
    "winograd_input_t": "winograd",
}
PROFILE_KINDS = ("im2col", "col2im", "GEMM", "direct3x3", "winograd", "batchnorm", "relu", "pooling", "linear", "other")


def _layer_kind(module: nn.Module) -> str | None:
    return next((kind for layer, kind in LAYER_KINDS if isinstance(module, layer)), None)


@contextmanager
def op_profile(model: nn.Module, times: dict[str, float]) -> Iterator[None]:
    """Add the seconds spent in each "<kind> <direction>" while the block runs ``model`` to ``times``
    (a ``defaultdict(float)``). The hooks and the kernel observer are removed on exit."""
    owner = threading.get_ident()  # the thread running the model
    direction = ["forward"]
    starts: list[tuple[float, str]] = []  # (start time, outer direction) of the layer calls running

    def enter(now_direction: str) -> Callable[..., None]:
        def hook(module: nn.Module, *_: Any) -> None:
            starts.append((time.perf_counter(), direction[0]))
            direction[0] = now_direction

        return hook

    def leave(kind: str) -> Callable[..., None]:
        def hook(module: nn.Module, *_: Any) -> None:
            start, outer = starts.pop()
            times[f"{kind} {direction[0]}"] += time.perf_counter() - start
            direction[0] = outer

        return hook

    def observe(name: str, kernel: Callable[..., Any]) -> Callable[..., Any]:
        kind = KERNEL_KINDS.get(name)
        if kind is None:
            return kernel

        def timed_kernel(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != owner:  # a batch_threads slice: its twin on our thread counts
                return kernel(*args, **kwargs)
            start = time.perf_counter()
            try:
                return kernel(*args, **kwargs)
            finally:
                times[f"{kind} {direction[0]}"] += time.perf_counter() - start

        return timed_kernel

    handles = []
    for module in model.modules():
        kind = _layer_kind(module)
        if kind is not None:
            handles += [
                module.register_forward_pre_hook(enter("forward")),
                module.register_forward_hook(leave(kind)),
                module.register_backward_pre_hook(enter("backward")),
                module.register_backward_hook(leave(kind)),
            ]
    previous = kernels.set_observer(observe)
    try:
        yield
    finally:
        kernels.set_observer(previous)
        for handle in handles:
            handle.remove()


def profile_ms(times: dict[str, float], steps: int, step_seconds: float) -> dict[str, float]:
    """ms per step for each "<kind> <direction>"; GEMM = conv time minus its im2col/col2im, the
    direct 3x3 kernels (direct3x3: the thin layers' forward, input and weight gradients, see
    kernels/conv3x3_cpu.py) and the Winograd transforms; "other total" = the rest of the step
    (residual adds, loss, optimizer, Python); ``step_seconds`` is the mean wall time of the
    profiled steps."""
    t = {k: v / steps * 1e3 for k, v in times.items()}
    out: dict[str, float] = {}
    conv_kernels = ("im2col", "col2im", "direct3x3", "winograd")
    for direction in ("forward", "backward"):
        conv = t.get(f"conv {direction}", 0.0)
        out[f"GEMM {direction}"] = conv - sum(t.get(f"{kind} {direction}", 0.0) for kind in conv_kernels)
        for kind in (*conv_kernels, "batchnorm", "relu", "pooling", "linear"):
            out[f"{kind} {direction}"] = t.get(f"{kind} {direction}", 0.0)
    layers = sum(v for k, v in t.items() if k.split()[0] in ("conv", "batchnorm", "relu", "pooling", "linear"))
    out["other total"] = step_seconds * 1e3 - layers
    return out


def profile_table(profile: dict[str, float]) -> list[str]:
    rows = [f"    {'op':<10} {'forward':>9} {'backward':>9}   (ms per step)"]
    for kind in PROFILE_KINDS:
        if kind == "other":
            rows.append(f"    {'other':<10} {profile['other total']:>19.1f}   residual adds, loss, optimizer, Python")
            continue
        f, b = profile.get(f"{kind} forward", 0.0), profile.get(f"{kind} backward", 0.0)
        rows.append(f"    {kind:<10} {f:9.1f} {b:9.1f}")
    return rows
