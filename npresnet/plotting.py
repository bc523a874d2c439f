"""The one door to matplotlib: an optional dependency, imported only when a figure is drawn.

Everything that draws (``inspect.plot_gradient_flow``, the degradation experiment, the training
curves) calls ``pyplot()`` and gets ``matplotlib.pyplot``. Without matplotlib the error is one
clear line saying how to install it; the rest of npresnet never needs it. Without a display
(``MPLBACKEND`` unset) the file-only "Agg" backend is chosen, so figures work on a server.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["pyplot"]


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
