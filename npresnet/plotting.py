"""The one door to matplotlib: an optional dependency, imported only when a figure is drawn.

Everything that draws (``inspect.plot_gradient_flow``, the degradation experiment, the training
curves) calls ``pyplot()`` and gets ``matplotlib.pyplot``, and saves through ``save_figure``, which
writes the file atomically (``npresnet.atomic_write``). Without matplotlib the error is one
clear line saying how to install it; the rest of npresnet never needs it. Without a display
(``MPLBACKEND`` unset) the file-only "Agg" backend is chosen, so figures work on a server.
"""

from __future__ import annotations

import os
from typing import Any

from .atomic_write import atomic_write

__all__ = ["pyplot", "save_figure"]


def pyplot(purpose: str = "drawing figures") -> Any:
    """``matplotlib.pyplot``, or an ``ImportError`` saying ``purpose`` needs ``pip install 'npresnet[plot]'``."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(f"{purpose} needs matplotlib: pip install 'npresnet[plot]'") from exc
    if os.environ.get("MPLBACKEND") is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: str | os.PathLike, dpi: int) -> None:
    """Write ``figure`` to ``path`` atomically, in the format its extension names (PNG without one), and close it."""
    image_format = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    try:
        with atomic_write(path) as f:
            figure.savefig(f, format=image_format, dpi=dpi)
    finally:
        pyplot().close(figure)
