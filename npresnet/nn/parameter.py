"""A trainable array and its gradient.

``data`` has any shape; ``grad`` has the same shape. Backward passes *accumulate*
(``grad += dL/dw``), because a parameter used in several places (a fork) receives the sum of
the gradients from each use; ``zero_grad()`` resets ``grad`` to None between steps.
"""

from __future__ import annotations

from typing import Any


class Parameter:
    """A trainable array ``data`` and its gradient ``grad``.

    ``grad`` is ``None`` until a backward pass accumulates into it (``+=``, as PyTorch does);
    ``Module.zero_grad()`` resets it to ``None``. With ``requires_grad = False`` the parameter is
    frozen: backward neither computes nor accumulates its gradient.
    """

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        self.data = data
        self.grad: Any | None = None
        self.requires_grad = requires_grad

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    @property
    def size(self) -> int:
        return int(self.data.size)

    def accumulate_grad(self, grad: Any) -> None:
        """``grad += new`` (the first contribution is stored as is); a frozen parameter ignores it."""
        if not self.requires_grad or grad is None:
            return
        if self.grad is None:
            self.grad = grad.copy()
        else:
            self.grad += grad

    def __repr__(self) -> str:
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self.shape}, dtype={self.dtype}{frozen})"
