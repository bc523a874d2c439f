"""``Module``: the stateful shell around the functional ops, shaped like ``torch.nn.Module``.

A module owns parameters (``Parameter``: ``.data`` and ``.grad``), buffers (plain arrays such as
BatchNorm's running statistics) and child modules, each registered simply by assigning it to an
attribute. Names are kept in insertion order, so ``named_parameters()`` and ``state_dict()`` are
deterministic and their dotted keys (``layer1.0.conv1.weight``) are PyTorch's.

There is no autograd. Each layer implements::

    y  = layer(x)            # forward: computes y and keeps a cache for backward
    dx = layer.backward(dy)  # consumes the cache, accumulates param.grad += ..., returns dL/dx

A container's backward simply calls its children's backward in reverse order.

Hooks (``register_forward_hook`` and the rest: watch or change what flows through any module)
work as PyTorch's, minus autograd; their mechanism is in ``hooks.py``. The state_dict (PyTorch's
dotted keys) and its checked, all-or-nothing loading are in ``state_dict.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from ..backend import BACKENDS, get_default, to_backend, xp_for
from ..grad_mode import is_grad_enabled
from ..state_checks import StateError
from .hooks import HookHandle, as_tuple, hooked_backward
from .parameter import Parameter
from .state_dict import CheckedStateDict, IncompatibleKeys, check_state_dict_of, state_entries

# `model.to(...)`, `.train()`, `.eval()` and `.requires_grad_()` return the module itself, typed as its own class.
ModuleT = TypeVar("ModuleT", bound="Module")


class Module:
    """Base class of every layer, block and model."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("backward")
        if inspect.isfunction(own) and not getattr(own, "_npresnet_hooked", False):
            cls.backward = hooked_backward(own)  # type: ignore[method-assign]  # on purpose: see the docstring

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_cache", None)
        object.__setattr__(self, "_forward_hooks", {})
        object.__setattr__(self, "_forward_pre_hooks", {})
        object.__setattr__(self, "_backward_hooks", {})
        object.__setattr__(self, "_backward_pre_hooks", {})
        object.__setattr__(self, "_in_backward", False)

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"call Module.__init__() in {type(self).__name__}.__init__ before assigning {name}")
        if isinstance(value, (Parameter, Module)):
            self._unregister(name)
            registry = self._parameters if isinstance(value, Parameter) else self._modules
            registry[name] = value
        elif name in self._parameters:  # e.g. self.bias = None
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to parameter {name!r}; wrap it in Parameter")
            self._parameters[name] = None
        elif name in self._buffers:
            self._buffers[name] = value
        else:
            self._unregister(name)
            object.__setattr__(self, name, value)

    def _unregister(self, name: str) -> None:
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        self.__dict__.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        for registry in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(registry)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value: Any) -> None:
        """A non-trainable array that belongs in the state_dict (e.g. ``running_mean``)."""
        self.__dict__.pop(name, None)
        self._buffers[name] = value

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        self.__dict__.pop(name, None)
        self._parameters[name] = param

    # ------------------------------------------------------------------ forward / backward
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for hook in list(self.__dict__.get("_forward_pre_hooks", {}).values()):
            replaced = hook(self, args)
            if replaced is not None:
                args = as_tuple(replaced)
        out = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            replaced = hook(self, args, out)
            if replaced is not None:
                out = replaced
        return out

    def register_forward_hook(self, hook: Callable[[Module, tuple, Any], Any]) -> HookHandle:
        """Call ``hook(module, inputs, output)`` after every forward; a non-None result replaces the
        output. Returns a handle whose ``remove()`` unregisters the hook."""
        return HookHandle.add(self._forward_hooks, hook)

    def register_forward_pre_hook(self, hook: Callable[[Module, tuple], Any]) -> HookHandle:
        """Call ``hook(module, inputs)`` before every forward; a non-None result (a tuple, or a single
        input) replaces the positional inputs. Returns a removable handle."""
        return HookHandle.add(self.__dict__.setdefault("_forward_pre_hooks", {}), hook)

    def register_backward_pre_hook(self, hook: Callable[[Module, tuple], Any]) -> HookHandle:
        """Call ``hook(module, grad_output)`` before every backward, with ``grad_output = (dL/dy,)``
        the gradient arriving at the module's output. A non-None result (a tuple) replaces it.
        PyTorch: ``register_full_backward_pre_hook``. Returns a removable handle."""
        return HookHandle.add(self.__dict__.setdefault("_backward_pre_hooks", {}), hook)

    def register_backward_hook(self, hook: Callable[[Module, tuple, tuple], Any]) -> HookHandle:
        """Call ``hook(module, grad_input, grad_output)`` after every backward.

        ``grad_output = (dL/dy,)`` is what backward received, ``grad_input = (dL/dx,)`` what it
        returned (a tuple of several for a module with several inputs). Parameter gradients are
        already accumulated into ``param.grad`` when the hook runs. A non-None result (a tuple of
        the same length) replaces ``grad_input``, i.e. what the caller receives. For a container
        or a block the hook fires after all of its children's hooks, since their backward runs
        inside its own. PyTorch: ``register_full_backward_hook``. Returns a removable handle.
        """
        return HookHandle.add(self.__dict__.setdefault("_backward_hooks", {}), hook)

    register_full_backward_hook = register_backward_hook
    register_full_backward_pre_hook = register_backward_pre_hook

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def backward(self, dout: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement backward()")

    def _save_for_backward(self, cache: Any) -> None:
        """Keep ``cache`` for the next backward, unless gradients are off (``no_grad``)."""
        object.__setattr__(self, "_cache", cache if is_grad_enabled() else None)

    def _pop_cache(self) -> Any:
        """Hand the cache to backward exactly once; a missing cache is a clear error."""
        cache = self._cache
        if cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() called without a matching forward(): run forward first "
                "(outside no_grad()), and call backward once per forward"
            )
        object.__setattr__(self, "_cache", None)
        return cache

    @property
    def saved_for_backward(self) -> Any:
        """What the last forward kept for the next backward (None if nothing is held). Read-only: for
        tools that account for it, such as ``npresnet.summary``'s activation memory."""
        return self._cache

    # ------------------------------------------------------------------ transient state
    def _save_transient_state(self) -> Callable[[], None]:
        """Snapshot what a forward pass changes in this module alone; the returned function undoes it.

        The base class covers the ``training`` flag, the forward cache and the buffers (their
        values, and the array objects themselves, so references held elsewhere stay valid).
        A module with more such state (``Dropout``'s random generators) extends this.
        """
        training, cache = self.training, self._cache
        buffers = [(name, buf, buf.copy()) for name, buf in self._buffers.items() if buf is not None]

        def restore() -> None:
            object.__setattr__(self, "training", training)
            object.__setattr__(self, "_cache", cache)
            for name, original, saved in buffers:
                original[...] = saved
                self._buffers[name] = original

        return restore

    @contextmanager
    def preserved_state(self) -> Iterator[Module]:
        """Run a block of code and put this module tree back exactly as it was on exit (even on an error).

        Restored for every module below and including this one: the ``training`` flag, the cache
        kept for backward, every buffer (e.g. BatchNorm's running statistics and
        ``num_batches_tracked``) and every NumPy random generator state (``Dropout``; a CuPy generator
        cannot export its state, so only one created inside the block is undone). Parameters and
        their gradients are not touched: they are what an optimizer changes on purpose. Use it to
        probe a model (a summary pass, a numerical gradient check) without disturbing training::

            with model.preserved_state():
                model(x)            # updates running statistics, advances dropout's generator
            # ... all undone here
        """
        restores = [module._save_transient_state() for module in self.modules()]
        try:
            yield self
        finally:
            for restore in restores:
                restore()

    # ------------------------------------------------------------------ traversal
    def replace_child(self, name: str, module: Module) -> Module:
        """Put ``module`` in place of the direct child ``name`` and return the child it replaces.

        The new child keeps the old one's position, so ``named_children()`` and the ``state_dict``
        keys keep their order (plain assignment would too; this method also checks that ``name``
        is a child and that ``module`` is a Module, e.g. when swapping layers by name).
        """
        if not isinstance(module, Module):
            raise TypeError(f"replace_child({name!r}, ...) expects a Module, got {type(module).__name__}")
        if name not in self._modules:
            children = ", ".join(self._modules) or "none"
            raise AttributeError(f"{type(self).__name__} has no child module {name!r}; its children are: {children}")
        old = self._modules[name]
        self._modules[name] = module
        return old

    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        for _, module in self.named_children():
            yield module

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and all below it, depth first, in registration order."""
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        seen: set[int] = set()
        owners = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for owner, module in owners:
            for name, param in module._parameters.items():
                if param is not None and id(param) not in seen:
                    seen.add(id(param))
                    yield (f"{owner}.{name}" if owner else name), param

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Any]]:
        owners = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for owner, module in owners:
            for name, buf in module._buffers.items():
                if buf is not None:
                    yield (f"{owner}.{name}" if owner else name), buf

    def buffers(self, recurse: bool = True) -> Iterator[Any]:
        for _, buf in self.named_buffers(recurse=recurse):
            yield buf

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Total number of parameter elements (``requires_grad`` ones only, if asked)."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------------ modes and gradients
    def train(self: ModuleT, mode: bool = True) -> ModuleT:
        """Set the ``training`` flag of this module and every descendant (no global mode)."""
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self: ModuleT) -> ModuleT:
        return self.train(False)

    def zero_grad(self) -> None:
        """Reset every parameter's gradient to ``None`` (PyTorch's ``set_to_none=True``)."""
        for param in self.parameters():
            param.grad = None

    def requires_grad_(self: ModuleT, requires_grad: bool = True) -> ModuleT:
        """Freeze (False) or unfreeze (True) every parameter of this module."""
        for param in self.parameters():
            param.requires_grad = requires_grad
        return self

    # ------------------------------------------------------------------ backend and dtype
    def to(self: ModuleT, target: Any) -> ModuleT:
        """Move to a backend (``"numpy"``/``"cupy"``) or cast to a floating dtype (``np.float64``).

        Parameters, their gradients and floating-point buffers are converted; integer buffers such
        as ``num_batches_tracked`` keep their dtype. Cached activations are dropped.
        """
        if isinstance(target, str) and target.lower() in BACKENDS:
            backend = target.lower()
            xp_for(backend)  # a clear error now if CuPy has no usable device, parameters or not

            def convert(a: Any) -> Any:
                return to_backend(a, backend)
        else:
            try:
                dtype = np.dtype(target)
            except TypeError as exc:
                message = f"Module.to() expects a backend {BACKENDS} or a floating dtype, got {target!r}"
                raise TypeError(message) from exc
            if dtype.kind != "f":
                raise TypeError(f"Module.to() can only cast to a floating dtype, got {dtype}")

            def convert(a: Any) -> Any:
                return a.astype(dtype) if a.dtype.kind == "f" and a.dtype != dtype else a

        for module in self.modules():
            for param in module._parameters.values():
                if param is not None:
                    param.data = convert(param.data)
                    if param.grad is not None:
                        param.grad = convert(param.grad)
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = convert(buf)
            object.__setattr__(module, "_cache", None)
        return self

    # ------------------------------------------------------------------ state_dict
    def state_dict(self) -> dict[str, Any]:
        """``{dotted name: array}`` for every parameter and buffer (references, not copies)."""
        return {
            key: (module._parameters[name].data if is_param else module._buffers[name])
            for key, module, name, is_param in state_entries(self)
        }

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy arrays (NumPy, CuPy or torch tensors) into this module's parameters and buffers.

        Values are converted to each parameter's backend and dtype. A missing or unexpected
        ``num_batches_tracked`` is tolerated (old checkpoints lack it). With ``strict`` any other
        missing or unexpected key is an error; a wrongly shaped value always is, and so is a value
        of the wrong kind (strings, complex or integer numbers for float weights) or a parameter
        holding NaN or infinity (buffers such as running_var may hold anything, as in torch). All
        problems are listed at once, in a ``StateError`` (a ``RuntimeError``), and nothing is changed.
        """
        checked = self.check_state_dict(state_dict, strict)
        if checked.problems:
            problems = checked.problems
            raise StateError(f"error(s) loading state_dict into {type(self).__name__}:\n  " + "\n  ".join(problems))
        checked.apply()
        return checked.keys

    def check_state_dict(self, state_dict: Any, strict: bool = True) -> CheckedStateDict:
        """Check ``state_dict`` against this module without changing anything (the first half of
        ``load_state_dict``): every problem, the missing and unexpected keys, and the converted
        arrays, which ``.apply()`` installs."""
        return check_state_dict_of(self, state_dict, strict)

    # ------------------------------------------------------------------ printing
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): " + repr(child).replace("\n", "\n  ") for name, child in self._modules.items()]
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        body = "\n  ".join(([extra] if extra else []) + lines)
        return f"{type(self).__name__}(\n  {body}\n)"


def new_parameter(array: np.ndarray, dtype: Any = np.float32) -> Parameter:
    """A Parameter from a freshly initialised NumPy array, on the default backend."""
    return Parameter(to_backend(np.asarray(array, dtype=dtype), get_default()))


def new_buffer(array: np.ndarray) -> Any:
    """A buffer array on the default backend."""
    return to_backend(np.asarray(array), get_default())
