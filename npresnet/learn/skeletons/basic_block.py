"""Exercise basic_block: the residual BasicBlock, y = relu(F(x) + x), F(x) = bn2(conv2(relu(bn1(conv1(x))))).

Shapes: x (N, C, H, W); params {"w1", "w2": (C, C, 3, 3); "gamma1", "beta1", "gamma2", "beta2": (C,)}.
Both convolutions have stride 1 and padding 1, no bias; BatchNorm in training mode; y is (N, C, H, W).

Derive: in the forward x forks (it feeds conv1 and the shortcut); in the backward a fork is a sum.
Use npresnet's layers for the pieces (imported below): this exercise is about the wiring.

Check with: python -m npresnet.learn check basic_block
"""

from npresnet.functional import (  # noqa: F401  (each returns (out, cache); each backward takes (dout, cache))
    batchnorm2d_backward,
    batchnorm2d_forward,  # batchnorm2d_forward(h, gamma, beta, None, None, training=True)
    conv2d_backward,  # conv2d_backward(d, cache) -> (dx, dw, db)
    conv2d_forward,  # conv2d_forward(x, w, None, stride, padding)
    relu_backward,
    relu_forward,
)


def basic_block_forward(x, params):
    """x (N, C, H, W), params (see above) -> (y (N, C, H, W), cache)."""
    # TODO: conv1, bn1, relu, conv2, bn2, add x, relu
    raise NotImplementedError


def basic_block_backward(dy, cache):
    """dy (N, C, H, W) -> (dx (N, C, H, W), grads {"w1": ..., "gamma1": ..., ...: one per parameter})."""
    # TODO: the forward read bottom-up; where x forked, add the gradients
    raise NotImplementedError
