"""The optimizer and the learning-rate schedule that a ``TrainConfig`` names (``Trainer`` builds each once).

* Optimizer: SGD (momentum, Nesterov) or Adam / AdamW. Weight decay leaves BatchNorm's parameters and
  the biases alone (``weight_decay_groups``) unless ``decay_bn_and_bias``.
* Schedule, stepped every iteration: cosine over the steps after warm-up, multistep (milestones in
  epochs, or ``milestone_steps``) or constant; an optional linear or constant warm-up of
  ``warmup_steps`` comes first (``SequentialLR``).
"""

from __future__ import annotations

from ..nn import Module
from ..optim import SGD, Adam, AdamW, Optimizer, weight_decay_groups
from ..schedules import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, MultiStepLR, SequentialLR
from .config import TrainConfig


def build_optimizer(model: Module, c: TrainConfig) -> Optimizer:
    """The optimizer of ``c.optimizer`` over ``model``'s parameters, with ``c``'s hyper-parameters."""
    params = list(model.parameters()) if c.decay_bn_and_bias else weight_decay_groups(model, c.weight_decay)
    if c.optimizer == "sgd":
        return SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov)
    kind = Adam if c.optimizer == "adam" else AdamW
    return kind(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)


def build_scheduler(opt: Optimizer, c: TrainConfig, total_steps: int, steps_per_epoch: int) -> LRScheduler:
    """The per-iteration schedule of ``c`` for a run of ``total_steps`` iterations."""
    warmup = min(c.warmup_steps, max(total_steps - 1, 0))
    remaining = max(total_steps - warmup, 1)
    if c.schedule == "cosine":
        main: LRScheduler = CosineAnnealingLR(opt, T_max=remaining)
    elif c.schedule == "multistep":
        steps = (
            c.milestone_steps if c.milestone_steps is not None else [round(m * steps_per_epoch) for m in c.milestones]
        )
        main = MultiStepLR(opt, [s - warmup for s in steps if s > warmup], gamma=c.gamma)
    else:
        main = MultiStepLR(opt, [], gamma=1.0)
    if not warmup:
        return main
    if c.warmup == "linear":
        first: LRScheduler = LinearLR(opt, start_factor=c.warmup_factor, end_factor=1.0, total_iters=warmup)
    else:
        first = ConstantLR(opt, factor=c.warmup_factor, total_iters=warmup)
    return SequentialLR(opt, [first, main], milestones=[warmup])
