"""Not part of the npresnet package: this file makes the checkout's own folder hand ``import npresnet`` over.

Python runs it only when it imports this folder itself as ``npresnet``: a command run in the folder
that holds a clone named ``npresnet/`` finds the clone first (the current folder heads sys.path). As
a bare namespace, the clone used to shadow the installed package: ``python -m npresnet.bench``
found the repository's bench/ scripts folder and failed, other commands ran without
``npresnet/__init__.py``. Here the import goes to the npresnet installed in this environment (a
wheel's, or an editable install's, which maps this checkout's npresnet/ and kernels/); without one,
it fails with one line that says what to do.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _installed_spec() -> "importlib.machinery.ModuleSpec | None":
    """The installed npresnet's spec: found on sys.path without the folder that holds this checkout
    (a wheel), else by another finder of sys.meta_path (an editable install's)."""
    holder = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    elsewhere = [p for p in sys.path if os.path.abspath(p or os.curdir) != holder]
    spec = importlib.machinery.PathFinder.find_spec(__name__, elsewhere)
    if spec is not None and spec.loader is not None:  # a regular package, not another bare namespace
        return spec
    for finder in sys.meta_path:
        if finder is importlib.machinery.PathFinder or not hasattr(finder, "find_spec"):
            continue
        spec = finder.find_spec(__name__, None)
        if spec is not None and spec.loader is not None:
            return spec
    return None


if __name__ == "npresnet":
    _spec = _installed_spec()
    if _spec is None or _spec.loader is None:
        raise ImportError(
            f"{os.path.dirname(os.path.abspath(__file__))} is the npresnet checkout, not the package, and no npresnet "
            "is installed: run `pip install -e .` inside it (or run commands from another folder)"
        )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _module  # the import statement returns what sys.modules holds after this file
    _spec.loader.exec_module(_module)
