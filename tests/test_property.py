"""Property tests: hypothesis draws random convolution and pooling configurations (batch 1..3,
non-square kernels, H != W, stride, padding, dilation, groups, sizes that do not divide evenly,
ceil_mode) and every one must match torch in float64, forward and backward, to 1e-10.

About 450 configurations per run (150 conv, 150 max-pool, 100 avg-pool, 50 adaptive). A failure
prints the falsifying configuration, including the ``seed`` of the input arrays, so it can be
replayed exactly. Configurations torch rejects (pool padding above half the kernel, empty
outputs) are never drawn: they are excluded by construction.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as TF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npresnet import nn
from npresnet.testing import tie_free
from npresnet.testing.strategies import conv2d_configs, pool2d_configs, seeds

pytestmark = pytest.mark.slow  # hundreds of random configurations against torch per run

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)


def _compare(max_rel_err, tol, label: str, pairs) -> None:
    for what, ours, reference in pairs:
        err = max_rel_err(ours, reference)
        assert err <= tol[np.dtype(np.float64)], f"{label} {what}: worst relative error {err:.3e}"


# ---------------------------------------------------------------------------------------------- Conv2d

CONV_CONFIGS = conv2d_configs()  # groups, non-square kernels, stride, padding, dilation, batch 1..3
# What the direct 3x3 kernels take (stride 1, one group, <= 32 channels, padding <= 2*dilation).
THIN_CONV3X3_CONFIGS = conv2d_configs(
    kernel=3, stride=1, groups=1, channels_per_group=(1, 32), padding=(0, 6), padding_within_kernel=True
)


@settings(max_examples=150, **SETTINGS)
@given(config=CONV_CONFIGS)
def test_conv2d_matches_torch(config, max_rel_err, tol, to_torch):
    _check_conv_against_torch(config, max_rel_err, tol, to_torch)


@settings(max_examples=60, **SETTINGS)
@given(config=THIN_CONV3X3_CONFIGS)
def test_thin_conv3x3_matches_torch(config, max_rel_err, tol, to_torch):
    """The direct 3x3 path (npresnet.kernels.conv3x3_cpu when Numba is on) against torch."""
    _check_conv_against_torch(config, max_rel_err, tol, to_torch)


def _check_conv_against_torch(config, max_rel_err, tol, to_torch) -> None:
    rng = np.random.default_rng(config.seed)
    conv = nn.Conv2d(**config.layer_kwargs(), rng=rng).to(np.float64)
    x = rng.standard_normal(config.input_shape)
    y = conv(x)
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy)

    xt, wt = to_torch(x, requires_grad=True), to_torch(conv.weight.data, requires_grad=True)
    bt = to_torch(conv.bias.data, requires_grad=True) if config.bias else None
    yt = TF.conv2d(xt, wt, bt, conv.stride, conv.padding, conv.dilation, conv.groups)
    yt.backward(to_torch(dy))
    pairs = [("y", y, yt.detach()), ("dx", dx, xt.grad), ("dweight", conv.weight.grad, wt.grad)]
    if bt is not None:
        pairs.append(("dbias", conv.bias.grad, bt.grad))
    _compare(max_rel_err, tol, "Conv2d", pairs)


# ------------------------------------------------------------------------------------------- MaxPool2d

MAXPOOL_CONFIGS = pool2d_configs()  # only what torch takes: padding <= kernel / 2, no window of padding only


@settings(max_examples=150, **SETTINGS)
@given(config=MAXPOOL_CONFIGS)
def test_maxpool2d_matches_torch(config, max_rel_err, tol, to_torch):
    rng = np.random.default_rng(config.seed)
    x = tie_free(config.input_shape, rng)
    pool = nn.MaxPool2d(**config.layer_kwargs())
    y = pool(x)
    dy = rng.standard_normal(y.shape)
    dx = pool.backward(dy)

    xt = to_torch(x, requires_grad=True)
    yt = TF.max_pool2d(xt, **config.layer_kwargs())
    yt.backward(to_torch(dy))
    _compare(max_rel_err, tol, "MaxPool2d", [("y", y, yt.detach()), ("dx", dx, xt.grad)])


# ------------------------------------------------------------------------------------------- AvgPool2d

AVGPOOL_CONFIGS = pool2d_configs(kind="avg")  # also count_include_pad and divisor_override


@settings(max_examples=100, **SETTINGS)
@given(config=AVGPOOL_CONFIGS)
def test_avgpool2d_matches_torch(config, max_rel_err, tol, to_torch):
    rng = np.random.default_rng(config.seed)
    x = rng.standard_normal(config.input_shape)
    pool = nn.AvgPool2d(**config.layer_kwargs())
    y = pool(x)
    dy = rng.standard_normal(y.shape)
    dx = pool.backward(dy)

    xt = to_torch(x, requires_grad=True)
    yt = TF.avg_pool2d(xt, **config.layer_kwargs())
    yt.backward(to_torch(dy))
    _compare(max_rel_err, tol, "AvgPool2d", [("y", y, yt.detach()), ("dx", dx, xt.grad)])


# ----------------------------------------------------------------------------------- AdaptiveAvgPool2d


@settings(max_examples=50, **SETTINGS)
@given(
    batch=st.integers(1, 3),
    size=st.tuples(st.integers(1, 11), st.integers(1, 11)),
    out=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    seed=seeds,
)
def test_adaptive_avgpool2d_matches_torch(batch, size, out, seed, max_rel_err, tol, to_torch):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 2, *size))
    pool = nn.AdaptiveAvgPool2d(out)
    y = pool(x)
    dy = rng.standard_normal(y.shape)
    dx = pool.backward(dy)

    xt = to_torch(x, requires_grad=True)
    yt = TF.adaptive_avg_pool2d(xt, out)
    yt.backward(to_torch(dy))
    _compare(max_rel_err, tol, "AdaptiveAvgPool2d", [("y", y, yt.detach()), ("dx", dx, xt.grad)])


def test_strategies_reach_the_interesting_corners():
    """Guard against a strategy that silently stops drawing what this file claims to test."""
    seen = {
        "groups>1": False,
        "dilation>1": False,
        "H!=W": False,
        "KH!=KW": False,
        "stride>1": False,
        "padding": False,
        "batch1": False,
    }
    ceil_seen = {True: False, False: False}

    @settings(max_examples=200, deadline=None, database=None)
    @given(conv=CONV_CONFIGS, pool=MAXPOOL_CONFIGS)
    def record(conv, pool):
        seen["groups>1"] |= conv.groups > 1
        seen["dilation>1"] |= max(conv.dilation) > 1
        seen["H!=W"] |= conv.size[0] != conv.size[1]
        seen["KH!=KW"] |= conv.kernel_size[0] != conv.kernel_size[1]
        seen["stride>1"] |= max(conv.stride) > 1
        seen["padding"] |= max(pool.padding) > 0
        seen["batch1"] |= conv.batch == 1
        ceil_seen[pool.ceil_mode] = True

    record()
    assert all(seen.values()), seen
    assert all(ceil_seen.values())
