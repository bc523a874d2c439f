"""Softmax cross-entropy, the mean over the batch.

With p = softmax(z) per row and t the target class of each row::

    L = -(1/N) sum_n log p[n, t_n]
    dL/dz[n, k] = (p[n, k] - [k == t_n]) / N

Subtracting each row's maximum before exp changes nothing (softmax is shift-invariant) and keeps
exp from overflowing.
"""

import numpy as np


def cross_entropy_forward(z, t):
    """z (N, K) logits, t (N,) class indices -> loss (a float), cache."""
    N = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_p[np.arange(N), t].mean()
    return loss, (np.exp(log_p), t)


def cross_entropy_backward(dloss, cache):
    """dloss (a float, dL_total/dloss) -> dz (N, K)."""
    p, t = cache
    N = p.shape[0]
    dz = p.copy()
    dz[np.arange(N), t] -= 1
    return dz * (dloss / N)
