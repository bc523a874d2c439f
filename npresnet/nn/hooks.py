"""Hooks on a ``Module`` (PyTorch's, minus autograd): watch or change what flows through any module.

::

    register_forward_pre_hook(fn)   fn(module, inputs)                       before forward
    register_forward_hook(fn)       fn(module, inputs, output)               after forward
    register_backward_pre_hook(fn)  fn(module, grad_output)                  before backward
    register_backward_hook(fn)      fn(module, grad_input, grad_output)      after backward

``grad_output`` is the tuple of arguments backward received (``(dL/dy,)``) and ``grad_input``
the tuple of what it returned (``(dL/dx,)``). A hook that returns something other than None
replaces that value (inputs, output, grad_output or grad_input). Each ``register_*`` returns a
``HookHandle``; ``handle.remove()`` unregisters the hook.

The forward hooks run in ``Module.__call__``. How backward hooks reach every module without
changing any layer: ``Module.__init_subclass__`` wraps the ``backward`` that each subclass defines
in ``hooked_backward``. Containers and blocks call ``child.backward(d)`` directly, so the call goes
through the wrapper whoever makes it. A subclass whose ``backward`` calls ``super().backward(...)``
still fires its hooks once: only the outermost call on a module runs them. With no backward hooks
registered the wrapper is a dictionary lookup and a direct call.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .module import Module


class HookHandle:
    """Returned by ``register_*_hook``; ``handle.remove()`` unregisters the hook."""

    _next_id = 0

    def __init__(self, hooks: dict[int, Callable], key: int) -> None:
        self._hooks, self._key = hooks, key

    @classmethod
    def add(cls, hooks: dict[int, Callable], hook: Callable) -> HookHandle:
        cls._next_id += 1
        hooks[cls._next_id] = hook
        return cls(hooks, cls._next_id)

    def remove(self) -> None:
        self._hooks.pop(self._key, None)


def as_tuple(value: Any) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def hooked_backward(backward: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a subclass's ``backward`` so that the module's backward (pre-)hooks fire around it.

    The arguments of the call (bound to ``backward``'s signature, defaults filled in, e.g.
    ``CrossEntropyLoss.backward()`` gets ``(1.0,)``) are ``grad_output``; the result, as a tuple,
    is ``grad_input``. A backward that returns a single array returns a single array again after
    a hook replaced ``grad_input``.
    """
    signature = inspect.signature(backward)

    @functools.wraps(backward)
    def wrapper(self: Module, *args: Any, **kwargs: Any) -> Any:
        state = self.__dict__
        pre_hooks: dict[int, Callable] = state.get("_backward_pre_hooks") or {}
        hooks: dict[int, Callable] = state.get("_backward_hooks") or {}
        if not (pre_hooks or hooks) or state.get("_in_backward"):
            return backward(self, *args, **kwargs)  # no hooks, or a super().backward() inside the hooked call
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        grad_output = tuple(bound.arguments.values())[1:]
        for hook in list(pre_hooks.values()):
            replaced = hook(self, grad_output)
            if replaced is not None:
                grad_output = as_tuple(replaced)
        object.__setattr__(self, "_in_backward", True)
        try:
            result = backward(self, *grad_output)
        finally:
            object.__setattr__(self, "_in_backward", False)
        grad_input = as_tuple(result)
        for hook in list(hooks.values()):
            replaced = hook(self, grad_input, grad_output)
            if replaced is not None:
                replaced = as_tuple(replaced)
                if len(replaced) != len(grad_input):
                    raise ValueError(
                        f"a backward hook of {type(self).__name__} returned {len(replaced)} "
                        f"gradient(s), expected {len(grad_input)} (one per entry of grad_input)"
                    )
                grad_input = replaced
        return grad_input if isinstance(result, tuple) else grad_input[0]

    wrapper._npresnet_hooked = True  # type: ignore[attr-defined]
    return wrapper
