"""What a wrong gradient's error pattern says about the bug: one diagnosis for every checker.

``diagnose(ours, reference, atol, rtol, ...)`` compares two arrays of the same shape (a hand-written
gradient and finite differences, or a layer's output and npresnet's) and names the usual cause
behind the *pattern* of their difference, or returns "" when no pattern fits. A misleading hint is
worse than none, so every pattern is tested exactly (to the tolerance), never guessed from a score.

The patterns, tried in this order:

* zero where the reference is not (never computed, never accumulated); the same value everywhere;
* a branch of a fork forgotten: ``ours == reference - branch`` for one of the ``branches`` given;
* wrong only where pooling or convolution windows overlap (``overlap``: assign instead of ``+=``);
* a gradient routed to the wrong element (nonzero where the reference is zero and the reverse);
* transposed (a square matrix, or the last two axes); the right values in the wrong places;
* one constant factor (a missing 1/N, 2, or a sign); a factor constant per channel (``channel_axis``:
  a missing gamma or 1/std);
* wrong in only one column of each row (e.g. the target class of a softmax cross-entropy);
* every element wrong with no pattern: then the shapes may match by luck (a wrong product or axis).

``gradcheck``, ``npresnet.testing`` and ``python -m npresnet.learn`` all call this one function.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["diagnose"]


def _close(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """Elementwise |a - b| <= atol + rtol * |b| (b is the reference side)."""
    return np.abs(a - b) <= atol + rtol * np.abs(b)


def _constant_ratio(a: np.ndarray, n: np.ndarray, atol: float, rtol: float) -> float | None:
    """The factor r with a == r * n everywhere (to tolerance), or None if there is none."""
    scale = float(np.max(np.abs(n), initial=0.0))
    big = np.abs(n) > max(atol, 1e-3 * scale)
    if not np.any(big):
        return None
    ratio = float(np.median(a[big] / n[big]))
    if abs(ratio) < 1e-6 or not np.all(_close(a, ratio * n, atol, max(rtol, 1e-6))):
        return None
    return ratio


def _factor_text(ratio: float, batch: int | None) -> str:
    if abs(ratio + 1) <= 1e-6:
        return "the sign is flipped (a subtraction the wrong way round, or a forgotten minus)"
    for name, value in (("N, the batch size", batch), ("2", 2), ("1/2", 0.5)):
        if value and abs(ratio - value) <= 1e-6 * abs(value):
            return f"an extra factor {name}"
        if value and abs(ratio - 1 / value) <= 1e-6 / abs(value):
            return f"a missing factor {name}" if name != "1/2" else "a missing factor 1/2 (or an extra 2)"
    return "a missing or extra 1/N, 2, or scale"


def diagnose(
    analytic: Any,
    reference: Any,
    atol: float,
    rtol: float,
    labels: tuple[str, str] = ("analytic", "numeric"),
    *,
    channel_axis: int | None = None,
    overlap: Any = None,
    branches: Mapping[str, Any] | None = None,
    batch: int | None = None,
    kind: str = "gradient",
) -> str:
    """The likely cause of ``analytic != reference`` from the pattern of the error ("" if none fits).

    Args:
        analytic, reference: arrays of the same shape (yours, and the one known to be right).
        atol, rtol: the tolerance an element must meet: ``|a - r| <= atol + rtol * |r|``.
        labels: how the text names the two sides.
        channel_axis: the axis whose entries are channels (1 for NCHW): enables "a factor
            constant per channel".
        overlap: a boolean mask, True where an element is covered by more than one window.
        branches: name -> the part of ``reference`` that flows along one branch of a fork (for
            a residual block: the gradient through the shortcut).
        batch: the batch size N, to name a factor N exactly.
        kind: "gradient" (a backward's result) or "value" (a forward's): how a misplaced element is named.
    """
    ours, theirs = labels
    a = np.asarray(analytic, np.float64)
    n = np.asarray(reference, np.float64)
    ok = _close(a, n, atol, rtol)
    if a.size == 0 or bool(ok.all()):
        return ""
    scale = float(np.max(np.abs(n), initial=0.0))
    if not np.any(np.abs(a) > atol) and scale > atol:
        return f"{ours} is zero where {theirs} is not: it is never computed, or never accumulated"
    if scale <= atol:
        return f"{theirs} is ~0 (the result does not depend on this array), but {ours} is not"
    if a.size == 1:  # one slope (directional mode): a ratio, not yet a diagnosis
        slope = float(a.ravel()[0] / n.ravel()[0])
        return f"along the check direction {ours} = {slope:.6g} x {theirs}; mode='full' shows the wrong elements"
    if a.size > 1 and np.all(a == a.ravel()[0]):
        return f"{ours} holds the same value {a.ravel()[0]:.6g} everywhere: it cannot depend on the upstream gradient"
    for name, branch in (branches or {}).items():
        b = np.asarray(branch, np.float64)
        if b.shape == n.shape and np.any(np.abs(b) > atol) and np.all(_close(a, n - b, atol, rtol)):
            return (
                f"{ours} lacks exactly the gradient that flows back through {name}: where the forward forks, "
                "the backward adds the gradients of every branch"
            )
    if overlap is not None:
        mask = np.asarray(overlap, bool)
        if mask.shape == a.shape and np.any(mask) and not np.any(~ok & ~mask):
            return (
                f"{ours} is wrong only where windows overlap (elements that several windows cover): "
                "contributions must be added (+=), not assigned"
            )
    if a.size > 1:
        zero_a, zero_n = np.abs(a) <= atol, np.abs(n) <= atol
        if np.any(zero_n & ~zero_a) and np.any(zero_a & ~zero_n) and kind != "gradient":
            return (
                f"{ours} is nonzero where {theirs} is zero, and zero where it is not: values are taken from the "
                "wrong elements (a window offset, the padding, or the order of an index)"
            )
        if np.any(zero_n & ~zero_a) and np.any(zero_a & ~zero_n):
            return (
                f"{ours} is nonzero where {theirs} is zero, and zero where it is not: is each gradient routed "
                "to the element the forward used (e.g. the maximum of its window)?"
            )
        if a.ndim >= 2 and a.shape[-1] == a.shape[-2] and np.all(_close(np.swapaxes(a, -1, -2), n, atol, rtol)):
            return (
                f"{ours} holds the right values in the wrong places: it is {theirs} transposed (swap the factors "
                "of the product, or transpose the result)"
            )
        if np.all(_close(np.sort(a, axis=None), np.sort(n, axis=None), atol, rtol)):
            return f"{ours} holds the right values in the wrong places: an index is transposed, flipped or shifted"
    ratio = _constant_ratio(a.ravel(), n.ravel(), atol, rtol)
    if ratio is not None and abs(ratio - 1) > rtol:
        return (
            f"{ours} = {ratio:.6g} x {theirs} everywhere: one constant factor is wrong ({_factor_text(ratio, batch)})"
        )
    if channel_axis is not None and a.ndim > 1 and a.shape[channel_axis] > 1:
        moved_a, moved_n = np.moveaxis(a, channel_axis, 0), np.moveaxis(n, channel_axis, 0)
        ratios = [_constant_ratio(ca.ravel(), cn.ravel(), atol, rtol) for ca, cn in zip(moved_a, moved_n)]
        if all(r is not None for r in ratios):
            shown = ", ".join(f"{r:.4g}" for r in ratios[:4]) + (", ..." if len(ratios) > 4 else "")
            return (
                f"{ours} = {theirs} times a factor that is constant within each channel but differs between "
                f"channels ({shown}): a missing or extra per-channel scale (gamma, 1/std)"
            )
    if a.ndim == 2 and a.shape[1] > 1:
        wrong_per_row = (~ok).sum(axis=1)
        if np.all(wrong_per_row <= 1) and np.any(wrong_per_row == 1):
            return (
                f"{ours} is wrong in only one column of each row (column "
                f"{', '.join(str(int(c)) for c in np.argmax(~ok, axis=1)[:4])}...): a term that belongs to one "
                "element per row, such as the target class, is missing or wrong"
            )
    if np.all(~ok):
        return (
            f"every element of {ours} is wrong and I recognise no pattern: the shapes may match by luck "
            "(check which axes each product sums over, and the order of its factors)"
        )
    return ""
