"""Exercise cross_entropy: softmax cross-entropy from logits, the mean over the batch.

Shapes: z (N, K) logits, t (N,) integer target classes; the loss is a float; dloss (a float) is the
gradient of whatever comes after the loss (1.0 when the loss is the end); dz is (N, K).

Derive: with p = softmax(z) per row, L = -(1/N) sum_n log p[n, t_n]. Write log p[n, t] with the
log-sum-exp, differentiate by z[n, k], and see where the target class and the 1/N enter.
Numerically: subtract each row's maximum before exp (softmax does not change; exp cannot overflow).

Check with: python -m npresnet.learn check cross_entropy
"""

import numpy as np  # noqa: F401  (you will need it)


def cross_entropy_forward(z, t):
    """z (N, K), t (N,) ints -> (loss, cache), loss = mean over n of -log softmax(z[n])[t[n]]."""
    # TODO
    raise NotImplementedError


def cross_entropy_backward(dloss, cache):
    """dloss (a float) -> dz (N, K)."""
    # TODO: dz[n, k] = (p[n, k] - [k == t[n]]) * ...
    raise NotImplementedError
