"""Backward hooks (and forward pre-hooks): they fire for every module, leaves, containers and
residual blocks alike, in the order backward visits them; they see the very arrays that flow;
they can replace them; and ``handle.remove()`` stops them."""

from __future__ import annotations

import numpy as np
import pytest

from npresnet import models, nn


def tiny_resnet(shortcut="A"):
    """A CIFAR net with one block per stage (8 layers), float64."""
    return models.CifarResNet(1, num_classes=4, shortcut=shortcut, seed=3).to(np.float64)


def test_backward_hooks_fire_in_reverse_execution_order_children_before_parents(rng):
    model = tiny_resnet()
    x = rng.standard_normal((2, 3, 8, 8))
    order = []
    handles = [
        m.register_backward_hook(lambda mod, gi, go, name=name: order.append(name)) for name, m in model.named_modules()
    ]
    pre = [
        m.register_backward_pre_hook(lambda mod, go, name=name: order.append("pre " + name))
        for name, m in model.named_modules()
        if name in ("", "layer3.0", "fc")
    ]
    model.backward(rng.standard_normal(model(x).shape))
    assert order[0] == "pre " and order[-1] == ""  # the whole model: first in, last out
    assert order[1:3] == ["pre fc", "fc"]  # fc is the last layer of the forward
    block = [n for n in order if n.startswith(("layer3.0", "pre layer3.0"))]
    # layer3.0's children run inside its backward, so its own hook comes after all of theirs
    assert block[0] == "pre layer3.0" and block[-1] == "layer3.0"
    assert block[1:-1] == [
        "layer3.0.relu_out",
        "layer3.0.bn2",
        "layer3.0.conv2",
        "layer3.0.relu1",
        "layer3.0.bn1",
        "layer3.0.conv1",
        "layer3.0.shortcut",
    ]
    assert order.index("layer3") < order.index("layer2.0.relu_out")  # the stages in reverse
    assert order.index("layer1") < order.index("conv1")
    assert sorted(set(order) - {"pre ", "pre fc", "pre layer3.0"}) == sorted(n for n, _ in model.named_modules())
    assert len(order) == len(handles) + len(pre)  # each exactly once


def test_backward_hooks_see_the_arrays_that_flow(rng):
    model = tiny_resnet()
    x = rng.standard_normal((3, 3, 8, 8))
    seen = {}
    modules = dict(model.named_modules())
    for name in ("", "layer2.0", "layer2.0.conv1", "layer2.0.shortcut", "layer2.0.relu_out", "fc"):
        modules[name].register_backward_hook(lambda mod, gi, go, name=name: seen.__setitem__(name, (gi, go)))
    # A second, unhooked model with the same weights gives the reference arrays.
    reference = tiny_resnet()
    logits = model(x)
    reference(x)
    dlogits = rng.standard_normal(logits.shape)
    dx = model.backward(dlogits)
    np.testing.assert_array_equal(reference.backward(dlogits), dx)  # hooks change nothing

    assert all(isinstance(gi, tuple) and isinstance(go, tuple) for gi, go in seen.values())
    assert seen[""][0][0] is dx and seen[""][1][0] is dlogits  # the very objects, not copies
    assert seen["fc"][1][0] is dlogits
    assert seen["fc"][0][0].shape == (3, 64)
    # The block: grad_output is what its relu_out received; grad_input what conv1 and the shortcut sent back,
    # summed (the fork in forward is a sum in backward).
    block_in, block_out = seen["layer2.0"][0][0], seen["layer2.0"][1][0]
    assert block_out is seen["layer2.0.relu_out"][1][0]
    assert block_out.shape == (3, 32, 4, 4) and block_in.shape == (3, 16, 8, 8)
    main, shortcut = seen["layer2.0.conv1"][0][0], seen["layer2.0.shortcut"][0][0]
    assert seen["layer2.0.shortcut"][1][0] is seen["layer2.0.relu_out"][0][0]  # (+) copies its gradient
    np.testing.assert_array_equal(main + shortcut, block_in)
    assert np.abs(main).sum() > 0 and np.abs(shortcut).sum() > 0


def test_a_backward_hook_can_replace_grad_input_and_a_pre_hook_grad_output(rng):
    layer = nn.Linear(5, 3, rng=rng).to(np.float64)
    x, dy = rng.standard_normal((4, 5)), rng.standard_normal((4, 3))
    layer(x)
    dx = layer.backward(dy)
    grad_w = layer.weight.grad.copy()

    layer.zero_grad()
    handle = layer.register_backward_hook(lambda mod, gi, go: (3.0 * gi[0],))
    layer(x)
    np.testing.assert_allclose(layer.backward(dy), 3.0 * dx, rtol=1e-14)
    np.testing.assert_allclose(layer.weight.grad, grad_w, rtol=1e-14)  # parameters are not affected
    handle.remove()

    layer.zero_grad()
    pre = layer.register_backward_pre_hook(lambda mod, go: (2.0 * go[0],))
    layer(x)
    np.testing.assert_allclose(layer.backward(dy), 2.0 * dx, rtol=1e-14)
    np.testing.assert_allclose(layer.weight.grad, 2.0 * grad_w, rtol=1e-14)  # the whole backward saw 2 dy
    pre.remove()

    bad = layer.register_backward_hook(lambda mod, gi, go: (gi[0], gi[0]))
    layer(x)
    with pytest.raises(ValueError, match="returned 2 gradient.*expected 1"):
        layer.backward(dy)
    bad.remove()


def test_replacing_grad_input_inside_a_block_changes_what_its_parent_returns(rng):
    model = tiny_resnet()
    x = rng.standard_normal((2, 3, 8, 8))
    dlogits = rng.standard_normal((2, 4))
    seen = {}
    model.layer1[0].register_backward_hook(lambda m, gi, go: seen.__setitem__("block", gi[0]))
    model(x)
    model.backward(dlogits)
    unchanged = seen["block"]
    # Zero the shortcut's gradient: the block input then receives only the main branch's.
    model.layer1[0].shortcut.register_backward_hook(lambda m, gi, go: (np.zeros_like(gi[0]),))
    main = {}
    model.layer1[0].conv1.register_backward_hook(lambda m, gi, go: main.__setitem__("x", gi[0]))
    model(x)
    model.backward(dlogits)
    np.testing.assert_array_equal(seen["block"], main["x"])
    assert not np.allclose(seen["block"], unchanged)


def test_hooks_are_removable_and_removing_twice_is_harmless(rng):
    model = tiny_resnet()
    x = rng.standard_normal((2, 3, 8, 8))
    calls = []
    handles = [m.register_backward_hook(lambda *a: calls.append(1)) for m in model.modules()]
    handles += [m.register_backward_pre_hook(lambda *a: calls.append(2)) for m in model.modules()]
    model(x)
    model.backward(np.ones((2, 4)))
    assert len(calls) == 2 * len(list(model.modules()))
    for handle in handles:
        handle.remove()
    handles[0].remove()
    calls.clear()
    model(x)
    model.backward(np.ones((2, 4)))
    assert calls == []
    assert all(not m._backward_hooks and not m._backward_pre_hooks for m in model.modules())


def test_super_backward_in_a_subclass_fires_hooks_once(rng):
    class ScaledReLU(nn.ReLU):
        """A subclass whose backward calls the parent's: both are wrapped, the hook must run once."""

        def backward(self, dout):
            return 0.5 * super().backward(dout)

    layer = ScaledReLU()
    x = rng.standard_normal((3, 4))
    calls = []
    layer.register_backward_hook(lambda m, gi, go: calls.append(gi[0]))
    layer.register_backward_pre_hook(lambda m, go: calls.append(go[0]))
    layer(x)
    dy = rng.standard_normal((3, 4))
    dx = layer.backward(dy)
    assert len(calls) == 2 and calls[0] is dy and calls[1] is dx
    np.testing.assert_array_equal(dx, 0.5 * dy * (x > 0))


def test_default_arguments_appear_in_grad_output(rng):
    criterion = nn.CrossEntropyLoss()
    logits = rng.standard_normal((4, 3))
    seen = []
    criterion.register_backward_hook(lambda m, gi, go: seen.append(go))
    criterion(logits, np.array([0, 1, 2, 0]))
    criterion.backward()
    assert seen == [(1.0,)]


def test_backward_hooks_on_a_user_defined_block_with_tuple_grads(rng):
    class Add(nn.Module):
        """y = a + b: two inputs, so backward returns two gradients."""

        def forward(self, a, b):
            self._save_for_backward(True)
            return a + b

        def backward(self, dout):
            self._pop_cache()
            return dout, dout

    add = Add()
    seen = []
    add.register_backward_hook(lambda m, gi, go: seen.append(len(gi)))
    add(np.ones(2), np.ones(2))
    da, db = add.backward(np.arange(2.0))
    assert seen == [2]
    np.testing.assert_array_equal(da, [0.0, 1.0])


def test_forward_pre_hook_sees_and_replaces_inputs(rng):
    layer = nn.Linear(3, 2, rng=rng).to(np.float64)
    x = rng.standard_normal((4, 3))
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
    y = layer(x)
    assert len(seen) == 1 and seen[0] is x
    handle.remove()
    doubled = layer.register_forward_pre_hook(lambda m, inputs: (2 * inputs[0],))
    np.testing.assert_allclose(layer(x), layer.forward(2 * x), rtol=1e-14)
    assert not np.allclose(layer(x), y)
    doubled.remove()
    np.testing.assert_allclose(layer(x), y, rtol=1e-14)
    assert seen == [x]
