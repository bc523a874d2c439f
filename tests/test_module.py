"""The Module API: names and order of parameters, buffers and state_dict keys (PyTorch's), loading
state_dicts, train/eval, gradient accumulation and freezing, attribute registration, dtype and
backend conversion, no_grad, forward hooks."""

from __future__ import annotations

import contextlib
import json
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch

import npresnet
from npresnet import functional as F
from npresnet import models, nn
from npresnet.state_checks import StateError


class Block(nn.Module):
    """A residual-ish block with named children, as a user would write one."""

    def __init__(self, channels: int, rng=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, rng=rng)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.downsample = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False, rng=rng), nn.BatchNorm2d(channels))

    def forward(self, x):
        return self.relu(self.bn1(self.conv1(x)) + self.downsample(x))

    def backward(self, dout):
        d = self.relu.backward(dout)
        return self.conv1.backward(self.bn1.backward(d)) + self.downsample.backward(d)


class TorchBlock(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.relu = torch.nn.ReLU()
        self.downsample = torch.nn.Sequential(
            torch.nn.Conv2d(channels, channels, 1, bias=False), torch.nn.BatchNorm2d(channels)
        )

    def forward(self, x):
        return self.relu(self.bn1(self.conv1(x)) + self.downsample(x))


def small_net(rng=None) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            [
                (
                    "stem",
                    nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False, rng=rng), nn.BatchNorm2d(4), nn.ReLU()),
                ),
                ("layer1", nn.Sequential(Block(4, rng), Block(4, rng))),
                ("pool", nn.AdaptiveAvgPool2d(1)),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(4, 3, rng=rng)),
            ]
        )
    )


def small_torch_net() -> torch.nn.Sequential:
    return torch.nn.Sequential(
        OrderedDict(
            [
                (
                    "stem",
                    torch.nn.Sequential(
                        torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU()
                    ),
                ),
                ("layer1", torch.nn.Sequential(TorchBlock(4), TorchBlock(4))),
                ("pool", torch.nn.AdaptiveAvgPool2d(1)),
                ("flatten", torch.nn.Flatten()),
                ("fc", torch.nn.Linear(4, 3)),
            ]
        )
    )


# --------------------------------------------------------------------------------- names and order


def test_conv_bn_state_dict_keys_match_torch():
    ours = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4))
    expected = ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert list(ours.state_dict()) == expected == list(ref.state_dict())
    assert [k for k, _ in ours.named_parameters()] == ["0.weight", "1.weight", "1.bias"]
    assert [k for k, _ in ours.named_buffers()] == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]


def test_nested_names_and_order_match_torch():
    ours, ref = small_net(), small_torch_net()
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [k for k, _ in ours.named_parameters()] == [k for k, _ in ref.named_parameters()]
    assert [k for k, _ in ours.named_buffers()] == [k for k, _ in ref.named_buffers()]
    assert [k for k, _ in ours.named_modules()] == [k for k, _ in ref.named_modules()]
    assert "layer1.1.downsample.1.running_var" in ours.state_dict()
    for (name, param), (_, tparam) in zip(ours.named_parameters(), ref.named_parameters()):
        assert param.shape == tuple(tparam.shape), name
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())


def test_shared_parameter_is_listed_once():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight
    names = [k for k, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.bias"]


# ---------------------------------------------------------------------------------- load_state_dict


def _torch_net_with_nontrivial_state(rng) -> torch.nn.Module:
    ref = small_torch_net()
    with torch.no_grad():
        for tensor in ref.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, tuple(tensor.shape))))
            else:
                tensor.fill_(int(rng.integers(1, 100)))
    return ref


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_load_torch_state_dict_and_match_forward(dtype, rng):
    ref = _torch_net_with_nontrivial_state(rng).eval()
    ours = small_net().to(dtype).eval()
    result = ours.load_state_dict(ref.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    for key, value in ours.state_dict().items():
        tvalue = ref.state_dict()[key]
        assert isinstance(value, np.ndarray)
        if key.endswith("num_batches_tracked"):
            assert value.dtype == np.int64 and int(value) == int(tvalue)
        else:
            assert value.dtype == dtype, key  # converted to the module's dtype
            np.testing.assert_array_equal(value, tvalue.numpy().astype(dtype))
    x = rng.standard_normal((2, 3, 6, 5))
    expected = ref.double()(torch.from_numpy(x)).detach().numpy()
    got = ours(x.astype(dtype))
    np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_load_numpy_state_dict_copies(rng):
    source = {
        k: rng.standard_normal(v.shape) if v.dtype.kind == "f" else np.array(5)
        for k, v in small_net().state_dict().items()
    }
    model = small_net()
    model.load_state_dict(source)
    state = model.state_dict()
    for key, value in source.items():
        np.testing.assert_array_equal(state[key], value.astype(state[key].dtype))
    source["fc.weight"][...] = 0.0  # the module holds copies, not views
    assert np.all(state["fc.weight"] != 0)
    assert state["stem.1.num_batches_tracked"].dtype == np.int64


def test_state_dict_round_trip(rng):
    a, b = small_net(rng).to(np.float64), small_net().to(np.float64)
    x = rng.standard_normal((2, 3, 5, 4))
    a(x)  # a training step changes the buffers
    a.eval()
    b.eval()
    b.load_state_dict({k: np.array(v) for k, v in a.state_dict().items()})
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[key], value)
    assert int(b.state_dict()["stem.1.num_batches_tracked"]) == 1
    np.testing.assert_array_equal(a(x), b(x))


def test_state_dict_values_are_references():
    model = nn.Linear(2, 2)
    model.state_dict()["weight"][...] = 3.0
    assert np.all(model.weight.data == 3.0)


def test_missing_num_batches_tracked_is_tolerated(rng):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model[1].num_batches_tracked = np.array(7, dtype=np.int64)
    state = {k: np.array(v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["1.running_mean"] = rng.standard_normal(4)
    result = model.load_state_dict(state)  # strict, and still fine
    assert result.missing_keys == [] and result.unexpected_keys == []
    np.testing.assert_array_equal(model[1].running_mean, state["1.running_mean"].astype(np.float32))
    assert int(model[1].num_batches_tracked) == 7  # left as it was


def test_extra_num_batches_tracked_is_tolerated():
    ours = nn.BatchNorm2d(3, track_running_stats=False)
    ref = torch.nn.BatchNorm2d(3)
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("running")}
    assert "num_batches_tracked" in state
    result = ours.load_state_dict(state)
    assert result.unexpected_keys == [] and result.missing_keys == []


def test_strict_false_returns_missing_and_unexpected_and_loads_the_rest(rng):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = {
        "0.weight": rng.standard_normal((4, 3, 3, 3)),
        "1.bias": rng.standard_normal(4),
        "2.weight": np.zeros(3),
        "head.bias": np.zeros(2),
    }
    with pytest.raises(RuntimeError, match="missing keys"):
        model.load_state_dict(state)
    result = model.load_state_dict(state, strict=False)
    assert isinstance(result, nn.IncompatibleKeys)
    assert result.missing_keys == ["0.bias", "1.weight", "1.running_mean", "1.running_var"]
    assert result.unexpected_keys == ["2.weight", "head.bias"]
    np.testing.assert_array_equal(model[0].weight.data, state["0.weight"].astype(np.float32))
    np.testing.assert_array_equal(model[1].bias.data, state["1.bias"].astype(np.float32))


# ------------------------------------------------------------------------------------ train / eval


def test_train_eval_flags_are_recursive_and_per_module():
    model = small_net()
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.layer1[1].train()  # one subtree back to training
    flags = {name: m.training for name, m in model.named_modules()}
    assert flags["layer1.1"] and flags["layer1.1.bn1"] and flags["layer1.1.downsample.1"]
    assert not flags["layer1.0.bn1"] and not flags["stem.1"] and not flags[""]
    model.train()
    assert all(m.training for m in model.modules())
    model.train(False)
    assert not any(m.training for m in model.modules())


def test_eval_changes_batchnorm_behaviour(rng):
    bn = nn.BatchNorm2d(2).to(np.float64)
    x = 5.0 + rng.standard_normal((4, 2, 3, 3))
    train_out = bn(x)
    np.testing.assert_allclose(train_out.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)  # batch statistics
    bn.eval()
    eval_out = bn(x)
    expected = (x - bn.running_mean.reshape(1, 2, 1, 1)) / np.sqrt(bn.running_var.reshape(1, 2, 1, 1) + bn.eps)
    np.testing.assert_allclose(eval_out, expected, rtol=1e-12)
    assert int(bn.num_batches_tracked) == 1


# ------------------------------------------------------------------------------------------ gradients


def test_zero_grad_resets_every_gradient(rng):
    model = small_net(rng).to(np.float64)
    y = model(rng.standard_normal((2, 3, 5, 4)))
    model.backward(rng.standard_normal(y.shape))
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_gradients_accumulate_over_two_backward_calls(rng):
    model = small_net(rng).to(np.float64)
    x1, x2 = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 3, 5, 4))
    dy1, dy2 = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))

    separately = []
    for x, dy in ((x1, dy1), (x2, dy2)):
        model.zero_grad()
        model(x)
        model.backward(dy)
        separately.append({name: p.grad.copy() for name, p in model.named_parameters()})
    model.zero_grad()
    for x, dy in ((x1, dy1), (x2, dy2)):
        model(x)
        model.backward(dy)
    for name, param in model.named_parameters():
        np.testing.assert_allclose(param.grad, separately[0][name] + separately[1][name], rtol=1e-12, atol=1e-14)
        assert not np.allclose(param.grad, separately[1][name])  # it did not just overwrite


def test_first_gradient_is_a_copy_not_an_alias(rng):
    linear = nn.Linear(3, 2).to(np.float64)
    linear(rng.standard_normal((4, 3)))
    linear.backward(rng.standard_normal((4, 2)))
    first = linear.weight.grad.copy()
    linear(rng.standard_normal((4, 3)))
    linear.backward(rng.standard_normal((4, 2)))
    assert not np.array_equal(first, linear.weight.grad)


class _Spy:
    """Wraps a functional backward and records the keyword flags it was called with."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.fn(*args, **kwargs)


@pytest.mark.parametrize("layer", ["Conv2d", "Linear"])
def test_frozen_parameters_get_no_gradient_and_skip_the_weight_gemm(layer, rng, monkeypatch):
    if layer == "Conv2d":
        make, shape, name = (lambda: nn.Conv2d(3, 4, 3, rng=np.random.default_rng(1))), (2, 3, 5, 6), "conv2d"
    else:
        make, shape, name = (lambda: nn.Linear(5, 4, rng=np.random.default_rng(1))), (3, 5), "linear"
    spy = _Spy(getattr(F, f"{name}_backward"))
    monkeypatch.setattr(F, f"{name}_backward", spy)
    x = rng.standard_normal(shape)
    trainable, frozen = make().to(np.float64), make().to(np.float64)
    frozen.requires_grad_(False)
    assert frozen.num_parameters(trainable_only=True) == 0 < frozen.num_parameters()
    dy = rng.standard_normal(trainable(x).shape)
    frozen(x)
    dx_trainable, dx_frozen = trainable.backward(dy), frozen.backward(dy)
    assert frozen.weight.grad is None and frozen.bias.grad is None
    assert trainable.weight.grad is not None and trainable.bias.grad is not None
    np.testing.assert_array_equal(dx_frozen, dx_trainable)  # the input gradient still flows
    assert spy.calls == [{"need_weight_grad": True}, {"need_weight_grad": False}]

    # Freezing only the weight: the bias still learns, the weight gets nothing.
    partly = make().to(np.float64)
    partly.weight.requires_grad = False
    partly(x)
    partly.backward(dy)
    assert partly.weight.grad is None
    np.testing.assert_allclose(partly.bias.grad, trainable.bias.grad, rtol=1e-12)


def test_frozen_batchnorm_and_unfreeze(rng):
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)).to(np.float64)
    model[1].requires_grad_(False)
    y = model(rng.standard_normal((2, 2, 5, 5)))
    model.backward(rng.standard_normal(y.shape))
    assert model[1].weight.grad is None and model[1].bias.grad is None
    assert model[0].weight.grad is not None
    model.requires_grad_(True)
    y = model(rng.standard_normal((2, 2, 5, 5)))
    model.backward(rng.standard_normal(y.shape))
    assert model[1].weight.grad is not None


# ------------------------------------------------------------------------------------ registration


def test_attribute_assignment_registers_children_and_parameters(rng):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.fc = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert [k for k, _ in model.named_parameters()] == [
        "0.weight",
        "0.bias",
        "fc.0.weight",
        "fc.0.bias",
        "fc.2.weight",
        "fc.2.bias",
    ]
    assert [name for name, _ in model.named_children()] == ["0", "1", "2", "fc"]
    assert model(rng.standard_normal((2, 3, 5, 5)).astype(np.float32)).shape == (2, 2)  # the new child runs
    model.fc = nn.Linear(4, 5)  # replacing keeps one entry
    assert [k for k in model.state_dict() if k.startswith("fc")] == ["fc.weight", "fc.bias"]
    model.fc = None  # a plain value unregisters it
    assert "fc" not in dict(model.named_children())
    del model.fc

    custom = nn.Module()
    custom.scale = nn.Parameter(np.ones(3, np.float32))
    custom.register_buffer("offset", np.zeros(3, np.float32))
    custom.note = "not state"
    assert list(custom.state_dict()) == ["scale", "offset"]
    assert [k for k, _ in custom.named_parameters()] == ["scale"]


def test_module_without_super_init_gets_a_clear_error():
    class Broken(nn.Module):
        def __init__(self):
            self.conv = nn.Conv2d(1, 1, 1)

    with pytest.raises(AttributeError, match="call Module.__init__"):
        Broken()


def test_sequential_indexing_and_append():
    model = nn.Sequential(nn.ReLU(), nn.Flatten())
    assert len(model) == 2 and isinstance(model[1], nn.Flatten) and isinstance(model[-1], nn.Flatten)
    model.append(nn.Linear(2, 2))
    assert len(model) == 3 and list(model.state_dict()) == ["2.weight", "2.bias"]
    assert isinstance(model[1:], nn.Sequential) and len(model[1:]) == 2
    with pytest.raises(TypeError, match="Sequential takes Modules, got int at position 1"):
        nn.Sequential(nn.ReLU(), 3)


# ------------------------------------------------------------------------------------ to(): conversions


def test_to_float64_and_back(rng):
    model = small_net(rng)
    assert all(p.dtype == np.float32 for p in model.parameters())
    y = model(rng.standard_normal((2, 3, 4, 4)).astype(np.float32))
    model.backward(rng.standard_normal(y.shape).astype(np.float32))
    assert model.to(np.float64) is model
    for name, value in model.state_dict().items():
        expected = np.int64 if name.endswith("num_batches_tracked") else np.float64
        assert value.dtype == expected, name
    assert all(p.grad.dtype == np.float64 for p in model.parameters())  # gradients follow
    assert model._cache is None and model.stem[0]._cache is None  # stale caches dropped
    assert model(rng.standard_normal((1, 3, 4, 4))).dtype == np.float64
    model.to("float32")
    assert all(v.dtype in (np.float32, np.int64) for v in model.state_dict().values())
    assert int(model.stem[1].num_batches_tracked) == 2


def test_to_numpy_is_a_no_op_on_numpy(rng):
    model = small_net(rng)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    assert model.to("numpy") is model and model.to("NumPy") is model
    for key, value in model.state_dict().items():
        assert isinstance(value, np.ndarray) and value.dtype == before[key].dtype
        np.testing.assert_array_equal(value, before[key])


# ------------------------------------------------------------------------------------------- no_grad


def test_no_grad_keeps_no_cache_and_backward_then_fails_clearly(rng):
    model = small_net(rng).to(np.float64)
    x = rng.standard_normal((2, 3, 5, 4))
    with_grad = model(x)
    assert npresnet.is_grad_enabled()
    with npresnet.no_grad():
        assert not npresnet.is_grad_enabled()
        without = model(x)
    assert npresnet.is_grad_enabled()
    np.testing.assert_array_equal(without, with_grad)  # training BN: batch statistics both times
    assert all(m._cache is None for m in model.modules())
    with pytest.raises(RuntimeError, match=r"backward\(\) called without a matching forward\(\).*no_grad"):
        model.backward(rng.standard_normal(without.shape))


def test_no_grad_as_decorator_and_restored_after_an_exception():
    @npresnet.no_grad()
    def infer():
        return npresnet.is_grad_enabled()

    assert infer() is False and npresnet.is_grad_enabled()
    with pytest.raises(ZeroDivisionError), npresnet.no_grad():
        raise ZeroDivisionError
    assert npresnet.is_grad_enabled()
    with npresnet.no_grad(), npresnet.no_grad():
        pass
    assert npresnet.is_grad_enabled()


# ----------------------------------------------------------------------------------------- forward hooks


def test_forward_hooks_fire_replace_and_are_removable(rng):
    model = small_net(rng).to(np.float64)
    x = rng.standard_normal((2, 3, 5, 4))
    seen = []
    handles = [
        m.register_forward_hook(
            lambda mod, inputs, out, name=name: seen.append((name, type(mod).__name__, inputs[0].shape, out.shape))
        )
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    y = model(x)
    conv_names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(conv_names) == 5 and [s[0] for s in seen] == [*conv_names, "fc"]  # execution order
    assert seen[-1] == ("fc", "Linear", (2, 4), (2, 3))
    for handle in handles:
        handle.remove()
    seen.clear()
    np.testing.assert_array_equal(model(x), y)
    assert seen == []
    handles[0].remove()  # removing twice is harmless

    doubled = model.fc.register_forward_hook(lambda mod, inputs, out: 2 * out)
    np.testing.assert_allclose(model(x), 2 * y, rtol=1e-12)
    doubled.remove()
    np.testing.assert_allclose(model(x), y, rtol=1e-12)


# ----------------------------------------------------------------------------------------- preserved_state


class Probe(nn.Module):
    """BatchNorm (buffers), two seeded Dropouts (generators) and a conv: all the state a forward moves."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5, seed=3)
        self.body = nn.Sequential(nn.Conv2d(3, 2, 1, rng=np.random.default_rng(5)), nn.Dropout(0.3, seed=4))

    def forward(self, x):
        return self.body(self.drop(self.bn(x)))

    def backward(self, dout):
        return self.bn.backward(self.drop.backward(self.body.backward(dout)))


@pytest.mark.parametrize("fail", [False, True], ids=["normal exit", "exception"])
def test_preserved_state_undoes_every_forward_side_effect(rng, fail):
    """A model that ran forwards (and more) inside the block behaves afterwards exactly like an untouched twin:
    same backward from the cache held on entry, same buffers (the same array objects), same later masks."""
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    dout = rng.standard_normal((4, 2, 5, 5)).astype(np.float32)
    probed, twin = Probe(), Probe()
    probed.bn.eval()  # a per-module flag that must come back too
    twin.bn.eval()
    probed(x), twin(x)  # caches held, generators created, statistics moved
    running_mean = probed.bn.running_mean
    context = pytest.raises(RuntimeError, match="boom") if fail else contextlib.nullcontext()
    with context, probed.preserved_state():
        probed.train()
        probed(2 * x)  # new caches, new statistics, generators advanced
        probed.body[1].load_rng_state({})  # a generator dropped ...
        probed.eval()
        probed(x)
        probed.bn.running_var = probed.bn.running_var * 3  # a buffer rebound to a new array
        probed.bn.num_batches_tracked[...] = 99
        if fail:
            raise RuntimeError("boom")
    assert probed.bn.running_mean is running_mean
    assert [m.training for m in probed.modules()] == [m.training for m in twin.modules()]
    np.testing.assert_array_equal(probed.backward(dout), twin.backward(dout))  # the cache held on entry
    for (key, value), (_, expected) in zip(probed.named_buffers(), twin.named_buffers()):
        np.testing.assert_array_equal(value, expected, err_msg=key)
    np.testing.assert_array_equal(probed(x), twin(x))  # the generators continue where they were


def test_saved_for_backward_shows_the_cache_until_backward_consumes_it(rng):
    conv = nn.Conv2d(2, 3, 3, rng=rng)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    assert conv.saved_for_backward is None
    y = conv(x)
    assert conv.saved_for_backward is conv._cache and conv.saved_for_backward is not None
    with npresnet.no_grad():
        conv(x)
    assert conv.saved_for_backward is None  # no_grad keeps nothing
    conv(x)
    conv.backward(np.ones_like(y))
    assert conv.saved_for_backward is None  # backward consumed it
    with pytest.raises(AttributeError):
        conv.saved_for_backward = 1  # read-only


def test_preserved_state_drops_generators_created_inside():
    """A Dropout that never drew before the block draws its first mask from ``seed`` after it."""
    x = np.ones((2, 8), np.float32)
    probed, twin = nn.Dropout(0.5, seed=1), nn.Dropout(0.5, seed=1)
    with probed.preserved_state():
        probed(x)
    assert probed.rng_state() == {}
    np.testing.assert_array_equal(probed(x), twin(x))


# ----------------------------------------------------------------------------------------- replace_child


def test_replace_child_keeps_the_position_and_names_the_children(rng):
    model = small_net(rng)
    keys = list(model.state_dict())
    old = model.stem[1]
    new = nn.BatchNorm2d(4)
    assert model.stem.replace_child("1", new) is old
    assert model.stem[1] is new and model.state_dict()["stem.1.running_var"] is new.running_var
    assert list(model.state_dict()) == keys  # same position: same key order
    with pytest.raises(AttributeError, match="Sequential has no child module 'bn'; its children are: 0, 1, 2"):
        model.stem.replace_child("bn", new)
    with pytest.raises(TypeError, match=r"replace_child\('0', ...\) expects a Module, got ndarray"):
        model.stem.replace_child("0", np.zeros(3))


# ----------------------------------------------------------------------------------------- dropout RNG state


def test_dropout_rng_state_round_trip_resumes_the_mask_sequence():
    x = np.ones((3, 16), np.float32)
    drop = nn.Dropout(0.5, seed=7)
    assert drop.rng_state() == {}
    drop(x)
    state = json.loads(json.dumps(drop.rng_state()))  # plain data: survives JSON
    expected = [drop(x) for _ in range(3)]
    resumed = nn.Dropout(0.5, seed=123)  # another seed: only the loaded state counts
    resumed.load_rng_state(state)
    for want in expected:
        np.testing.assert_array_equal(resumed(x), want)
    resumed.load_rng_state({})  # back to the seed
    np.testing.assert_array_equal(resumed(x), nn.Dropout(0.5, seed=123)(x))


@pytest.mark.parametrize(
    "state, error, message",
    [
        ([1, 2], TypeError, "expects a dict like {'numpy': {...}}, got list"),
        ({"cupy": {}}, ValueError, "unexpected key(s) ['cupy']; expected only 'numpy'"),
        ({"numpy": {"bit_generator": "Nope"}}, ValueError, "expected a NumPy bit-generator state"),
        ({"numpy": {"bit_generator": "PCG64"}}, ValueError, "invalid PCG64 state"),
    ],
)
def test_dropout_load_rng_state_rejects_bad_states_and_changes_nothing(state, error, message):
    x = np.ones((2, 8), np.float32)
    drop, twin = nn.Dropout(0.5, seed=2), nn.Dropout(0.5, seed=2)
    drop(x), twin(x)
    with pytest.raises(error, match=re.escape(message)):
        drop.load_rng_state(state)
    np.testing.assert_array_equal(drop(x), twin(x))


# ----------------------------------------------------------------------------------------- residual blocks


@pytest.mark.parametrize(
    "make, shortcut, residual",
    [
        (lambda: models.BasicBlock(4, 4), None, True),
        (
            lambda: models.BasicBlock(4, 8, 2, downsample=nn.Sequential(nn.Conv2d(4, 8, 1, 2), nn.BatchNorm2d(8))),
            "downsample",
            True,
        ),
        (lambda: models.Bottleneck(16, 4), None, True),
        (lambda: models.CifarBlock(4, 4, shortcut="A"), "shortcut", True),
        (lambda: models.CifarBlock(4, 8, 2, shortcut="A"), "shortcut", True),
        (lambda: models.CifarBlock(4, 8, 2, shortcut="B"), "shortcut", True),
        (lambda: models.CifarBlock(4, 8, 2, shortcut=None), None, False),
    ],
)
def test_blocks_declare_their_branches(make, shortcut, residual):
    block = make()
    assert isinstance(block, models.ResidualBlock)
    assert block.main_branch_entry is block.conv1
    assert block.output_activation is block.relu_out
    assert block.shortcut_branch is (getattr(block, shortcut) if shortcut else None)
    assert block.is_residual is residual


def test_dropout_generators_survive_a_checkpoint(tmp_path):
    """save_checkpoint / load_checkpoint carry every Dropout's generator (through rng_state / load_rng_state)."""
    from npresnet.checkpoint import load_checkpoint, save_checkpoint

    x = np.ones((2, 16), np.float32)
    model = nn.Sequential(
        nn.Dropout(0.5, seed=1), nn.Linear(16, 16, rng=np.random.default_rng(0)), nn.Dropout(0.5, seed=2)
    )
    model(x)
    save_checkpoint(tmp_path / "ckpt.npz", model)
    expected = model(x)
    resumed = nn.Sequential(
        nn.Dropout(0.5, seed=8), nn.Linear(16, 16, rng=np.random.default_rng(9)), nn.Dropout(0.5, seed=9)
    )
    load_checkpoint(tmp_path / "ckpt.npz", resumed)
    np.testing.assert_array_equal(resumed(x), expected)


def test_check_state_dict_changes_nothing_and_apply_installs_all_or_nothing():
    """The two halves of load_state_dict, public for loaders that check several things first."""
    layer = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3))
    before = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    good = {k: np.full_like(v, 0.5) for k, v in before.items()}
    bad = {**good, "0.weight": np.full((3, 2, 3, 3), np.nan, dtype=np.float32)}

    refused = layer.check_state_dict(bad)
    assert refused.problems and "0.weight" in refused.problems[0]
    with pytest.raises(StateError, match="cannot be applied"):
        refused.apply()
    accepted = layer.check_state_dict(good)
    assert accepted.problems == [] and accepted.keys == nn.IncompatibleKeys([], [])
    for key, value in layer.state_dict().items():  # checking changed nothing
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    accepted.apply()
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, good[key].astype(before[key].dtype), err_msg=key)
