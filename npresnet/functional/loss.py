"""Softmax cross-entropy from logits, like ``torch.nn.functional.cross_entropy``.

Notation: logits z (N, K), integer targets t (N,), eps = label_smoothing.

Forward, numerically stable (subtract the row maximum before exp)::

    log p[i, k] = z[i, k] - max_k z[i] - log(sum_k exp(z[i, k] - max_k z[i]))
    q[i, k]     = (1 - eps) * [k == t_i] + eps / K          smoothed target distribution
    loss_i      = -sum_k q[i, k] * log p[i, k]
    loss        = mean_i loss_i     ('mean'; 'sum' adds, 'none' keeps loss_i)

Backward: softmax and cross-entropy combine into a famously simple gradient::

    dL/dz[i, k] = (p[i, k] - q[i, k]) * dloss_i      (dloss_i = dout / N for 'mean')
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import backend_name, get_array_module
from ..checks import check_floating

REDUCTIONS = ("mean", "sum", "none")


class CrossEntropyCache(NamedTuple):
    probs: Any  # (N, K) softmax(z)
    target: Any  # (N,) int
    label_smoothing: float
    reduction: str


def cross_entropy_forward(
    logits: Any, target: Any, label_smoothing: float = 0.0, reduction: str = "mean"
) -> tuple[Any, CrossEntropyCache]:
    """logits (N, K), target (N,) integer class indices -> loss (0-d array, or (N,) for 'none')."""
    check_floating(logits, "logits")
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy expects logits of shape (N, K), got {tuple(logits.shape)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    N, K = logits.shape
    if backend_name(target) != backend_name(logits):
        raise TypeError(
            f"target is a {backend_name(target)} array but logits are "
            f"{backend_name(logits)}; move one with npresnet.backend.to_backend"
        )
    if target.dtype.kind not in "iu" or target.shape != (N,):
        raise TypeError(
            f"cross_entropy expects integer class indices of shape ({N},), got dtype "
            f"{target.dtype} and shape {tuple(target.shape)}"
        )
    xp = get_array_module(logits)
    # One device -> host read (CuPy would wrap out-of-range indices silently); details only on error.
    if N and bool(((target < 0) | (target >= K)).any()):
        raise ValueError(
            f"target class indices must lie in [0, {K}), got min {int(target.min())} and max {int(target.max())}"
        )
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    rows = xp.arange(N)
    per_sample = -(1.0 - label_smoothing) * log_probs[rows, target]
    if label_smoothing:
        per_sample -= label_smoothing * log_probs.mean(axis=1)
    if reduction == "mean":
        loss = per_sample.mean()
    elif reduction == "sum":
        loss = per_sample.sum()
    else:
        loss = per_sample
    return loss, CrossEntropyCache(xp.exp(log_probs), target, label_smoothing, reduction)


def cross_entropy_backward(dout: Any, cache: CrossEntropyCache) -> Any:
    """dL/dlogits = (softmax - smoothed one-hot) * dout (/ N for 'mean'). Returns (N, K)."""
    probs, target = cache.probs, cache.target
    xp = get_array_module(probs)
    N, K = probs.shape
    eps = cache.label_smoothing
    expected = (N,) if cache.reduction == "none" else ()
    got = tuple(getattr(dout, "shape", ()))
    if got != expected:
        raise ValueError(
            f"cross_entropy.backward expects dout of shape {expected} (the loss's, reduction="
            f"{cache.reduction!r}), got {got}"
        )
    dlogits = probs - eps / K
    dlogits[xp.arange(N), target] -= 1.0 - eps
    if cache.reduction == "none":
        return dlogits * xp.asarray(dout, dtype=probs.dtype).reshape(N, 1)
    scale = 1.0 / N if cache.reduction == "mean" and N else 1.0
    return dlogits * (xp.asarray(dout, dtype=probs.dtype) * scale)
