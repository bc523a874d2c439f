"""Learning-rate schedules with PyTorch's semantics (``torch.optim.lr_scheduler``).

Usage is PyTorch's: build the schedule after the optimizer (construction sets every group's lr to
the schedule's value at step 0), and call ``scheduler.step()`` *after* ``optimizer.step()``::

    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = MultiStepLR(optimizer, milestones=[32000, 48000], gamma=0.1)
    for x, y in loader:
        ...; optimizer.step(); scheduler.step()
    scheduler.get_last_lr()          # [lr of each parameter group]

A "step" is whatever you call ``step()`` for: an epoch or an iteration (``npresnet.training`` steps
per iteration). t = ``last_epoch`` counts the calls; each group's lr at t, from its base lr0:

    MultiStepLR        lr0 * gamma ** (number of milestones <= t)
    CosineAnnealingLR  eta_min + (lr0 - eta_min) * (1 + cos(pi * t / T_max)) / 2
    LinearLR           lr0 * (start + (end - start) * min(t, total_iters) / total_iters)   (linear warm-up)
    ConstantLR         lr0 * factor for t < total_iters, then lr0                          (constant warm-up)
    SequentialLR       one schedule after another, switching at the given milestones

Like torch, each schedule updates the lr *recursively* from the previous value (the closed forms
above are equal up to rounding), so the learning rates agree with torch's to the last bit.
``state_dict()`` is a small JSON-able dict (no optimizer inside).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from typing import Any

from .optim import Optimizer
from .state_checks import StateError, setting_problem

__all__ = ["ConstantLR", "CosineAnnealingLR", "LRScheduler", "LinearLR", "MultiStepLR", "SequentialLR"]


class LRScheduler:
    """Base class: ``base_lrs``, ``last_epoch``, ``step()``, ``get_last_lr()``, ``state_dict()``.

    Subclasses implement ``get_lr()`` (the recursive form, from each group's current lr) and
    ``_closed_form_lr()`` (from ``base_lrs``; used when ``SequentialLR`` restarts a schedule at 0).
    """

    # Attributes saved by state_dict(), beyond each subclass's own hyperparameters, with the kind of
    # value each must hold (checked by load_state_dict; see npresnet.state_checks.setting_problem).
    _state_kinds: dict[str, str] = {
        "base_lrs": "numbers",
        "last_epoch": "int",
        "_step_count": "int",
        "_last_lr": "numbers",
    }
    _hyper_kinds: dict[str, str] = {}

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an npresnet Optimizer")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param_groups[{i}] has no 'initial_lr': load the optimizer's state before "
                        "resuming a schedule with last_epoch >= 0"
                    )
        self.base_lrs: list[float] = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._is_initial = False
        self._initial_step()

    def _initial_step(self) -> None:
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> list[float]:
        raise NotImplementedError

    def _closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def get_last_lr(self) -> list[float]:
        """The learning rate of each parameter group, as set by the last ``step()``."""
        return list(self._last_lr)

    def step(self) -> None:
        """Advance one step (after ``optimizer.step()``) and set every group's lr."""
        self._step_count += 1
        self._update_lr()

    def _update_lr(self, epoch: int | None = None) -> None:
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = epoch
            values = self._closed_form_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _current_lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """The schedule's counters and hyperparameters (plain Python values, JSON-able)."""
        state = {key: getattr(self, key) for key in {**self._state_kinds, **self._hyper_kinds}}
        state["type"] = type(self).__name__
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s values (after the optimizer's own state has been loaded).

        Every value is checked first (type, one lr per parameter group); a problem raises
        ``StateError`` (a ``ValueError``) and changes nothing.
        """
        self.check_state_dict(state_dict)
        for key in {**self._state_kinds, **self._hyper_kinds}:
            setattr(self, key, state_dict[key])
        self.base_lrs, self._last_lr = list(self.base_lrs), list(self._last_lr)

    def check_state_dict(self, state_dict: Any) -> None:
        """Raise ``StateError`` unless ``load_state_dict(state_dict)`` would succeed; changes nothing."""
        _check_fields(self, state_dict, {**self._state_kinds, **self._hyper_kinds})

    def __repr__(self) -> str:
        hyper = ", ".join(f"{key}={getattr(self, key)!r}" for key in self._hyper_kinds)
        return f"{type(self).__name__}({hyper}, last_epoch={self.last_epoch})"


class MultiStepLR(LRScheduler):
    """Multiply the lr by ``gamma`` at each milestone (a step count; repeats multiply again)."""

    _hyper_kinds = {"milestones": "ints", "gamma": "number"}

    def __init__(
        self, optimizer: Optimizer, milestones: Iterable[int], gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        count = Counter(self.milestones)[self.last_epoch]
        if not count:
            return self._current_lrs()
        return [lr * self.gamma**count for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        return [base * self.gamma ** bisect_right(self.milestones, self.last_epoch) for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Cosine from the base lr down to ``eta_min`` over ``T_max`` steps (then back up, as torch)."""

    _hyper_kinds = {"T_max": "count", "eta_min": "number"}

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        if T_max < 1:
            raise ValueError(f"T_max must be >= 1, got {T_max}")
        self.T_max, self.eta_min = int(T_max), eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t, T, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._current_lrs()
        if self._step_count == 1 and t > 0:
            return [eta_min + (base - eta_min) * (1 + math.cos(t * math.pi / T)) / 2 for base in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:
            return [
                lr + (base - eta_min) * (1 - math.cos(math.pi / T)) / 2
                for base, lr in zip(self.base_lrs, self._current_lrs())
            ]
        return [
            (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T)) * (lr - eta_min) + eta_min
            for lr in self._current_lrs()
        ]

    def _closed_form_lr(self) -> list[float]:
        return [
            self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
            for base in self.base_lrs
        ]


class LinearLR(LRScheduler):
    """Linear warm-up: the lr factor goes from ``start_factor`` to ``end_factor`` over ``total_iters``
    steps, then stays."""

    _hyper_kinds = {"start_factor": "number", "end_factor": "number", "total_iters": "count"}

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        if not 0 < start_factor <= 1:
            raise ValueError(f"start_factor must be in (0, 1], got {start_factor}")
        if not 0 <= end_factor <= 1:
            raise ValueError(f"end_factor must be in [0, 1], got {end_factor}")
        if total_iters < 1:
            raise ValueError(f"total_iters must be >= 1, got {total_iters}")
        self.start_factor, self.end_factor, self.total_iters = start_factor, end_factor, int(total_iters)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t, start, end = self.last_epoch, self.start_factor, self.end_factor
        if t == 0:
            return [lr * start for lr in self._current_lrs()]
        if self._is_initial or t > self.total_iters:
            return self._current_lrs()
        factor = 1.0 + (end - start) / (self.total_iters * start + (t - 1) * (end - start))
        return [lr * factor for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        fraction = min(self.total_iters, self.last_epoch) / self.total_iters
        return [base * (self.start_factor + (self.end_factor - self.start_factor) * fraction) for base in self.base_lrs]


class ConstantLR(LRScheduler):
    """The lr times ``factor`` for the first ``total_iters`` steps, then the full lr (the paper's
    ResNet-110 warm-up: 0.01 for about 400 iterations, then 0.1)."""

    _hyper_kinds = {"factor": "number", "total_iters": "count"}

    def __init__(
        self, optimizer: Optimizer, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1
    ) -> None:
        if not 0 <= factor <= 1:
            raise ValueError(f"factor must be in [0, 1], got {factor}")
        self.factor, self.total_iters = factor, int(total_iters)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0:
            return [lr * self.factor for lr in self._current_lrs()]
        if self.last_epoch != self.total_iters:
            return self._current_lrs()
        return [lr * (1.0 / self.factor) for lr in self._current_lrs()]

    def _closed_form_lr(self) -> list[float]:
        return [
            base * (self.factor + (self.last_epoch >= self.total_iters) * (1 - self.factor)) for base in self.base_lrs
        ]


class SequentialLR(LRScheduler):
    """Run ``schedulers[0]`` until ``milestones[0]``, then ``schedulers[1]`` restarted at 0, and so on.

    Typical use, warm-up then cosine::

        warmup = LinearLR(optimizer, start_factor=0.1, total_iters=500)
        cosine = CosineAnnealingLR(optimizer, T_max=total_steps - 500)
        scheduler = SequentialLR(optimizer, [warmup, cosine], milestones=[500])
    """

    def __init__(
        self, optimizer: Optimizer, schedulers: list[LRScheduler], milestones: list[int], last_epoch: int = -1
    ) -> None:
        if not schedulers:
            raise ValueError("SequentialLR needs at least one scheduler")
        for i, scheduler in enumerate(schedulers):
            if not isinstance(scheduler, LRScheduler) or isinstance(scheduler, SequentialLR):
                raise TypeError(
                    f"SequentialLR: schedulers[{i}] must be a (non-sequential) LRScheduler, "
                    f"got {type(scheduler).__name__}"
                )
            if scheduler.optimizer is not optimizer:
                raise ValueError(f"SequentialLR: schedulers[{i}] belongs to a different optimizer")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                f"SequentialLR needs one milestone fewer than schedulers, got {len(schedulers)} "
                f"schedulers and {len(milestones)} milestones"
            )
        self.optimizer = optimizer
        self._schedulers = list(schedulers)
        self.milestones = [int(m) for m in milestones]
        self.last_epoch = last_epoch + 1
        for group in optimizer.param_groups:  # undo what the schedulers' constructors did
            group["lr"] = group["initial_lr"]
        for scheduler in self._schedulers:
            scheduler.last_epoch -= 1
        self._schedulers[0]._initial_step()
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self._step_count = 1
        self._last_lr = self._schedulers[0].get_last_lr()

    def step(self) -> None:
        self._step_count += 1
        self.last_epoch += 1
        index = bisect_right(self.milestones, self.last_epoch)
        scheduler = self._schedulers[index]
        if index > 0 and self.milestones[index - 1] == self.last_epoch:
            scheduler._update_lr(0)  # restart the next schedule at its step 0
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return {
            "type": "SequentialLR",
            "milestones": list(self.milestones),
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "base_lrs": list(self.base_lrs),
            "_last_lr": list(self._last_lr),
            "schedulers": [s.state_dict() for s in self._schedulers],
        }

    def check_state_dict(self, state_dict: Any) -> None:
        _check_fields(
            self,
            state_dict,
            {
                "milestones": "ints",
                "last_epoch": "int",
                "_step_count": "int",
                "base_lrs": "numbers",
                "_last_lr": "numbers",
                "schedulers": "list",
            },
        )
        if len(state_dict["schedulers"]) != len(self._schedulers):
            raise StateError(
                f"state_dict holds {len(state_dict['schedulers'])} schedules, this SequentialLR "
                f"has {len(self._schedulers)}"
            )
        for i, (scheduler, state) in enumerate(zip(self._schedulers, state_dict["schedulers"])):
            try:
                scheduler.check_state_dict(state)
            except StateError as exc:
                raise StateError(f"SequentialLR schedule {i}: {exc}") from None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.check_state_dict(state_dict)
        for scheduler, state in zip(self._schedulers, state_dict["schedulers"]):
            scheduler.load_state_dict(state)
        self.milestones = list(state_dict["milestones"])
        self.last_epoch, self._step_count = state_dict["last_epoch"], state_dict["_step_count"]
        self.base_lrs, self._last_lr = list(state_dict["base_lrs"]), list(state_dict["_last_lr"])

    def __repr__(self) -> str:
        return f"SequentialLR({self._schedulers!r}, milestones={self.milestones}, last_epoch={self.last_epoch})"


def _check_fields(scheduler: LRScheduler, state_dict: Any, kinds: dict[str, str]) -> None:
    """A schedule's state_dict must be a dict of its own type, with every key of ``kinds`` holding a
    value of that kind, and one lr per parameter group in ``base_lrs`` and ``_last_lr``."""
    name = type(scheduler).__name__
    where = f"{name} state_dict"
    if not isinstance(state_dict, dict):
        raise StateError(f"{where} must be a dict, got {type(state_dict).__name__}")
    kind = state_dict.get("type", name)
    if kind != name:
        raise StateError(f"state_dict is for a {kind}, not a {name}")
    missing = [key for key in kinds if key not in state_dict]
    if missing:
        raise StateError(f"{where} lacks {missing}")
    for key, kind in kinds.items():
        problem = setting_problem(key, state_dict[key], kind)
        if problem is not None:
            raise StateError(f"{where}: {problem}")
    groups = len(scheduler.optimizer.param_groups)
    for key in ("base_lrs", "_last_lr"):
        if len(state_dict[key]) != groups:
            raise StateError(
                f"{where}: {key} must hold {groups} number{'s' if groups != 1 else ''} (one per "
                f"parameter group), got {len(state_dict[key])}"
            )
