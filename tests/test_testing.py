"""npresnet.testing catches the bugs people plant in their own layers, and passes the correct ones.

Five user-style layers, written here from scratch the way a student would (forward, cache, hand
derived backward), each with a correct and a buggy backward:

    transposed weight gradient   a square Linear whose dW is transposed: right shape, wrong values
    BatchNorm missing a term     dx without the x_hat * mean(g * x_hat) term
    wrong max                    2x2 max pooling that routes dy to the window's minimum
    residual fork                y = x + conv(relu(conv(x))) whose backward forgets the identity branch
    1% scale error               LeakyReLU whose dx is 1.01 times too large

Each tool (gradcheck on the module, check_module full and directional, assert_matches_torch against
the torch layer) raises an AssertionError naming the wrong array on every buggy layer and passes
every correct one. Then: what check_module does for you (a copy, float64, constants replaced,
several inputs), assert_matches_torch's other promises, and the strategies (torch accepts every
configuration they draw, and they reach the corners).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from npresnet import nn
from npresnet.gradcheck import GradcheckError, NondifferentiableError, gradcheck
from npresnet.testing import (
    TorchMismatchError,
    arrays_for,
    assert_matches_torch,
    batchnorm_configs,
    check_module,
    conv2d_configs,
    kink_free,
    pool2d_configs,
    tie_free,
)

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Five user-style layers, each with a planted bug behind a flag.


class SquareLinear(nn.Module):
    """y = x W^T + b with W (F, F). Bug: dW = (dy^T x)^T."""

    def __init__(self, features: int, bug: bool = False) -> None:
        super().__init__()
        rng = np.random.default_rng(1)
        self.weight = nn.Parameter(rng.standard_normal((features, features)) / np.sqrt(features))
        self.bias = nn.Parameter(rng.standard_normal(features))
        self.bug = bug

    def forward(self, x):
        self._save_for_backward(x)
        return x @ self.weight.data.T + self.bias.data

    def backward(self, dy):
        x = self._pop_cache()
        dweight = dy.T @ x  # (F, F): dL/dW[o, i] = sum_n dy[n, o] x[n, i]
        self.weight.accumulate_grad(dweight.T if self.bug else dweight)
        self.bias.accumulate_grad(dy.sum(axis=0))
        return dy @ self.weight.data


class BatchNorm(nn.Module):
    """Batch normalisation over (N, H, W) per channel, batch statistics only (like torch's
    BatchNorm2d(track_running_stats=False)). Bug: dx drops the x_hat * mean(g * x_hat) term."""

    def __init__(self, channels: int, bug: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(np.ones(channels))
        self.bias = nn.Parameter(np.zeros(channels))
        self.eps, self.bug = eps, bug

    def forward(self, x):
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        invstd = 1.0 / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + self.eps)
        x_hat = (x - mean) * invstd
        self._save_for_backward((x_hat, invstd))
        return self.weight.data.reshape(1, -1, 1, 1) * x_hat + self.bias.data.reshape(1, -1, 1, 1)

    def backward(self, dy):
        x_hat, invstd = self._pop_cache()
        self.weight.accumulate_grad((dy * x_hat).sum(axis=(0, 2, 3)))
        self.bias.accumulate_grad(dy.sum(axis=(0, 2, 3)))
        g = dy * self.weight.data.reshape(1, -1, 1, 1)  # dL/dx_hat
        dx = g - g.mean(axis=(0, 2, 3), keepdims=True)
        if not self.bug:
            dx -= x_hat * (g * x_hat).mean(axis=(0, 2, 3), keepdims=True)
        return invstd * dx


class MaxPool2x2(nn.Module):
    """2x2 max pooling, stride 2, even H and W. Bug: dy goes to the window's minimum."""

    def __init__(self, bug: bool = False) -> None:
        super().__init__()
        self.bug = bug

    def forward(self, x):
        N, C, H, W = x.shape
        windows = x.reshape(N, C, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(N, C, H // 2, W // 2, 4)
        chosen = windows.argmin(axis=-1) if self.bug else windows.argmax(axis=-1)
        self._save_for_backward((x.shape, chosen))
        return windows.max(axis=-1)

    def backward(self, dy):
        (N, C, H, W), chosen = self._pop_cache()
        dwindows = np.zeros((*dy.shape, 4), dy.dtype)
        np.put_along_axis(dwindows, chosen[..., None], dy[..., None], axis=-1)
        return dwindows.reshape(N, C, H // 2, W // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(N, C, H, W)


class Residual(nn.Module):
    """y = x + conv2(relu(conv1(x))), 3x3 convolutions with padding 1. Bug: the backward returns
    only the branch's gradient and forgets the identity's."""

    def __init__(self, channels: int, bug: bool = False) -> None:
        super().__init__()
        rng = np.random.default_rng(2)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, rng=rng)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, rng=rng)
        self.bug = bug

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x)))

    def backward(self, dy):
        dx_branch = self.conv1.backward(self.relu.backward(self.conv2.backward(dy)))
        return dx_branch if self.bug else dx_branch + dy


class LeakyReLU(nn.Module):
    """y = x if x > 0 else slope * x. Bug: dx 1% too large."""

    def __init__(self, slope: float = 0.1, bug: bool = False) -> None:
        super().__init__()
        self.slope, self.bug = slope, bug

    def forward(self, x):
        self._save_for_backward(x > 0)
        return np.where(x > 0, x, self.slope * x)

    def backward(self, dy):
        dx = np.where(self._pop_cache(), dy, self.slope * dy)
        return 1.01 * dx if self.bug else dx


class TorchResidual(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x)))


# name: (build(bug), torch twin, input shape, the array a failure must name in gradcheck / in torch terms, hint)
LAYERS = {
    "transposed weight gradient": (
        lambda bug: SquareLinear(5, bug),
        lambda: torch.nn.Linear(5, 5),
        (3, 5),
        "weight",
        "weight.grad",
        "wrong places",
    ),
    "batchnorm missing a term": (
        lambda bug: BatchNorm(3, bug),
        lambda: torch.nn.BatchNorm2d(3, track_running_stats=False),
        (2, 3, 3, 4),
        "input 0",
        "input gradient",
        "",
    ),
    "gradient routed to the wrong max": (
        lambda bug: MaxPool2x2(bug),
        lambda: torch.nn.MaxPool2d(2),
        (2, 2, 4, 6),
        "input 0",
        "input gradient",
        "routed",
    ),
    "residual fork forgets a branch": (
        lambda bug: Residual(2, bug),
        lambda: TorchResidual(2),
        (2, 2, 5, 4),
        "input 0",
        "input gradient",
        "every branch",
    ),
    "1% scale error": (
        lambda bug: LeakyReLU(0.1, bug),
        lambda: torch.nn.LeakyReLU(0.1),
        (3, 4, 5),
        "input 0",
        "input gradient",
        "1.01 x",
    ),
}


def run_tool(tool: str, case: str, bug: bool) -> None:
    build, torch_twin, shape, _, _, _ = LAYERS[case]
    layer = build(bug)
    if tool == "gradcheck":
        x = tie_free(shape, np.random.default_rng(3))  # tie- and kink-free
        gradcheck(layer.to(np.float64), x)
    elif tool == "check_module":
        check_module(layer, shape)
    elif tool == "check_module directional":
        check_module(layer, shape, mode="directional")
    else:
        x = tie_free(shape, np.random.default_rng(4))
        assert_matches_torch(layer.to(np.float64), torch_twin(), x)


TOOLS = ["gradcheck", "check_module", "check_module directional", "assert_matches_torch"]


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("case", LAYERS)
def test_each_tool_passes_the_correct_layer(case, tool):
    run_tool(tool, case, bug=False)


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("case", LAYERS)
def test_each_tool_catches_the_planted_bug(case, tool):
    _, _, _, culprit, torch_name, hint = LAYERS[case]
    with pytest.raises(AssertionError) as info:
        run_tool(tool, case, bug=True)
    message = str(info.value)
    assert not isinstance(info.value, NondifferentiableError), message  # a bug, not a kink
    blamed = re.findall(r"^  (\S[^:]*): (?:\d+ of \d+ element|analytic|npresnet)", message, re.MULTILINE)
    if tool == "assert_matches_torch":
        assert isinstance(info.value, TorchMismatchError)
        assert blamed == [torch_name], message  # only the wrong array is blamed
    else:
        assert isinstance(info.value, GradcheckError)
        assert blamed == [culprit + (" (directional)" if tool.endswith("directional") else "")], message
    for measure in ("max |a-n|/(|a|+|n|)", "norm ratio", "max |a-n| ="):
        assert measure in message, message
    if tool == "check_module directional":  # one slope: a ratio, never a diagnosis
        assert "hint: along the check direction analytic = " in message and "constant factor" not in message
    elif hint:
        assert hint in message, message


def test_check_module_replays_what_it_drew():
    with pytest.raises(GradcheckError) as info:
        check_module(LeakyReLU(bug=True), (3, 4, 5), seed=7)
    message = str(info.value)
    assert message.startswith("check_module(LeakyReLU, mode='full', seed=7): gradcheck (full")
    assert "note: inputs drawn with seed=7: input 0 (3, 4, 5) kink-free" in message


# ---------------------------------------------------------------------------------------------
# What check_module does for you.


class ForgetsGamma(BatchNorm):
    """Planted bug that a constant gamma = 1 hides: dx is not multiplied by gamma."""

    def backward(self, dy):
        x_hat, invstd = self._pop_cache()
        self.weight.accumulate_grad((dy * x_hat).sum(axis=(0, 2, 3)))
        self.bias.accumulate_grad(dy.sum(axis=(0, 2, 3)))
        dx = dy - dy.mean(axis=(0, 2, 3), keepdims=True)
        return invstd * (dx - x_hat * (dy * x_hat).mean(axis=(0, 2, 3), keepdims=True))


def test_constant_parameters_are_replaced_so_a_missing_gamma_shows():
    layer = ForgetsGamma(3)
    assert check_module(layer, (2, 3, 3, 3), randomize_constants=False).passed  # gamma = 1: vacuous
    with pytest.raises(GradcheckError, match="input 0") as info:
        check_module(layer, (2, 3, 3, 3))
    assert "2 constant array(s) replaced by random values near them: weight, bias" in str(info.value)
    np.testing.assert_array_equal(layer.weight.data, np.ones(3))  # the user's layer untouched


def test_check_module_works_on_a_float64_copy_and_leaves_the_module_alone():
    block = nn.Sequential(nn.Conv2d(2, 3, 3, rng=np.random.default_rng(5)), nn.BatchNorm2d(3), nn.ReLU())
    before = {k: v.copy() for k, v in block.state_dict().items()}
    report = check_module(block, (2, 2, 5, 5))
    assert report.passed and [a.name for a in report.arrays] == ["input 0", "0.weight", "0.bias", "1.weight", "1.bias"]
    for key, value in block.state_dict().items():
        assert value.dtype == before[key].dtype, key  # still float32
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    assert all(p.grad is None for p in block.parameters())


class Bilinear(nn.Module):
    """y = a * b + a (two inputs, a used twice)."""

    def forward(self, a, b):
        self._save_for_backward((a, b))
        return a * b + a

    def backward(self, dy):
        a, b = self._pop_cache()
        return dy * (b + 1), dy * a


def test_check_module_takes_several_inputs_as_shapes_or_arrays():
    report = check_module(Bilinear(), (2, 3), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert report.passed and [a.name for a in report.arrays] == ["input 0", "input 1"]
    assert "input 0 (2, 3) kink-free" in "\n".join(report.notes)


def test_check_module_draws_tie_free_inputs_for_max_pooling():
    report = check_module(nn.Sequential(nn.MaxPool2d(2), nn.ReLU()), (1, 2, 4, 4))
    assert report.passed and "tie-free" in report.notes[-1]


def test_check_module_refuses_what_it_cannot_check():
    with pytest.raises(TypeError, match="npresnet.nn.Module, got function"):
        check_module(lambda x: x, (2, 3))
    with pytest.raises(TypeError, match="input 0: expected a shape"):
        check_module(nn.ReLU(), "2, 3")
    with pytest.raises(ValueError, match="needs the input"):
        check_module(nn.ReLU())


# ---------------------------------------------------------------------------------------------
# assert_matches_torch's other promises.


def test_assert_matches_torch_compares_buffers_and_leaves_the_module_alone():
    bn = nn.BatchNorm2d(3).to(np.float64)
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 4))
    assert_matches_torch(bn, torch.nn.BatchNorm2d(3), x)
    np.testing.assert_array_equal(bn.running_mean, np.zeros(3))  # preserved_state
    assert bn.weight.grad is None and int(bn.num_batches_tracked) == 0
    with pytest.raises(TorchMismatchError) as info:  # momentum differs: buffers
        assert_matches_torch(nn.BatchNorm2d(3, momentum=0.2).to(np.float64), torch.nn.BatchNorm2d(3), x)
    message = str(info.value)
    assert "2 of 7 arrays differ" in message and "running_mean (buffer)" in message
    assert "npresnet = 2 x torch everywhere" in message
    assert "agree: output, input gradient, weight.grad, bias.grad, num_batches_tracked (buffer)" in message


def test_assert_matches_torch_explains_mismatched_modules():
    x = np.zeros((2, 5))
    with pytest.raises(ValueError, match=r"only in torch: \['bias'\]; only in npresnet: none"):
        assert_matches_torch(nn.Linear(5, 3, bias=False), torch.nn.Linear(5, 3), x)
    with pytest.raises(ValueError, match=r"weight has shape \(3, 5\) in npresnet but \(4, 5\) in torch"):
        assert_matches_torch(nn.Linear(5, 3), torch.nn.Linear(5, 4), x)
    with pytest.raises(TypeError, match="torch_module must be a torch.nn.Module"):
        assert_matches_torch(nn.ReLU(), nn.ReLU(), x)


_NO_TORCH = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch' (blocked)")
sys.meta_path.insert(0, NoTorch())
import numpy as np
from npresnet import nn
from npresnet.testing import assert_matches_torch, check_module
check_module(nn.ReLU(), (2, 3))                       # the rest of npresnet.testing works
try:
    assert_matches_torch(nn.ReLU(), None, np.ones((2, 3)))
except ImportError as error:
    print("ImportError:", error)
"""


def test_assert_matches_torch_without_torch_is_one_clear_error():
    result = subprocess.run([sys.executable, "-c", _NO_TORCH], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "ImportError: assert_matches_torch needs PyTorch as the referee, and it is not "
        "installed: pip install torch (the CPU wheel is enough)"
    )


def test_import_npresnet_needs_neither_hypothesis_nor_torch_nor_pytest():
    code = textwrap.dedent("""
        import sys, npresnet, npresnet.testing
        print(sorted({m.split('.')[0] for m in sys.modules} & {'hypothesis', 'torch', 'pytest', '_pytest'}))
        npresnet.testing.conv2d_configs                      # the strategies load hypothesis on first use
        print('hypothesis' in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "True"]


# ---------------------------------------------------------------------------------------------
# The strategies: only configurations torch accepts, and the corners.

STRATEGIES = {
    "conv2d": conv2d_configs(),
    "maxpool2d": pool2d_configs(),
    "avgpool2d": pool2d_configs(kind="avg"),
    "batchnorm2d": batchnorm_configs(),
    "thin conv3x3": conv2d_configs(
        kernel=3, stride=1, groups=1, channels_per_group=(1, 32), padding=(0, 6), padding_within_kernel=True
    ),
}


@pytest.mark.parametrize("name", STRATEGIES)
def test_torch_accepts_every_configuration_and_npresnet_matches_it(name):
    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(STRATEGIES[name])
    def check(config):
        arrays = arrays_for(config)
        torch_layer = config.torch_layer()
        x = torch.from_numpy(arrays.x.copy()).requires_grad_(True)
        y = torch_layer(x)  # none raises in torch
        y.backward(torch.from_numpy(arrays.dy))
        assert tuple(y.shape) == config.output_shape and min(y.shape) >= 1
        assert_matches_torch(
            config.layer(),
            config.torch_layer(),
            arrays.x,
            train=getattr(config, "training", True),
            rtol=1e-10,
            atol=1e-10,
        )

    check()


def test_the_strategies_reach_the_corners():
    seen: dict[str, set] = {}

    def saw(what: str, value: object) -> None:
        seen.setdefault(what, set()).add(value)

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(conv=conv2d_configs(), pool=pool2d_configs(), avg=pool2d_configs(kind="avg"), bn=batchnorm_configs())
    def record(conv, pool, avg, bn):
        for kind, c in (("conv", conv), ("pool", pool), ("avg", avg)):
            stride = c.stride or c.kernel_size
            saw(f"{kind} stride > kernel", any(s > k for s, k in zip(stride, c.kernel_size)))
            saw(f"{kind} output size 1", min(c.output_size) == 1)
            saw(f"{kind} batch 1", c.batch == 1)
            saw(f"{kind} H != W", c.size[0] != c.size[1])
            saw(f"{kind} non-square kernel", c.kernel_size[0] != c.kernel_size[1])
            saw(f"{kind} ceil_mode", getattr(c, "ceil_mode", False))
        for kind, c in (("conv", conv), ("pool", pool)):
            saw(f"{kind} dilation > 1", max(c.dilation) > 1)
        saw("conv groups > 1", conv.groups > 1)
        saw(
            "conv padding beyond the kernel's reach",
            any(p > d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size)),
        )
        saw("pool default stride", pool.stride is None)
        saw("avg divisor_override", avg.divisor_override is not None)
        saw("avg count_include_pad", avg.count_include_pad)
        saw("bn batch 1", bn.batch == 1)
        saw("bn training", bn.training)
        saw("bn momentum None", bn.momentum is None)
        saw("bn running stats", bn.track_running_stats)
        saw("bn affine", bn.affine)

    record()
    one_sided = {"pool default stride", "avg divisor_override"}
    missing = [
        what for what, values in seen.items() if True not in values or (what not in one_sided and False not in values)
    ]
    assert "conv ceil_mode" in seen and seen.pop("conv ceil_mode") == {False}  # convolutions have no ceil_mode
    missing = [m for m in missing if m != "conv ceil_mode"]
    assert not missing, f"never drawn (or always drawn): {missing}"


class KinkAt(nn.Module):
    """relu(x - c): a kink wherever an input equals c."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x):
        self._save_for_backward(x > self.c)
        return np.maximum(x - self.c, 0.0)

    def backward(self, dy):
        return dy * self._pop_cache()


def test_check_module_draws_again_when_a_kink_spoils_the_check():
    unlucky = float(kink_free((2, 3), np.random.default_rng(0))[1, 2])  # what seed 0 draws at (1, 2)
    report = check_module(KinkAt(unlucky), (2, 3))
    assert report.passed
    assert "seed=0 put a kink within eps of the point (input 0): drew again" in report.notes
    assert "inputs drawn with seed=1: input 0 (2, 3) kink-free" in report.notes
    with pytest.raises(NondifferentiableError, match="kink") as info:  # arrays given: nothing to redraw
        check_module(KinkAt(unlucky), kink_free((2, 3), np.random.default_rng(0)))
    assert "drew again" not in str(info.value)


def test_beyond_torch_pool_configs_reach_what_npresnet_takes_and_torch_refuses():
    """torch_valid=False (for npresnet's kernels against its references) goes past torch's limits."""
    from npresnet.testing.strategies import _windows_all_see_input

    seen = set()

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(pool2d_configs(dilation=(1, 2), torch_valid=False))
    def record(c):
        stride = c.stride or c.kernel_size
        if any(p > k // 2 for p, k in zip(c.padding, c.kernel_size)):
            seen.add("padding above half the kernel")
        if not all(
            _windows_all_see_input(n, k, s, p, d, c.ceil_mode)
            for n, k, s, p, d in zip(c.size, c.kernel_size, stride, c.padding, c.dilation)
        ):
            seen.add("a window of padding only")
        assert min(c.output_size) >= 1

    record()
    assert seen == {"padding above half the kernel", "a window of padding only"}
