"""Every layer against ``torch.nn.functional``: forward output, input gradient and every parameter
gradient, with a random upstream gradient, in float64 (worst relative error <= 1e-10) and
float32 (<= 1e-5). The error measure is max |ours - torch| / max |torch| over the whole array.

Run with ``-s`` to print the worst error seen per layer and dtype at the end of this file.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from cases import CONV2D_LAYER_CASES

from npresnet import nn
from npresnet.testing import kink_free, tie_free

DTYPES = [np.float64, np.float32]
WORST: dict[tuple[str, str], float] = defaultdict(float)


@pytest.fixture(scope="module", autouse=True)
def _report_worst_errors():
    """Print one table of the worst errors per layer and dtype (shown with ``pytest -s``)."""
    yield
    if WORST:
        lines = [f"  {layer:<30} {dtype:<8} {err:.2e}" for (layer, dtype), err in sorted(WORST.items())]
        print("\nworst relative error vs torch (max|a-b|/max|b|):\n" + "\n".join(lines))


@pytest.fixture
def close(max_rel_err, tol):
    """``close(layer, ours, reference)``: assert agreement within the dtype's tolerance; record it."""

    def check(layer: str, ours, reference) -> float:
        assert ours is not None, f"{layer}: no result (None)"
        dtype = np.dtype(ours.dtype)
        err = max_rel_err(ours, reference)
        key = (layer, dtype.name)
        WORST[key] = max(WORST[key], err)
        assert err <= tol[dtype], f"{layer} ({dtype}): worst relative error {err:.3e} > {tol[dtype]:.0e}"
        return err

    return check


@pytest.fixture
def versus_torch(close, to_torch, rng):
    """Run ``module`` and ``torch_fn`` on the same input and a random upstream gradient; compare
    y, dx and the gradient of every named parameter (torch_fn takes them as keyword tensors)."""

    def run(layer: str, module: nn.Module, torch_fn, x: np.ndarray, params=("weight", "bias")):
        present = [p for p in params if getattr(module, p, None) is not None]
        y = module(x)
        dy = rng.standard_normal(y.shape).astype(x.dtype)
        dx = module.backward(dy)
        assert y.dtype == x.dtype and dx.dtype == x.dtype, (y.dtype, dx.dtype, x.dtype)
        assert dx.shape == x.shape

        xt = to_torch(x, requires_grad=True)
        tensors = {p: to_torch(getattr(module, p).data, requires_grad=True) for p in present}
        yt = torch_fn(xt, **tensors)
        yt.backward(to_torch(dy))
        close(layer, y, yt.detach())
        close(layer, dx, xt.grad)
        for p in present:
            grad = getattr(module, p).grad
            assert grad is not None and grad.dtype == x.dtype, f"{layer}.{p}.grad: {grad!r}"
            close(layer, grad, tensors[p].grad)
        return y, dx

    return run


# ---------------------------------------------------------------------------------------------- Conv2d


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CONV2D_LAYER_CASES))
def test_conv2d(case, dtype, versus_torch, rng):
    shape, kwargs = CONV2D_LAYER_CASES[case]
    conv = nn.Conv2d(**kwargs, rng=rng).to(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    y, _ = versus_torch(
        "Conv2d",
        conv,
        lambda xt, weight, bias=None: TF.conv2d(
            xt, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups
        ),
        x,
    )
    assert (conv.bias is None) == (kwargs.get("bias", True) is False)


# ------------------------------------------------------------------------------------------ BatchNorm2d


def _bn_pair(rng, dtype, C=3, **kwargs):
    """An npresnet BatchNorm2d with non-trivial gamma/beta and the torch module with the same state."""
    ours = nn.BatchNorm2d(C, **kwargs).to(dtype)
    if ours.affine:
        ours.weight.data = rng.uniform(0.5, 2.0, C).astype(dtype)
        ours.bias.data = rng.standard_normal(C).astype(dtype)
    ref = torch.nn.BatchNorm2d(C, **kwargs).to(torch.float64 if dtype == np.float64 else torch.float32)
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})
    return ours, ref


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_training_forward_backward(dtype, versus_torch, rng):
    bn, _ = _bn_pair(rng, dtype)
    x = (3.0 + 2.0 * rng.standard_normal((4, 3, 5, 6))).astype(dtype)  # far from zero mean, unit var
    versus_torch(
        "BatchNorm2d train",
        bn,
        lambda xt, weight, bias: TF.batch_norm(xt, None, None, weight, bias, training=True, eps=bn.eps),
        x,
    )


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_running_stats_match_torch(dtype, momentum, close, to_torch, rng):
    bn, ref = _bn_pair(rng, dtype, momentum=momentum)
    for step in range(4):
        x = (step + rng.standard_normal((3, 3, 4, 5)) * (1 + step)).astype(dtype)
        y = bn(x)
        yt = ref(to_torch(x))
        close("BatchNorm2d train", y, yt.detach())
    assert bn.num_batches_tracked.dtype == np.int64
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 4
    close("BatchNorm2d running", bn.running_mean, ref.running_mean)
    close("BatchNorm2d running", bn.running_var, ref.running_var)
    assert bn.running_mean.dtype == dtype and bn.running_var.dtype == dtype
    # The statistics actually moved (a no-op update would also "match" at step 0).
    assert np.all(np.abs(bn.running_mean) > 0.05)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_eval_uses_running_stats(dtype, versus_torch, rng):
    bn, _ = _bn_pair(rng, dtype)
    bn.running_mean = rng.standard_normal(3).astype(dtype)
    bn.running_var = rng.uniform(0.5, 3.0, 3).astype(dtype)
    bn.eval()
    running_mean, running_var = bn.running_mean.copy(), bn.running_var.copy()
    x = rng.standard_normal((2, 3, 4, 3)).astype(dtype)
    versus_torch(
        "BatchNorm2d eval",
        bn,
        lambda xt, weight, bias: TF.batch_norm(
            xt, torch.from_numpy(running_mean), torch.from_numpy(running_var), weight, bias, training=False, eps=bn.eps
        ),
        x,
    )
    np.testing.assert_array_equal(bn.running_mean, running_mean)  # eval never updates them
    np.testing.assert_array_equal(bn.running_var, running_var)
    assert int(bn.num_batches_tracked) == 0


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_affine_false(dtype, training, versus_torch, rng):
    bn, ref = _bn_pair(rng, dtype, affine=False)
    assert bn.weight is None and bn.bias is None and list(dict(bn.named_parameters())) == []
    bn.train(training)
    ref.train(training)
    x = (1.0 + rng.standard_normal((2, 3, 4, 5))).astype(dtype)
    versus_torch(f"BatchNorm2d affine=False {'train' if training else 'eval'}", bn, ref, x, params=())


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_no_running_stats_uses_batch_stats(dtype, training, versus_torch, close, to_torch, rng):
    bn, ref = _bn_pair(rng, dtype, track_running_stats=False)
    assert bn.running_mean is None and bn.running_var is None and bn.num_batches_tracked is None
    assert list(bn.state_dict()) == ["weight", "bias"]
    bn.train(training)
    ref.train(training)
    x = (2.0 + rng.standard_normal((2, 3, 3, 4))).astype(dtype)
    # Batch statistics in both modes: torch's module, in the same mode, does exactly this too.
    versus_torch(
        f"BatchNorm2d no-stats {'train' if training else 'eval'}",
        bn,
        lambda xt, weight, bias: TF.batch_norm(xt, None, None, weight, bias, training=True, eps=bn.eps),
        x,
    )
    close("BatchNorm2d no-stats", bn(x), ref(to_torch(x)).detach())


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (1, 2, 1, 1)])
def test_batchnorm_single_value_per_channel_raises_in_training(shape, rng):
    bn = nn.BatchNorm2d(shape[1]).to(np.float64)
    x = rng.standard_normal(shape)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        bn(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        torch.nn.BatchNorm2d(shape[1]).double()(torch.from_numpy(x))  # the same rule as torch
    assert int(bn.num_batches_tracked) == 0  # a failed forward counts nothing
    bn.eval()
    assert bn(x).shape == shape  # evaluation is fine


# ------------------------------------------------------------------------------------------ ReLU, pools


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu(dtype, versus_torch, rng):
    x = kink_free((2, 3, 5, 4), rng, dtype=dtype)
    y, dx = versus_torch("ReLU", nn.ReLU(), lambda xt: TF.relu(xt), x)
    assert 0 < np.count_nonzero(y) < y.size


MAXPOOL_CASES = {
    "2x2": ((2, 3, 8, 6), dict(kernel_size=2)),
    "3x3-stride2-pad1": ((2, 2, 9, 7), dict(kernel_size=3, stride=2, padding=1)),
    "3x2-stride1x2-pad1x1": ((1, 2, 7, 8), dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 1))),
    "dilation2": ((2, 2, 9, 10), dict(kernel_size=3, stride=1, padding=1, dilation=(2, 3))),
    "ceil-mode": ((2, 2, 8, 7), dict(kernel_size=3, stride=2, ceil_mode=True)),
    "ceil-mode-pad": ((1, 3, 10, 9), dict(kernel_size=(3, 2), stride=(2, 3), padding=1, ceil_mode=True)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(MAXPOOL_CASES))
def test_maxpool2d(case, dtype, versus_torch, rng):
    shape, kwargs = MAXPOOL_CASES[case]
    x = tie_free(shape, rng, dtype=dtype)
    versus_torch("MaxPool2d", nn.MaxPool2d(**kwargs), lambda xt: TF.max_pool2d(xt, **kwargs), x)


def test_maxpool2d_ties_go_to_first_max_like_torch(rng, to_torch):
    """Windows full of equal values (as after a ReLU): the whole gradient goes to the first maximum
    in row-major window order, exactly as torch does on the CPU."""
    x = np.zeros((2, 2, 6, 7))
    x[0, 0, 2:4, 2:4] = 1.0  # a 2x2 plateau of maxima
    x[1, 1] = np.repeat(rng.integers(0, 2, (6, 1)), 7, axis=1)  # rows of ties
    pool = nn.MaxPool2d(3, stride=2, padding=1)
    y = pool(x)
    dy = rng.standard_normal(y.shape)
    dx = pool.backward(dy)
    xt = to_torch(x, requires_grad=True)
    TF.max_pool2d(xt, 3, stride=2, padding=1).backward(to_torch(dy))
    np.testing.assert_array_equal(dx, xt.grad.numpy())
    # Spelled out for one window: all nine cells of the window at (0, 0) are 0; the first one wins.
    x1 = np.zeros((1, 1, 3, 3))
    one = nn.MaxPool2d(3)
    one(x1)
    expected = np.zeros((1, 1, 3, 3))
    expected[0, 0, 0, 0] = 5.0
    np.testing.assert_array_equal(one.backward(np.full((1, 1, 1, 1), 5.0)), expected)


AVGPOOL_CASES = {
    "2x2": ((2, 3, 8, 6), dict(kernel_size=2)),
    "3x3-stride2-pad1-include": ((2, 2, 9, 7), dict(kernel_size=3, stride=2, padding=1, count_include_pad=True)),
    "3x3-stride2-pad1-exclude": ((2, 2, 9, 7), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    "3x2-pad1x1-exclude": (
        (1, 2, 7, 8),
        dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 1), count_include_pad=False),
    ),
    "ceil-mode-include": ((2, 2, 8, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    "ceil-mode-exclude": (
        (1, 3, 10, 9),
        dict(kernel_size=(3, 2), stride=(2, 3), padding=1, ceil_mode=True, count_include_pad=False),
    ),
    "divisor-override": ((2, 2, 7, 6), dict(kernel_size=3, stride=2, padding=1, divisor_override=4)),
    "divisor-override-ceil": ((2, 2, 8, 7), dict(kernel_size=2, stride=3, ceil_mode=True, divisor_override=3)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(AVGPOOL_CASES))
def test_avgpool2d(case, dtype, versus_torch, rng):
    shape, kwargs = AVGPOOL_CASES[case]
    x = rng.standard_normal(shape).astype(dtype)
    versus_torch("AvgPool2d", nn.AvgPool2d(**kwargs), lambda xt: TF.avg_pool2d(xt, **kwargs), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, output_size",
    [((2, 3, 5, 7), 1), ((2, 3, 5, 7), (3, 2)), ((1, 2, 7, 5), (3, 4)), ((2, 2, 6, 4), (6, 4)), ((2, 2, 4, 9), (2, 1))],
)
def test_adaptive_avgpool2d(shape, output_size, dtype, versus_torch, rng):
    x = rng.standard_normal(shape).astype(dtype)
    y, _ = versus_torch(
        "AdaptiveAvgPool2d", nn.AdaptiveAvgPool2d(output_size), lambda xt: TF.adaptive_avg_pool2d(xt, output_size), x
    )
    expected = (output_size, output_size) if isinstance(output_size, int) else output_size
    assert y.shape == (*shape[:2], *expected)


# ------------------------------------------------------------------------------- Flatten, Linear, ...


@pytest.mark.parametrize("dtype", DTYPES)
def test_flatten(dtype, versus_torch, rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    y, _ = versus_torch("Flatten", nn.Flatten(), lambda xt: torch.flatten(xt, 1), x)
    assert y.shape == (2, 60)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 7), (1, 7), (2, 3, 7)])
def test_linear(shape, bias, dtype, versus_torch, rng):
    linear = nn.Linear(7, 4, bias=bias, rng=rng).to(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    y, _ = versus_torch("Linear", linear, lambda xt, weight, bias=None: TF.linear(xt, weight, bias), x)
    assert y.shape == (*shape[:-1], 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity(dtype, rng):
    x = rng.standard_normal((2, 3, 4, 4)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    identity = nn.Identity()
    np.testing.assert_array_equal(identity(x), x)
    np.testing.assert_array_equal(identity.backward(dy), dy)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sequential_small_network(dtype, close, to_torch, rng):
    """Conv-BN-ReLU-MaxPool-Conv-BN-ReLU-AvgPool-Flatten-Linear, all parameter gradients by name.
    (No conv bias before a training BatchNorm: its exact gradient is 0, so only rounding noise.)"""
    ours = nn.Sequential(
        nn.Conv2d(3, 4, (3, 2), stride=(1, 2), padding=1, bias=False, rng=rng),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False, rng=rng),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((2, 1)),
        nn.Flatten(),
        nn.Linear(12, 5, rng=rng),
    ).to(dtype)
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, (3, 2), stride=(1, 2), padding=1, bias=False),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, stride=2, padding=1),
        torch.nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False),
        torch.nn.BatchNorm2d(6),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d((2, 1)),
        torch.nn.Flatten(),
        torch.nn.Linear(12, 5),
    ).to(torch.float64 if dtype == np.float64 else torch.float32)
    for bn in (ours[1], ours[5]):
        bn.weight.data = rng.uniform(0.5, 1.5, bn.num_features).astype(dtype)
        bn.bias.data = rng.standard_normal(bn.num_features).astype(dtype)
    ref.load_state_dict({k: to_torch(v) for k, v in ours.state_dict().items()})

    x = rng.standard_normal((2, 3, 10, 13)).astype(dtype)
    y = ours(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = ours.backward(dy)
    xt = to_torch(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(to_torch(dy))
    close("Sequential", y, yt.detach())
    close("Sequential", dx, xt.grad)
    torch_params = dict(ref.named_parameters())
    assert list(dict(ours.named_parameters())) == list(torch_params)
    for name, param in ours.named_parameters():
        close("Sequential", param.grad, torch_params[name].grad)
    torch_state = ref.state_dict()
    for name, buf in ours.named_buffers():
        if name.endswith("num_batches_tracked"):
            assert int(buf) == int(torch_state[name]) == 1
        else:
            close("Sequential", buf, torch_state[name])


# ---------------------------------------------------------------------------------------------- Dropout


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_eval_is_identity(dtype, rng):
    drop = nn.Dropout(0.5, seed=0).eval()
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_array_equal(drop(x), x)
    np.testing.assert_array_equal(drop.backward(dy), dy)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_dropout_training_mask(p, dtype, rng):
    drop = nn.Dropout(p, seed=123)
    x = rng.uniform(1.0, 2.0, (40, 50, 10)).astype(dtype)  # never 0, so y == 0 means "dropped"
    y = drop(x)
    assert y.dtype == dtype
    kept = y != 0
    # Survivors are scaled by 1 / (1 - p); the dropped ones are exactly 0.
    np.testing.assert_allclose(y[kept], x[kept] / dtype(1.0 - p), rtol=1e-6 if dtype == np.float32 else 1e-14)
    # The backward uses the very same mask and scale.
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx = drop.backward(dy)
    np.testing.assert_array_equal(dx == 0, ~kept | (dy == 0))
    np.testing.assert_allclose(dx[kept], dy[kept] / dtype(1.0 - p), rtol=1e-6 if dtype == np.float32 else 1e-14)
    # Statistics: the kept fraction is Binomial(n, 1-p) / n, here checked to 5 standard deviations.
    n = x.size
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(kept.mean() - (1 - p)) < 5 * sigma
    # No spatial structure: each of the leading rows keeps about the same fraction.
    row_fraction = kept.reshape(40, -1).mean(axis=1)
    assert np.all(np.abs(row_fraction - (1 - p)) < 5 * np.sqrt(p * (1 - p) / 500))
    # E[y] = x: the mean of y / x is 1 within 5 standard deviations (of a scaled Bernoulli).
    ratio = (y / x).astype(np.float64)
    assert abs(ratio.mean() - 1.0) < 5 * np.sqrt(p / (1 - p) / n)


def test_dropout_seeded_reproducible_and_fresh_each_call(rng):
    x = rng.standard_normal((8, 16))
    a, b = nn.Dropout(0.5, seed=7), nn.Dropout(0.5, seed=7)
    first_a, first_b = a(x), b(x)
    np.testing.assert_array_equal(first_a, first_b)  # same seed, same masks
    second_a = a(x)
    assert not np.array_equal(first_a != 0, second_a != 0)  # a new mask on every call
    other = nn.Dropout(0.5, seed=8)(x)
    assert not np.array_equal(first_a != 0, other != 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_extreme_probabilities(dtype, rng):
    x = rng.standard_normal((4, 5)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    keep_all = nn.Dropout(0.0, seed=0)
    np.testing.assert_array_equal(keep_all(x), x)
    np.testing.assert_array_equal(keep_all.backward(dy), dy)
    drop_all = nn.Dropout(1.0, seed=0)
    assert np.all(drop_all(x) == 0) and np.all(drop_all.backward(dy) == 0)


# ----------------------------------------------------------------------------------- CrossEntropyLoss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.35])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(reduction, label_smoothing, dtype, close, to_torch, rng):
    N, K = 7, 5
    logits = (3.0 * rng.standard_normal((N, K))).astype(dtype)
    target = rng.integers(0, K, N)
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing, reduction=reduction)
    loss = criterion(logits, target)
    assert loss.dtype == dtype and loss.shape == ((N,) if reduction == "none" else ())
    dloss = rng.standard_normal(loss.shape).astype(dtype) if reduction == "none" else dtype(rng.uniform(0.5, 2))
    dlogits = criterion.backward(dloss)
    assert dlogits.dtype == dtype

    lt = to_torch(logits, requires_grad=True)
    loss_t = TF.cross_entropy(lt, torch.from_numpy(target), reduction=reduction, label_smoothing=label_smoothing)
    loss_t.backward(to_torch(np.asarray(dloss)))
    close("CrossEntropyLoss", np.asarray(loss), loss_t.detach())
    close("CrossEntropyLoss", dlogits, lt.grad)


def test_cross_entropy_default_upstream_is_one(close, to_torch, rng):
    logits, target = rng.standard_normal((4, 3)), np.array([0, 2, 1, 2])
    criterion = nn.CrossEntropyLoss()
    criterion(logits, target)
    lt = to_torch(logits, requires_grad=True)
    TF.cross_entropy(lt, torch.from_numpy(target)).backward()
    close("CrossEntropyLoss", criterion.backward(), lt.grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1e3, 1e4, 3e4])
def test_cross_entropy_large_logits_stable(scale, dtype, close, to_torch, rng):
    """Logits in the thousands overflow a naive exp(); the shifted log-sum-exp stays finite."""
    N, K = 6, 4
    logits = (scale * rng.standard_normal((N, K))).astype(dtype)
    logits[0] = scale  # a row of ties at a huge value
    target = rng.integers(0, K, N)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1, reduction="sum")
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # underflow to 0 is expected
        loss = criterion(logits, target)
        dlogits = criterion.backward()
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    lt = to_torch(logits, requires_grad=True)
    loss_t = TF.cross_entropy(lt, torch.from_numpy(target), reduction="sum", label_smoothing=0.1)
    loss_t.backward()
    close("CrossEntropyLoss large", np.asarray(loss), loss_t.detach())
    close("CrossEntropyLoss large", dlogits, lt.grad)
