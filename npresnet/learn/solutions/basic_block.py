"""The residual BasicBlock (identity shortcut, stride 1): y = relu(F(x) + x).

F(x) = bn2(conv2(relu(bn1(conv1(x))))), both convolutions 3x3 with padding 1, BatchNorm in
training mode. In the forward pass x forks: it feeds F and the shortcut. In the backward pass a
fork is a sum: dx = (gradient back through F) + (gradient back through the shortcut), and the
identity shortcut passes the gradient at the sum (after the output ReLU's mask) unchanged.
"""

from npresnet.functional import (
    batchnorm2d_backward,
    batchnorm2d_forward,
    conv2d_backward,
    conv2d_forward,
    relu_backward,
    relu_forward,
)


def basic_block_forward(x, params):
    """x (N, C, H, W); params w1, w2 (C, C, 3, 3), gamma1, beta1, gamma2, beta2 (C,) -> y, cache."""
    h, c1 = conv2d_forward(x, params["w1"], None, 1, 1)
    h, b1 = batchnorm2d_forward(h, params["gamma1"], params["beta1"], None, None, training=True)
    h, r1 = relu_forward(h)
    h, c2 = conv2d_forward(h, params["w2"], None, 1, 1)
    h, b2 = batchnorm2d_forward(h, params["gamma2"], params["beta2"], None, None, training=True)
    y, r_out = relu_forward(h + x)  # the sum joins the branch and the shortcut
    return y, (c1, b1, r1, c2, b2, r_out)


def basic_block_backward(dy, cache):
    """dy (N, C, H, W) -> dx (N, C, H, W), grads {name: array of that parameter's shape}."""
    c1, b1, r1, c2, b2, r_out = cache
    d_sum = relu_backward(dy, r_out)  # the gradient at the sum reaches both branches
    d, dgamma2, dbeta2 = batchnorm2d_backward(d_sum, b2)
    d, dw2, _ = conv2d_backward(d, c2)
    d = relu_backward(d, r1)
    d, dgamma1, dbeta1 = batchnorm2d_backward(d, b1)
    dx_branch, dw1, _ = conv2d_backward(d, c1)
    dx = dx_branch + d_sum  # x forked: add the shortcut's gradient
    grads = {"w1": dw1, "gamma1": dgamma1, "beta1": dbeta1, "w2": dw2, "gamma2": dgamma2, "beta2": dbeta2}
    return dx, grads
