"""Numerical gradient checking for hand-written backward passes.

``gradcheck(target, *inputs)`` (``from npresnet.gradcheck import gradcheck``) lives in ``check.py``,
the report and its failure text in ``report.py``, and ``python -m npresnet.gradcheck MODEL`` (a whole
model or your own class from the command line) in ``__main__.py`` and ``cli.py``.

The checked scalar is ``L = sum(v * f(inputs))`` with a *random* upstream gradient ``v`` (drawn
from gradcheck's own seeded stream). A ``sum(f)`` loss (v = ones) would be blind to whole classes
of bugs: for BatchNorm in training mode sum(y) does not depend on x at all, so dL/dx == 0 and any
backward "passes".

Two modes:

* ``"full"``: every element of every checked array by central differences,
  ``(L(t + eps) - L(t - eps)) / (2 eps)``: 2 forward passes per element, for small shapes.
* ``"directional"``: for each checked array one random unit direction d, comparing
  ``(L(t + eps d) - L(t - eps d)) / (2 eps)`` with ``sum(grad * d)``: 2 forward passes per array,
  so a whole ResNet is checked in seconds.

An element is accepted when ``|analytic - numeric| <= atol + rtol * |numeric|``. Every failure
reports the array (input or parameter name), the worst element's index, both values, and the
error by three measures: elementwise ``|a-n|/(|a|+|n|)`` (CS231n), the norm ratio
``||a-n|| / (||a|| + ||n||)`` (UFLDL), and ``|a-n|`` against ``atol + rtol*|n|`` (allclose).

Kinks. ReLU and max-pool are only piecewise smooth. When a kink lies within eps of the point (a
ReLU input at or near 0, a max-pool tie), the central difference averages two different slopes and
no analytic gradient can match it. The two one-sided slopes come for free from the same losses::

    right = (L(t + eps) - L(t)) / eps        left = (L(t) - L(t - eps)) / eps

On a smooth stretch they differ by |L''| * eps only (usually far below atol). Across a kink
they differ by up to the jump in slope, and the analytic gradient equals one of them: the slope
on the side the point lies on. A failing element that shows both signs is reported as a
``NondifferentiableError`` ("resample your inputs"); every other failure, including a wrong
gradient next to a kink, is a ``GradcheckError`` ("your backward is wrong").
"""

from .._callable_module import make_callable
from .check import gradcheck
from .report import ArrayReport, GradcheckError, GradcheckReport, Kink, NondifferentiableError, compare, rel_error

__all__ = [
    "ArrayReport",
    "GradcheckError",
    "GradcheckReport",
    "Kink",
    "NondifferentiableError",
    "compare",
    "gradcheck",
    "rel_error",
]

make_callable(__name__)  # the 0.1 spelling npresnet.gradcheck(f, x) still works in 0.2, with a DeprecationWarning
