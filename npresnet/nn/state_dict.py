"""A ``Module``'s state_dict: the ``{dotted name: array}`` of its parameters and buffers, and loading
one back in two halves: check everything (``check_state_dict``), then install it all at once
(``CheckedStateDict.apply``), so a bad checkpoint changes nothing.

The keys are PyTorch's (``layer1.0.conv1.weight``, ``bn1.running_mean``): parameters then buffers,
module by module, depth first in registration order. ``Module.state_dict`` / ``load_state_dict`` /
``check_state_dict`` are the methods; this module holds their mechanism.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..backend import backend_name, to_backend
from ..state_checks import StateError, convert_array

if TYPE_CHECKING:
    from .module import Module


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


class CheckedStateDict(NamedTuple):
    """What ``Module.check_state_dict`` found; ``apply()`` installs it (all or nothing).

    ``problems`` is empty when the state_dict fits; ``keys`` are the missing and unexpected keys;
    ``updates`` are (module, name, is_param, converted array). Loaders that check several things
    (a model, its optimizer, a schedule) check them all first, then apply each.
    """

    problems: list[str]
    keys: IncompatibleKeys
    updates: list[tuple[Module, str, bool, Any]]

    def apply(self) -> None:
        """Install the checked arrays (cannot fail half way: every value was converted already)."""
        if self.problems:
            raise StateError("a state_dict with problems cannot be applied: " + "; ".join(self.problems))
        for module, name, is_param, array in self.updates:
            if is_param:
                module._parameters[name].data = array
            else:
                module._buffers[name] = array


def state_entries(module: Module) -> Iterator[tuple[str, Module, str, bool]]:
    """(dotted key, owning module, attribute name, is_parameter) in PyTorch's order."""
    for owner, owning in module.named_modules():
        base = f"{owner}." if owner else ""
        for name, param in owning._parameters.items():
            if param is not None:
                yield base + name, owning, name, True
        for name, buf in owning._buffers.items():
            if buf is not None:
                yield base + name, owning, name, False


def check_state_dict_of(target: Module, state_dict: Any, strict: bool = True) -> CheckedStateDict:
    """``Module.check_state_dict``: ``state_dict`` checked against ``target``, nothing changed."""
    if not hasattr(state_dict, "items") or not hasattr(state_dict, "keys"):
        return CheckedStateDict(
            [f"a state_dict must be a dict of arrays, got {type(state_dict).__name__}"],
            IncompatibleKeys([], []),
            [],
        )
    entries = {key: (module, name, is_param) for key, module, name, is_param in state_entries(target)}

    def tolerated(key: str) -> bool:
        return key.split(".")[-1] == "num_batches_tracked"

    missing = [k for k in entries if k not in state_dict and not tolerated(k)]
    unexpected = [k for k in state_dict if k not in entries and not tolerated(k)]
    mismatched, bad_values, updates = [], [], []
    for key, value in state_dict.items():
        if key not in entries:
            continue
        module, name, is_param = entries[key]
        current = module._parameters[name].data if is_param else module._buffers[name]
        shape = tuple(np.shape(value))
        if shape != tuple(current.shape):
            mismatched.append(f"{key}: expected {tuple(current.shape)}, got {shape}")
            continue
        array, problem = convert_array(key, value, current, finite=is_param)
        if problem is not None:
            bad_values.append(problem)
        else:
            updates.append((module, name, is_param, to_backend(array, backend_name(current))))
    problems = []
    if missing and strict:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected and strict:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if mismatched:
        problems.append("wrong shapes: " + "; ".join(mismatched))
    if bad_values:
        problems.append("bad values: " + "; ".join(bad_values))
    return CheckedStateDict(problems, IncompatibleKeys(missing, unexpected), updates)
