"""``npresnet.inspect.GradientFlow``: its numbers equal norms computed independently from the same
step (a second model with the same weights, backpropagated by hand block by block), the main-branch
and shortcut parts add up to each block's input gradient, the per-parameter gradient norms and
update/weight ratios are right, and the table and figure come out."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from npresnet import models, nn
from npresnet.inspect import GradientFlow, format_table, plot_gradient_flow
from npresnet.models.blocks import BasicBlock, Bottleneck, conv1x1
from npresnet.optim import SGD


def tiny(shortcut="A"):
    return models.CifarResNet(1, num_classes=5, shortcut=shortcut, seed=11).to(np.float64)


def by_hand(model, x, dlogits):
    """Forward, then backward written out block by block: {block name: (out, main, shortcut, input)}."""
    model(x)
    d = model.fc.backward(dlogits).reshape(model._pop_cache())
    d = model.avgpool.backward(d)
    found = {}
    for stage in ("layer3", "layer2", "layer1"):
        blocks = list(getattr(model, stage))
        for index in reversed(range(len(blocks))):
            block = blocks[index]
            out = d
            d_sum = block.relu_out.backward(out)
            d_branch = block.conv2.backward(block.bn2.backward(d_sum))
            main = block.conv1.backward(block.bn1.backward(block.relu1.backward(d_branch)))
            short = block.shortcut.backward(d_sum) if block.residual else np.zeros_like(main)
            d = main + short
            found[f"{stage}.{index}"] = (out, main, short, d)
    return found


@pytest.mark.parametrize("shortcut", ["A", "B", None])
def test_block_norms_equal_an_independent_backward(rng, shortcut):
    model, twin = tiny(shortcut), tiny(shortcut)
    x = rng.standard_normal((4, 3, 8, 8))
    dlogits = rng.standard_normal((4, 5))
    flow = GradientFlow(model, keep_arrays=True)
    with flow:
        model(x)
        model.backward(dlogits)
    expected = by_hand(twin, x, dlogits)
    assert [b.name for b in flow.block_flows] == ["layer1.0", "layer2.0", "layer3.0"]
    assert [b.depth for b in flow.block_flows] == [1, 2, 3]
    for record in flow.block_flows:
        out, main, short, dx = expected[record.name]
        assert record.residual == (shortcut is not None)
        np.testing.assert_allclose(record.out, np.linalg.norm(out), rtol=1e-12)
        np.testing.assert_allclose(record.main, np.linalg.norm(main), rtol=1e-12)
        np.testing.assert_allclose(record.shortcut, np.linalg.norm(short), rtol=1e-12)
        np.testing.assert_allclose(record.input, np.linalg.norm(dx), rtol=1e-12)
        np.testing.assert_allclose(record.gain, np.linalg.norm(dx) / np.linalg.norm(out), rtol=1e-12)
        arrays = flow.arrays[record.name]
        np.testing.assert_array_equal(arrays["main"] + arrays["shortcut"], arrays["input"])  # the fork's sum
        assert record.out > 0 and record.main > 0
        if shortcut is None:
            assert record.shortcut == 0.0 and record.main == record.input
        else:
            assert record.shortcut > 0
            # Two non-parallel vectors: the norm of the sum is not the sum of the norms.
            assert record.input < record.main + record.shortcut


def test_basic_and_bottleneck_blocks_including_the_identity_without_a_module(rng):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False, rng=rng),
        BasicBlock(8, 8, rng=rng),  # identity: no module
        BasicBlock(8, 16, 2, downsample=nn.Sequential(conv1x1(8, 16, 2, rng=rng), nn.BatchNorm2d(16)), rng=rng),
        Bottleneck(16, 4, rng=rng),  # 16 -> 16: identity
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3, rng=rng),
    ).to(np.float64)
    x = rng.standard_normal((2, 3, 6, 6))
    flow = GradientFlow(model, keep_arrays=True)
    with flow:
        model(x)
        model.backward(rng.standard_normal((2, 3)))
    assert [b.name for b in flow.block_flows] == ["1", "2", "3"]
    for record in flow.block_flows:
        arrays = flow.arrays[record.name]
        np.testing.assert_allclose(arrays["main"] + arrays["shortcut"], arrays["input"], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(record.input, np.linalg.norm(arrays["main"] + arrays["shortcut"]), rtol=1e-12)
    # Identity shortcut: what reaches x through it is exactly the gradient at the (+) node.
    np.testing.assert_array_equal(flow.arrays["1"]["shortcut"], flow.arrays["1"]["at_sum"])
    assert flow.arrays["2"]["shortcut"].shape == (2, 8, 6, 6)


def test_param_grad_norms_and_update_ratios_after_an_sgd_step(rng):
    model, twin = tiny(), tiny()
    x = rng.standard_normal((4, 3, 8, 8))
    y = np.array([0, 1, 2, 3])
    lr, wd = 0.05, 1e-3
    flow = GradientFlow(model)
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    loss = flow.step(x, y, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd))
    assert not any(m._backward_hooks for m in model.modules())  # step() removed the hooks it added

    criterion = nn.CrossEntropyLoss()
    assert loss == pytest.approx(float(criterion(twin(x), y)), rel=1e-12)
    twin.backward(criterion.backward())
    grads = {name: p.grad for name, p in twin.named_parameters()}
    assert [p.name for p in flow.param_flows] == list(grads)
    after = dict(model.named_parameters())
    for record in flow.param_flows:
        w, g = before[record.name], grads[record.name]
        np.testing.assert_allclose(record.grad, np.linalg.norm(g), rtol=1e-12)
        np.testing.assert_allclose(record.weight, np.linalg.norm(w), rtol=1e-12)
        # First SGD step (momentum buffer starts as the gradient): w_new = w - lr * (g + wd * w)
        np.testing.assert_allclose(record.update, lr * np.linalg.norm(g + wd * w), rtol=1e-9)
        np.testing.assert_allclose(record.update, np.linalg.norm(after[record.name].data - w), rtol=1e-12)
        if record.weight > 0:
            np.testing.assert_allclose(record.ratio, record.update / record.weight, rtol=1e-12)
        else:
            assert np.isnan(record.ratio)  # BatchNorm biases start at 0


def test_hooks_are_removed_on_exit_and_records_follow_the_last_backward(rng):
    model = tiny()
    x = rng.standard_normal((2, 3, 8, 8))
    with GradientFlow(model) as flow:
        assert sum(len(m._backward_hooks) for m in model.modules()) == 3 * 4  # block, relu_out, conv1, shortcut
        model(x)
        model.backward(rng.standard_normal((2, 5)))
        first = flow.block_flows[0].input
        model(x)
        model.backward(10 * rng.standard_normal((2, 5)))
        assert flow.block_flows[0].input > 3 * first
    assert all(not m._backward_hooks for m in model.modules())
    model(x)
    model.backward(rng.standard_normal((2, 5)))  # no longer recorded
    assert flow.block_flows[0].input > 3 * first


def test_table_dict_and_figure(rng, tmp_path):
    model = tiny()
    flow = GradientFlow(model)
    flow.step(rng.standard_normal((4, 3, 8, 8)), np.arange(4), nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.1))
    text = flow.table()
    assert "layer2.0" in text and "residual" in text and "fc.weight" in text and "||dw||/||w||" in text
    assert text == format_table(flow.to_dict()) == str(flow)
    record = flow.to_dict()
    assert record["blocks"][1]["name"] == "layer2.0" and record["params"][0]["shape"] == [16, 3, 3, 3]
    path = tmp_path / "flow.png"
    flow.plot(str(path))
    assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"
    both = tmp_path / "both.png"
    plot_gradient_flow({"resnet": flow, "same, as a dict": record}, str(both))
    assert both.stat().st_size > 5000


def test_clear_errors(rng, monkeypatch):
    with pytest.raises(ValueError, match="holds no residual or plain block"):
        GradientFlow(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="no module named 'layer9'"):
        GradientFlow(tiny(), blocks=["layer9"])
    with pytest.raises(TypeError, match="npresnet Module, got list"):
        GradientFlow([])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="needs matplotlib: pip install 'npresnet\\[plot\\]'"):
        plot_gradient_flow({"x": {"blocks": []}})
