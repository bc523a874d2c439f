"""Exercise bottleneck: the Bottleneck block with a projection shortcut, y = relu(F(x) + S(x)).

F(x) = bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))), S(x) = bn_s(conv_s(x)).
Shapes: x (N, C, H, W), P planes, stride s; params:
    "w1" (P, C, 1, 1)      conv1: 1x1, stride 1, no padding
    "w2" (P, P, 3, 3)      conv2: 3x3, stride s, padding 1
    "w3" (4P, P, 1, 1)     conv3: 1x1, stride 1, no padding
    "w_s" (4P, C, 1, 1)    the projection shortcut: 1x1, stride s, no padding
    "gamma1", "beta1", "gamma2", "beta2" (P,); "gamma3", "beta3", "gamma_s", "beta_s" (4P,)
y is (N, 4P, OH, OW), OH = (H - 1) // s + 1. BatchNorm in training mode, convolutions without bias.

Derive: the shortcut is a layer with parameters now: the gradient at the sum flows into both
branches, and x's gradient is the sum of what comes back along each.

Check with: python -m npresnet.learn check bottleneck
"""

from npresnet.functional import (  # noqa: F401  (each returns (out, cache); each backward takes (dout, cache))
    batchnorm2d_backward,
    batchnorm2d_forward,  # batchnorm2d_forward(h, gamma, beta, None, None, training=True)
    conv2d_backward,  # conv2d_backward(d, cache) -> (dx, dw, db)
    conv2d_forward,  # conv2d_forward(x, w, None, stride, padding)
    relu_backward,
    relu_forward,
)


def bottleneck_forward(x, params, s):
    """x (N, C, H, W), params (see above), stride s -> (y (N, 4P, OH, OW), cache)."""
    # TODO
    raise NotImplementedError


def bottleneck_backward(dy, cache):
    """dy (N, 4P, OH, OW) -> (dx (N, C, H, W), grads {"w1": ..., ..., "beta_s": ...: one per parameter})."""
    # TODO
    raise NotImplementedError
