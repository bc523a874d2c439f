"""What an exercise is (``Exercise``, its ``Case``s and ``Mistake``s, the ``Attempt`` a mistake
detector sees) and the small builders every exercise module uses: calling the learner's
functions, unpacking a backward's result, comparing arrays, random inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Inputs = dict[str, Any]


@dataclass(frozen=True)
class Case:
    """One configuration the grader runs: a label for messages and a builder of the inputs."""

    label: str
    build: Callable[[np.random.Generator], Inputs]


@dataclass
class Attempt:
    """What a mistake detector sees: the case, the upstream gradient, the learner's gradients and
    the right ones (finite differences), all float64 NumPy, keyed by gradient name."""

    inputs: Inputs
    upstream: Any
    yours: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]


@dataclass(frozen=True)
class Mistake:
    """A classic mistake: its name, what to do about it, and a test on an ``Attempt``."""

    name: str
    advice: str
    detect: Callable[[Attempt], bool]
    array: str = "dx"  # the gradient it makes wrong: named only when that one fails


@dataclass(frozen=True)
class Exercise:
    name: str
    title: str
    forward_name: str
    backward_name: str
    call_forward: Callable[[Callable[..., Any], Inputs], tuple[Any, Any]]  # -> (y, cache)
    call_backward: Callable[[Callable[..., Any], Any, Any, Inputs], Any]  # (fn, upstream, cache, inputs)
    reference: Callable[[Inputs], Any]  # npresnet's forward output, float64
    grads: dict[str, str]  # gradient name -> the input it is the gradient of
    unpack: Callable[[Any], dict[str, Any]]  # the backward's result -> {gradient name: array}
    cases: tuple[Case, ...]
    hints: tuple[str, ...]
    mistakes: tuple[Mistake, ...] = ()
    channel_axis: int | None = None  # NCHW gradients: 1, for "a factor constant per channel"
    overlap: Callable[[Inputs], dict[str, np.ndarray]] | None = None  # grad name -> overlap mask
    branches: Callable[[Inputs, Any], dict[str, dict[str, np.ndarray]]] | None = None  # grad -> {branch: part}
    ties: Case | None = None  # a case with exact ties, checked against npresnet's backward
    ties_reference: Callable[[Inputs, Any], np.ndarray] | None = None
    ties_mistakes: tuple[Mistake, ...] = ()
    tutorial: str = ""  # the tutorial section that derives it
    swapped_in: str = ""  # what `learn train` does with it
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return f"{self.name}.py"


def _close(a: np.ndarray, b: np.ndarray, atol: float = 1e-6, rtol: float = 1e-4) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= atol + rtol * np.abs(b)))


def _call(*names: str) -> Callable[[Callable[..., Any], Inputs], tuple[Any, Any]]:
    return lambda fn, inputs: fn(*(inputs[n] for n in names))


def _backward(fn: Callable[..., Any], upstream: Any, cache: Any, inputs: Inputs) -> Any:
    return fn(upstream, cache)


def _tuple_of(*names: str) -> Callable[[Any], dict[str, Any]]:
    def unpack(result: Any) -> dict[str, Any]:
        if len(names) == 1:
            return {names[0]: result}
        if not isinstance(result, tuple) or len(result) != len(names):
            got = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
            raise TypeError(f"the backward must return the tuple ({', '.join(names)}), got {got}")
        return dict(zip(names, result))

    return unpack


def _normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)
