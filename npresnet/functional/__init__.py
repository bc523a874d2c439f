"""Stateless forward/backward pairs: the teaching surface of npresnet.

Each op comes as ``y, cache = op_forward(x, ...)`` and ``grads = op_backward(dout, cache)``,
in the style of CS231n: the cache is an explicit value, never hidden state. The modules in
:mod:`npresnet.nn` are thin stateful shells around these functions.
"""

from .activation import relu_backward, relu_forward
from .batchnorm import batchnorm2d_backward, batchnorm2d_forward
from .conv import conv2d_backward, conv2d_forward
from .dropout import dropout_backward, dropout_forward
from .im2col import col2im, conv_output_size, im2col
from .linear import flatten_backward, flatten_forward, linear_backward, linear_forward
from .loss import cross_entropy_backward, cross_entropy_forward
from .pooling import (
    adaptive_avgpool2d_backward,
    adaptive_avgpool2d_forward,
    avgpool2d_backward,
    avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)

__all__ = [
    "adaptive_avgpool2d_backward",
    "adaptive_avgpool2d_forward",
    "avgpool2d_backward",
    "avgpool2d_forward",
    "batchnorm2d_backward",
    "batchnorm2d_forward",
    "col2im",
    "conv2d_backward",
    "conv2d_forward",
    "conv_output_size",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "dropout_backward",
    "dropout_forward",
    "flatten_backward",
    "flatten_forward",
    "im2col",
    "linear_backward",
    "linear_forward",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "relu_backward",
    "relu_forward",
]
