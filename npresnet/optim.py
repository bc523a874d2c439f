"""Optimizers with PyTorch's exact update rules: ``SGD``, ``Adam``, ``AdamW``.

Usage is PyTorch's::

    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for x, y in loader:
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        model.backward(criterion.backward())     # fills every Parameter.grad
        optimizer.step()

Parameter groups (a list of dicts, each overriding the defaults for its parameters), e.g. no
weight decay on BatchNorm weights and biases::

    optimizer = SGD(weight_decay_groups(model, 1e-4), lr=0.1, momentum=0.9)

For a parameter p with gradient g, one ``step()`` does, in this order:

SGD (``torch.optim.SGD``)::

    g = g + weight_decay * p                       (L2 penalty folded into the gradient)
    b = g                        on the first step
    b = momentum * b + (1 - dampening) * g         afterwards (the "momentum buffer")
    g = g + momentum * b  if nesterov else  b
    p = p - lr * g

Adam (``torch.optim.Adam``), t = 1, 2, ... counts the steps of this parameter::

    g = g + weight_decay * p                       (Adam: L2 penalty in the gradient)
    p = p * (1 - lr * weight_decay)                (AdamW instead: decoupled decay, g unchanged)
    m = m + (1 - beta1) * (g - m)                  (torch's lerp; m, v start at 0)
    v = beta2 * v + (1 - beta2) * g * g
    v_max = max(v_max, v)                          (amsgrad only; then v_max replaces v below)
    denom = sqrt(v) / sqrt(1 - beta2**t) + eps     (eps is added *after* the bias correction)
    p = p - lr / (1 - beta1**t) * m / denom

Every operation runs on the parameter's own backend and dtype (``xp = get_array_module(p)``).
Parameters whose ``grad`` is None or whose ``requires_grad`` is False are skipped, as in torch.

``state_dict()`` has torch's layout, ``{"state": {index: {...}}, "param_groups": [{..., "params":
[index, ...]}]}``, with parameters numbered in group order, so ``load_state_dict`` also accepts a
state_dict from the equivalent ``torch.optim`` optimizer (tensors are converted).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from .backend import backend_name, get_array_module, to_backend, to_numpy
from .nn.module import Module
from .nn.parameter import Parameter
from .state_checks import StateError, convert_array, setting_problem

__all__ = ["SGD", "Adam", "AdamW", "CheckedOptimizerState", "Optimizer", "weight_decay_groups"]


class CheckedOptimizerState(NamedTuple):
    """What ``Optimizer.check_state_dict`` accepted: each group's new hyperparameters and the new
    per-parameter state, converted; ``apply()`` installs them (it cannot fail half way)."""

    optimizer: Optimizer
    groups: list[dict[str, Any]]
    state: dict[Parameter, dict[str, Any]]

    def apply(self) -> None:
        for group, checked in zip(self.optimizer.param_groups, self.groups):
            group.update(checked)
        self.optimizer.state = self.state


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad`` and ``state_dict``.

    Args:
        params: an iterable of ``Parameter`` or of dicts ``{"params": [...], **hyperparameters}``.
        defaults: every hyperparameter with its default; a group may override any of them.
    """

    def __init__(self, params: Iterable[Parameter] | Iterable[dict[str, Any]], defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Parameter, dict[str, Any]] = {}
        if isinstance(params, (Parameter, dict)):
            raise TypeError(
                f"params must be an iterable of Parameters or of dicts, got a single "
                f"{type(params).__name__}; wrap it in a list"
            )
        groups: list[Any] = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group of parameters with its own hyperparameters (missing ones take the defaults)."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"a parameter group must be a dict with a 'params' entry, got {group!r}")
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer can only optimize npresnet Parameters, got {type(p).__name__}")
        unknown = set(group) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            raise ValueError(
                f"unknown hyperparameter(s) {sorted(unknown)} for {type(self).__name__}; known: {sorted(self.defaults)}"
            )
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params) or len({id(p) for p in params}) != len(params):
            raise ValueError("some parameters appear in more than one parameter group (or twice in one)")
        new_group = {**self.defaults, **group, "params": params}
        self._check_hyperparameters(new_group)
        self.param_groups.append(new_group)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        if not group["lr"] >= 0:
            raise ValueError(f"invalid learning rate {group['lr']}: must be >= 0")
        if not group.get("weight_decay", 0.0) >= 0:
            raise ValueError(f"invalid weight_decay {group['weight_decay']}: must be >= 0")

    @property
    def params(self) -> list[Parameter]:
        """Every parameter, in group order."""
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self) -> None:
        """Set every parameter's gradient to None (torch's default ``set_to_none=True``)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.requires_grad:
                    if tuple(p.grad.shape) != tuple(p.data.shape) or p.grad.dtype != p.data.dtype:
                        raise ValueError(
                            f"gradient of shape {tuple(p.grad.shape)} and dtype {p.grad.dtype} does "
                            f"not match its parameter's shape {p.shape} and dtype {p.dtype}"
                        )
                    self._update(p, group, self.state.setdefault(p, {}))

    def _update(self, p: Parameter, group: dict[str, Any], state: dict[str, Any]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ state_dict
    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {name: array or number}}, "param_groups": [{...hyper, "params": [index]}]}``.

        Arrays are references to the live state (as in torch); copy them to keep a snapshot.
        """
        index = {id(p): i for i, p in enumerate(self.params)}
        groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
            for g in self.param_groups
        ]
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if s and id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters and state (from ``state_dict()`` or torch's optimizer).

        Everything is checked before anything is changed: the number of groups and of parameters
        per group; every hyperparameter's type (a number, a bool, a pair for betas) and range; the
        dtype kind (float), shape and finiteness of every state array. A problem raises
        ``StateError`` (a ``ValueError``). Arrays are copied onto each parameter's backend and
        dtype (a counter such as Adam's ``step`` stays a number).
        """
        self.check_state_dict(state_dict).apply()

    def _hyper_kind(self, name: str) -> str:
        """The kind ``setting_problem`` checks a hyperparameter against, from its default's type."""
        default = self.defaults.get(name, 0.0)
        return "bool" if isinstance(default, bool) else "pair" if isinstance(default, tuple) else "number"

    def check_state_dict(self, state_dict: Any) -> CheckedOptimizerState:
        """Check ``state_dict`` without changing anything (the first half of ``load_state_dict``);
        raises ``StateError``. ``.apply()`` on the result installs it."""
        if (
            not isinstance(state_dict, dict)
            or not isinstance(state_dict.get("param_groups"), list)
            or not isinstance(state_dict.get("state"), dict)
        ):
            raise StateError(
                f"optimizer state_dict must be a dict with 'state' and 'param_groups', got {type(state_dict).__name__}"
            )
        groups, saved_groups = self.param_groups, state_dict["param_groups"]
        if len(groups) != len(saved_groups):
            raise StateError(
                f"optimizer state_dict has {len(saved_groups)} parameter group(s), this optimizer has {len(groups)}"
            )
        new_groups = []
        for i, (g, s) in enumerate(zip(groups, saved_groups)):
            if not isinstance(s, dict) or setting_problem("params", s.get("params"), "ints") is not None:
                raise StateError(
                    f"parameter group {i}: expected a dict with a list of parameter indices "
                    f"under 'params', got {s!r:.80}"
                )
            if len(g["params"]) != len(s["params"]):
                raise StateError(
                    f"parameter group {i}: state_dict has {len(s['params'])} parameters, "
                    f"this optimizer has {len(g['params'])}"
                )
            hyper = {k: v for k, v in s.items() if k in self.defaults or k == "initial_lr"}
            for name, value in hyper.items():
                problem = setting_problem(name, value, self._hyper_kind(name))
                if problem is not None:
                    raise StateError(f"parameter group {i}: {problem}")
            candidate = {**{k: v for k, v in g.items() if k != "params"}, **hyper}
            try:
                self._check_hyperparameters(candidate)  # also restores tuples that JSON made lists
            except (TypeError, ValueError) as exc:
                raise StateError(f"parameter group {i}: {exc}") from exc
            new_groups.append(candidate)
        by_index = {saved: p for g, s in zip(groups, saved_groups) for p, saved in zip(g["params"], s["params"])}
        new_state: dict[Parameter, dict[str, Any]] = {}
        for key, entries in state_dict["state"].items():
            try:
                p = by_index[int(key)]
            except (KeyError, TypeError, ValueError):
                raise StateError(
                    f"optimizer state_dict has state for parameter {key!r}, which no group lists"
                ) from None
            if not isinstance(entries, dict):
                raise StateError(f"optimizer state of parameter {key} must be a dict, got {type(entries).__name__}")
            new_state[p] = {name: self._checked_state_value(name, value, p, key) for name, value in entries.items()}
        return CheckedOptimizerState(self, new_groups, new_state)

    @staticmethod
    def _checked_state_value(name: str, value: Any, p: Parameter, key: Any) -> Any:
        """One state entry, converted: None, a step count (a number), or a finite float array like ``p``."""
        if value is None:
            return None
        if name == "step":
            count: Any = value
            if not isinstance(value, (int, float)):  # torch keeps step as a 0-d tensor
                step = np.asarray(to_numpy(value))
                count = step[()] if step.ndim == 0 and step.dtype.kind in "iuf" else None
            if count is None or setting_problem(name, count, "number") is not None or count < 0:
                raise StateError(f"optimizer state 'step' of parameter {key} must be a count >= 0, got {value!r:.60}")
            return float(count)
        array, problem = convert_array(f"optimizer state {name} of parameter {key}", value, p.data, finite=True)
        if problem is not None:
            raise StateError(problem)
        return to_backend(array, backend_name(p.data))

    def __repr__(self) -> str:
        lines = []
        for i, g in enumerate(self.param_groups):
            hyper = ", ".join(f"{k}={v}" for k, v in g.items() if k != "params")
            lines.append(f"  group {i}: {len(g['params'])} parameters, {hyper}")
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, weight decay and Nesterov
    (``torch.optim.SGD``; the update is in the module docstring)."""

    def __init__(
        self,
        params: Iterable[Parameter] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(
            params,
            {
                "lr": lr,
                "momentum": momentum,
                "dampening": dampening,
                "weight_decay": weight_decay,
                "nesterov": nesterov,
            },
        )

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        super()._check_hyperparameters(group)
        if not group["momentum"] >= 0:
            raise ValueError(f"invalid momentum {group['momentum']}: must be >= 0")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening")

    def _update(self, p: Parameter, group: dict[str, Any], state: dict[str, Any]) -> None:
        g: Any = p.grad  # step() passes only parameters with a gradient
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p.data
        momentum = group["momentum"]
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * g
            g = g + momentum * buf if group["nesterov"] else buf
        p.data -= group["lr"] * g


class Adam(Optimizer):
    """Adam (``torch.optim.Adam``), with L2 weight decay in the gradient and optional AMSGrad.

    State per parameter: ``step`` (a count), ``exp_avg`` (m), ``exp_avg_sq`` (v) and, with
    ``amsgrad``, ``max_exp_avg_sq``. The update is in the module docstring.
    """

    decoupled_weight_decay = False

    def __init__(
        self,
        params: Iterable[Parameter] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(
            params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad}
        )

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        super()._check_hyperparameters(group)
        group["betas"] = tuple(group["betas"])
        beta1, beta2 = group["betas"]
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"invalid betas {group['betas']}: each must be in [0, 1)")
        if not group["eps"] >= 0:
            raise ValueError(f"invalid eps {group['eps']}: must be >= 0")

    def _update(self, p: Parameter, group: dict[str, Any], state: dict[str, Any]) -> None:
        xp = get_array_module(p.data)
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if not state:
            state["step"] = 0.0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        step = state["step"]
        g = p.grad
        if weight_decay:
            if self.decoupled_weight_decay:
                p.data *= 1 - lr * weight_decay
            else:
                g = g + weight_decay * p.data
        m, v = state["exp_avg"], state["exp_avg_sq"]
        _lerp_(m, g, 1 - beta1)
        v *= beta2
        v += (1 - beta2) * g * g  # torch's addcmul: (value * g) * g
        if group["amsgrad"]:
            if state.get("max_exp_avg_sq") is None:  # amsgrad switched on mid-training
                state["max_exp_avg_sq"] = xp.zeros_like(p.data)
            xp.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        denom = xp.sqrt(v) / bias_correction2_sqrt + eps
        p.data += -(lr / bias_correction1) * (m / denom)


class AdamW(Adam):
    """AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay, ``p *= 1 - lr * weight_decay``
    before the Adam step. Note torch's default ``weight_decay=1e-2``."""

    decoupled_weight_decay = True

    def __init__(
        self,
        params: Iterable[Parameter] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


def _lerp_(start: Any, end: Any, weight: float) -> None:
    """``start += weight * (end - start)`` in place, with torch's two-sided formula for accuracy
    (for weight >= 0.5 it computes ``end - (end - start) * (1 - weight)``)."""
    if abs(weight) < 0.5:
        start += weight * (end - start)
    else:
        start[...] = end - (end - start) * (1 - weight)


def weight_decay_groups(model: Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups: weight decay on conv and linear weights, none on biases and BatchNorm.

    A parameter with one dimension or fewer (a bias, a BatchNorm weight or bias) goes to the group
    with ``weight_decay=0``; every other parameter to the group with ``weight_decay``. Pass the
    result as an optimizer's ``params``; empty groups are left out.
    """
    if not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
    decay: list[Parameter] = []
    no_decay: list[Parameter] = []
    for _, p in model.named_parameters():
        (decay if len(p.shape) > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
