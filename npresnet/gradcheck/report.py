"""What a gradient check found: per-array figures, the failure text, and a hint at the likely bug.

``compare(name, analytic, numeric, atol, rtol)`` measures one array three ways: elementwise
``|a-n|/(|a|+|n|)`` (CS231n), the norm ratio ``||a-n|| / (||a|| + ||n||)`` (UFLDL), and ``|a-n|``
against ``atol + rtol*|n|`` (allclose, the one that decides). ``diagnose`` looks at the pattern of
a failure and names the usual cause: a constant factor, a zero gradient, the right values in the
wrong places. The reference side is named "numeric" in a gradient check and "torch" in
``npresnet.testing.assert_matches_torch``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ..backend import to_numpy
from .diagnosis import diagnose as _diagnose

_REL_FLOOR = 1e-8  # CS231n: |a-n| / max(1e-8, |a|+|n|); relative error means nothing where both are ~0


class GradcheckError(AssertionError):
    """The analytic gradient disagrees with the numerical one (an AssertionError, so pytest shows
    it as a failed assertion)."""


class NondifferentiableError(GradcheckError):
    """The check sits on a kink (ReLU at 0, a max-pool tie): resample the inputs."""


class Kink(NamedTuple):
    """An element whose check was spoiled by a kink within eps of the point."""

    index: tuple[int, ...]  # type: ignore[assignment]   # shadows tuple.index: the element's index
    right: float  # one-sided slope (L(t + eps) - L(t)) / eps
    left: float  # one-sided slope (L(t) - L(t - eps)) / eps
    analytic: float


@dataclass
class ArrayReport:
    """How one array's analytic gradient compares with the numerical one (kinks excluded)."""

    name: str
    max_rel_error: float  # max |a-n| / max(1e-8, |a|+|n|) over the elements (CS231n)
    norm_ratio: float  # ||a-n|| / (||a|| + ||n||)
    max_abs_error: float
    allclose: bool  # |a-n| <= atol + rtol*|n| everywhere
    worst_index: tuple[int, ...]  # element with the largest allclose violation
    analytic: float  # the two gradients at worst_index
    numeric: float
    num_failed: int = 0  # elements outside atol + rtol*|n|
    size: int = 1
    kinks: list[Kink] = field(default_factory=list)  # elements on a kink: not checked
    hint: str = ""  # the likely cause of a failure (see diagnose)

    @property
    def passed(self) -> bool:
        return self.allclose and not self.kinks

    def describe(self, atol: float, rtol: float, labels: tuple[str, str] = ("analytic", "numeric")) -> str:
        """Where and by how much the check failed, the three measures, and a hint if there is one."""
        ours, reference = labels
        values = (
            f"{ours} {self.analytic:.10g}, {reference} {self.numeric:.10g}, |a-n| = "
            f"{abs(self.analytic - self.numeric):.3g} > {atol + rtol * abs(self.numeric):.3g} allowed"
        )
        if self.worst_index:
            head = (
                f"{self.name}: {self.num_failed} of {self.size} element(s) fail |a-n| <= atol + rtol*|n|. "
                f"Worst at {self.worst_index}: {values}."
            )
        else:
            head = f"{self.name}: {values} (atol + rtol*|n|)."
        text = (
            f"{head}\n    max |a-n|/(|a|+|n|) = {self.max_rel_error:.3g}, "
            f"norm ratio ||a-n||/(||a||+||n||) = {self.norm_ratio:.3g}, max |a-n| = {self.max_abs_error:.3g}"
        )
        return text + (f"\n    hint: {self.hint}" if self.hint else "")


@dataclass
class GradcheckReport:
    """What ``gradcheck`` found: one ``ArrayReport`` per checked array."""

    mode: str
    atol: float
    rtol: float
    arrays: list[ArrayReport] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # floating inputs the backward returns no gradient for
    notes: list[str] = field(default_factory=list)  # what a caller changed before checking (check_module)

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.arrays)

    @property
    def worst_rel_error(self) -> float:
        return max((a.max_rel_error for a in self.arrays), default=0.0)

    def __str__(self) -> str:
        lines = [
            f"gradcheck ({self.mode}), atol={self.atol:g} rtol={self.rtol:g}: "
            + ("passed" if self.passed else "FAILED")
        ]
        width = max((len(a.name) for a in self.arrays), default=0)
        for a in self.arrays:
            status = "ok  " if a.passed else ("FAIL" if not a.allclose else "KINK")
            size = f"{a.size:>6} elements  " if self.mode == "full" else ""
            lines.append(
                f"  {status} {a.name:<{width}}  {size}max rel {a.max_rel_error:.2e}  "
                f"norm ratio {a.norm_ratio:.2e}  max abs {a.max_abs_error:.2e}"
                + (f"  ({len(a.kinks)} on a kink)" if a.kinks else "")
            )
        if self.unchecked:
            lines.append("  not checked (backward returns no gradient): " + ", ".join(self.unchecked))
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def rel_error(analytic: Any, numeric: Any) -> float:
    """CS231n's max elementwise ``|a-n| / max(1e-8, |a|+|n|)``."""
    a, n = np.asarray(to_numpy(analytic), np.float64), np.asarray(to_numpy(numeric), np.float64)
    return float(np.max(np.abs(a - n) / np.maximum(_REL_FLOOR, np.abs(a) + np.abs(n)), initial=0.0))


def diagnose(
    analytic: np.ndarray,
    numeric: np.ndarray,
    atol: float,
    rtol: float,
    labels: tuple[str, str] = ("analytic", "numeric"),
) -> str:
    """The usual cause behind a failing comparison, from the pattern of the two arrays ("" if none fits).

    One diagnosis for every checker: ``npresnet.gradcheck.diagnosis.diagnose`` (a gradient that is
    zero or constant, routed to the wrong element, transposed or otherwise in the wrong places, off
    by one constant factor, or every element wrong with no pattern).
    """
    return _diagnose(analytic, numeric, atol, rtol, labels)


def compare(
    name: str,
    analytic: Any,
    numeric: Any,
    atol: float,
    rtol: float,
    exclude: Any = None,
    labels: tuple[str, str] = ("analytic", "numeric"),
) -> ArrayReport:
    """Compare two gradients of the same shape by the three measures, leaving out the elements
    where the boolean mask ``exclude`` is True. A failing report carries a ``hint`` (``diagnose``)."""
    a = np.asarray(to_numpy(analytic), np.float64)
    n = np.asarray(to_numpy(numeric), np.float64)
    if a.shape != n.shape:
        raise ValueError(f"{name}: analytic gradient of shape {a.shape} but numeric of shape {n.shape}")
    keep = np.ones(a.shape, bool) if exclude is None else ~np.asarray(exclude, bool)
    diff = np.where(keep, np.abs(a - n), 0.0)
    violation = np.where(keep, diff - (atol + rtol * np.abs(n)), -np.inf)
    rel = diff / np.maximum(np.abs(a) + np.abs(n), _REL_FLOOR)
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(violation)), a.shape)) if a.size else ()
    a_kept, n_kept = np.where(keep, a, 0.0), np.where(keep, n, 0.0)
    norm = float(
        np.linalg.norm(a_kept - n_kept)
        / max(np.linalg.norm(a_kept) + np.linalg.norm(n_kept), np.finfo(np.float64).tiny)
    )
    allclose = bool(np.all(violation <= 0))
    return ArrayReport(
        name,
        float(rel.max(initial=0.0)),
        norm,
        float(diff.max(initial=0.0)),
        allclose,
        worst,
        float(a[worst]) if a.size else 0.0,
        float(n[worst]) if a.size else 0.0,
        int(np.count_nonzero(violation > 0)),
        int(a.size),
        hint="" if allclose else diagnose(a_kept, n_kept, atol, rtol, labels),
    )


def where_to_look(failed: list[str], passed: list[str], forks: bool) -> str:
    """A pointer for when only input gradients fail while every parameter gradient passes: the
    parameters' math is right, so the error is in what backward returns for the inputs (in a block:
    how its branches are added). ``failed``/``passed``: array names; inputs start with "input"."""
    parameters_ok = any(not name.startswith("input") for name in passed)
    if not failed or not parameters_ok or not all(name.startswith("input") for name in failed):
        return ""
    text = (
        "\nEvery parameter gradient is right but the input gradient is not: look at what backward returns "
        "for the input."
    )
    if forks:
        text += (
            " Where the forward forks (a residual block: x feeds the main branch and the shortcut), the "
            "input gradient is the sum of the gradients coming back along every branch."
        )
    return text
