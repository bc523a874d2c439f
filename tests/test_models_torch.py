"""npresnet's ResNets against the same networks built in PyTorch (the referee), in float64 and float32.

torchvision is not a dependency, so the reference networks are written here, compactly, with
torchvision's structure and names (and the paper's v1 option, and the CIFAR networks with option
A/B shortcuts). Weights go from torch to npresnet through ``load_state_dict``; then, in training
mode, the logits, the loss, dL/dx, every parameter's gradient and every running statistic after
the step must agree, and in evaluation mode the logits.

Errors are ``max |ours - torch| / max |torch|`` per array; the worst over all arrays of a model is
held to 1e-10 in float64 and 1e-4 in float32 (a whole network compounds ~60 layers of rounding,
and small-batch BatchNorm amplifies it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as tF
from torch import nn as tnn

import npresnet
from npresnet import models, nn

FLOAT64_LIMIT = 1e-10
FLOAT32_LIMIT = 1e-4


# ------------------------------------------------------------------------------------------------
# The reference: torchvision's ResNet (plus the v1 stride option) and He et al.'s CIFAR ResNet.


def tconv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> tnn.Conv2d:
    return tnn.Conv2d(cin, cout, k, stride, padding=dilation if k == 3 else 0, groups=groups, bias=False,
                      dilation=dilation)


class TBasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 stride_in_1x1=False):
        super().__init__()
        self.conv1, self.bn1 = tconv(inplanes, planes, 3, stride), tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU(inplace=True)
        self.conv2, self.bn2 = tconv(planes, planes, 3), tnn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 stride_in_1x1=False):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1, self.bn1 = tconv(inplanes, width, 1, s1), tnn.BatchNorm2d(width)
        self.conv2, self.bn2 = tconv(width, width, 3, s3, groups, dilation), tnn.BatchNorm2d(width)
        self.conv3, self.bn3 = tconv(width, planes * 4, 1), tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class TResNet(tnn.Module):
    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64,
                 replace_stride_with_dilation=None, variant="v1.5"):
        super().__init__()
        self.inplanes, self.dilation, self.groups, self.base_width = 64, 1, groups, width_per_group
        self.stride_in_1x1 = variant == "v1"
        dilate = replace_stride_with_dilation or [False, False, False]
        self.conv1 = tnn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.relu = tnn.ReLU(inplace=True)
        self.maxpool = tnn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2, dilate[0])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, dilate[1])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, dilate[2])
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, tnn.Conv2d):
                tnn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (TBasicBlock, TBottleneck)):
                    tnn.init.zeros_((m.bn3 if isinstance(m, TBottleneck) else m.bn2).weight)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        downsample, previous_dilation = None, self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = tnn.Sequential(tconv(self.inplanes, planes * block.expansion, 1, stride),
                                        tnn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation,
                        self.stride_in_1x1)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation, stride_in_1x1=self.stride_in_1x1))
        return tnn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TShortcutA(tnn.Module):
    """akamaster's LambdaLayer: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))."""

    def __init__(self, planes):
        super().__init__()
        self.planes = planes

    def forward(self, x):
        return tF.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.planes // 4, self.planes // 4))


class TCifarBlock(tnn.Module):
    def __init__(self, inplanes, planes, stride, shortcut):
        super().__init__()
        self.conv1, self.bn1 = tconv(inplanes, planes, 3, stride), tnn.BatchNorm2d(planes)
        self.conv2, self.bn2 = tconv(planes, planes, 3), tnn.BatchNorm2d(planes)
        self.residual = shortcut is not None
        self.shortcut = tnn.Identity()
        if self.residual and (stride != 1 or inplanes != planes):
            self.shortcut = (TShortcutA(planes) if shortcut == "A" else
                             tnn.Sequential(tconv(inplanes, planes, 1, stride), tnn.BatchNorm2d(planes)))

    def forward(self, x):
        out = self.bn2(self.conv2(tF.relu(self.bn1(self.conv1(x)))))
        return tF.relu(out + self.shortcut(x) if self.residual else out)


class TCifarResNet(tnn.Module):
    def __init__(self, n, num_classes=10, shortcut="A"):
        super().__init__()
        self.conv1, self.bn1, self.relu = tconv(3, 16, 3), tnn.BatchNorm2d(16), tnn.ReLU()
        inplanes, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(TCifarBlock(inplanes, planes, stride if i == 0 else 1, shortcut))
                inplanes = planes
            stages.append(tnn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(64, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


IMAGENET_LAYOUTS = {
    "resnet18": (TBasicBlock, [2, 2, 2, 2], {}),
    "resnet34": (TBasicBlock, [3, 4, 6, 3], {}),
    "resnet50": (TBottleneck, [3, 4, 6, 3], {}),
    "resnet101": (TBottleneck, [3, 4, 23, 3], {}),
    "resnet152": (TBottleneck, [3, 8, 36, 3], {}),
    "resnext50_32x4d": (TBottleneck, [3, 4, 6, 3], {"groups": 32, "width_per_group": 4}),
    "wide_resnet50_2": (TBottleneck, [3, 4, 6, 3], {"width_per_group": 128}),
}


def torch_model(name: str, **kwargs: Any) -> tnn.Module:
    """The reference network for an npresnet factory name ('resnet50', 'resnet20', 'plain56', ...)."""
    if name in IMAGENET_LAYOUTS:
        block, layers, fixed = IMAGENET_LAYOUTS[name]
        return TResNet(block, layers, **fixed, **kwargs)
    depth = int(name.removeprefix("resnet").removeprefix("plain"))
    shortcut = None if name.startswith("plain") else kwargs.pop("shortcut", "A")
    return TCifarResNet((depth - 2) // 6, shortcut=shortcut, **kwargs)


# ------------------------------------------------------------------------------------------------
# Helpers


def rel_err(ours: Any, reference: Any) -> float:
    """max |ours - reference| / max |reference|, in float64."""
    a = np.asarray(ours, dtype=np.float64)
    b = reference.detach().numpy().astype(np.float64) if isinstance(reference, torch.Tensor) else np.asarray(
        reference, dtype=np.float64)
    assert a.shape == b.shape, f"shape mismatch: ours {a.shape}, torch {b.shape}"
    return float(np.max(np.abs(a - b), initial=0.0)) / max(float(np.max(np.abs(b), initial=0.0)), 1e-300)


def randomize_batchnorm(model: tnn.Module, seed: int) -> None:
    """Move every BN's gamma, beta and running statistics away from 1/0, so that errors in their
    gradients (and in the use of the running statistics) cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def compare_with_torch(name: str, kwargs: dict[str, Any], shape: tuple[int, ...], dtype: Any) -> dict[str, float]:
    """One training step and one evaluation forward on both sides; the error of every array."""
    torch.manual_seed(0)
    reference = torch_model(name, **kwargs).to(torch.float64 if dtype == np.float64 else torch.float32)
    randomize_batchnorm(reference, seed=1)
    model = models.get_model(name, seed=0, **kwargs).to(dtype)
    model.load_state_dict(reference.state_dict())

    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(dtype)
    target = rng.integers(0, kwargs.get("num_classes", 10), size=shape[0])

    x_t = torch.tensor(x, requires_grad=True)
    logits_t = reference.train()(x_t)
    loss_t = tF.cross_entropy(logits_t, torch.tensor(target))
    loss_t.backward()

    criterion = nn.CrossEntropyLoss()
    logits = model.train()(x)
    loss = criterion(logits, target)
    dx = model.backward(criterion.backward())

    errors = {"logits": rel_err(logits, logits_t), "loss": rel_err(loss, loss_t), "dL/dx": rel_err(dx, x_t.grad)}
    reference_params = dict(reference.named_parameters())
    assert [k for k, _ in model.named_parameters()] == list(reference_params)
    for key, p in model.named_parameters():
        assert p.grad is not None, f"{key} got no gradient"
        errors[f"grad {key}"] = rel_err(p.grad, reference_params[key].grad)
    reference_buffers = dict(reference.named_buffers())
    assert [k for k, _ in model.named_buffers()] == list(reference_buffers)
    for key, buf in model.named_buffers():
        errors[f"buffer {key}"] = rel_err(buf, reference_buffers[key])

    with torch.no_grad():
        eval_logits_t = reference.eval()(x_t)
    with npresnet.no_grad():
        errors["eval logits"] = rel_err(model.eval()(x), eval_logits_t)
    return errors


def worst(errors: dict[str, float], count: int = 5) -> str:
    ranked = sorted(errors.items(), key=lambda kv: -kv[1])[:count]
    return ", ".join(f"{k}: {v:.2e}" for k, v in ranked)


# ------------------------------------------------------------------------------------------------
# state_dict keys: the same names, in the same order, with the same shapes as torchvision's.

FAST_KEY_MODELS = ["resnet18", "resnet34", "resnet50", "resnext50_32x4d", *models.CIFAR_MODELS]
SLOW_KEY_MODELS = ["resnet101", "resnet152", "wide_resnet50_2"]


@pytest.mark.parametrize("name", FAST_KEY_MODELS + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW_KEY_MODELS])
def test_state_dict_keys_and_shapes_equal_torchvision(name):
    kwargs = {"num_classes": 13}
    with torch.device("meta"):                    # shapes and names only: nothing is allocated
        expected = {k: tuple(v.shape) for k, v in torch_model(name, **kwargs).state_dict().items()}
    ours = {k: tuple(np.shape(v)) for k, v in models.get_model(name, seed=0, **kwargs).state_dict().items()}
    assert list(ours) == list(expected)
    assert ours == expected


@pytest.mark.parametrize("kwargs", [{"shortcut": "B"}, {"variant": "v1"}], ids=["resnet20-B", "resnet50-v1"])
def test_state_dict_keys_of_options(kwargs):
    name = "resnet20" if "shortcut" in kwargs else "resnet50"
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in torch_model(name, **kwargs).state_dict().items()}
    ours = {k: tuple(np.shape(v)) for k, v in models.get_model(name, seed=0, **kwargs).state_dict().items()}
    assert list(ours) == list(expected)
    assert ours == expected


# ------------------------------------------------------------------------------------------------
# One training step and an evaluation forward, against torch.

IMAGENET_INPUT, CIFAR_INPUT = (2, 3, 64, 64), (2, 3, 32, 32)
PARITY_CASES = [
    pytest.param("resnet18", {"num_classes": 7}, IMAGENET_INPUT, id="resnet18"),
    pytest.param("resnet50", {"num_classes": 7}, IMAGENET_INPUT, id="resnet50-v1.5"),
    pytest.param("resnet50", {"num_classes": 7, "variant": "v1"}, IMAGENET_INPUT, id="resnet50-v1"),
    pytest.param("resnext50_32x4d", {"num_classes": 7}, IMAGENET_INPUT, id="resnext50_32x4d"),
    pytest.param("resnet20", {}, CIFAR_INPUT, id="resnet20-A"),
    pytest.param("resnet20", {"shortcut": "B"}, CIFAR_INPUT, id="resnet20-B"),
    pytest.param("plain20", {}, CIFAR_INPUT, id="plain20"),
    pytest.param("resnet50", {"num_classes": 7, "replace_stride_with_dilation": [False, True, True]},
                 IMAGENET_INPUT, id="resnet50-dilated", marks=pytest.mark.slow),
    pytest.param("wide_resnet50_2", {"num_classes": 7}, IMAGENET_INPUT, id="wide_resnet50_2",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name, kwargs, shape", PARITY_CASES)
def test_training_step_matches_torch_float64(name, kwargs, shape):
    errors = compare_with_torch(name, kwargs, shape, np.float64)
    print(f"\n{name} {kwargs} float64: worst {worst(errors, 1)}")
    assert max(errors.values()) < FLOAT64_LIMIT, worst(errors)


@pytest.mark.parametrize("name, kwargs, shape", [
    pytest.param("resnet18", {"num_classes": 7}, IMAGENET_INPUT, id="resnet18"),
    pytest.param("resnet20", {}, CIFAR_INPUT, id="resnet20-A"),
])
def test_training_step_matches_torch_float32(name, kwargs, shape):
    errors = compare_with_torch(name, kwargs, shape, np.float32)
    print(f"\n{name} {kwargs} float32: worst {worst(errors, 1)}")
    assert max(errors.values()) < FLOAT32_LIMIT, worst(errors)


def test_zero_init_residual_matches_torch():
    """Same seed-independent init facts on both sides: the last BN weight of every block is 0."""
    for name in ("resnet18", "resnet50", "resnet20"):
        reference = torch_model(name, zero_init_residual=True) if name != "resnet20" else None
        model = models.get_model(name, zero_init_residual=True, seed=0)
        zeroed = {k for k, v in model.state_dict().items() if k.endswith(".weight") and not np.any(v)}
        last_bn = "bn3" if name == "resnet50" else "bn2"
        expected = {k for k in model.state_dict() if k.startswith("layer") and k.endswith(f".{last_bn}.weight")}
        assert zeroed == expected
        if reference is not None:
            assert zeroed == {k for k, v in reference.state_dict().items() if k.endswith(".weight") and not v.any()}
