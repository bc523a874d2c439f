"""The Bottleneck block with a projection shortcut: y = relu(F(x) + S(x)).

F(x) = bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))): conv1 1x1 (C -> P), conv2 3x3 with
stride s and padding 1 (P -> P), conv3 1x1 (P -> 4P). The shortcut S(x) = bn_s(conv_s(x)) is a
1x1 convolution with stride s (C -> 4P) and its BatchNorm: a projection, needed because F(x) has
4P channels and H/s x W/s pixels. BatchNorm in training mode.

Backward: the gradient at the sum goes down both branches, through their own layers, and the two
input gradients are added (x forked).
"""

from npresnet.functional import (
    batchnorm2d_backward,
    batchnorm2d_forward,
    conv2d_backward,
    conv2d_forward,
    relu_backward,
    relu_forward,
)


def _conv_bn(x, w, gamma, beta, stride, padding):
    h, conv_cache = conv2d_forward(x, w, None, stride, padding)
    h, bn_cache = batchnorm2d_forward(h, gamma, beta, None, None, training=True)
    return h, (conv_cache, bn_cache)


def _conv_bn_backward(d, cache):
    conv_cache, bn_cache = cache
    d, dgamma, dbeta = batchnorm2d_backward(d, bn_cache)
    dx, dw, _ = conv2d_backward(d, conv_cache)
    return dx, dw, dgamma, dbeta


def bottleneck_forward(x, params, s):
    """x (N, C, H, W), params (see the skeleton), stride s -> y (N, 4P, OH, OW), cache."""
    h, k1 = _conv_bn(x, params["w1"], params["gamma1"], params["beta1"], 1, 0)
    h, r1 = relu_forward(h)
    h, k2 = _conv_bn(h, params["w2"], params["gamma2"], params["beta2"], s, 1)
    h, r2 = relu_forward(h)
    h, k3 = _conv_bn(h, params["w3"], params["gamma3"], params["beta3"], 1, 0)
    shortcut, ks = _conv_bn(x, params["w_s"], params["gamma_s"], params["beta_s"], s, 0)
    y, r_out = relu_forward(h + shortcut)
    return y, (k1, r1, k2, r2, k3, ks, r_out)


def bottleneck_backward(dy, cache):
    """dy (N, 4P, OH, OW) -> dx (N, C, H, W), grads {name: array of that parameter's shape}."""
    k1, r1, k2, r2, k3, ks, r_out = cache
    d_sum = relu_backward(dy, r_out)
    grads = {}
    d, grads["w3"], grads["gamma3"], grads["beta3"] = _conv_bn_backward(d_sum, k3)
    d = relu_backward(d, r2)
    d, grads["w2"], grads["gamma2"], grads["beta2"] = _conv_bn_backward(d, k2)
    d = relu_backward(d, r1)
    dx_branch, grads["w1"], grads["gamma1"], grads["beta1"] = _conv_bn_backward(d, k1)
    dx_shortcut, grads["w_s"], grads["gamma_s"], grads["beta_s"] = _conv_bn_backward(d_sum, ks)
    return dx_branch + dx_shortcut, grads
