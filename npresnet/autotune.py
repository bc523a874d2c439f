"""Deprecated: ``npresnet.autotune`` moved to ``npresnet.engine.autotune`` (this name works through 0.2.x).

Importing it warns once and gives the engine's module itself, so attributes set here (``set_mode``,
a test's monkeypatch) are the engine's.
"""

import sys
import warnings

from .engine import autotune as _engine_module

warnings.warn("npresnet.autotune is deprecated: use npresnet.engine.autotune", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _engine_module
