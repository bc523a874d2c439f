"""``Sequential`` and ``Identity``.

Sequential: y = m_k(...m_1(m_0(x))); shapes are whatever the children map. Backward is the chain
rule applied right to left: dx = m_0.backward(m_1.backward(... m_k.backward(g))).

Identity: y = x, any shape; dx = g (the Jacobian is the identity). It is the shortcut of a
residual block whose shape does not change: the (+) hands g to it unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .module import Module


class Sequential(Module):
    """Children run in order; backward runs them in reverse::

        forward:  x -> m0 -> m1 -> ... -> y
        backward: dx <- m0.backward <- m1.backward <- ... <- dy

    Children are named "0", "1", ... (or by the keys of an OrderedDict), as in PyTorch.
    """

    def __init__(self, *modules: Module | OrderedDict) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, module in modules[0].items():
                setattr(self, name, module)
        else:
            for index, module in enumerate(modules):
                if not isinstance(module, Module):
                    raise TypeError(f"Sequential takes Modules, got {type(module).__name__} at position {index}")
                setattr(self, str(index), module)

    def forward(self, x: Any) -> Any:
        for module in self._modules.values():
            x = module(x)
        return x

    def backward(self, dout: Any) -> Any:
        for module in reversed(list(self._modules.values())):
            dout = module.backward(dout)
        return dout

    def append(self, module: Module) -> Sequential:
        setattr(self, str(len(self)), module)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index: int | slice) -> Any:
        modules = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(*modules[index])
        return modules[index]


class Identity(Module):
    """Returns its input; its gradient passes straight through."""

    def forward(self, x: Any) -> Any:
        return x

    def backward(self, dout: Any) -> Any:
        return dout
