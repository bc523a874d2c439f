"""The same ResNets built in PyTorch: the referee for parity tests and ``bench --compare torch``.

torchvision is not required: this is a compact copy of torchvision's ResNet (same attribute names,
so state_dict keys match npresnet's one for one) plus the paper's CIFAR ResNets with option A or B
shortcuts. Importing this module imports torch; nothing else in npresnet does.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    pad = dilation if k == 3 else 0
    return nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False, dilation=dilation)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1, variant="v1.5"
    ):
        super().__init__()
        self.conv1, self.bn1 = _conv(inplanes, planes, 3, stride), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2, self.bn2 = _conv(planes, planes, 3), nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1, variant="v1.5"
    ):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        s1, s3 = (stride, 1) if variant == "v1" else (1, stride)
        self.conv1, self.bn1 = _conv(inplanes, width, 1, s1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = _conv(width, width, 3, s3, groups, dilation), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = _conv(width, planes * 4, 1), nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet (v1.5 by default; ``variant="v1"`` puts the stride on the first 1x1)."""

    def __init__(
        self,
        block,
        layers,
        num_classes=1000,
        zero_init_residual=False,
        groups=1,
        width_per_group=64,
        replace_stride_with_dilation=None,
        variant="v1.5",
    ):
        super().__init__()
        self.inplanes, self.dilation, self.groups, self.base_width = 64, 1, groups, width_per_group
        self.variant = variant
        dil = replace_stride_with_dilation or [False, False, False]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(64), nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2, dil[0])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, dil[1])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, dil[2])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:  # each block starts as the identity
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv(self.inplanes, planes * block.expansion, 1, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [
            block(
                self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation, self.variant
            )
        ]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(
                block(
                    self.inplanes,
                    planes,
                    groups=self.groups,
                    base_width=self.base_width,
                    dilation=self.dilation,
                    variant=self.variant,
                )
            )
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_IMAGENET = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], {}),
    "resnet34": (BasicBlock, [3, 4, 6, 3], {}),
    "resnet50": (Bottleneck, [3, 4, 6, 3], {}),
    "resnet101": (Bottleneck, [3, 4, 23, 3], {}),
    "resnet152": (Bottleneck, [3, 8, 36, 3], {}),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], {"groups": 32, "width_per_group": 4}),
    "wide_resnet50_2": (Bottleneck, [3, 4, 6, 3], {"width_per_group": 128}),
}


class ShortcutA(nn.Module):
    """Option A: stride-2 subsampling and zero-padded channels (no parameters)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra = extra_channels

    def forward(self, x):
        return nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class CifarBlock(nn.Module):
    def __init__(self, inplanes, planes, stride, shortcut="A", residual=True):
        super().__init__()
        self.conv1, self.bn1 = _conv(inplanes, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3), nn.BatchNorm2d(planes)
        self.relu, self.residual = nn.ReLU(), residual
        self.shortcut = nn.Identity()
        if residual and (stride != 1 or inplanes != planes):
            if shortcut == "A":
                self.shortcut = ShortcutA(planes - inplanes)
            else:
                self.shortcut = nn.Sequential(_conv(inplanes, planes, 1, stride), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + self.shortcut(x) if self.residual else out)


class CifarResNet(nn.Module):
    """He et al. 2015, section 4.2: 6n+2 layers, 16/32/64 channels."""

    def __init__(self, n, num_classes=10, shortcut="A", residual=True):
        super().__init__()
        self.conv1, self.bn1, self.relu = _conv(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU()
        inplanes, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(CifarBlock(inplanes, planes, stride if i == 0 else 1, shortcut, residual))
                inplanes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_CIFAR_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


def build(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """A torch model by npresnet's factory name: 'resnet50', 'resnext50_32x4d', 'resnet20', 'plain56', ..."""
    if name in _IMAGENET:
        block, layers, extra = _IMAGENET[name]
        return ResNet(block, layers, num_classes=num_classes or 1000, **extra, **kwargs)
    for prefix, residual in (("resnet", True), ("plain", False)):
        if name.startswith(prefix) and name[len(prefix) :].isdigit() and int(name[len(prefix) :]) in _CIFAR_DEPTHS:
            n = _CIFAR_DEPTHS[int(name[len(prefix) :])]
            return CifarResNet(n, num_classes or 10, residual=residual, **kwargs)
    raise ValueError(f"unknown model {name!r}")
