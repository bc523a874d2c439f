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
import torch.nn.functional as TF
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from npresnet import nn
from npresnet.testing import tie_free

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
seeds = st.integers(0, 2**32 - 1)


def _spatial(draw, kernel: int, padding: int, dilation: int) -> int:
    """An input length whose (dilated) kernel fits the padded input, plus up to 7 extra."""
    smallest = max(1, dilation * (kernel - 1) + 1 - 2 * padding)
    return draw(st.integers(smallest, smallest + 7))


def _windows_all_see_input(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> bool:
    """False when some pooling window holds only padding (possible with dilation): the output is
    -inf there and torch's CPU max-pool backward then scatters to an invalid index (it can abort)."""
    span = n + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:                 # torch: the last window starts inside
        out -= 1
    return all(any(0 <= o * s - p + i * d < n for i in range(k)) for o in range(out))


def _compare(max_rel_err, tol, label: str, pairs) -> None:
    for what, ours, reference in pairs:
        err = max_rel_err(ours, reference)
        assert err <= tol[np.dtype(np.float64)], f"{label} {what}: worst relative error {err:.3e}"


# ---------------------------------------------------------------------------------------------- Conv2d

@st.composite
def conv_configs(draw):
    groups = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return dict(
        batch=draw(st.integers(1, 3)),
        in_channels=groups * draw(st.integers(1, 3)),
        out_channels=groups * draw(st.integers(1, 3)),
        groups=groups,
        kernel_size=kernel,
        stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        padding=padding,
        dilation=dilation,
        size=tuple(_spatial(draw, k, p, d) for k, p, d in zip(kernel, padding, dilation)),
        bias=draw(st.booleans()),
        seed=draw(seeds),
    )


@st.composite
def thin_conv3x3_configs(draw):
    """What the direct 3x3 kernels take (stride 1, one group, <= 32 channels, padding <= 2*dilation)."""
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, 2 * d)) for d in dilation)
    return dict(
        batch=draw(st.integers(1, 3)),
        in_channels=draw(st.integers(1, 32)),
        out_channels=draw(st.integers(1, 32)),
        groups=1,
        kernel_size=(3, 3),
        stride=(1, 1),
        padding=padding,
        dilation=dilation,
        size=tuple(_spatial(draw, 3, p, d) for p, d in zip(padding, dilation)),
        bias=draw(st.booleans()),
        seed=draw(seeds),
    )


@settings(max_examples=150, **SETTINGS)
@given(config=conv_configs())
def test_conv2d_matches_torch(config, max_rel_err, tol, to_torch):
    _check_conv_against_torch(config, max_rel_err, tol, to_torch)


@settings(max_examples=60, **SETTINGS)
@given(config=thin_conv3x3_configs())
def test_thin_conv3x3_matches_torch(config, max_rel_err, tol, to_torch):
    """The direct 3x3 path (npresnet.kernels.conv3x3_cpu when Numba is on) against torch."""
    _check_conv_against_torch(config, max_rel_err, tol, to_torch)


def _check_conv_against_torch(config, max_rel_err, tol, to_torch) -> None:
    config = dict(config)
    batch, size, seed = config.pop("batch"), config.pop("size"), config.pop("seed")
    rng = np.random.default_rng(seed)
    conv = nn.Conv2d(**config, rng=rng).to(np.float64)
    x = rng.standard_normal((batch, config["in_channels"], *size))
    y = conv(x)
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy)

    xt, wt = to_torch(x, requires_grad=True), to_torch(conv.weight.data, requires_grad=True)
    bt = to_torch(conv.bias.data, requires_grad=True) if config["bias"] else None
    yt = TF.conv2d(xt, wt, bt, conv.stride, conv.padding, conv.dilation, conv.groups)
    yt.backward(to_torch(dy))
    pairs = [("y", y, yt.detach()), ("dx", dx, xt.grad), ("dweight", conv.weight.grad, wt.grad)]
    if bt is not None:
        pairs.append(("dbias", conv.bias.grad, bt.grad))
    _compare(max_rel_err, tol, "Conv2d", pairs)


# ------------------------------------------------------------------------------------------- MaxPool2d

@st.composite
def pool_configs(draw, dilated: bool):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)       # torch: padding <= kernel / 2
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilated else (1, 1)
    stride = draw(st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    ceil_mode = draw(st.booleans())
    size = tuple(_spatial(draw, k, p, d) for k, p, d in zip(kernel, padding, dilation))
    assume(all(_windows_all_see_input(n, k, s, p, d, ceil_mode)
               for n, k, s, p, d in zip(size, kernel, stride or kernel, padding, dilation)))
    return dict(
        batch=draw(st.integers(1, 3)),
        channels=draw(st.integers(1, 3)),
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        ceil_mode=ceil_mode,
        size=size,
        seed=draw(seeds),
    )


@settings(max_examples=150, **SETTINGS)
@given(config=pool_configs(dilated=True))
def test_maxpool2d_matches_torch(config, max_rel_err, tol, to_torch):
    config = dict(config)
    batch, channels, size = config.pop("batch"), config.pop("channels"), config.pop("size")
    rng = np.random.default_rng(config.pop("seed"))
    x = tie_free((batch, channels, *size), rng)
    pool = nn.MaxPool2d(**config)
    y = pool(x)
    dy = rng.standard_normal(y.shape)
    dx = pool.backward(dy)

    xt = to_torch(x, requires_grad=True)
    yt = TF.max_pool2d(xt, **config)
    yt.backward(to_torch(dy))
    _compare(max_rel_err, tol, "MaxPool2d", [("y", y, yt.detach()), ("dx", dx, xt.grad)])


# ------------------------------------------------------------------------------------------- AvgPool2d

@st.composite
def avgpool_configs(draw):
    config = draw(pool_configs(dilated=False))
    del config["dilation"]
    config["count_include_pad"] = draw(st.booleans())
    config["divisor_override"] = draw(st.none() | st.integers(1, 9))
    return config


@settings(max_examples=100, **SETTINGS)
@given(config=avgpool_configs())
def test_avgpool2d_matches_torch(config, max_rel_err, tol, to_torch):
    config = dict(config)
    batch, channels, size = config.pop("batch"), config.pop("channels"), config.pop("size")
    rng = np.random.default_rng(config.pop("seed"))
    x = rng.standard_normal((batch, channels, *size))
    pool = nn.AvgPool2d(**config)
    y = pool(x)
    dy = rng.standard_normal(y.shape)
    dx = pool.backward(dy)

    xt = to_torch(x, requires_grad=True)
    yt = TF.avg_pool2d(xt, **config)
    yt.backward(to_torch(dy))
    _compare(max_rel_err, tol, "AvgPool2d", [("y", y, yt.detach()), ("dx", dx, xt.grad)])


# ----------------------------------------------------------------------------------- AdaptiveAvgPool2d

@settings(max_examples=50, **SETTINGS)
@given(batch=st.integers(1, 3), size=st.tuples(st.integers(1, 11), st.integers(1, 11)),
       out=st.tuples(st.integers(1, 6), st.integers(1, 6)), seed=seeds)
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
    seen = {"groups>1": False, "dilation>1": False, "H!=W": False, "KH!=KW": False, "stride>1": False,
            "padding": False, "batch1": False}
    ceil_seen = {True: False, False: False}

    @settings(max_examples=200, deadline=None, database=None)
    @given(conv=conv_configs(), pool=pool_configs(dilated=True))
    def record(conv, pool):
        seen["groups>1"] |= conv["groups"] > 1
        seen["dilation>1"] |= max(conv["dilation"]) > 1
        seen["H!=W"] |= conv["size"][0] != conv["size"][1]
        seen["KH!=KW"] |= conv["kernel_size"][0] != conv["kernel_size"][1]
        seen["stride>1"] |= max(conv["stride"]) > 1
        seen["padding"] |= max(pool["padding"]) > 0
        seen["batch1"] |= conv["batch"] == 1
        ceil_seen[pool["ceil_mode"]] = True

    record()
    assert all(seen.values()), seen
    assert all(ceil_seen.values())
