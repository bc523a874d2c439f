"""Numerical gradient checking for hand-written backward passes.

The checked scalar is ``L = sum(v * f(inputs))`` with a *random* upstream gradient ``v``
(seeded). A ``sum(f)`` loss (v = ones) would be blind to whole classes of bugs: for BatchNorm
in training mode sum(y) does not depend on x at all, so dL/dx == 0 and any backward "passes".

Two modes:

* ``"full"``: every element of every checked array by central differences,
  ``(L(t + eps) - L(t - eps)) / (2 eps)``: 2 forward passes per element, for small shapes.
* ``"directional"``: for each checked array one random unit direction d, comparing
  ``(L(t + eps d) - L(t - eps d)) / (2 eps)`` with ``sum(grad * d)``: 2 forward passes per array,
  so a whole ResNet is checked in seconds.

An element is accepted when ``|analytic - numeric| <= atol + rtol * |numeric|``. Every failure
reports the array (input or parameter name), the worst element's index, both values, and the
error by three measures: elementwise ``|a-n|/(|a|+|n|)`` (CS231n), the norm ratio
``||a-n|| / (||a|| + ||n||)``, and the allclose margin. When the disagreement comes from an input
sitting on a kink (ReLU at 0, a max-pool tie) the one-sided slopes differ and a
``NondifferentiableError`` says so instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import get_array_module, to_numpy
from .nn.module import Module

_TINY = 1e-300
_STREAM_V, _STREAM_DIRECTIONS = 0x6763_7631, 0x6763_6431  # gradcheck's own random streams


class GradcheckError(AssertionError):
    """The analytic gradient disagrees with the numerical one."""


class NondifferentiableError(GradcheckError):
    """The check sits on a kink (ReLU at 0, a max-pool tie): resample the inputs."""


@dataclass
class ArrayReport:
    """How one array's analytic gradient compares with the numerical one."""

    name: str
    max_rel_error: float           # max |a-n| / (|a|+|n|) over the elements (CS231n)
    norm_ratio: float              # ||a-n|| / (||a|| + ||n||)
    max_abs_error: float
    allclose: bool                 # |a-n| <= atol + rtol*|n| everywhere
    worst_index: tuple[int, ...]   # element with the largest allclose violation (or error)
    analytic: float
    numeric: float

    def describe(self, atol: float, rtol: float) -> str:
        return (f"{self.name}: worst element {self.worst_index}: analytic {self.analytic:.10g}, "
                f"numeric {self.numeric:.10g}; |a-n|={self.max_abs_error:.3g} "
                f"(allowed atol + rtol*|n| = {atol:g} + {rtol:g}*|n|), max |a-n|/(|a|+|n|) = "
                f"{self.max_rel_error:.3g}, norm ratio = {self.norm_ratio:.3g}")


@dataclass
class GradcheckReport:
    """Returned on success: one ``ArrayReport`` per checked array."""

    mode: str
    atol: float
    rtol: float
    arrays: list[ArrayReport] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(a.allclose for a in self.arrays)

    @property
    def worst_rel_error(self) -> float:
        return max((a.max_rel_error for a in self.arrays), default=0.0)

    def __str__(self) -> str:
        lines = [f"gradcheck ({self.mode}), atol={self.atol:g} rtol={self.rtol:g}:"]
        for a in self.arrays:
            status = "ok  " if a.allclose else "FAIL"
            lines.append(f"  {status} {a.name:<40} max rel {a.max_rel_error:.2e}  norm ratio {a.norm_ratio:.2e}")
        return "\n".join(lines)


def rel_error(analytic: Any, numeric: Any) -> float:
    """CS231n's max elementwise ``|a-n| / max(1e-8, |a|+|n|)``."""
    a, n = np.asarray(to_numpy(analytic), np.float64), np.asarray(to_numpy(numeric), np.float64)
    return float(np.max(np.abs(a - n) / np.maximum(1e-8, np.abs(a) + np.abs(n)), initial=0.0))


def compare(name: str, analytic: Any, numeric: Any, atol: float, rtol: float) -> ArrayReport:
    """Compare two gradients of the same shape by the three measures."""
    a = np.asarray(to_numpy(analytic), np.float64)
    n = np.asarray(to_numpy(numeric), np.float64)
    diff = np.abs(a - n)
    violation = diff - (atol + rtol * np.abs(n))
    rel = diff / np.maximum(np.abs(a) + np.abs(n), _TINY)
    worst = np.unravel_index(int(np.argmax(violation)), a.shape) if a.size else ()
    norm = float(np.linalg.norm(a - n) / max(np.linalg.norm(a) + np.linalg.norm(n), _TINY))
    return ArrayReport(name, float(rel.max(initial=0.0)), norm, float(diff.max(initial=0.0)),
                       bool(np.all(violation <= 0)), tuple(int(i) for i in worst),
                       float(a[worst]) if a.size else 0.0, float(n[worst]) if n.size else 0.0)


# ---------------------------------------------------------------------------------------------
# The thing under test, reduced to: loss(), analytic gradients, and the arrays to perturb.


@dataclass
class _Checked:
    name: str
    array: Any           # perturbed in place (a working copy of an input, or param.data)
    analytic: Any = None


class _Target:
    """Wraps a Module or a (forward, backward) pair behind one interface."""

    def __init__(self, target: Any, inputs: Sequence[Any], seed: int) -> None:
        self.inputs = [a.copy() if hasattr(a, "copy") and hasattr(a, "dtype") else a for a in inputs]
        if isinstance(target, Module):
            self.module: Module | None = target
            self.forward_fn: Callable | None = None
            self.backward_fn: Callable | None = None
        elif (isinstance(target, tuple) and len(target) == 2 and all(callable(f) for f in target)):
            self.module = None
            self.forward_fn, self.backward_fn = target
        else:
            raise TypeError("gradcheck checks a Module or a (forward, backward) pair of functions, "
                            f"got {type(target).__name__}")
        # Not default_rng(seed): users often draw their inputs from default_rng(0), and v == x would make
        # e.g. BatchNorm's input gradient vanish. A separate stream for gradcheck's own draws:
        self.rng = np.random.default_rng([seed, _STREAM_V])
        self.v: Any = None

    def _run_forward(self) -> tuple[Any, Any]:
        args = [a.copy() if hasattr(a, "dtype") else a for a in self.inputs]  # ops may update inputs
        if self.module is not None:
            return self.module(*args), None
        return self.forward_fn(*args)

    def loss(self) -> float:
        """L = sum(v * f(inputs)) in float64, leaving no side effects on module buffers."""
        saved = _snapshot_buffers(self.module)
        out, _ = self._run_forward()
        _restore_buffers(self.module, saved)
        xp = get_array_module(out)
        if self.v is None:
            self.v = xp.asarray(self.rng.standard_normal(out.shape)).astype(out.dtype)
        return float((out.astype(xp.float64) * self.v.astype(xp.float64)).sum())

    def analytic(self, checked_inputs: list[int]) -> dict[str, Any]:
        """Run forward + backward once with upstream v; return {name: gradient}."""
        self.loss()  # draws v
        grads: dict[str, Any] = {}
        if self.module is not None:
            params = list(self.module.named_parameters())
            saved_grads = [p.grad for _, p in params]
            saved = _snapshot_buffers(self.module)
            self.module.zero_grad()
            self._run_forward()
            dx = self.module.backward(self.v)
            _restore_buffers(self.module, saved)
            dxs = dx if isinstance(dx, tuple) else (dx,)
            for i, g in zip(checked_inputs, dxs):
                grads[f"input {i}"] = g
            for (name, p), old in zip(params, saved_grads):
                if p.requires_grad:
                    grads[name] = p.grad if p.grad is not None else get_array_module(p.data).zeros_like(p.data)
                p.grad = old
        else:
            _, cache = self._run_forward()
            result = self.backward_fn(self.v, cache)
            result = result if isinstance(result, tuple) else (result,)
            for i, g in enumerate(result):
                if g is not None and i in checked_inputs:
                    grads[f"input {i}"] = g
        return grads

    def checked_arrays(self) -> list[_Checked]:
        arrays = [_Checked(f"input {i}", a) for i, a in enumerate(self.inputs)
                  if hasattr(a, "dtype") and a.dtype.kind == "f"]
        if self.module is not None:
            arrays += [_Checked(name, p.data) for name, p in self.module.named_parameters() if p.requires_grad]
        return arrays


def _snapshot_buffers(module: Module | None) -> list[tuple[Module, str, Any]]:
    if module is None:
        return []
    return [(m, name, buf.copy()) for m in module.modules() for name, buf in m._buffers.items() if buf is not None]


def _restore_buffers(module: Module | None, saved: list[tuple[Module, str, Any]]) -> None:
    for m, name, buf in saved:
        m._buffers[name] = buf.copy()


def _check_dtypes(arrays: list[_Checked], allow_float32: bool) -> None:
    for c in arrays:
        if c.array.dtype != np.float64 and not allow_float32:
            raise TypeError(
                f"gradcheck needs float64 arrays, but {c.name} is {c.array.dtype}: finite differences in "
                "float32 fail even for correct code. Cast inputs with .astype(np.float64) and modules with "
                ".to(np.float64), or pass allow_float32=True with looser atol/rtol."
            )


def _one_sided_slopes(target: _Target, array: Any, index: Any, direction: Any, h: float) -> tuple[float, float]:
    """(right, left) one-sided difference quotients of L along ``direction`` at ``index``."""
    original = array[index].copy()
    centre = target.loss()
    array[index] = original + h * direction
    right = (target.loss() - centre) / h
    array[index] = original - h * direction
    left = (centre - target.loss()) / h
    array[index] = original
    return right, left


def _kink_message(name: str, where: str, right: float, left: float) -> str | None:
    scale = max(abs(right), abs(left), 1e-12)
    if abs(right - left) > 1e-3 * scale:
        return (f"{name}{where} sits on a kink: the slope is {right:.6g} to the right but {left:.6g} to the "
                "left (a ReLU input at 0 or a max-pool tie). Resample the inputs away from kinks, e.g. "
                "npresnet.testing.tie_free(...) or move values off 0.")
    return None


def gradcheck(target: Any, *inputs: Any, mode: str = "full", eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3, seed: int = 0, allow_float32: bool = False,
              raise_exception: bool = True) -> GradcheckReport:
    """Check the backward of ``target`` against finite differences.

    Args:
        target: a ``Module`` (checks every floating input and every parameter with
            ``requires_grad``), or a ``(forward, backward)`` pair where ``forward(*inputs)``
            returns ``(out, cache)`` and ``backward(dout, cache)`` returns the gradients of the
            inputs in order (``None``, or fewer entries, for inputs that are not differentiated).
        inputs: the arrays (and other arguments) passed to the forward.
        mode: ``"full"`` (every element) or ``"directional"`` (one random direction per array).
        eps: finite-difference step. atol, rtol: acceptance ``|a-n| <= atol + rtol*|n|``.
        seed: seeds the upstream gradient v and the directions.
        allow_float32: permit float32 (you will need far looser tolerances).
        raise_exception: raise ``GradcheckError`` on failure (else return the report).

    Returns:
        A ``GradcheckReport``. Modules are left as they were (buffers and ``.grad`` restored).

    Note: a module in training mode must be deterministic: put ``Dropout`` in ``eval()``.
    """
    if mode not in ("full", "directional"):
        raise ValueError(f"mode must be 'full' or 'directional', got {mode!r}")
    t = _Target(target, inputs, seed)
    arrays = t.checked_arrays()
    _check_dtypes(arrays, allow_float32)
    checked_inputs = [int(c.name.split()[1]) for c in arrays if c.name.startswith("input ")]
    analytic = t.analytic(checked_inputs)
    arrays = [c for c in arrays if c.name in analytic]
    if not arrays:
        raise ValueError("gradcheck found nothing to check: no floating input has a gradient and no parameter "
                         "requires grad")
    report = GradcheckReport(mode, atol, rtol)
    direction_rng = np.random.default_rng([seed, _STREAM_DIRECTIONS])
    for c in arrays:
        xp = get_array_module(c.array)
        grad = analytic[c.name]
        if grad is None or tuple(grad.shape) != tuple(c.array.shape):
            raise GradcheckError(f"{c.name}: backward returned a gradient of shape "
                                 f"{None if grad is None else tuple(grad.shape)}, expected {tuple(c.array.shape)}")
        if mode == "full":
            numeric = np.zeros(c.array.shape)
            for index in np.ndindex(*c.array.shape):
                original = c.array[index].copy()
                c.array[index] = original + eps
                plus = t.loss()
                c.array[index] = original - eps
                minus = t.loss()
                c.array[index] = original
                numeric[index] = (plus - minus) / (2 * eps)
            result = compare(c.name, grad, numeric, atol, rtol)
            if not result.allclose:
                right, left = _one_sided_slopes(t, c.array, result.worst_index, 1.0, eps)
                kink = _kink_message(c.name, f"[{result.worst_index}]", right, left)
                if kink and raise_exception:
                    raise NondifferentiableError(kink)
        else:
            d = direction_rng.standard_normal(c.array.shape)
            d /= max(np.linalg.norm(d), _TINY)
            d_dev = xp.asarray(d).astype(c.array.dtype)
            original = c.array.copy()
            c.array[...] = original + eps * d_dev
            plus = t.loss()
            c.array[...] = original - eps * d_dev
            minus = t.loss()
            c.array[...] = original
            numeric_dd = (plus - minus) / (2 * eps)
            analytic_dd = float((to_numpy(grad).astype(np.float64) * d).sum())
            result = compare(f"{c.name} (directional)", np.array(analytic_dd), np.array(numeric_dd), atol, rtol)
            result.worst_index = ()
            if not result.allclose:
                right, left = _one_sided_slopes(t, c.array, Ellipsis, d_dev, eps)
                kink = _kink_message(c.name, " (along the check direction)", right, left)
                if kink and raise_exception:
                    raise NondifferentiableError(kink)
        report.arrays.append(result)
    if raise_exception and not report.passed:
        failures = [a.describe(atol, rtol) for a in report.arrays if not a.allclose]
        raise GradcheckError(f"gradcheck ({mode}) failed for {len(failures)} array(s):\n  " + "\n  ".join(failures))
    return report
