"""``check_module``: is the backward of my layer right? One call, any ``npresnet.nn.Module``.

It does what a careful gradient check needs and a hand-written one usually forgets:

* works on a float64 **copy** (finite differences fail in float32), so your module is untouched;
* replaces every **constant** floating parameter or buffer of the copy (gamma = 1, beta = 0,
  running_var = 1, a zero-initialised residual BatchNorm) by random values near it: a constant 1
  hides a gradient that forgets to multiply by it, and gamma = 0 makes a whole branch's check vacuous;
* draws the inputs from their shapes: **tie-free** when the module max-pools (no two values in a
  window within eps), **kink-free** otherwise (no ReLU input within 1e-2 of 0); and when a kink
  deeper inside still spoils the check, draws them again (``kink_retries``);
* checks the input(s) and every parameter with a **random upstream gradient** (never a sum() loss),
  in ``"full"`` mode (every element) or ``"directional"`` mode (one random direction per array,
  for whole models);
* raises ``GradcheckError`` (an AssertionError) naming the array, the worst element, both values,
  three error measures and the likely cause, with what it drew so the failure can be replayed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backend import backend_name, to_backend
from ..gradcheck import GradcheckReport, gradcheck
from ..gradcheck.check import failure
from ..nn import MaxPool2d, Module
from .inputs import kink_free, tie_free

_STREAM_CONSTANTS = 0x6E70_6B31  # check_module's own random stream for the replaced constants


def _is_shape(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(n, (int, np.integer)) and n > 0 for n in value)


def _randomize_constants(module: Module, rng: np.random.Generator) -> list[str]:
    """Replace each constant floating parameter and buffer by random values near it; their names."""
    replaced = []
    entries = [(name, p.data) for name, p in module.named_parameters()] + list(module.named_buffers())
    for name, array in entries:
        if array.dtype.kind != "f" or array.size < 1:
            continue
        flat = array.ravel()
        if not bool((flat == flat[0]).all()):
            continue
        value = float(flat[0])
        # c != 0: c * U(0.5, 1.5) keeps the sign (a variance stays positive); c == 0: N(0, 0.5^2).
        fresh = value * rng.uniform(0.5, 1.5, array.shape) if value != 0 else 0.5 * rng.standard_normal(array.shape)
        array[...] = to_backend(fresh.astype(array.dtype), backend_name(array))
        replaced.append(name)
    return replaced


def check_module(
    module: Module,
    *inputs: Any,
    mode: str = "full",
    seed: int = 0,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    randomize_constants: bool = True,
    kink_retries: int = 3,
    raise_exception: bool = True,
) -> GradcheckReport:
    """Gradient-check ``module`` (a float64 copy of it) on the given inputs or input shapes.

    Args:
        module: any ``npresnet.nn.Module`` (a layer, a block with a residual fork, a whole model),
            in the mode (train or eval) you want checked.
        inputs: one entry per argument of ``module.forward``: a shape such as ``(2, 3, 8, 8)`` (the
            input is drawn, tie-free if the module max-pools, kink-free otherwise) or an array
            (floating arrays are copied to float64; integer arrays such as class targets pass as they are).
        mode: ``"full"`` (every element; small shapes) or ``"directional"`` (one random direction per
            array: 2 forward passes per array, for whole models).
        seed: seeds the drawn inputs, the replaced constants, the upstream gradient and the directions.
        eps, atol, rtol: as in ``npresnet.gradcheck.gradcheck``.
        randomize_constants: replace constant parameters and buffers of the copy (see the module docstring).
        kink_retries: when only kinks spoil a check on drawn inputs (a ReLU input inside the model within
            eps of 0: likely in a whole network), draw the inputs again with seed + 1, ... this many times.
        raise_exception: raise on failure; else return the failed report.

    Returns:
        The ``GradcheckReport`` (one line per array in ``str(report)``; ``report.notes`` says what
        was drawn and replaced).

    Raises:
        GradcheckError: the backward disagrees with finite differences (``NondifferentiableError``
            if only kinks spoil it, after ``kink_retries`` fresh draws).
        TypeError / ValueError: ``module`` is not a Module, or an input is neither a shape nor an array.
    """
    if not isinstance(module, Module):
        raise TypeError(
            f"check_module checks an npresnet.nn.Module, got {type(module).__name__}; for a "
            "(forward, backward) pair of functions use npresnet.gradcheck.gradcheck"
        )
    if not inputs:
        raise ValueError("check_module needs the input(s): a shape such as (2, 3, 8, 8) or an array per argument")
    checked = copy.deepcopy(module).to(np.float64)
    notes: list[str] = []
    if randomize_constants:
        replaced = _randomize_constants(checked, np.random.default_rng([seed, _STREAM_CONSTANTS]))
        if replaced:
            shown = ", ".join(replaced[:4]) + (f" and {len(replaced) - 4} more" if len(replaced) > 4 else "")
            notes.append(f"{len(replaced)} constant array(s) replaced by random values near them: {shown}")
    last_attempt = kink_retries if any(_is_shape(value) for value in inputs) else 0  # arrays: nothing to redraw
    for attempt in range(1 + last_attempt):
        arrays, drawn = _inputs(checked, inputs, np.random.default_rng(seed + attempt))
        report = gradcheck(
            checked, *arrays, mode=mode, eps=eps, atol=atol, rtol=rtol, seed=seed + attempt, raise_exception=False
        )
        only_kinks = not report.passed and all(a.allclose for a in report.arrays)
        if not only_kinks or attempt == last_attempt:
            break
        kinked = ", ".join(a.name for a in report.arrays if a.kinks)
        notes.append(f"seed={seed + attempt} put a kink within eps of the point ({kinked}): drew again")
    if drawn:
        notes.append(f"inputs drawn with seed={seed + attempt}: " + ", ".join(drawn))
    report.notes += notes
    if raise_exception and not report.passed:
        error = failure(report, eps, forks=any(True for _ in checked.children()))
        where = f"check_module({type(module).__name__}, mode={mode!r}, seed={seed})"
        raise type(error)(f"{where}: {error}" + "".join(f"\nnote: {note}" for note in notes))
    return report


def _inputs(module: Module, inputs: Sequence[Any], rng: np.random.Generator) -> tuple[list[Any], list[str]]:
    """The arrays to check on (float64, on the module's backend) and how each drawn one was drawn."""
    pools = any(isinstance(m, MaxPool2d) for m in module.modules())
    parameters = list(module.parameters())
    backend = backend_name(parameters[0].data) if parameters else "numpy"
    arrays, drawn = [], []
    for i, value in enumerate(inputs):
        if _is_shape(value):
            shape = tuple(int(n) for n in value)
            array = tie_free(shape, rng) if pools else kink_free(shape, rng)
            drawn.append(f"input {i} {shape} {'tie-free' if pools else 'kink-free'}")
        elif hasattr(value, "dtype") and hasattr(value, "shape"):
            array = value.astype(np.float64) if value.dtype.kind == "f" else value
        else:
            raise TypeError(
                f"check_module input {i}: expected a shape (a tuple of positive ints) or an array, "
                f"got {type(value).__name__} {value!r}"[:300]
            )
        arrays.append(to_backend(array, backend))
    return arrays, drawn
