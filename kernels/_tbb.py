"""Load the ``tbb`` distribution's library so that Numba's TBB threading layer can use it.

pip's ``tbb`` wheel puts ``libtbb.so.12`` in ``<environment>/lib`` (its recorded files read
``../../libtbb.so.12`` from site-packages), a folder the dynamic loader does not search, and Numba's
``tbbpool`` extension carries no run path to it. In a virtual environment Numba then cannot load its
TBB layer and takes workqueue without a word, although tbb is installed. ``load()`` finds the library
through the distribution's own file list and loads it by its full path with ``RTLD_GLOBAL`` before
Numba picks its layer: when ``tbbpool`` is loaded later, its dependency on ``libtbb.so.12`` is met by
the library already in the process. No environment variable, no system package.

``reason()`` gives, in one line, why TBB is not in use where it is not (``None`` when it is loaded);
it advises installing tbb only when the tbb distribution is not installed.
Standard library only: this runs before Numba is configured.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import os
import sys

#: The file name of TBB's runtime library (oneTBB 2021 and later, interface 12) on this platform.
LIBRARY = {"win32": "tbb12.dll", "darwin": "libtbb.12.dylib"}.get(sys.platform, "libtbb.so.12")

_state: dict[str, str | None] = {}  # "path": the library loaded, or "reason": why none was


def _find() -> tuple[str | None, str | None]:
    """(full path of the tbb distribution's library, None) or (None, why it was not found)."""
    try:
        dist = importlib.metadata.distribution("tbb")
    except importlib.metadata.PackageNotFoundError:
        return None, "the tbb package is not installed (pip install tbb, or npresnet[tbb])"
    listed = [f for f in dist.files or () if f.name == LIBRARY]
    if not listed:
        return None, f"the tbb {dist.version} package lists no {LIBRARY} among its installed files"
    path = os.path.realpath(str(dist.locate_file(listed[0])))
    if not os.path.isfile(path):
        return None, f"tbb {dist.version}'s {LIBRARY} is listed but missing: {path}"
    return path, None


def load() -> str | None:
    """Load the tbb distribution's library into the process once; the path loaded, or None (see ``reason``)."""
    if not _state:
        path, why = _find()
        if path is not None:
            try:
                ctypes.CDLL(path, mode=getattr(os, "RTLD_GLOBAL", 0) | getattr(os, "RTLD_NOW", 0))
            except OSError as error:
                path, why = None, f"{path} could not be loaded: {error}"
        _state.update(path=path, reason=why)
    return _state["path"]


def reason(layer: str | None = None) -> str | None:
    """Why Numba's pool does not run on TBB, in one line; None when it does (``layer == "tbb"``) or,
    without a layer, when the library was loaded. ``layer``: ``numba.threading_layer()`` once the pool runs."""
    if layer == "tbb":
        return None
    chosen = os.environ.get("NUMBA_THREADING_LAYER", "").strip().lower()
    if chosen and chosen not in ("default", "safe", "threadsafe", "tbb"):
        return f"NUMBA_THREADING_LAYER={chosen} chose it"
    load()
    if _state["path"] is None:
        return _state["reason"]
    if layer is None:
        return None
    try:  # the library is loaded: Numba's own checks of it (its version, its tbbpool extension) refused it
        from numba.np.ufunc import parallel

        getattr(parallel, "_check_tbb_version_compatible", lambda: None)()
        importlib.import_module("numba.np.ufunc.tbbpool")  # the extension Numba loads for its TBB layer
    except ImportError as error:
        return f"Numba's TBB layer did not load with {_state['path']}: {error}"
    return f"Numba chose {layer} over TBB (TBB {_state['path']} loaded; see NUMBA_THREADING_LAYER_PRIORITY)"
