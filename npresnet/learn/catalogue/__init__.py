"""The exercises of ``python -m npresnet.learn``, in the order they build on each other.

Each ``Exercise`` says what the learner's file must define (a forward and a backward function),
how to call them on a case, npresnet's reference for the forward (``npresnet.functional``), which
arrays the backward returns gradients for, the cases the grader runs (ordinary first, then the
awkward ones: batch 1, H != W, stride 2, padding, odd sizes, a square weight, overlapping pool
windows), the classic mistakes it recognises, and the hints ``hint NAME`` hands out one by one.

The package holds one module per topic (``dense``, ``pooling``, ``convolution``, ``batchnorm``,
``blocks``), and ``exercise`` the types and builders they share; here they are put in order.
"""

from __future__ import annotations

from .batchnorm import BATCHNORM
from .blocks import BASIC_BLOCK, BOTTLENECK
from .convolution import CONV, CONV_LOOP, IM2COL
from .dense import CROSS_ENTROPY, LINEAR, RELU
from .exercise import Attempt, Case, Exercise
from .pooling import AVGPOOL, MAXPOOL

__all__ = ["BY_NAME", "EXERCISES", "Attempt", "Case", "Exercise", "get"]

EXERCISES: tuple[Exercise, ...] = (
    LINEAR,
    RELU,
    CROSS_ENTROPY,
    AVGPOOL,
    MAXPOOL,
    CONV_LOOP,
    IM2COL,
    CONV,
    BATCHNORM,
    BASIC_BLOCK,
    BOTTLENECK,
)
BY_NAME = {e.name: e for e in EXERCISES}


def get(name: str) -> Exercise:
    """The exercise called ``name`` (a KeyError listing the names if there is none)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no exercise {name!r}; the exercises are: {', '.join(BY_NAME)}") from None
