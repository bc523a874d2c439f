"""``gradcheck``: finite differences of ``L = sum(v * f(inputs))`` against a hand-written backward.

How it works, and the kink rule, are in the package docstring (``npresnet.gradcheck``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np

from ..backend import get_array_module, is_array, to_numpy
from ..grad_mode import no_grad
from ..nn.module import Module
from .report import GradcheckError, GradcheckReport, Kink, NondifferentiableError, compare, where_to_look

_STREAM_V, _STREAM_DIRECTIONS = 0x6763_7631, 0x6763_6431  # gradcheck's own random streams


def _on_kink(
    analytic: np.ndarray, numeric: np.ndarray, right: np.ndarray, left: np.ndarray, atol: float, rtol: float
) -> np.ndarray:
    """Mask of the failing elements explained by a kink within eps (see the module docstring):
    the one-sided slopes differ beyond tolerance and the analytic gradient equals one of them."""

    def close(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
        return np.abs(x - reference) <= atol + rtol * np.abs(reference)

    slopes_differ = np.abs(right - left) > atol + rtol * np.maximum(np.abs(right), np.abs(left))
    return ~close(analytic, numeric) & slopes_differ & (close(analytic, right) | close(analytic, left))


# ---------------------------------------------------------------------------------------------
# The thing under test, reduced to: the loss L, the analytic gradients, and the arrays to perturb.


def _no_function(*args: Any) -> Any:
    raise AssertionError("a Module target has no (forward, backward) pair")


class _Target:
    """A Module or a (forward, backward) pair behind one interface."""

    def __init__(self, target: Any, inputs: Sequence[Any], seed: int) -> None:
        if isinstance(target, Module):
            self.module: Module | None = target
            self.forward_fn: Callable[..., Any] = _no_function
            self.backward_fn: Callable[..., Any] = _no_function
        elif isinstance(target, tuple) and len(target) == 2 and all(callable(f) for f in target):
            self.module = None
            self.forward_fn, self.backward_fn = target
        else:
            raise TypeError(
                f"gradcheck checks a Module or a (forward, backward) pair of functions, got {type(target).__name__}"
            )
        self.inputs = [a.copy() if is_array(a) else a for a in inputs]  # working copies, perturbed in place
        # Not default_rng(seed): users often draw their inputs from default_rng(0), and v == x would make
        # e.g. BatchNorm's input gradient vanish. A separate stream for gradcheck's own draws:
        self.rng = np.random.default_rng([seed, _STREAM_V])
        self.v: Any = None

    def candidates(self) -> list[tuple[str, Any]]:
        """(name, array) for every floating input and every parameter with requires_grad."""
        arrays = [(f"input {i}", a) for i, a in enumerate(self.inputs) if is_array(a) and a.dtype.kind == "f"]
        if self.module is not None:
            arrays += [(name, p.data) for name, p in self.module.named_parameters() if p.requires_grad]
        return arrays

    def _forward(self) -> tuple[Any, Any]:
        args = [a.copy() if is_array(a) else a for a in self.inputs]  # an op may update its inputs
        if self.module is not None:
            return self.module(*args), None
        result = self.forward_fn(*args)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(
                f"the forward of a (forward, backward) pair must return (out, cache), got {type(result).__name__}"
            )
        return result

    def _dot_v(self, out: Any) -> float:
        """L = sum(v * out) in float64; draws v on the first call."""
        out = np.asarray(out) if isinstance(out, (np.generic, float)) else out  # a loss may be a scalar
        xp = get_array_module(out)
        if self.v is None:
            self.v = xp.asarray(self.rng.standard_normal(out.shape)).astype(out.dtype)
        return float((out.astype(xp.float64) * self.v.astype(xp.float64)).sum())

    def preserved(self) -> Any:
        """A context that puts the module back as it was: buffers (running statistics), training flag,
        cache, and random generator states, so every evaluation sees the same module."""
        return self.module.preserved_state() if self.module is not None else nullcontext()

    def loss(self) -> float:
        """L at the current arrays, leaving the module as it was."""
        with self.preserved(), no_grad():
            out, _ = self._forward()
        return self._dot_v(out)

    def gradients(self, float_inputs: set[int]) -> tuple[float, dict[str, Any]]:
        """One forward + backward with upstream v: (L, {name: analytic gradient})."""
        grads: dict[str, Any] = {}
        if self.module is None:
            out, cache = self._forward()
            centre = self._dot_v(out)
            result = self.backward_fn(self.v.copy(), cache)  # a copy: a backward may work in place on dout
            for i, g in enumerate(result if isinstance(result, tuple) else (result,)):
                if g is not None and i in float_inputs:
                    grads[f"input {i}"] = g
            return centre, grads
        params = list(self.module.named_parameters())
        with self.preserved(), _gradients_put_back(params):
            self.module.zero_grad()
            out, _ = self._forward()
            centre = self._dot_v(out)
            dx = self.module.backward(self.v.copy())
            for i, g in zip(sorted(float_inputs), dx if isinstance(dx, tuple) else (dx,)):
                if g is not None:
                    grads[f"input {i}"] = g
            for name, p in params:
                if p.requires_grad:  # a parameter the forward never used has gradient 0
                    grads[name] = p.grad if p.grad is not None else get_array_module(p.data).zeros_like(p.data)
        return centre, grads


@contextmanager
def _gradients_put_back(params: list[tuple[str, Any]]) -> Iterator[None]:
    """Give each parameter back the ``.grad`` it had before (preserved_state leaves gradients alone)."""
    saved = [p.grad for _, p in params]
    try:
        yield
    finally:
        for (_, p), old in zip(params, saved):
            p.grad = old


def _losses_either_side(t: _Target, array: Any, index: Any, step: Any) -> tuple[float, float]:
    """(L with array[index] + step, L with array[index] - step); array[index] is restored exactly."""
    original = array[index].copy()
    array[index] = original + step
    plus = t.loss()
    array[index] = original - step
    minus = t.loss()
    array[index] = original
    return plus, minus


def _check_dtypes(arrays: list[tuple[str, Any]], allow_float32: bool) -> None:
    for name, array in arrays:
        if array.dtype != np.float64 and not allow_float32:
            raise TypeError(
                f"gradcheck needs float64 arrays, but {name} is {array.dtype}: finite differences in "
                "float32 fail even for correct code. Cast inputs with .astype(np.float64) and modules with "
                ".to(np.float64), or pass allow_float32=True with a larger eps and looser atol/rtol."
            )


def _kink_message(report: GradcheckReport, eps: float) -> str:
    lines = []
    for a in report.arrays:
        if a.kinks:
            k = a.kinks[0]
            where = f" at {k.index}" if k.index else " along the check direction"
            lines.append(
                f"{a.name}{where} ({len(a.kinks)} element(s) in all): the slope is {k.right:.6g} to the "
                f"right but {k.left:.6g} to the left, and the analytic gradient {k.analytic:.6g} is one "
                "of them"
            )
    return (
        f"gradcheck ({report.mode}) cannot check these elements: a kink lies within eps={eps:g} of the point "
        "(a ReLU input at or near 0, or a max-pool tie), where the function has no derivative:\n  "
        + "\n  ".join(lines)
        + "\nResample the inputs away from kinks: npresnet.testing.kink_free(...) for ReLU inputs, "
        "npresnet.testing.tie_free(...) for max-pool inputs."
    )


def gradcheck(
    target: Any,
    *inputs: Any,
    mode: str = "full",
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    seed: int = 0,
    allow_float32: bool = False,
    raise_exception: bool = True,
) -> GradcheckReport:
    """Check the backward of ``target`` against finite differences of ``L = sum(v * f(inputs))``.

    Args:
        target: a ``Module`` (checks every floating input and every parameter with
            ``requires_grad``), or a ``(forward, backward)`` pair where ``forward(*inputs)``
            returns ``(out, cache)`` and ``backward(dout, cache)`` returns the gradients of the
            inputs in order (``None``, or fewer entries, for inputs that are not differentiated;
            the report lists those as unchecked).
        inputs: the arrays (and other arguments) passed to the forward. They are copied, never changed.
        mode: ``"full"`` (every element) or ``"directional"`` (one random direction per array).
        eps: finite-difference step. atol, rtol: acceptance ``|a-n| <= atol + rtol*|n|``.
        seed: seeds the upstream gradient v and the directions (gradcheck's own streams).
        allow_float32: permit float32 (you will need a larger eps and far looser tolerances).
        raise_exception: raise on failure (else return the report, with ``passed == False``).

    Returns:
        A ``GradcheckReport``. Modules are left as they were (parameters, buffers and ``.grad``).

    Raises:
        GradcheckError: the backward disagrees with the finite differences.
        NondifferentiableError: every disagreement comes from a kink within eps of the point.
        TypeError: a checked array is not float64 (and ``allow_float32`` is False).
        ValueError: nothing to check, or the forward is not deterministic (randomness that
            ``Module.preserved_state()`` does not rewind; npresnet's Dropout is rewound).
    """
    if mode not in ("full", "directional"):
        raise ValueError(f"mode must be 'full' or 'directional', got {mode!r}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    t = _Target(target, inputs, seed)
    candidates = t.candidates()
    _check_dtypes(candidates, allow_float32)
    float_inputs = {int(name.split()[1]) for name, _ in candidates if name.startswith("input ")}
    centre, analytic = t.gradients(float_inputs)
    again = t.loss()
    if abs(again - centre) > eps * atol:
        raise ValueError(
            f"gradcheck needs a deterministic forward, but L = sum(v * f) was {centre!r} and then "
            f"{again!r} at the same point. Something draws random numbers that Module.preserved_state() "
            "does not rewind (npresnet's Dropout is rewound): seed it per call, or put it in eval()."
        )
    report = GradcheckReport(mode, atol, rtol)
    report.unchecked = [name for name, _ in candidates if name not in analytic]
    checked = [(name, array) for name, array in candidates if name in analytic]
    if not checked:
        raise ValueError(
            "gradcheck found nothing to check: no floating input has a gradient and no parameter requires grad"
        )

    directions = np.random.default_rng([seed, _STREAM_DIRECTIONS])
    for name, array in checked:
        grad = analytic[name]
        if tuple(grad.shape) != tuple(array.shape):
            raise GradcheckError(
                f"{name}: backward returned a gradient of shape {tuple(grad.shape)}, expected {tuple(array.shape)}"
            )
        grad = to_numpy(grad).astype(np.float64)
        if mode == "full":  # slope along every axis: the gradient itself
            plus, minus = np.empty(array.shape), np.empty(array.shape)
            for index in np.ndindex(*array.shape):
                plus[index], minus[index] = _losses_either_side(t, array, index, eps)
            along = grad
        else:  # slope along one random unit direction d: sum(grad * d)
            d = directions.standard_normal(array.shape)
            d_array = get_array_module(array).asarray(d / max(np.linalg.norm(d), 1e-300)).astype(array.dtype)
            d = to_numpy(d_array).astype(np.float64)
            plus, minus = (np.array(v) for v in _losses_either_side(t, array, Ellipsis, eps * d_array))
            along = np.array((grad * d).sum())
            name = f"{name} (directional)"
        numeric = (plus - minus) / (2 * eps)
        right, left = (plus - centre) / eps, (centre - minus) / eps
        kinks = _on_kink(along, numeric, right, left, atol, rtol)
        result = compare(name, along, numeric, atol, rtol, exclude=kinks)
        result.kinks = [
            Kink(
                tuple(int(i) for i in index),
                float(right[tuple(index)]),
                float(left[tuple(index)]),
                float(along[tuple(index)]),
            )
            for index in np.argwhere(kinks)
        ]
        report.arrays.append(result)

    if raise_exception and not report.passed:
        raise failure(report, eps, forks=t.module is not None and any(True for _ in t.module.children()))
    return report


def failure(report: GradcheckReport, eps: float, forks: bool = False) -> GradcheckError:
    """The exception for a failed report: ``NondifferentiableError`` when kinks alone spoiled it, else a
    ``GradcheckError`` describing every failing array (``forks``: the module has children)."""
    failed = [a for a in report.arrays if not a.allclose]
    if not failed:
        return NondifferentiableError(_kink_message(report, eps))
    kinked = sum(len(a.kinks) for a in report.arrays)
    return GradcheckError(
        f"gradcheck ({report.mode}, eps={eps:g}) failed: the backward disagrees with finite differences of "
        f"L = sum(v * f) for {len(failed)} array(s):\n  "
        + "\n  ".join(a.describe(report.atol, report.rtol) for a in failed)
        + (f"\n({kinked} element(s) on a kink were left out)" if kinked else "")
        + where_to_look([a.name for a in failed], [a.name for a in report.arrays if a.allclose], forks=forks)
    )
