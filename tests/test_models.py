"""The ResNet family on its own: sizes, names, options, initialisation, gradients, fine-tuning.

(Parity with PyTorch for whole networks lives in test_models_torch.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

import npresnet
from npresnet import models, nn
from npresnet.models import BasicBlock, Bottleneck, CifarBlock, ShortcutA

# docs/figures.md, with their sources: torchvision's documentation (ImageNet) and He et al. 2015 with option A (CIFAR).
PARAMETER_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "wide_resnet50_2": 68_883_240,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "plain20": 269_722,
    "plain32": 464_154,
    "plain44": 658_586,
    "plain56": 853_018,
    "plain110": 1_727_962,
}
IMAGENET_LAYOUTS = {
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
    "resnet101": ("bottleneck", [3, 4, 23, 3]),
    "resnet152": ("bottleneck", [3, 8, 36, 3]),
    "resnext50_32x4d": ("bottleneck", [3, 4, 6, 3]),
    "wide_resnet50_2": ("bottleneck", [3, 4, 6, 3]),
}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def bn_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{k}" for k in BN_KEYS]


def torchvision_keys(block: str, layers: list[int]) -> list[str]:
    """torchvision's state_dict keys, written out from its naming rule (docs/figures.md)."""
    keys = ["conv1.weight", *bn_keys("bn1")]
    convs = 2 if block == "basic" else 3
    for stage, blocks in enumerate(layers, start=1):
        for i in range(blocks):
            prefix = f"layer{stage}.{i}"
            for c in range(1, convs + 1):
                keys += [f"{prefix}.conv{c}.weight", *bn_keys(f"{prefix}.bn{c}")]
            if i == 0 and (block == "bottleneck" or stage > 1):  # the shape changes: projection
                keys += [f"{prefix}.downsample.0.weight", *bn_keys(f"{prefix}.downsample.1")]
    return keys + ["fc.weight", "fc.bias"]


def cifar_keys(n: int, projection: bool) -> list[str]:
    """akamaster/pytorch_resnet_cifar10's keys (with ``fc`` for its ``linear``)."""
    keys = ["conv1.weight", *bn_keys("bn1")]
    for stage in (1, 2, 3):
        for i in range(n):
            prefix = f"layer{stage}.{i}"
            keys += [
                f"{prefix}.conv1.weight",
                *bn_keys(f"{prefix}.bn1"),
                f"{prefix}.conv2.weight",
                *bn_keys(f"{prefix}.bn2"),
            ]
            if projection and i == 0 and stage > 1:
                keys += [f"{prefix}.shortcut.0.weight", *bn_keys(f"{prefix}.shortcut.1")]
    return keys + ["fc.weight", "fc.bias"]


def randomize_batchnorm(model: nn.Module, rng: np.random.Generator) -> None:
    """Non-trivial gamma and beta, so that BN gradients are checked for real."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.shape)
            m.bias.data[...] = rng.normal(0.0, 0.2, m.bias.shape)


# ------------------------------------------------------------------------------------------------
# Sizes and names


@pytest.mark.parametrize("name", list(PARAMETER_COUNTS))
def test_parameter_count_and_state_dict_keys(name):
    model = models.get_model(name, seed=0)
    assert model.num_parameters() == PARAMETER_COUNTS[name]
    if name in IMAGENET_LAYOUTS:
        expected = torchvision_keys(*IMAGENET_LAYOUTS[name])
    else:
        expected = cifar_keys((int(name.removeprefix("resnet").removeprefix("plain")) - 2) // 6, projection=False)
    assert list(model.state_dict()) == expected


def test_cifar_option_b_adds_projections():
    model = models.resnet20(shortcut="B", seed=0)
    assert list(model.state_dict()) == cifar_keys(3, projection=True)
    projections = 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64  # two 1x1 convs + BN
    assert model.num_parameters() == PARAMETER_COUNTS["resnet20"] + projections
    assert isinstance(model.layer2[0].shortcut, nn.Sequential)
    assert isinstance(models.resnet20(seed=0).layer2[0].shortcut, ShortcutA)


def test_get_model_names_and_error():
    assert set(models.IMAGENET_MODELS) | set(models.CIFAR_MODELS) == set(PARAMETER_COUNTS)
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18"):
        models.get_model("resnet19")


# ------------------------------------------------------------------------------------------------
# Options


def test_v1_and_v15_differ_only_in_stride_placement():
    v15, v1 = models.resnet50(seed=0), models.resnet50(seed=0, variant="v1")
    # Same keys, shapes and (same seed) values: the variants have identical parameters.
    sd15, sd1 = v15.state_dict(), v1.state_dict()
    assert list(sd15) == list(sd1)
    assert all(np.array_equal(sd15[k], sd1[k]) for k in sd15)
    moved = []
    for (name, m15), (_, m1) in zip(v15.named_modules(), v1.named_modules()):
        assert type(m15) is type(m1)
        if isinstance(m15, nn.Conv2d):
            same = (m15.kernel_size, m15.padding, m15.dilation, m15.groups) == (
                m1.kernel_size,
                m1.padding,
                m1.dilation,
                m1.groups,
            )
            assert same, name
            if m15.stride != m1.stride:
                moved.append((name, m15.stride, m1.stride))
    # Exactly the first block of layer2..layer4: v1.5 strides the 3x3 conv2, v1 the 1x1 conv1.
    expected = []
    for stage in (2, 3, 4):
        expected += [(f"layer{stage}.0.conv1", (1, 1), (2, 2)), (f"layer{stage}.0.conv2", (2, 2), (1, 1))]
    assert moved == expected
    # Same output shapes, different function.
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with npresnet.no_grad():
        y15, y1 = v15.eval()(x), v1.eval()(x)
    assert y15.shape == y1.shape == (1, 1000)
    assert not np.allclose(y15, y1)


def test_variant_does_not_change_basic_block_networks():
    a, b = models.resnet18(seed=0), models.resnet18(seed=0, variant="v1")
    strides = [(m.stride, n.stride) for m, n in zip(a.modules(), b.modules()) if isinstance(m, nn.Conv2d)]
    assert all(s == t for s, t in strides)


@pytest.mark.parametrize("name, last_bn", [("resnet18", "bn2"), ("resnet50", "bn3"), ("resnet20", "bn2")])
def test_zero_init_residual(name, last_bn):
    model = models.get_model(name, zero_init_residual=True, seed=0)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck, CifarBlock))]
    assert blocks
    for block in blocks:
        for bn_name in ("bn1", "bn2", "bn3"):
            bn = getattr(block, bn_name, None)
            if bn is not None:
                expected = 0.0 if bn_name == last_bn else 1.0
                np.testing.assert_array_equal(bn.weight.data, expected)
                np.testing.assert_array_equal(bn.bias.data, 0.0)
    np.testing.assert_array_equal(model.bn1.weight.data, 1.0)
    # Each block without a projection now starts as the identity on non-negative inputs.
    block = blocks[1]
    x = np.abs(np.random.default_rng(0).standard_normal((2, block.conv1.in_channels, 8, 8))).astype(np.float32)
    np.testing.assert_array_equal(block(x), x)
    # ... unlike without zero_init_residual.
    plain_init = [m for m in models.get_model(name, seed=0).modules() if isinstance(m, type(block))][1]
    assert not np.allclose(plain_init(x), x)


def test_replace_stride_with_dilation_keeps_resolution():
    model = models.resnet50(replace_stride_with_dilation=[False, True, True], num_classes=3, seed=0)
    shapes = {}
    for name in ("layer2", "layer3", "layer4"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape))
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with npresnet.no_grad():
        assert model(x).shape == (1, 3)
    assert shapes == {"layer2": (1, 512, 8, 8), "layer3": (1, 1024, 8, 8), "layer4": (1, 2048, 8, 8)}
    assert model.layer4[1].conv2.dilation == (4, 4) and model.layer4[1].conv2.padding == (4, 4)
    assert model.layer4[0].conv2.dilation == (2, 2)  # the first block keeps the previous dilation


def test_torchvision_style_errors():
    with pytest.raises(ValueError, match="BasicBlock only supports groups=1 and base_width=64"):
        BasicBlock(64, 64, groups=2)
    with pytest.raises(ValueError, match="BasicBlock only supports groups=1 and base_width=64"):
        BasicBlock(64, 64, base_width=32)
    with pytest.raises(NotImplementedError, match="Dilation > 1 not supported in BasicBlock"):
        BasicBlock(64, 64, dilation=2)
    with pytest.raises(ValueError, match="BasicBlock only supports groups=1"):
        models.resnet18(groups=32, width_per_group=4)
    with pytest.raises(NotImplementedError, match="Dilation > 1"):
        models.resnet34(replace_stride_with_dilation=[False, False, True])
    with pytest.raises(ValueError, match="3-element tuple"):
        models.resnet50(replace_stride_with_dilation=[True])
    with pytest.raises(ValueError, match="variant must be one of"):
        models.resnet50(variant="v2")
    with pytest.raises(ValueError, match="'groups' expected value 32 but got 8"):
        models.resnext50_32x4d(groups=8)
    with pytest.raises(ValueError, match="shortcut must be 'A', 'B' or None"):
        models.resnet20(shortcut="C")
    with pytest.raises(ValueError, match="zero_init_residual needs shortcuts"):
        models.plain20(zero_init_residual=True)
    with pytest.raises(ValueError, match="seed= or rng=, not both"):
        models.resnet20(seed=0, rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        models.resnet20(rng=0)
    with pytest.raises(ValueError, match="expects input with 3 channels"):
        models.resnet20(seed=0)(np.zeros((1, 32, 32, 3), np.float32))  # NHWC by mistake


def test_plain_networks_have_no_shortcut():
    plain, residual = models.plain20(seed=0), models.resnet20(seed=0)
    blocks = [m for m in plain.modules() if isinstance(m, CifarBlock)]
    assert len(blocks) == 9
    assert all(not b.residual and b.shortcut is None for b in blocks)
    assert not any(isinstance(m, (ShortcutA, nn.Identity)) for m in plain.modules())
    # With bn2's gamma and beta at 0 the branch outputs 0: a plain block then outputs 0 ...
    x = np.abs(np.random.default_rng(0).standard_normal((2, 16, 8, 8))).astype(np.float32)
    for model in (plain, residual):
        model.layer1[1].bn2.weight.data[...] = 0
        model.layer1[1].bn2.bias.data[...] = 0
    np.testing.assert_array_equal(plain.layer1[1](x), 0.0)
    # ... while a residual block passes its (non-negative) input through.
    np.testing.assert_array_equal(residual.layer1[1](x), x)


# ------------------------------------------------------------------------------------------------
# Initialisation


def test_same_seed_same_weights_different_seed_different_weights():
    for factory in (models.resnet18, models.resnet20):
        a, b, c = factory(seed=7), factory(seed=7), factory(seed=8)
        d = factory(rng=np.random.default_rng(7))
        for key, value in a.state_dict().items():
            np.testing.assert_array_equal(value, b.state_dict()[key])
            np.testing.assert_array_equal(value, d.state_dict()[key])
            if key.endswith("conv1.weight") or key.endswith("conv2.weight") or key.startswith("fc."):
                assert not np.array_equal(value, c.state_dict()[key]), key
        unseeded = [factory().state_dict()["conv1.weight"] for _ in range(2)]
        assert not np.array_equal(*unseeded)


def test_initialisation_follows_torchvision():
    model = models.resnet50(seed=0)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight.data.astype(np.float64)
            O, _, KH, KW = w.shape
            std = np.sqrt(2.0 / (O * KH * KW))  # kaiming normal, fan_out, ReLU gain
            assert m.bias is None, name
            assert m.weight.dtype == np.float32
            if w.size >= 100_000:  # enough samples for 1% accuracy
                assert abs(w.std() / std - 1) < 0.01, name
                assert abs(w.mean()) < 0.01 * std, name
        elif isinstance(m, nn.BatchNorm2d):
            np.testing.assert_array_equal(m.weight.data, 1.0)
            np.testing.assert_array_equal(m.bias.data, 0.0)
            np.testing.assert_array_equal(m.running_mean, 0.0)
            np.testing.assert_array_equal(m.running_var, 1.0)
    bound = 1 / np.sqrt(2048)  # torch.nn.Linear's default
    w = model.fc.weight.data
    assert np.abs(w).max() <= bound and abs(w.std() / (bound / np.sqrt(3)) - 1) < 0.01
    assert np.abs(model.fc.bias.data).max() <= bound and model.fc.bias.data.std() > bound / 3


# ------------------------------------------------------------------------------------------------
# Gradients


def test_shortcut_a_forward_and_adjoint():
    rng = np.random.default_rng(0)
    shortcut = ShortcutA(4, 8, stride=2)
    x = rng.standard_normal((2, 4, 5, 6))
    y = shortcut(x)
    assert y.shape == (2, 8, 3, 3)
    expected = np.zeros((2, 8, 3, 3))
    expected[:, 2:6] = x[:, :, ::2, ::2]
    np.testing.assert_array_equal(y, expected)
    # backward is the adjoint: <S x, dy> == <x, S^T dy>
    dy = rng.standard_normal(y.shape)
    dx = shortcut.backward(dy)
    assert np.isclose((y * dy).sum(), (x * dx).sum(), rtol=1e-13)
    npresnet.gradcheck.gradcheck(ShortcutA(3, 7, stride=2), rng.standard_normal((2, 3, 4, 5)))  # odd padding 2 + 2


@pytest.mark.parametrize(
    "make_block, channels",
    [
        (lambda: BasicBlock(4, 4), 4),
        (lambda: BasicBlock(4, 8, stride=2, downsample=nn.Sequential(models.conv1x1(4, 8, 2), nn.BatchNorm2d(8))), 4),
        (
            lambda: Bottleneck(
                8,
                2,
                stride=2,
                groups=2,
                base_width=64,
                downsample=nn.Sequential(models.conv1x1(8, 8, 2), nn.BatchNorm2d(8)),
            ),
            8,
        ),
        (
            lambda: Bottleneck(
                4, 2, stride=2, stride_in_1x1=True, downsample=nn.Sequential(models.conv1x1(4, 8, 2), nn.BatchNorm2d(8))
            ),
            4,
        ),
        (lambda: CifarBlock(4, 8, stride=2, shortcut="A"), 4),
        (lambda: CifarBlock(4, 8, stride=2, shortcut="B"), 4),
        (lambda: CifarBlock(4, 4, shortcut=None), 4),
    ],
    ids=["basic", "basic-downsample", "bottleneck-groups", "bottleneck-v1", "cifar-A", "cifar-B", "plain"],
)
def test_block_gradients_full(make_block, channels):
    """Every element of the input and of every parameter, by central differences (train mode)."""
    rng = np.random.default_rng(3)
    block = make_block().to(np.float64)
    randomize_batchnorm(block, rng)
    x = npresnet.testing.kink_free((2, channels, 4, 4), rng, margin=0.05)
    npresnet.gradcheck.gradcheck(block, x, mode="full", eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize(
    "name, kwargs", [pytest.param("resnet18", {"num_classes": 5}, marks=pytest.mark.slow), ("resnet20", {})]
)
def test_whole_network_gradcheck_directional(name, kwargs):
    """One random direction per array (the input and all ~62 parameters), train mode, float64."""
    rng = np.random.default_rng(0)
    model = models.get_model(name, seed=0, **kwargs).to(np.float64)
    randomize_batchnorm(model, rng)
    x = rng.standard_normal((2, 3, 32, 32))
    report = npresnet.gradcheck.gradcheck(model, x, mode="directional", eps=1e-7, atol=1e-7, rtol=1e-4)
    assert len(report.arrays) == 1 + len(list(model.parameters()))
    assert report.passed


@pytest.mark.parametrize("name", ["resnet50", "resnet20"])
def test_backward_returns_input_gradient_and_fills_every_grad(name):
    rng = np.random.default_rng(0)
    model = models.get_model(name, num_classes=4, seed=0)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    x_before = x.copy()
    logits = model(x)
    assert logits.shape == (2, 4) and logits.dtype == np.float32
    dx = model.backward(rng.standard_normal(logits.shape).astype(np.float32))
    assert dx.shape == x.shape and dx.dtype == np.float32 and np.abs(dx).max() > 0
    np.testing.assert_array_equal(x, x_before)  # nothing is updated in place
    for key, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, key
    with pytest.raises(RuntimeError, match="without a matching forward"):
        model.backward(np.zeros((2, 4), np.float32))


# ------------------------------------------------------------------------------------------------
# Fine-tuning: a pretrained backbone, frozen, with a new head.


def test_fine_tuning_frozen_backbone_with_new_head():
    import torch

    pretrained = models.resnet18(num_classes=10, seed=0)
    randomize_batchnorm(pretrained, np.random.default_rng(1))
    stats_rng = np.random.default_rng(2)
    for m in pretrained.modules():  # as if trained: non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = stats_rng.normal(0, 0.1, m.running_mean.shape)
            m.running_var[...] = stats_rng.uniform(0.5, 1.5, m.running_var.shape)
    model = models.resnet18(num_classes=10, seed=1).to(np.float64)
    model.load_state_dict(pretrained.state_dict())
    model.requires_grad_(False)
    rng = np.random.default_rng(3)
    model.fc = nn.Sequential(nn.Linear(512, 32, rng=rng), nn.ReLU(), nn.Dropout(0.0), nn.Linear(32, 3, rng=rng))
    model.fc.to(np.float64)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.0.weight", "fc.0.bias", "fc.3.weight", "fc.3.bias"]
    assert model.num_parameters(trainable_only=True) == 512 * 32 + 32 + 32 * 3 + 3
    model.eval()  # frozen backbone: running statistics too
    model.fc.train()

    # The same head in torch, fed the same features (captured at the backbone's output).
    head_t = torch.nn.Sequential(
        torch.nn.Linear(512, 32), torch.nn.ReLU(), torch.nn.Dropout(0.0), torch.nn.Linear(32, 3)
    ).double()
    head_t.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.fc.state_dict().items()})
    features = {}
    model.avgpool.register_forward_hook(lambda m, i, out: features.__setitem__("x", out.reshape(len(out), -1)))

    backbone_before = {k: v.copy() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    x = rng.standard_normal((4, 3, 32, 32))
    target = np.array([0, 2, 1, 2])
    criterion, lr, losses = nn.CrossEntropyLoss(), 0.01, []
    for _ in range(3):
        model.zero_grad()
        loss = criterion(model(x), target)
        dx = model.backward(criterion.backward())
        assert dx.shape == x.shape

        head_t.zero_grad()
        loss_t = torch.nn.functional.cross_entropy(
            head_t(torch.from_numpy(features["x"].copy())), torch.from_numpy(target)
        )
        loss_t.backward()
        assert abs(float(loss) - loss_t.item()) <= 1e-12 * abs(loss_t.item())
        for (name, p), p_t in zip(model.fc.named_parameters(), head_t.parameters()):
            reference = p_t.grad.numpy()
            assert np.abs(p.grad - reference).max() <= 1e-10 * np.abs(reference).max(), name

        for p in model.parameters():  # SGD by hand
            if p.requires_grad:
                p.data -= lr * p.grad
            else:
                assert p.grad is None
        with torch.no_grad():
            for p_t in head_t.parameters():
                p_t -= lr * p_t.grad
        losses.append(float(loss))

    for key, value in model.state_dict().items():
        if key in backbone_before:
            assert np.array_equal(value, backbone_before[key]), f"frozen {key} changed"
    for (name, p), p_t in zip(model.fc.named_parameters(), head_t.parameters()):
        np.testing.assert_allclose(p.data, p_t.detach().numpy(), rtol=0, atol=1e-12, err_msg=name)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "typo, suggestion", [("resnet51", "resnet50"), ("resnet21", "resnet20"), ("resnext50", "resnext50_32x4d")]
)
def test_an_unknown_model_name_suggests_the_closest_real_one(typo, suggestion):
    """get_model (and with it train, summary, gradcheck and bench) names the likely intended model."""
    with pytest.raises(ValueError, match=rf"unknown model '{typo}'; did you mean {suggestion}\? models: resnet18, "):
        models.get_model(typo)
    assert models.unknown_model_message("resnet50") is None
    assert "did you mean" not in models.unknown_model_message("vgg16")
