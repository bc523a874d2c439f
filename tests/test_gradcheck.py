"""Proof that ``npresnet.gradcheck`` can be trusted.

1. It passes, in full mode and float64, on every layer and every functional forward/backward pair.
2. It passes on a residual block assembled by hand (identity and projection shortcuts), in full and
   in directional mode, and directional mode costs a small fraction of the forward passes.
3. It FAILS on planted bugs (a transposed conv weight gradient, a BatchNorm backward missing a term,
   a max-pool routing to the wrong element, a gradient 1% off, a block dropping its shortcut
   gradient), with a message naming the array, the worst element, both values and three measures.
   A ``sum()`` loss would not catch the BatchNorm bug; the random upstream gradient does.
4. On a kink (ReLU input at or within eps of 0, a max-pool tie) it raises NondifferentiableError
   saying "kink", and it does not mistake a real bug for a kink.
5. It refuses float32, nondeterministic forwards and nothing-to-check, and leaves modules as they were.
6. ``python -m npresnet.gradcheck`` checks a named model or a user's ``package.module:Name`` with a
   line per array, exits 1 on a failed check, and 2 with one line ``error: ...`` on bad arguments.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import npresnet
import npresnet.testing
from npresnet import functional as F
from npresnet import nn
from npresnet.demo import BasicBlock
from npresnet.gradcheck import GradcheckError, NondifferentiableError, gradcheck
from npresnet.testing import kink_free, tie_free

EPS = 1e-6  # gradcheck's default step


def make_rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randomise_bn(bn: nn.BatchNorm2d, rng: np.random.Generator, running: bool = False) -> nn.BatchNorm2d:
    """Non-trivial gamma and beta (and running statistics): gamma = 1, beta = 0 hides bugs."""
    C = bn.num_features
    if bn.affine:
        bn.weight.data[...] = rng.uniform(0.5, 1.5, C)
        bn.bias.data[...] = rng.standard_normal(C)
    if running:
        bn.running_mean[...] = rng.standard_normal(C)
        bn.running_var[...] = rng.uniform(0.5, 2.0, C)
    return bn


def assert_tight(report: npresnet.GradcheckReport) -> None:
    """A passing check on correct code agrees far better than the tolerance."""
    assert report.passed, str(report)
    for a in report.arrays:
        assert a.norm_ratio < 1e-7, str(report)
        assert a.max_abs_error < 1e-6, str(report)


# ---------------------------------------------------------------------------------------------
# 1. Every layer, full mode, float64.


def _conv():
    rng = make_rng(1)
    conv = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2, rng=rng)
    return conv.to(np.float64), (rng.standard_normal((2, 4, 7, 5)),)


def _conv_1x1_no_bias():
    rng = make_rng(2)
    conv = nn.Conv2d(3, 2, 1, stride=2, bias=False, rng=rng)
    return conv.to(np.float64), (rng.standard_normal((2, 3, 5, 4)),)


def _bn_train():
    rng = make_rng(3)
    bn = randomise_bn(nn.BatchNorm2d(3).to(np.float64), rng)
    return bn, (rng.standard_normal((2, 3, 4, 5)) * 2 + 1,)


def _bn_eval():
    rng = make_rng(4)
    bn = randomise_bn(nn.BatchNorm2d(3).to(np.float64), rng, running=True).eval()
    return bn, (rng.standard_normal((2, 3, 4, 5)),)


def _bn_no_affine_no_running():
    rng = make_rng(5)
    bn = nn.BatchNorm2d(2, affine=False, track_running_stats=False).to(np.float64).eval()  # batch statistics
    return bn, (rng.standard_normal((3, 2, 2, 3)),)


def _maxpool():
    return nn.MaxPool2d(3, stride=2, padding=1), (tie_free((2, 2, 7, 6), make_rng(6)),)


def _maxpool_dilated_ceil():
    pool = nn.MaxPool2d((2, 3), stride=(2, 1), dilation=(2, 1), ceil_mode=True)
    return pool, (tie_free((1, 2, 7, 5), make_rng(7)),)


def _avgpool():
    return nn.AvgPool2d(3, stride=2, padding=1), (make_rng(8).standard_normal((2, 2, 7, 6)),)


def _avgpool_exclude_pad_ceil():
    pool = nn.AvgPool2d((2, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True, count_include_pad=False)
    return pool, (make_rng(9).standard_normal((1, 2, 6, 7)),)


def _linear():
    rng = make_rng(10)
    return nn.Linear(5, 4, rng=rng).to(np.float64), (rng.standard_normal((3, 5)),)


def _linear_3d_input():
    rng = make_rng(11)
    return nn.Linear(4, 3, rng=rng).to(np.float64), (rng.standard_normal((2, 3, 4)),)


def _cross_entropy(**kwargs):
    rng = make_rng(12)
    return nn.CrossEntropyLoss(**kwargs), (rng.standard_normal((4, 5)), np.array([0, 4, 2, 2]))


def _dropout_train_p0():
    return nn.Dropout(0.0, seed=0).train(), (make_rng(13).standard_normal((3, 4)),)


LAYERS = {
    "conv2d non-square kernel, stride, padding, dilation, groups, H!=W": (_conv, ["input 0", "weight", "bias"]),
    "conv2d 1x1 stride 2 no bias": (_conv_1x1_no_bias, ["input 0", "weight"]),
    "batchnorm2d train, random gamma/beta": (_bn_train, ["input 0", "weight", "bias"]),
    "batchnorm2d eval, random running stats": (_bn_eval, ["input 0", "weight", "bias"]),
    "batchnorm2d affine=False, batch stats": (_bn_no_affine_no_running, ["input 0"]),
    "relu, inputs kept off 0": (lambda: (nn.ReLU(), (kink_free((2, 3, 4, 5), make_rng(14)),)), ["input 0"]),
    "maxpool2d 3/2/1, tie-free": (_maxpool, ["input 0"]),
    "maxpool2d dilated, ceil_mode": (_maxpool_dilated_ceil, ["input 0"]),
    "avgpool2d 3/2/1": (_avgpool, ["input 0"]),
    "avgpool2d count_include_pad=False, ceil": (_avgpool_exclude_pad_ceil, ["input 0"]),
    "adaptive avgpool (2, 3) from 5x7": (
        lambda: (nn.AdaptiveAvgPool2d((2, 3)), (make_rng(15).standard_normal((2, 2, 5, 7)),)),
        ["input 0"],
    ),
    "adaptive avgpool 1 (global)": (
        lambda: (nn.AdaptiveAvgPool2d(1), (make_rng(16).standard_normal((2, 3, 3, 4)),)),
        ["input 0"],
    ),
    "linear": (_linear, ["input 0", "weight", "bias"]),
    "linear on (2, 3, 4)": (_linear_3d_input, ["input 0", "weight", "bias"]),
    "flatten": (lambda: (nn.Flatten(), (make_rng(17).standard_normal((2, 3, 2, 2)),)), ["input 0"]),
    "cross entropy (target not differentiated)": (_cross_entropy, ["input 0"]),
    "cross entropy, label smoothing, sum": (
        functools.partial(_cross_entropy, label_smoothing=0.1, reduction="sum"),
        ["input 0"],
    ),
    "cross entropy, reduction none": (functools.partial(_cross_entropy, reduction="none"), ["input 0"]),
    "dropout eval": (lambda: (nn.Dropout(0.5, seed=0).eval(), (make_rng(18).standard_normal((3, 4)),)), ["input 0"]),
    "dropout train p=0": (_dropout_train_p0, ["input 0"]),
}


@pytest.mark.parametrize("case", LAYERS, ids=list(LAYERS))
def test_full_gradcheck_passes_on_every_layer(case):
    build, expected_names = LAYERS[case]
    module, inputs = build()
    report = gradcheck(module, *inputs)
    assert [a.name for a in report.arrays] == expected_names
    assert report.unchecked == []  # an integer target is not a floating input
    assert report.mode == "full"
    assert [a.size for a in report.arrays] == [
        inputs[0].size if name == "input 0" else dict(module.named_parameters())[name].size for name in expected_names
    ]
    assert_tight(report)


def _dropout_pair(p: float):
    """Dropout in training mode made deterministic: a freshly seeded generator on every call."""
    return (lambda x: F.dropout_forward(x, p, True, np.random.default_rng(7)), F.dropout_backward)


def _functional_cases():
    rng = make_rng(20)
    x = rng.standard_normal((2, 4, 6, 5))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    gamma, beta = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    mean, var = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    logits, target = rng.standard_normal((3, 4)), np.array([1, 0, 3])
    conv = functools.partial(F.conv2d_forward, stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    return {
        "conv2d": ((conv, F.conv2d_backward), (x, w, b), []),
        "conv2d, bias None": ((conv, F.conv2d_backward), (x, w, None), []),
        # the running statistics are inputs the backward does not differentiate: reported as unchecked
        "batchnorm train": (
            (functools.partial(F.batchnorm2d_forward, training=True), F.batchnorm2d_backward),
            (x, gamma, beta, mean, var),
            ["input 3", "input 4"],
        ),
        "batchnorm eval": (
            (functools.partial(F.batchnorm2d_forward, training=False), F.batchnorm2d_backward),
            (x, gamma, beta, mean, var),
            ["input 3", "input 4"],
        ),
        "relu": ((F.relu_forward, F.relu_backward), (kink_free((2, 3, 4), rng),), []),
        "maxpool": (
            (
                functools.partial(F.maxpool2d_forward, kernel_size=(3, 2), stride=(2, 1), padding=(1, 1)),
                F.maxpool2d_backward,
            ),
            (tie_free((2, 2, 6, 5), rng),),
            [],
        ),
        "avgpool": (
            (functools.partial(F.avgpool2d_forward, kernel_size=2, stride=1, padding=1), F.avgpool2d_backward),
            (x,),
            [],
        ),
        "adaptive avgpool": (
            (functools.partial(F.adaptive_avgpool2d_forward, output_size=(4, 3)), F.adaptive_avgpool2d_backward),
            (x,),
            [],
        ),
        "linear": (
            (F.linear_forward, F.linear_backward),
            (rng.standard_normal((3, 5)), rng.standard_normal((2, 5)), rng.standard_normal(2)),
            [],
        ),
        "flatten": ((F.flatten_forward, F.flatten_backward), (x,), []),
        "cross entropy": ((F.cross_entropy_forward, F.cross_entropy_backward), (logits, target), []),
        "cross entropy smoothed, none": (
            (
                functools.partial(F.cross_entropy_forward, label_smoothing=0.2, reduction="none"),
                F.cross_entropy_backward,
            ),
            (logits, target),
            [],
        ),
        "dropout train p=0.3 (fixed mask)": (_dropout_pair(0.3), (x,), []),
    }


FUNCTIONAL = _functional_cases()


@pytest.mark.parametrize("case", FUNCTIONAL, ids=list(FUNCTIONAL))
def test_full_gradcheck_passes_on_functional_pairs(case):
    pair, inputs, unchecked = FUNCTIONAL[case]
    report = gradcheck(pair, *inputs)
    assert report.unchecked == unchecked
    differentiated = [
        f"input {i}"
        for i, a in enumerate(inputs)
        if isinstance(a, np.ndarray) and a.dtype.kind == "f" and f"input {i}" not in unchecked
    ]
    assert [a.name for a in report.arrays] == differentiated
    assert_tight(report)


def test_gradcheck_is_exposed_in_both_places():
    assert npresnet.testing.gradcheck is npresnet.gradcheck.gradcheck is gradcheck
    assert issubclass(GradcheckError, AssertionError)
    assert issubclass(NondifferentiableError, GradcheckError)


# ---------------------------------------------------------------------------------------------
# 2. A residual block assembled by hand.


class ResidualBlock(BasicBlock):
    """npresnet.demo's basic block, assembled by hand from npresnet.nn layers::

        x --> conv3x3(stride) -> bn -> relu -> conv3x3 -> bn --> (+) -> relu -> y
          \\--------- shortcut: identity, or conv1x1(stride) -> bn ----/

    in float64, with random BatchNorm scales, shifts and running statistics. x feeds two branches,
    so its backward adds the two branch gradients.
    """

    def __init__(self, cin: int, cout: int, stride: int, rng: np.random.Generator) -> None:
        super().__init__(cin, cout, stride, rng)
        self.to(np.float64)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                randomise_bn(m, rng, running=True)


BLOCK_PARAMS = ["conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight", "bn2.bias"]
BLOCKS = {
    "identity shortcut": ((2, 2, 1), (2, 2, 4, 4), ["input 0", *BLOCK_PARAMS]),
    "projection shortcut (1x1 stride 2 + BN)": (
        (2, 3, 2),
        (2, 2, 5, 6),
        ["input 0", *BLOCK_PARAMS, "shortcut.0.weight", "shortcut.1.weight", "shortcut.1.bias"],
    ),
}


def make_block(case: str, cls: type = ResidualBlock):
    (cin, cout, stride), x_shape, names = BLOCKS[case]
    rng = make_rng(30)
    block = cls(cin, cout, stride, rng)
    return block, rng.standard_normal(x_shape), names


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", BLOCKS)
def test_full_gradcheck_on_hand_assembled_residual_block(case, training):
    block, x, names = make_block(case)
    block.train(training)
    report = gradcheck(block, x)
    assert [a.name for a in report.arrays] == names
    assert_tight(report)


@pytest.mark.parametrize("case", BLOCKS)
def test_directional_gradcheck_on_block_passes_and_is_much_cheaper(case):
    block, x, names = make_block(case)
    calls = []
    handle = block.register_forward_hook(lambda module, inputs, out: calls.append(1))

    report = gradcheck(block, x, mode="directional")
    directional_calls = len(calls)
    assert report.passed and report.mode == "directional"
    assert [a.name for a in report.arrays] == [f"{n} (directional)" for n in names]
    assert all(a.size == 1 for a in report.arrays)  # one number per array: the slope along d

    calls.clear()
    full = gradcheck(block, x, mode="full")
    full_calls = len(calls)
    handle.remove()
    elements = sum(a.size for a in full.arrays)
    assert directional_calls <= 2 * len(names) + 4  # 2 per array, plus a few for v and the centre
    assert full_calls >= 2 * elements  # 2 per element
    assert full_calls > 10 * directional_calls, (full_calls, directional_calls)


class ForgetsShortcutGradient(ResidualBlock):
    """Planted bug: the fork is not summed; only the main branch's gradient reaches x."""

    def backward(self, dout):
        dsum = self.relu2.backward(dout)
        self.shortcut.backward(dsum)  # parameters still get their gradient
        return self.conv1.backward(self.bn1.backward(self.relu1.backward(self.conv2.backward(self.bn2.backward(dsum)))))


@pytest.mark.parametrize("mode", ["full", "directional"])
@pytest.mark.parametrize("case", BLOCKS)
def test_block_that_drops_the_shortcut_gradient_is_caught(case, mode):
    block, x, _ = make_block(case, ForgetsShortcutGradient)
    with pytest.raises(GradcheckError) as info:
        gradcheck(block, x, mode=mode)
    assert not isinstance(info.value, NondifferentiableError)
    report = gradcheck(block, x, mode=mode, raise_exception=False)
    assert [a.name.split()[:2] for a in report.arrays if not a.allclose] == [["input", "0"]]


# ---------------------------------------------------------------------------------------------
# 3. Planted bugs are caught.


class TransposedWeightGradConv(nn.Conv2d):
    """Planted bug: dW accumulated transposed over the (square) kernel axes: right shape, wrong values."""

    def backward(self, dout):
        dx, dweight, dbias = F.conv2d_backward(dout, self._pop_cache())
        self.weight.accumulate_grad(dweight.transpose(0, 1, 3, 2))
        self.bias.accumulate_grad(dbias)
        return dx


class BatchNormMissingTerm(nn.BatchNorm2d):
    """Planted bug: dx = gamma * invstd * (g - mean(g)), the x_hat * mean(g * x_hat) term dropped."""

    def backward(self, dout):
        cache = self._pop_cache()
        _, dweight, dbias = F.batchnorm2d_backward(dout, cache)
        self.weight.accumulate_grad(dweight)
        self.bias.accumulate_grad(dbias)
        n = dout.size // dout.shape[1]
        scale = (cache.weight * cache.invstd).reshape(1, -1, 1, 1)
        return scale * (dout - dbias.reshape(1, -1, 1, 1) / n)


class MaxPoolOffByOne(nn.MaxPool2d):
    """Planted bug: each dy goes to the window element after the maximum (k + 1 in scan order)."""

    def backward(self, dout):
        cache = self._pop_cache()
        KH, KW = cache.geometry.kernel
        return F.maxpool2d_backward(dout, cache._replace(argmax=(cache.argmax + 1) % (KH * KW)))


def scaled_conv(scale: float):
    class ScaledInputGradConv(nn.Conv2d):
        """Planted bug: dx scaled by ``scale`` (a 1% error for 1.01)."""

        def backward(self, dout):
            return scale * super().backward(dout)

    return ScaledInputGradConv


def _planted_conv(cls):
    rng = make_rng(40)
    conv = cls(3, 4, 3, stride=(2, 1), padding=1, rng=rng).to(np.float64)
    return conv, rng.standard_normal((2, 3, 6, 5))


def _planted_bn():
    rng = make_rng(41)
    return randomise_bn(BatchNormMissingTerm(3).to(np.float64), rng), rng.standard_normal((2, 3, 3, 4))


def _planted_maxpool():
    return MaxPoolOffByOne(3, stride=2, padding=1), tie_free((2, 2, 6, 7), make_rng(42))


PLANTED = {
    "conv weight gradient transposed over KH/KW": (lambda: _planted_conv(TransposedWeightGradConv), "weight"),
    "batchnorm backward missing x_hat*mean(g*x_hat)": (_planted_bn, "input 0"),
    "maxpool routes dy one element off": (_planted_maxpool, "input 0"),
    "conv dx off by 1%": (lambda: _planted_conv(scaled_conv(1.01)), "input 0"),
}


@pytest.mark.parametrize("case", PLANTED, ids=list(PLANTED))
def test_planted_bug_is_caught_with_a_useful_message(case):
    build, culprit = PLANTED[case]
    module, x = build()
    with pytest.raises(GradcheckError) as info:
        gradcheck(module, x)
    assert not isinstance(info.value, NondifferentiableError)  # a bug, not a kink
    message = str(info.value)

    report = gradcheck(module, x, raise_exception=False)  # the same figures, as data
    assert not report.passed
    failed = [a for a in report.arrays if not a.allclose]
    assert [a.name for a in failed] == [culprit]  # only the buggy gradient is blamed
    bad = failed[0]
    assert bad.num_failed >= 1 and bad.max_rel_error > 1e-3
    for text in (
        f"{culprit}: ",
        f"at {bad.worst_index}",
        f"analytic {bad.analytic:.10g}",
        f"numeric {bad.numeric:.10g}",
        f"max |a-n|/(|a|+|n|) = {bad.max_rel_error:.3g}",
        f"norm ratio ||a-n||/(||a||+||n||) = {bad.norm_ratio:.3g}",
        f"max |a-n| = {bad.max_abs_error:.3g}",
        f"{bad.num_failed} of {bad.size} element(s) fail",
    ):
        assert text in message, f"{text!r} missing from:\n{message}"


def test_planted_bug_reports_point_at_the_right_elements():
    # Transposing a 3x3 kernel leaves its diagonal (kh == kw) right: the blamed element is off it.
    conv, x = _planted_conv(TransposedWeightGradConv)
    worst = gradcheck(conv, x, raise_exception=False).arrays[1]
    assert worst.name == "weight" and worst.worst_index[2] != worst.worst_index[3]
    # A 1% scaling shows as analytic / numeric == 1.01 at the worst element.
    conv, x = _planted_conv(scaled_conv(1.01))
    worst = gradcheck(conv, x, raise_exception=False).arrays[0]
    assert worst.analytic / worst.numeric == pytest.approx(1.01, rel=1e-6)


@pytest.mark.parametrize(
    "case", ["batchnorm backward missing x_hat*mean(g*x_hat)", "conv dx off by 1%", "maxpool routes dy one element off"]
)
def test_directional_mode_catches_planted_bugs_too(case):
    module, x = PLANTED[case][0]()
    with pytest.raises(GradcheckError, match="directional"):
        gradcheck(module, x, mode="directional")


def test_resolution_is_set_by_rtol():
    """rtol=1e-3 accepts a 0.01% error; tight tolerances catch it and still pass correct code."""
    conv, x = _planted_conv(scaled_conv(1.0001))
    assert gradcheck(conv, x).passed
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(conv, x, atol=1e-8, rtol=1e-6)
    conv, x = _planted_conv(nn.Conv2d)
    assert gradcheck(conv, x, atol=1e-8, rtol=1e-6).passed


def _sum_loss_check(module: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The naive check many tutorials use: L = sum(f(x)), upstream gradient all ones."""
    numeric = np.empty_like(x)
    for index in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[index] += EPS
        xm[index] -= EPS
        numeric[index] = (module(xp).sum() - module(xm).sum()) / (2 * EPS)
    y = module(x)
    return module.backward(np.ones_like(y)), numeric


def test_sum_loss_is_vacuous_for_batchnorm_but_gradcheck_catches_the_bug():
    buggy, x = _planted_bn()
    analytic, numeric = _sum_loss_check(buggy, x)
    # sum(BN(x)) = N*H*W * sum(beta) whatever x is: the true gradient is 0, and so is the buggy one.
    assert np.max(np.abs(numeric)) < 1e-8
    np.testing.assert_allclose(analytic, numeric, atol=1e-8)  # the naive check "passes" the bug
    with pytest.raises(GradcheckError, match="input 0"):  # a random upstream gradient does not
        gradcheck(buggy, x)


class BatchNormZeroInputGrad(nn.BatchNorm2d):
    """Planted bug: no gradient flows to x at all."""

    def backward(self, dout):
        super().backward(dout)
        return np.zeros_like(dout)


def test_upstream_gradient_is_not_the_input_from_the_same_seed():
    # If v were drawn from default_rng(seed) like x, v == x would make BatchNorm's true dx vanish
    # (x_hat * mean(x * x_hat) cancels x - mean(x), up to BN's eps), and a zero gradient would pass.
    bn = BatchNormZeroInputGrad(2, eps=1e-12).to(np.float64)
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 3))
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(bn, x, seed=0)


# ---------------------------------------------------------------------------------------------
# 4. Kinks.


def _relu_input_with(value: float) -> np.ndarray:
    x = kink_free((2, 3), make_rng(50))
    x[0, 1] = value
    return x


@pytest.mark.parametrize("offset", [0.0, EPS / 3, -EPS / 3, 0.9 * EPS], ids=["at 0", "+eps/3", "-eps/3", "+0.9eps"])
def test_relu_input_on_or_within_eps_of_zero_is_a_kink(offset):
    with pytest.raises(NondifferentiableError, match="kink") as info:
        gradcheck(nn.ReLU(), _relu_input_with(offset))
    assert "input 0 at (0, 1)" in str(info.value)
    report = gradcheck(nn.ReLU(), _relu_input_with(offset), raise_exception=False)
    assert not report.passed and report.arrays[0].allclose  # nothing else is wrong
    assert [k.index for k in report.arrays[0].kinks] == [(0, 1)]
    assert "KINK" in str(report)


def test_directional_mode_recognises_a_kink_along_its_direction():
    with pytest.raises(NondifferentiableError, match="kink") as info:
        gradcheck(nn.ReLU(), _relu_input_with(0.0), mode="directional")
    assert "input 0 (directional) along the check direction" in str(info.value)


def test_relu_input_beyond_eps_is_fine():
    assert gradcheck(nn.ReLU(), _relu_input_with(3 * EPS)).passed
    assert gradcheck(nn.ReLU(), _relu_input_with(-3 * EPS)).passed


def test_maxpool_tie_is_a_kink():
    x = tie_free((1, 2, 4, 4), make_rng(51))
    x[0, 1, 2, 2] = x[0, 1, 2, 3] = 2.0  # two maxima in one 2x2 window
    with pytest.raises(NondifferentiableError, match="kink") as info:
        gradcheck(nn.MaxPool2d(2), x)
    assert "max-pool tie" in str(info.value)
    kinks = gradcheck(nn.MaxPool2d(2), x, raise_exception=False).arrays[0].kinks
    assert sorted(k.index for k in kinks) == [(0, 1, 2, 2), (0, 1, 2, 3)]


def test_kink_downstream_of_a_layer_is_recognised():
    # A ReLU input exactly at 0 *after* a Linear: perturbing x, W or b moves it across the kink.
    rng = make_rng(52)
    linear = nn.Linear(3, 2, rng=rng).to(np.float64)
    x = rng.standard_normal((2, 3))
    linear.bias.data[0] = -(x[0] @ linear.weight.data[0])
    with pytest.raises(NondifferentiableError, match="kink"):
        gradcheck(nn.Sequential(linear, nn.ReLU()), x)


@pytest.mark.parametrize("curvature", [1.0, 1e4])
def test_a_real_bug_where_the_gradient_is_near_zero_is_not_called_a_kink(curvature):
    # Smooth f = c (x - 0.3)^2 with x at its minimum: the one-sided slopes differ by f''*eps = 2c*eps,
    # which for c = 1e4 is far above atol. A wrong backward there must be a GradcheckError, not
    # "resample your inputs": the analytic gradient matches neither one-sided slope.
    def forward(x):
        return curvature * (x - 0.3) ** 2, x

    def wrong_backward(dout, x):
        dx = dout * 2 * curvature * (x - 0.3)
        dx[0] += 0.5
        return dx

    with pytest.raises(GradcheckError, match="input 0") as info:
        gradcheck((forward, wrong_backward), np.array([0.3 + 1e-9, 1.0, 2.0]))
    assert not isinstance(info.value, NondifferentiableError)


def test_a_bug_is_reported_even_when_a_kink_is_present():
    relu_bug = type("ScaledReLU", (nn.ReLU,), {"backward": lambda self, dout: 1.01 * nn.ReLU.backward(self, dout)})
    with pytest.raises(GradcheckError) as info:
        gradcheck(relu_bug(), _relu_input_with(0.0))
    assert not isinstance(info.value, NondifferentiableError)
    assert "1 element(s) on a kink were left out" in str(info.value)


# ---------------------------------------------------------------------------------------------
# 5. Refusals, reports, and no side effects.


def test_float32_is_refused_unless_allowed():
    rng = make_rng(60)
    linear = nn.Linear(4, 3, rng=rng)  # float32 parameters
    x32 = rng.standard_normal((2, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="float64") as info:
        gradcheck(linear, x32)
    assert "input 0 is float32" in str(info.value)
    with pytest.raises(TypeError, match="weight is float32"):
        gradcheck(nn.Linear(4, 3, rng=rng), x32.astype(np.float64))
    report = gradcheck(linear, x32, allow_float32=True, eps=1e-2, atol=1e-3, rtol=1e-2)
    assert report.passed


def test_raise_exception_false_returns_a_failed_report():
    conv, x = _planted_conv(scaled_conv(1.01))
    report = gradcheck(conv, x, raise_exception=False)
    assert report.passed is False
    assert [a.allclose for a in report.arrays] == [False, True, True]
    text = str(report)
    assert "FAILED" in text and "FAIL input 0" in text and "ok   weight" in text and "ok   bias" in text


def test_report_figures_on_success():
    conv, x = _planted_conv(nn.Conv2d)
    report = gradcheck(conv, x)
    assert report.passed is True
    assert 0 < report.worst_rel_error < 1e-6
    assert report.worst_rel_error == max(a.max_rel_error for a in report.arrays)
    text = str(report)
    assert text.startswith("gradcheck (full), atol=1e-05 rtol=0.001: passed")
    for name, size in [("input 0", 180), ("weight", 108), ("bias", 4)]:
        assert f"ok   {name}" in text and f"{size} elements" in text


def test_gradcheck_leaves_module_and_inputs_as_they_were():
    block, x, _ = make_block("projection shortcut (1x1 stride 2 + BN)")
    x_before = x.copy()
    sentinel = {name: np.full(p.shape, 7.0) for name, p in block.named_parameters()}
    for name, p in block.named_parameters():
        p.grad = sentinel[name].copy()
    state = {k: v.copy() for k, v in block.state_dict().items()}

    gradcheck(block, x, mode="directional")

    np.testing.assert_array_equal(x, x_before)
    for key, value in block.state_dict().items():  # parameters, running stats, num_batches_tracked
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    for name, p in block.named_parameters():
        np.testing.assert_array_equal(p.grad, sentinel[name], err_msg=name)


def test_frozen_parameters_are_not_checked():
    conv, x = _planted_conv(nn.Conv2d)
    conv.weight.requires_grad = False
    assert [a.name for a in gradcheck(conv, x).arrays] == ["input 0", "bias"]


class NoisyLayer(nn.Module):
    """Adds noise from a generator of its own, which Module.preserved_state() knows nothing about."""

    def __init__(self) -> None:
        super().__init__()
        self.noise = np.random.default_rng(0)

    def forward(self, x):
        return x + self.noise.standard_normal(x.shape)

    def backward(self, dout):
        return dout


def test_nondeterministic_forward_is_refused():
    with pytest.raises(ValueError, match="deterministic"):
        gradcheck(NoisyLayer(), make_rng(61).standard_normal((4, 5)))


def test_dropout_in_training_mode_is_checked_with_one_fixed_mask():
    # preserved_state() rewinds Dropout's generator before every evaluation: each sees the same mask.
    drop = nn.Dropout(0.5, seed=0).train()
    x = make_rng(61).standard_normal((4, 5))
    report = gradcheck(drop, x)
    assert_tight(report)
    dropped = drop(x) == 0
    assert dropped.any() and not dropped.all()  # a real mask, not p = 0 or p = 1


def test_bad_arguments_give_clear_errors():
    x = make_rng(62).standard_normal((2, 3))
    with pytest.raises(ValueError, match="mode"):
        gradcheck(nn.ReLU(), x, mode="fast")
    with pytest.raises(TypeError, match="Module or a"):
        gradcheck(lambda a: a, x)
    with pytest.raises(ValueError, match="nothing to check"):
        gradcheck(nn.Identity(), np.arange(6).reshape(2, 3))
    with pytest.raises(TypeError, match=r"must return \(out, cache\)"):
        gradcheck((lambda a: a * 2, lambda d, c: d), x)
    with pytest.raises(GradcheckError, match=r"shape \(3,\), expected \(2, 3\)"):
        gradcheck((lambda a: (a * 2, None), lambda d, c: d[0]), x)


# ---------------------------------------------------------------------------------------------
# 6. The command line: python -m npresnet.gradcheck MODEL_OR_MODULE_PATH.

_USER_LAYERS = """
import numpy as np
from npresnet import nn


class LeakyReLU(nn.Module):
    def __init__(self, slope=0.1, scale=1.0):
        super().__init__()
        self.slope, self.scale = slope, scale

    def forward(self, x):
        self._save_for_backward(x > 0)
        return np.where(x > 0, x, self.slope * x)

    def backward(self, dy):
        return self.scale * np.where(self._pop_cache(), dy, self.slope * dy)


def off_by_one_percent():
    return LeakyReLU(scale=1.01)


NOT_A_MODULE = 3
"""


def _cli(*args: str, cwd=None, pythonpath=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "npresnet.gradcheck", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


def test_cli_checks_a_named_model_with_a_line_per_array():
    result = _cli("--model", "resnet20", "--mode", "directional", "--input-shape", "2,3,8,8")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "gradcheck resnet20: input (2, 3, 8, 8), training mode, seed 0"
    assert lines[1] == "gradcheck (directional), atol=1e-05 rtol=0.001: passed"
    rows = [line for line in lines if line.startswith("  ok   ")]
    assert len(rows) == 1 + 19 * 3 + 2  # input, (conv, BN weight, BN bias) x 19, fc
    assert rows[0].split()[1:4] == ["input", "0", "(directional)"] and "fc.bias (directional)" in rows[-1]
    assert "60 array(s) checked" in lines[-1]


def test_cli_checks_a_users_class_and_reports_a_bug(tmp_path):
    (tmp_path / "mylayers.py").write_text(_USER_LAYERS)
    good = _cli("--model", "mylayers:LeakyReLU", "--input-shape", "2,3,4", cwd=tmp_path, pythonpath=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok   input 0      24 elements" in good.stdout
    bad = _cli("--model", "mylayers:off_by_one_percent", "--input-shape", "2,3,4", cwd=tmp_path, pythonpath=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAILED" in bad.stdout and "FAIL input 0" in bad.stdout
    assert re.search(r"^input 0: 2\d of 24 element\(s\) fail .* Worst at \(", bad.stdout, re.MULTILINE), bad.stdout
    assert "hint: analytic = 1.01 x numeric everywhere" in bad.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["resnet21"], "error: unknown model 'resnet21'; did you mean resnet20? models: resnet18,"),
        (
            ["resnet20"],
            "error: full mode runs 2 forward passes per element, and resnet20 with input (2, 3, 32, 32) "
            "has 275,866 (input and parameters): use --mode directional",
        ),
        (["mylayers:LeakyReLU"], "error: --input-shape is required for mylayers:LeakyReLU"),
        (["nosuchpackage.layers:X", "--input-shape", "2"], "error: cannot import 'nosuchpackage.layers'"),
        (["mylayers:Missing", "--input-shape", "2"], "error: module 'mylayers' has no attribute 'Missing'"),
        (["mylayers:NOT_A_MODULE", "--input-shape", "2"], "error: mylayers:NOT_A_MODULE is a int, not a Module class"),
        (["mylayers:np", "--input-shape", "2"], "error: mylayers:np is a module, not a Module class"),
        (["resnet20", "--input-shape", "2,0,8,8"], "error: argument --input-shape: every size must be at least 1"),
        (
            ["resnet20", "--mode", "directional", "--input-shape", "2,1,8,8"],
            "error: resnet20 on input (2, 1, 8, 8): Conv2d expects input with 3 channels",
        ),
        (["resnet20", "--mode", "fast"], "error: argument --mode: invalid choice: 'fast'"),
    ],
)
def test_cli_errors_are_argparse_errors_and_exit_2(tmp_path, args, message):
    """Every mistake is reported as argparse reports one: the usage line, then ``PROG: error: ...``."""
    (tmp_path / "mylayers.py").write_text(_USER_LAYERS)
    result = _cli("--model", *args, cwd=tmp_path, pythonpath=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("usage: python -m npresnet.gradcheck "), result.stderr
    assert lines[-1].startswith("python -m npresnet.gradcheck: " + message), result.stderr
    assert "Traceback" not in result.stderr
