"""Deprecated: ``npresnet.runtime`` moved to ``npresnet.engine.runtime`` (this name works through 0.2.x).

Importing it warns once and gives the engine's module itself, so attributes set here (``set_mode``,
a test's monkeypatch) are the engine's.
"""

import sys
import warnings

from .engine import runtime as _engine_module

warnings.warn("npresnet.runtime is deprecated: use npresnet.engine.runtime", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _engine_module
