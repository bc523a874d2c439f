"""Whether modules keep what their backward pass needs.

By default every module's forward stores a cache for its backward. Inside ``no_grad()`` (for
inference and benchmarks) nothing is kept, so activations are freed as soon as the next layer has
used them. This is a *grad* mode, not a train/eval mode: ``model.eval()`` still lets you call
``backward`` (e.g. to check gradients of a frozen-statistics network).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

_state = threading.local()
F = TypeVar("F", bound=Callable[..., Any])


def is_grad_enabled() -> bool:
    """True unless running inside :class:`no_grad`."""
    return getattr(_state, "enabled", True)


class no_grad:
    """Context manager (and decorator) that stops modules from caching for backward."""

    def __enter__(self) -> None:
        self._previous = is_grad_enabled()
        _state.enabled = False

    def __exit__(self, *exc: object) -> None:
        _state.enabled = self._previous

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with no_grad():
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
