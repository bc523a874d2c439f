"""The case lists that several test files share, each defined once.

A test file reads them with ``import cases`` (``from cases import IM2COL_CASES``): pytest runs with
``--import-mode=importlib``, where tests/ is not on ``sys.path``, so conftest.py loads this file as
the module ``cases`` before any test file is imported. A child Python started by a test puts tests/
on its ``sys.path`` and imports it the same way.

* ``IM2COL_CASES``: im2col / col2im geometries, for the CPU kernels against the NumPy references
  (test_kernels.py, test_parallel_kernels.py) and the CUDA kernels (test_cuda_kernels.py).
* ``MAXPOOL_CASES``, ``AVGPOOL_CASES`` and ``pool_input``: the pooling kernels, the same files;
  ``BN_SHAPES``: the batch-norm kernels; ``DIRECT_CASES``: the direct 3x3 convolution kernels
  (both in test_kernels.py and test_parallel_kernels.py).
* ``CONV2D_LAYER_CASES``: ``nn.Conv2d`` settings checked against torch (test_layers_torch.py on the
  CPU, test_gpu.py on CuPy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# (N, C, H, W), (KH, KW), (SH, SW), (PH, PW), (DH, DW): non-square kernels, H != W, stride > 1,
# padding, dilation, uneven sizes, batch 1, C = 1, and windows that read only padding.
IM2COL_CASES = [
    ((2, 3, 7, 9), (3, 2), (2, 1), (1, 2), (1, 2)),  # non-square kernel, H != W, all arguments != 1
    ((1, 1, 5, 5), (1, 1), (1, 1), (0, 0), (1, 1)),  # batch 1, one channel, 1x1: a plain copy
    ((3, 4, 11, 6), (5, 3), (3, 2), (2, 1), (2, 1)),  # dilation on H only
    ((1, 2, 8, 13), (7, 7), (2, 2), (3, 3), (1, 1)),  # ResNet stem, small
    ((2, 3, 6, 5), (1, 1), (2, 2), (0, 0), (1, 1)),  # 1x1 stride-2 downsample: odd pixels unread
    ((2, 1, 6, 4), (2, 4), (1, 3), (2, 3), (1, 1)),  # padding wider than the kernel reaches
    ((1, 3, 4, 10), (3, 3), (4, 5), (0, 4), (1, 2)),  # stride larger than the kernel
    ((1, 2, 3, 2), (5, 4), (1, 1), (0, 0), (1, 1)),  # kernel larger than the input: no windows
    # stride 1 with OW == W: the one-run-per-plane path of the CPU kernel (_shifted_plane)
    ((2, 3, 5, 8), (3, 3), (1, 1), (1, 1), (1, 1)),  # ResNet's 3x3, H != W
    ((1, 2, 9, 6), (3, 3), (1, 1), (2, 2), (2, 2)),  # dilated, batch 1
    ((2, 2, 5, 7), (3, 3), (1, 1), (2, 2), (2, 3)),  # dilation on both axes: deep overlaps
    ((2, 2, 6, 7), (2, 5), (1, 1), (0, 2), (1, 1)),  # OH != H, non-square kernel
    ((1, 1, 2, 3), (5, 3), (1, 1), (3, 1), (1, 1)),  # taller kernel than the input: rows all padding
    ((2, 4, 3, 1), (3, 1), (1, 1), (1, 0), (1, 1)),  # W = 1
    ((1, 2, 3, 1), (3, 3), (1, 1), (1, 2), (1, 2)),  # W = 1, dilation 2: whole kernel columns in padding
]

# (N, C, H, W), kernel, stride, padding, dilation, ceil_mode
MAXPOOL_CASES = [
    ((2, 3, 7, 9), (3, 2), (2, 1), (1, 1), (1, 2), True),
    ((1, 1, 5, 5), 2, None, 0, 1, False),  # batch 1, one channel, stride = kernel
    ((3, 4, 11, 6), 3, 2, 1, 1, True),  # ceil_mode: the last window hangs over the edge
    ((2, 2, 8, 8), 3, 1, 1, 1, False),  # stride 1: a pixel is in up to 9 windows
    ((1, 2, 12, 7), (2, 3), (3, 2), (1, 1), (2, 1), True),
    ((2, 3, 10, 10), 3, 2, 1, 1, False),  # ResNet stem max pool, small
    ((1, 2, 9, 6), (3, 1), (1, 3), (1, 0), (3, 1), False),  # dilation 3, stride > kernel along W
    ((2, 1, 5, 8), 2, 3, 1, 2, True),  # dilation 2 with ceil_mode
]

# (N, C, H, W), kernel, stride, padding, ceil_mode, count_include_pad, divisor_override
_AVGPOOL_GEOMETRIES = [
    ((2, 3, 7, 9), (3, 2), (2, 1), (1, 1), True),
    ((1, 1, 5, 5), 2, 2, 0, False),
    ((3, 4, 11, 6), 3, 2, 1, True),  # ceil_mode window clipped to H + PH
    ((2, 2, 8, 8), 3, 1, 1, False),  # stride 1: deep overlaps
    ((1, 2, 12, 7), (2, 3), (3, 2), (1, 1), True),
]
AVGPOOL_CASES = [
    (*geometry, include_pad, override)
    for geometry in _AVGPOOL_GEOMETRIES
    for include_pad, override in ((True, None), (False, None), (True, 5))  # the three divisors
] + [
    ((1, 1, 5, 5), 2, None, 0, False, True, None),  # stride = kernel
    ((1, 2, 6, 10), (2, 4), (3, 1), (1, 2), True, False, 5),  # divisor_override ignores count_include_pad
    ((2, 1, 4, 9), (1, 3), (2, 4), (0, 1), False, True, None),  # stride > kernel: unread pixels
]


def pool_input(shape: tuple[int, ...], dtype: Any, rng: np.random.Generator) -> np.ndarray:
    """Small integers (many ties, +0.0 tied with -0.0), plus NaNs, a -inf and an all -inf row."""
    x = rng.integers(-3, 4, size=shape).astype(dtype)
    x[(x == 0) & (rng.random(shape) < 0.5)] = -0.0
    x[0, 0, 1, 0:2] = np.nan  # two cells: with strides > 1 some cells are in no window
    x[-1, -1, 0, 0] = -np.inf
    x[0, -1, -1, :] = -np.inf
    return x


# (N, C, H, W) of the batch-norm kernels: a big plane, uneven sizes, one channel, W = 1
BN_SHAPES = [(8, 3, 32, 32), (2, 5, 7, 3), (1, 1, 6, 5), (16, 4, 9, 1)]

# (N, C, O, H, W), padding, dilation of the direct 3x3 convolution kernels (thin layers): batch 1, one
# channel, H != W, no padding, padding per axis up to 2*dilation (the most the direct input gradient
# takes), dilation per axis, the 32-channel limit, and a batch whose N*Hp*Wp spans two weight-gradient
# chunks, the last one ragged.
DIRECT_CASES = [
    ((1, 1, 1, 3, 3), (0, 0), (1, 1)),
    ((1, 3, 16, 5, 7), (1, 1), (1, 1)),
    ((2, 5, 7, 9, 6), (0, 2), (1, 2)),
    ((2, 4, 8, 10, 11), (4, 3), (2, 3)),
    ((2, 32, 32, 6, 11), (2, 1), (1, 1)),
    ((3, 16, 16, 20, 30), (1, 1), (1, 1)),
    ((5, 32, 8, 13, 4), (1, 0), (1, 1)),
]

CONV2D_LAYER_CASES = {
    # id: (x shape, Conv2d kwargs)
    "3x3-pad1": ((2, 3, 7, 9), dict(in_channels=3, out_channels=4, kernel_size=3, padding=1)),
    "3x2-stride2x1-pad1x0": (
        (2, 3, 9, 6),
        dict(in_channels=3, out_channels=5, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)),
    ),
    "dilation2x3": (
        (2, 2, 11, 10),
        dict(in_channels=2, out_channels=3, kernel_size=(3, 2), padding=(2, 1), dilation=(2, 3)),
    ),
    "groups2-stride2": (
        (3, 4, 8, 7),
        dict(in_channels=4, out_channels=6, kernel_size=(2, 3), stride=2, padding=1, groups=2),
    ),
    "depthwise": ((2, 3, 6, 5), dict(in_channels=3, out_channels=6, kernel_size=3, padding=1, groups=3)),
    "no-bias-stride3": (
        (2, 3, 10, 8),
        dict(in_channels=3, out_channels=4, kernel_size=(4, 3), stride=(3, 2), bias=False),
    ),
    "batch1-1x1-stride2": ((1, 4, 7, 6), dict(in_channels=4, out_channels=8, kernel_size=1, stride=2, bias=False)),
    "stem-7x7-stride2-pad3": (
        (2, 3, 17, 14),
        dict(in_channels=3, out_channels=4, kernel_size=7, stride=2, padding=3, bias=False),
    ),
    "kernel-equals-input": ((2, 2, 3, 4), dict(in_channels=2, out_channels=3, kernel_size=(3, 4))),
}
