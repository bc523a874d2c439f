"""Exercise conv: the convolution of conv_loop as im2col and one matrix product.

Shapes: as in conv_loop: x (N, C, H, W), w (F, C, KH, KW), b (F,), stride s, padding p ->
y (N, F, OH, OW). cols = im2col(x, KH, KW, s, p) is (C*KH*KW, N*OH*OW).

Derive: with W = w.reshape(F, C*KH*KW), the loop's sum is the product W @ cols (F, N*OH*OW), plus b.
The backward is the gradient of a matrix product (exercise linear!) and col2im for the columns.

Check with: python -m npresnet.learn check conv
"""

import numpy as np  # noqa: F401  (you will need it)

# npresnet's im2col/col2im in this exercise's layout. Once your im2col.py passes, you may use yours:
# put this file next to it and write `from im2col import im2col, col2im` instead.
from npresnet.learn.layout import col2im, im2col  # noqa: F401


def conv_forward(x, w, b, s, p):
    """x (N, C, H, W), w (F, C, KH, KW), b (F,) -> (y (N, F, OH, OW), cache)."""
    # TODO: im2col, one product, reshape to (N, F, OH, OW)
    raise NotImplementedError


def conv_backward(dy, cache):
    """dy (N, F, OH, OW) -> (dx (N, C, H, W), dw (F, C, KH, KW), db (F,))."""
    # TODO: dy in the product's layout, then dw, the columns' gradient (-> col2im), db
    raise NotImplementedError
