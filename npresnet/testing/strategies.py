"""Hypothesis strategies that draw only valid layer configurations (importing this imports hypothesis).

By default every configuration is one torch accepts (``config.torch_layer()`` runs forward and
backward on ``arrays_for(config)`` without an error), and every output has at least one element.
The draws reach the corners where hand-written backward passes break: batch 1, one channel,
non-square kernels, H != W, stride > kernel (input pixels no window reads), padding wider than
the kernel reaches (windows of padding only), dilation > 1, groups > 1, output size 1, and
ceil_mode's extra window. Example::

    from hypothesis import given
    from npresnet.testing import arrays_for, assert_matches_torch, conv2d_configs

    @given(conv2d_configs())
    def test_my_conv_matches_torch(config):
        assert_matches_torch(config.layer(), config.torch_layer(), arrays_for(config).x)

Every bound is an ``int`` (fixed) or an inclusive ``(lo, hi)`` range, drawn per axis for the
(H, W) pairs. Spatial sizes are drawn as the smallest input that fits one window plus ``extra``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from ..functional.im2col import conv_output_size
from .configs import BatchNormConfig, Conv2dConfig, Pool2dConfig

Bound = int | tuple[int, int]
seeds = st.integers(0, 2**32 - 1)

__all__ = ["batchnorm_configs", "conv2d_configs", "pool2d_configs", "seeds"]


def _ints(bound: Bound) -> st.SearchStrategy[int]:
    lo, hi = (bound, bound) if isinstance(bound, int) else bound
    return st.integers(lo, hi)


def _flags(choice: bool | None) -> st.SearchStrategy[bool]:
    return st.booleans() if choice is None else st.just(choice)


def _dtypes(dtypes: Sequence[Any]) -> st.SearchStrategy[str]:
    return st.sampled_from([np.dtype(d).name for d in dtypes])


def _smallest_input(kernel: int, padding: int, dilation: int) -> int:
    """The shortest input length with one (dilated) window inside the padded input: output size 1."""
    return max(1, dilation * (kernel - 1) + 1 - 2 * padding)


@st.composite
def conv2d_configs(
    draw: Any,
    *,
    batch: Bound = (1, 3),
    channels_per_group: Bound = (1, 3),
    groups: Bound = (1, 3),
    kernel: Bound = (1, 4),
    stride: Bound = (1, 3),
    padding: Bound = (0, 3),
    dilation: Bound = (1, 3),
    extra: Bound = (0, 7),
    padding_within_kernel: bool = False,
    bias: bool | None = None,
    dtypes: Sequence[Any] = (np.float64,),
) -> Conv2dConfig:
    """``Conv2dConfig``s: in and out channels are multiples of ``groups``; any padding torch accepts
    (also wider than the kernel reaches, unless ``padding_within_kernel``: then padding <= d*(k-1),
    what the direct 3x3 kernels take)."""
    g = draw(_ints(groups))
    kernel_size = (draw(_ints(kernel)), draw(_ints(kernel)))
    dilations = (draw(_ints(dilation)), draw(_ints(dilation)))
    paddings = []
    for k, d in zip(kernel_size, dilations):
        lo, hi = (padding, padding) if isinstance(padding, int) else padding
        paddings.append(draw(st.integers(lo, min(hi, max(lo, d * (k - 1))) if padding_within_kernel else hi)))
    size = tuple(_smallest_input(k, p, d) + draw(_ints(extra)) for k, p, d in zip(kernel_size, paddings, dilations))
    return Conv2dConfig(
        batch=draw(_ints(batch)),
        in_channels=g * draw(_ints(channels_per_group)),
        out_channels=g * draw(_ints(channels_per_group)),
        size=size,
        kernel_size=kernel_size,
        stride=(draw(_ints(stride)), draw(_ints(stride))),
        padding=(paddings[0], paddings[1]),
        dilation=dilations,
        groups=g,
        bias=draw(_flags(bias)),
        dtype=draw(_dtypes(dtypes)),
        seed=draw(seeds),
    )


def _windows_all_see_input(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> bool:
    """False when some pooling window holds only padding (possible with dilation): its max is -inf,
    and torch's CPU max-pool backward then scatters to an invalid index."""
    out = conv_output_size(n, k, s, p, d, ceil_mode)
    return all(any(0 <= o * s - p + i * d < n for i in range(k)) for o in range(out))


@st.composite
def pool2d_configs(
    draw: Any,
    *,
    kind: str = "max",
    batch: Bound = (1, 3),
    channels: Bound = (1, 3),
    kernel: Bound = (1, 4),
    stride: Bound = (1, 3),
    default_stride: bool = True,
    dilation: Bound = (1, 3),
    extra: Bound = (0, 7),
    ceil_mode: bool | None = None,
    count_include_pad: bool | None = None,
    divisor_override: bool = True,
    torch_valid: bool = True,
    dtypes: Sequence[Any] = (np.float64,),
) -> Pool2dConfig:
    """``Pool2dConfig``s for max (``kind="max"``) or average (``kind="avg"``: no dilation) pooling.

    ``default_stride`` also draws ``stride=None`` (the kernel size); ``divisor_override`` also draws
    average pooling's override (1..9). With ``torch_valid=False`` the draws go beyond what torch
    takes but npresnet does: padding up to half the *dilated* kernel (torch: half the kernel), and
    windows that hold only padding (output -inf). For npresnet's kernels against its references.
    """
    if kind not in ("max", "avg"):
        raise ValueError(f"pool2d_configs: kind must be 'max' or 'avg', got {kind!r}")
    kernel_size = (draw(_ints(kernel)), draw(_ints(kernel)))
    dilations = (draw(_ints(dilation)), draw(_ints(dilation))) if kind == "max" else (1, 1)
    reach = [(d * (k - 1) + 1) // 2 if not torch_valid else k // 2 for k, d in zip(kernel_size, dilations)]
    paddings = (draw(st.integers(0, reach[0])), draw(st.integers(0, reach[1])))
    strides = draw(
        (st.none() | st.tuples(_ints(stride), _ints(stride)))
        if default_stride
        else st.tuples(_ints(stride), _ints(stride))
    )
    ceil = draw(_flags(ceil_mode))
    size = tuple(_smallest_input(k, p, d) + draw(_ints(extra)) for k, p, d in zip(kernel_size, paddings, dilations))
    if torch_valid:
        assume(
            all(
                _windows_all_see_input(n, k, s, p, d, ceil)
                for n, k, s, p, d in zip(size, kernel_size, strides or kernel_size, paddings, dilations)
            )
        )
    avg = kind == "avg"
    return Pool2dConfig(
        kind=kind,
        batch=draw(_ints(batch)),
        channels=draw(_ints(channels)),
        size=size,
        kernel_size=kernel_size,
        stride=strides,
        padding=paddings,
        dilation=dilations,
        ceil_mode=ceil,
        count_include_pad=draw(_flags(count_include_pad)) if avg else True,
        divisor_override=draw(st.none() | st.integers(1, 9)) if avg and divisor_override else None,
        dtype=draw(_dtypes(dtypes)),
        seed=draw(seeds),
    )


@st.composite
def batchnorm_configs(
    draw: Any,
    *,
    batch: Bound = (1, 4),
    channels: Bound = (1, 4),
    size: Bound = (1, 5),
    training: bool | None = None,
    affine: bool | None = None,
    track_running_stats: bool | None = None,
    dtypes: Sequence[Any] = (np.float64,),
) -> BatchNormConfig:
    """``BatchNormConfig``s in train and eval mode, with and without affine parameters and running
    statistics, momentum 0.1, another value or None (cumulative average). Whenever the batch's own
    statistics are used, the batch holds more than one value per channel (N*H*W > 1), as torch demands."""
    config = BatchNormConfig(
        batch=draw(_ints(batch)),
        channels=draw(_ints(channels)),
        size=(draw(_ints(size)), draw(_ints(size))),
        training=draw(_flags(training)),
        affine=draw(_flags(affine)),
        track_running_stats=draw(_flags(track_running_stats)),
        momentum=draw(st.sampled_from([0.1, None]) | st.floats(0.01, 0.9)),
        eps=draw(st.sampled_from([1e-5, 1e-3])),
        dtype=draw(_dtypes(dtypes)),
        seed=draw(seeds),
    )
    if config.uses_batch_statistics and config.batch * config.size[0] * config.size[1] == 1:
        config = BatchNormConfig(**{**config.__dict__, "size": (1, 2)})  # one more value per channel
    return config
