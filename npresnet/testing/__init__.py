"""``npresnet.testing``: tools for gradient-check test suites of your own layers.

One call per question::

    check_module(layer, (2, 3, 8, 8))              # is my backward right? (finite differences)
    assert_matches_torch(layer, torch_layer, x)    # does my layer do what torch's does?
    @given(conv2d_configs())                       # which configurations should I try?

* ``check_module`` (check.py): gradcheck a float64 copy of any Module on drawn inputs, every
  parameter included, with a random upstream gradient; raises ``GradcheckError`` (an AssertionError).
* ``assert_matches_torch`` (torch_parity.py): forward, backward, every parameter gradient and every
  buffer against a torch module, with ``torch.testing``-style messages. Imports torch when called.
* ``tie_free``, ``kink_free`` (inputs.py): inputs that keep a check away from max-pool ties and
  ReLU kinks.
* ``conv2d_configs``, ``pool2d_configs``, ``batchnorm_configs`` (strategies.py): hypothesis
  strategies that draw only configurations torch accepts; ``arrays_for(config)`` (configs.py)
  the matching arrays. The strategies import hypothesis on first use, so ``import npresnet`` does not.
* A pytest plugin (plugin.py, registered as ``npresnet`` through the ``pytest11`` entry point):
  fixtures ``rng`` (seeded per test, the seed printed on failure) and ``float64``, and the option
  ``--npresnet-seed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..gradcheck import GradcheckError, GradcheckReport, NondifferentiableError, compare, gradcheck, rel_error
    from .check import check_module
    from .configs import Arrays, BatchNormConfig, Conv2dConfig, Pool2dConfig, arrays_for
    from .inputs import kink_free, tie_free
    from .strategies import batchnorm_configs, conv2d_configs, pool2d_configs
    from .torch_parity import TorchMismatchError, assert_matches_torch

# name -> the module that defines it, imported on first use: the pytest plugin (plugin.py) is loaded
# in every test run of the environment and imports this package, which must then cost nothing (no
# NumPy); the strategies also need hypothesis, which npresnet does not.
_LAZY = {
    **dict.fromkeys(["GradcheckError", "GradcheckReport", "NondifferentiableError"], "..gradcheck"),
    **dict.fromkeys(["compare", "gradcheck", "rel_error"], "..gradcheck"),
    "check_module": ".check",
    **dict.fromkeys(["Arrays", "BatchNormConfig", "Conv2dConfig", "Pool2dConfig", "arrays_for"], ".configs"),
    **dict.fromkeys(["kink_free", "tie_free"], ".inputs"),
    **dict.fromkeys(["conv2d_configs", "pool2d_configs", "batchnorm_configs"], ".strategies"),
    **dict.fromkeys(["TorchMismatchError", "assert_matches_torch"], ".torch_parity"),
}

__all__ = [
    "Arrays",
    "BatchNormConfig",
    "Conv2dConfig",
    "GradcheckError",
    "GradcheckReport",
    "NondifferentiableError",
    "Pool2dConfig",
    "TorchMismatchError",
    "arrays_for",
    "assert_matches_torch",
    "check_module",
    "compare",
    "gradcheck",
    "kink_free",
    "rel_error",
    "tie_free",
    "conv2d_configs",
    "pool2d_configs",
    "batchnorm_configs",
]


def __getattr__(name: str) -> Any:
    """Load a tool's module on first use (the strategies need hypothesis, which npresnet does not)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # once: later lookups find it without __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
