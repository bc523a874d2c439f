"""The 0.2 bridge for the old spelling ``npresnet.summary(model)`` / ``npresnet.gradcheck(f, x)``.

Up to 0.1, ``npresnet/__init__.py`` bound the functions ``summary`` and ``gradcheck`` over the packages
of the same name, so ``import npresnet.summary as s`` gave a function. The names now belong to the
packages (``npresnet.summary.summary(model)``, ``from npresnet.gradcheck import gradcheck``); calling the
package itself still runs its function of the same name, with a DeprecationWarning, for this release.
"""

from __future__ import annotations

import sys
import types
import warnings
from typing import Any


class CallableModule(types.ModuleType):
    """A package whose call runs its function of the same name, with a DeprecationWarning (0.2 only)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self.__name__.rpartition(".")[2]
        warnings.warn(
            f"calling the module {self.__name__} is deprecated and stops working after 0.2: "
            f"call {self.__name__}.{name}(...) (or `from {self.__name__} import {name}`)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(self, name)(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Let the already-imported module ``module_name`` be called like its function of the same name."""
    sys.modules[module_name].__class__ = CallableModule
