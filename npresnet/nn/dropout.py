"""``Dropout``: inverted dropout, seeded, the identity in evaluation mode.

Shapes: any; y has the shape of x. Training: keep each element with probability 1 - p and scale
the kept ones by 1 / (1 - p), so E[y] = x::

    mask = (u >= p) / (1 - p),   y = x * mask

Backward: dx = g * mask (the same mask; in evaluation mode, dx = g).

Random state: one generator per backend, created from ``seed`` on first use. ``rng_state()``
returns the NumPy generator's state (a plain dict, JSON-able) and ``load_rng_state()`` puts it
back, so a checkpoint resumes the exact mask sequence. CuPy's generators cannot export their
state; a checkpoint of a CuPy run restarts them from ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import functional as F
from ..backend import backend_name, get_array_module
from .module import Module


class Dropout(Module):
    """Like ``torch.nn.Dropout(p)``. ``seed`` makes the masks reproducible."""

    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p, self.seed = p, seed
        self._rngs: dict[str, Any] = {}

    def _rng(self, x: Any) -> Any:
        """One generator per backend, created on first use from ``seed``."""
        name = backend_name(x)
        if name not in self._rngs:
            self._rngs[name] = get_array_module(x).random.default_rng(self.seed)
        return self._rngs[name]

    def rng_state(self) -> dict[str, dict[str, Any]]:
        """``{"numpy": bit-generator state}`` if the NumPy generator exists yet, else ``{}``.

        The state is NumPy's ``bit_generator.state`` dict (e.g. ``{"bit_generator": "PCG64",
        "state": {...}, ...}``); it is a copy, safe to keep or to write out as JSON.
        """
        generator = self._rngs.get("numpy")
        if not isinstance(generator, np.random.Generator):
            return {}
        return {"numpy": dict(generator.bit_generator.state)}

    def load_rng_state(self, state: dict[str, dict[str, Any]]) -> None:
        """Restore what ``rng_state()`` returned: later masks are the ones the saved generator would draw.

        ``{}`` drops the NumPy generator, so the next training forward starts again from ``seed``.
        Everything is validated before anything changes; a bad state is a ``ValueError`` or
        ``TypeError`` naming what was expected.
        """
        if not isinstance(state, dict):
            raise TypeError(
                f"Dropout.load_rng_state expects a dict like {{'numpy': {{...}}}}, got {type(state).__name__}"
            )
        unknown = [key for key in state if key != "numpy"]
        if unknown:
            raise ValueError(
                f"Dropout.load_rng_state: unexpected key(s) {unknown}; expected only 'numpy' "
                "(CuPy generators have no state to load)"
            )
        generator = None
        if "numpy" in state:
            saved = state["numpy"]
            name = saved.get("bit_generator") if isinstance(saved, dict) else None
            bit_generator_class = getattr(np.random, name, None) if isinstance(name, str) else None
            if not (isinstance(bit_generator_class, type) and issubclass(bit_generator_class, np.random.BitGenerator)):
                raise ValueError(
                    "Dropout.load_rng_state: expected a NumPy bit-generator state, a dict with "
                    f"'bit_generator' naming one (e.g. 'PCG64'), got {saved!r:.120}"
                )
            bit_generator = bit_generator_class()
            try:
                bit_generator.state = saved
            except (TypeError, ValueError, KeyError) as exc:
                raise ValueError(f"Dropout.load_rng_state: invalid {name} state: {exc}") from exc
            generator = np.random.Generator(bit_generator)
        if generator is None:
            self._rngs.pop("numpy", None)
        else:
            self._rngs["numpy"] = generator

    def _save_transient_state(self) -> Callable[[], None]:
        """Also restore the generators: the NumPy one's state, and drop any created meanwhile (a CuPy
        generator that existed on entry cannot be rewound: CuPy does not export its state)."""
        restore_base = super()._save_transient_state()
        generators = dict(self._rngs)
        states = {name: g.bit_generator.state for name, g in generators.items() if isinstance(g, np.random.Generator)}

        def restore() -> None:
            restore_base()
            self._rngs.clear()
            self._rngs.update(generators)
            for name, state in states.items():
                generators[name].bit_generator.state = state

        return restore

    def forward(self, x: Any) -> Any:
        y, mask = F.dropout_forward(x, self.p, self.training, self._rng(x) if self.training else None)
        self._save_for_backward((mask,))
        return y

    def backward(self, dout: Any) -> Any:
        (mask,) = self._pop_cache()
        return F.dropout_backward(dout, mask)

    def extra_repr(self) -> str:
        return f"p={self.p}"
