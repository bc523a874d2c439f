"""``npresnet.settings`` for the kernels (every ``NPRESNET_*`` variable is read there, once).

Installed as ``npresnet.kernels`` this is the package's own settings module, a leaf that imports
the standard library only. When a checkout's ``kernels/`` folder is imported as a package of its
own (the tests do, to show it needs nothing else of npresnet) there is no parent package, and the
same file is loaded by its path, under a name outside ``npresnet``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys
from types import ModuleType


def _load() -> ModuleType:
    parent = (__package__ or "").rpartition(".")[0]  # "npresnet", or "" for `import kernels`
    if parent:
        return importlib.import_module(f"{parent}.settings")
    name = f"{__package__}._npresnet_settings"
    if name not in sys.modules:
        path = pathlib.Path(__file__).resolve().parent.parent / "npresnet" / "settings.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None, path
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


settings = _load()
