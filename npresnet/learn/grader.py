"""The grader of ``python -m npresnet.learn check``: run the learner's file, say precisely what is wrong.

For each case of an exercise, in this order, stopping at the first failure:

1. the forward runs (``NotImplementedError``: "not written yet"; any other exception: the learner's
   traceback, trimmed to their file) and returns ``(y, cache)`` of the right shape and dtype;
2. y matches npresnet's forward (``npresnet.functional``);
3. the backward returns one gradient per input, each of its input's shape and dtype;
4. each gradient matches float64 central finite differences of ``L = sum(dy * forward(inputs))``
   (npresnet's forward, a random upstream gradient dy, inputs kept off ReLU kinks and max-pool ties).

Then a float32 run (every output must keep the input's dtype) and, for max pooling, a case with exact
ties (checked against npresnet's backward: finite differences cannot see a tie). A failure names the
array, the worst element, the exercise's classic mistake when the numbers are exactly that mistake's,
and otherwise the pattern of the error (``npresnet.gradcheck.diagnosis``), or says that none fits.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..gradcheck.diagnosis import diagnose
from .catalogue import Attempt, Case, Exercise

FORWARD_TOLERANCE = (1e-8, 1e-6)  # atol, rtol: the learner's float64 forward against npresnet's
BACKWARD_TOLERANCE = (1e-6, 1e-4)  # against central differences with EPS
EPS = 1e-6
_SEED = 2028  # the cases are the same on every run: a learner compares one attempt with the next
_UPSTREAM = 0x7570  # the upstream gradients' stream
_EXPECTED: dict[tuple[str, int], tuple[Any, dict[str, np.ndarray]]] = {}  # per (exercise, case number)


@dataclass
class Result:
    """What ``grade`` found. ``status``: "pass", "fail", "not written", "missing" or "crash"."""

    exercise: Exercise
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == "pass"


class _Stop(Exception):
    """A failure found: its status and message."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# ------------------------------------------------------------------------------ the learner's code
def _trimmed(error: BaseException, path: str) -> str:
    """The traceback of ``error`` with only the frames in the learner's file, and the error itself."""
    path = os.path.realpath(path)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if os.path.realpath(f.filename) == path]
    text = "".join(traceback.format_list(frames)) + "".join(traceback.format_exception_only(type(error), error))
    return "Traceback (only the lines in your file):\n" + text.rstrip() if frames else text.rstrip()


def load(path: str) -> types.ModuleType:
    """Import the learner's file as a fresh module (a new one on every call: they edit it in between)."""
    name = f"npresnet_learn_{os.path.splitext(os.path.basename(path))[0]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise _Stop("crash", f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(os.path.abspath(path))
    before = set(sys.modules)
    sys.path.insert(0, folder)  # the learner's other files import as plain modules (conv.py: from im2col import ...)
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise _Stop("crash", f"{path} does not import:\n{_trimmed(error, path)}") from None
    finally:
        sys.path.remove(folder)
        sys.modules.pop(name, None)
        for loaded in set(sys.modules) - before:  # imported from the folder: fresh on the next load
            if os.path.dirname(os.path.abspath(getattr(sys.modules[loaded], "__file__", None) or "")) == folder:
                del sys.modules[loaded]
    return module


def _run(fn: Callable[..., Any], call: Callable[[], Any], path: str, what: str, exercise: Exercise) -> Any:
    try:
        return call()
    except NotImplementedError:
        raise _Stop(
            "not written",
            f"{fn.__name__} is not written yet: replace its `raise NotImplementedError` in {path} with your code "
            f"(python -m npresnet.learn hint {exercise.name} --dir {os.path.dirname(path) or '.'} gives a hint, "
            "one more each time)",
        ) from None
    except Exception as error:
        raise _Stop("crash", f"{what} raised an error:\n{_trimmed(error, path)}") from None


# ---------------------------------------------------------------------------------------- checks
def _array_check(name: str, value: Any, shape: tuple[int, ...], dtype: Any, of: str) -> np.ndarray:
    """One line naming expected and received, if ``value`` is not an array of that shape and dtype."""
    if value is None:
        raise _Stop("fail", f"{name} is None: return an array of shape {shape} ({of})")
    if not isinstance(value, np.ndarray):
        raise _Stop("fail", f"{name} is a {type(value).__name__}, expected a NumPy array of shape {shape} ({of})")
    if value.shape != shape:
        reversed_hint = (
            f"; {value.shape} is {shape} reversed: is {name} transposed?" if value.shape == shape[::-1] else ""
        )
        raise _Stop("fail", f"{name} has shape {value.shape}, expected {shape} ({of}){reversed_hint}")
    if value.dtype != dtype:
        raise _Stop(
            "fail",
            f"{name} has dtype {value.dtype}, expected {np.dtype(dtype)} ({of}): create arrays with "
            "dtype=x.dtype (np.zeros(shape) is float64), or use np.zeros_like",
        )
    return value


def _numeric(exercise: Exercise, inputs: dict[str, Any], key: str, upstream: Any) -> np.ndarray:
    """dL/d inputs[key] by central differences, L = sum(upstream * npresnet's forward)."""

    def loss(values: dict[str, Any]) -> float:
        return float(np.sum(np.asarray(exercise.reference(values)) * upstream))

    base = inputs[key]
    grad = np.zeros_like(base)
    for index in np.ndindex(base.shape):
        plus, minus = base.copy(), base.copy()
        plus[index] += EPS
        minus[index] -= EPS
        grad[index] = (loss(inputs | {key: plus}) - loss(inputs | {key: minus})) / (2 * EPS)
    return grad


def _copied(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in value.items()}
    return value.copy() if isinstance(value, np.ndarray) else value


def _upstream(y: Any, rng: np.random.Generator, dtype: Any) -> Any:
    shape = np.shape(y)
    if shape == ():  # a loss: a scalar upstream gradient (1.0 would hide a missing multiplication)
        return float(rng.uniform(0.5, 1.5))
    return rng.standard_normal(shape).astype(dtype)


def _describe(name: str, yours: np.ndarray, expected: np.ndarray, reference: str, atol: float, rtol: float) -> str:
    wrong = np.abs(yours - expected) > atol + rtol * np.abs(expected)
    excess = np.where(wrong, np.abs(yours - expected) - rtol * np.abs(expected), -np.inf)
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), yours.shape)) if yours.ndim else ()
    return (
        f"{name} is wrong: {int(wrong.sum())} of {yours.size} element(s) differ from {reference}. Worst at "
        f"{worst}: yours {yours[worst]:.8g}, expected {expected[worst]:.8g}."
    )


def _pattern(exercise: Exercise, name: str, yours: np.ndarray, expected: np.ndarray, extra: dict[str, Any]) -> str:
    atol, rtol = extra.pop("tolerance")
    channel_axis = exercise.channel_axis if yours.ndim == 4 else None
    kind = "value" if name == "y" else "gradient"
    labels = (f"your {name}", "the expected")
    text = diagnose(yours, expected, atol, rtol, labels, channel_axis=channel_axis, kind=kind, **extra)
    if text:
        return f"Pattern: {text}" + ("" if text.endswith(("?", ".")) else ".")
    return (
        "Pattern: none that I recognise, so no guess. Compare your code with the index form of the "
        f"equation, one element at a time (python -m npresnet.learn hint {exercise.name})."
    )


def _forward(exercise: Exercise, fns: dict[str, Callable[..., Any]], inputs: dict[str, Any], path: str) -> Any:
    fn = fns[exercise.forward_name]
    result = _run(fn, lambda: exercise.call_forward(fn, inputs), path, exercise.forward_name, exercise)
    if not (isinstance(result, tuple) and len(result) == 2):
        got = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
        raise _Stop("fail", f"{exercise.forward_name} must return (y, cache), got {got}")
    return result


def _backward(
    exercise: Exercise, fns: dict[str, Callable[..., Any]], upstream: Any, cache: Any, inputs: dict[str, Any], path: str
) -> dict[str, Any]:
    fn = fns[exercise.backward_name]
    result = _run(
        fn, lambda: exercise.call_backward(fn, upstream, cache, inputs), path, exercise.backward_name, exercise
    )
    try:
        return exercise.unpack(result)
    except TypeError as error:
        raise _Stop("fail", f"{exercise.backward_name}: {error}") from None


def case_inputs(exercise: Exercise, number: int) -> dict[str, Any]:
    """The inputs of case ``number`` (1-based): seeded, the same on every run."""
    return exercise.cases[number - 1].build(np.random.default_rng([_SEED, number]))


def reference_gradients(exercise: Exercise, number: int) -> tuple[Any, dict[str, np.ndarray]]:
    """(the upstream gradient, the right gradients by finite differences) of case ``number``."""
    memo = (exercise.name, number)
    if memo not in _EXPECTED:
        inputs = case_inputs(exercise, number)
        # Its own stream: an upstream gradient drawn from the inputs' stream would be an affine function
        # of x, for which BatchNorm's dx is exactly zero (and any backward returning zeros would pass).
        rng = np.random.default_rng([_SEED, _UPSTREAM, number])
        y_ref = np.asarray(exercise.reference(inputs))
        upstream = _upstream(y_ref, rng, y_ref.dtype)
        grads = {name: _numeric(exercise, inputs, key, upstream) for name, key in exercise.grads.items()}
        _EXPECTED[memo] = (upstream, grads)
    return _EXPECTED[memo]


def _check_case(
    exercise: Exercise, fns: dict[str, Callable[..., Any]], case: Case, number: int, inputs: dict[str, Any], path: str
) -> None:
    y_ref = np.asarray(exercise.reference(inputs))
    y, cache = _forward(exercise, fns, _copied(inputs), path)  # a copy: their code may write into its inputs
    if y_ref.shape == ():  # a loss: a float or a 0-d array
        if not isinstance(y, (float, np.floating, np.ndarray)) or np.shape(y) != ():
            raise _Stop("fail", f"the loss is a {type(y).__name__} of shape {np.shape(y)}, expected a float")
        y = np.asarray(y, np.float64)
    else:
        y = _array_check("y", y, y_ref.shape, y_ref.dtype, "the forward's output")
    atol, rtol = FORWARD_TOLERANCE
    if not np.allclose(y, y_ref, atol=atol, rtol=rtol):
        if y_ref.shape == ():
            ratio = float(y) / float(y_ref) if float(y_ref) else float("nan")
            head = f"the loss is wrong: yours {float(y):.8g}, npresnet's {float(y_ref):.8g} (ratio {ratio:.6g})."
            raise _Stop("fail", head)
        head = _describe("y", y, y_ref, "npresnet's forward", atol, rtol)
        raise _Stop("fail", head + "\n" + _pattern(exercise, "y", y, y_ref, {"tolerance": (atol, rtol)}))
    upstream, expected = reference_gradients(exercise, number)
    grads = _backward(exercise, fns, _copied(upstream), cache, _copied(inputs), path)
    yours = {}
    for name, key in exercise.grads.items():
        of = f"{key}'s shape and dtype"
        yours[name] = _array_check(name, grads[name], inputs[key].shape, inputs[key].dtype, of)
    atol, rtol = BACKWARD_TOLERANCE
    failing = [n for n in exercise.grads if not np.allclose(yours[n], expected[n], atol=atol, rtol=rtol)]
    if not failing:
        return
    name = failing[0]
    lines = [_describe(name, yours[name], expected[name], "finite differences", atol, rtol)]
    if len(failing) > 1:
        lines.append(f"(also wrong: {', '.join(failing[1:])})")
    attempt = Attempt(inputs, upstream, yours, expected)
    named = [m for m in exercise.mistakes if m.array in failing and _detects(m.detect, attempt)]
    right = [n for n in exercise.grads if n not in failing]
    if right and len(exercise.grads) > 3:  # a block: its gradients in the order of its layers
        lines.append(f"(right: {', '.join(right)}: the backward is correct down to those layers; look below them)")
    if named:
        lines.append(f'This is the classic mistake "{named[0].name}": {named[0].advice}.')
    else:
        extra: dict[str, Any] = {"tolerance": (atol, rtol), "batch": _batch(inputs)}
        if exercise.overlap is not None:
            extra["overlap"] = exercise.overlap(inputs).get(name)
        if exercise.branches is not None:
            extra["branches"] = exercise.branches(inputs, upstream).get(name)
        lines.append(_pattern(exercise, name, yours[name], expected[name], extra))
    raise _Stop("fail", "\n".join(lines))


def _detects(detect: Callable[[Attempt], bool], attempt: Attempt) -> bool:
    try:
        return bool(detect(attempt))
    except Exception:  # a detector that does not apply to this case's shapes
        return False


def _batch(inputs: dict[str, Any]) -> int | None:
    for key in ("x", "z"):
        if key in inputs and getattr(inputs[key], "ndim", 0) >= 2:
            return int(inputs[key].shape[0])
    return None


def _check_float32(exercise: Exercise, fns: dict[str, Callable[..., Any]], path: str) -> None:
    rng = np.random.default_rng([_SEED, 2])
    inputs = {
        k: v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
        for k, v in exercise.cases[0].build(rng).items()
    }
    y, cache = _forward(exercise, fns, inputs, path)
    y_ref = np.asarray(exercise.reference(inputs))
    if y_ref.shape != ():
        _array_check("y", y, y_ref.shape, np.float32, "float32 input: a float32 output")
    upstream = _upstream(y_ref, rng, np.float32)
    grads = _backward(exercise, fns, upstream, cache, inputs, path)
    for name, key in exercise.grads.items():
        _array_check(name, grads[name], inputs[key].shape, np.float32, f"float32 {key}: a float32 gradient")


def _check_ties(exercise: Exercise, fns: dict[str, Callable[..., Any]], path: str) -> None:
    assert exercise.ties is not None and exercise.ties_reference is not None
    rng = np.random.default_rng([_SEED, 3])
    inputs = exercise.ties.build(rng)
    y, cache = _forward(exercise, fns, inputs, path)
    y_ref = np.asarray(exercise.reference(inputs))
    upstream = _upstream(y_ref, rng, y_ref.dtype)
    grads = _backward(exercise, fns, upstream, cache, inputs, path)
    dx = _array_check("dx", grads["dx"], inputs["x"].shape, inputs["x"].dtype, "x's shape and dtype")
    expected = exercise.ties_reference(inputs, upstream)
    atol, rtol = BACKWARD_TOLERANCE
    if np.allclose(dx, expected, atol=atol, rtol=rtol):
        return
    lines = [_describe("dx", dx, expected, "npresnet's backward", atol, rtol)]
    attempt = Attempt(inputs, upstream, {"dx": dx}, {"dx": expected})
    named = [m for m in exercise.ties_mistakes if m.array == "dx" and _detects(m.detect, attempt)]
    if named:
        lines.append(f'This is the classic mistake "{named[0].name}": {named[0].advice}.')
    else:
        lines.append(_pattern(exercise, "dx", dx, expected, {"tolerance": (atol, rtol)}))
    raise _Stop("fail", "\n".join(lines))


# ------------------------------------------------------------------------------------------ grade
def grade(exercise: Exercise, path: str) -> Result:
    """Check the learner's file ``path`` for ``exercise``; never raises for anything in their code."""
    if not os.path.isfile(path):
        return Result(
            exercise,
            "missing",
            f"{path} does not exist: python -m npresnet.learn start {exercise.name} writes its skeleton",
        )
    try:
        module = load(path)
        fns = {}
        for name in (exercise.forward_name, exercise.backward_name):
            fn = getattr(module, name, None)
            if not callable(fn):
                raise _Stop("fail", f"{path} defines no function {name} (the skeleton's name; keep it)")
            fns[name] = fn
        count = len(exercise.cases)
        for number, case in enumerate(exercise.cases, 1):
            inputs = case_inputs(exercise, number)
            try:
                _check_case(exercise, fns, case, number, inputs, path)
            except _Stop as stop:
                if stop.status == "not written":
                    raise
                raise _Stop(stop.status, f"case {number} of {count} ({case.label}):\n{stop.message}") from None
        checks = [("float32 inputs (" + exercise.cases[0].label + ")", lambda: _check_float32(exercise, fns, path))]
        if exercise.ties is not None:
            checks.append((exercise.ties.label, lambda: _check_ties(exercise, fns, path)))
        for label, check in checks:
            try:
                check()
            except _Stop as stop:
                raise _Stop(stop.status, f"{label}:\n{stop.message}") from None
    except _Stop as stop:
        return Result(exercise, stop.status, stop.message)
    extras = " and float32 inputs" + (", and exact ties" if exercise.ties is not None else "")
    return Result(
        exercise,
        "pass",
        f"all {len(exercise.cases)} cases{extras}: the forward matches npresnet's and every gradient matches "
        "finite differences",
    )
