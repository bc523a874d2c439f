"""ImageNet ResNets with torchvision's architecture, names and initialisation.

Notation: N batch, 3 x H x W input images (224 x 224 for ImageNet), K = ``num_classes``.

Shapes through a ResNet-50 at 224 x 224 (E = ``block.expansion``: 1 for BasicBlock, 4 for
Bottleneck)::

    x        (N, 3, 224, 224)
    conv1    (N, 64, 112, 112)    7x7, stride 2, padding 3; then bn1, relu
    maxpool  (N, 64, 56, 56)      3x3, stride 2, padding 1
    layer1   (N, 64E, 56, 56)     blocks of width 64,  first one stride 1
    layer2   (N, 128E, 28, 28)    blocks of width 128, first one stride 2
    layer3   (N, 256E, 14, 14)    blocks of width 256, first one stride 2
    layer4   (N, 512E, 7, 7)      blocks of width 512, first one stride 2
    avgpool  (N, 512E, 1, 1)      global average, then flattened to (N, 512E)
    fc       (N, K)               logits

Attribute names (``conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc``, and inside the
stages torchvision's block names) make ``state_dict()`` keys equal torchvision's, in the same
order, so ``model.load_state_dict(torchvision_model.state_dict())`` just works.

Initialisation follows torchvision, drawn from a NumPy generator (``seed=`` or ``rng=``):
convolutions kaiming-normal with mode fan_out and ReLU gain, std = sqrt(2 / (O * KH * KW));
BatchNorm weight 1 and bias 0; ``fc`` PyTorch's Linear default U(-1/sqrt(in), 1/sqrt(in));
``zero_init_residual`` zeroes the last BatchNorm weight of every block, so each block starts as
the identity (Goyal et al. 2017).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import nn
from ..backend import backend_name, to_backend
from .blocks import BasicBlock, Bottleneck, NormLayer, conv1x1

VARIANTS = ("v1.5", "v1")


def make_rng(seed: int | None = None, rng: np.random.Generator | None = None) -> np.random.Generator:
    """The generator a model draws its initial weights from: ``rng``, else ``default_rng(seed)``
    (``seed=None``: fresh entropy, a different model every time, like PyTorch)."""
    if seed is not None and rng is not None:
        raise ValueError("pass seed= or rng=, not both")
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return rng
    return np.random.default_rng(seed)


def init_weights(model: nn.Module, rng: np.random.Generator, zero_init_residual: bool = False) -> None:
    """torchvision's initialisation, in place (see the module docstring).

    Every Conv2d gets kaiming-normal fan_out weights; BatchNorm weight 1, bias 0. Linear layers
    keep the PyTorch default they were built with. With ``zero_init_residual`` the last BN of each
    block (``bn3`` of a Bottleneck, ``bn2`` of any other block) gets weight 0.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            weight = module.weight.data
            out_channels, _, kh, kw = weight.shape
            std = math.sqrt(2.0 / (out_channels * kh * kw))  # gain sqrt(2) over sqrt(fan_out)
            module.weight.data = _like(rng.normal(0.0, std, weight.shape), weight)
        elif isinstance(module, nn.BatchNorm2d) and module.weight is not None and module.bias is not None:  # affine
            module.weight.data[...] = 1
            module.bias.data[...] = 0
    if zero_init_residual:
        for module in model.modules():
            last_bn = getattr(module, "bn3" if isinstance(module, Bottleneck) else "bn2", None)
            if isinstance(last_bn, nn.BatchNorm2d) and last_bn.weight is not None:  # affine
                last_bn.weight.data[...] = 0


def _like(values: np.ndarray, reference: Any) -> Any:
    """``values`` with the dtype and on the backend of ``reference``."""
    return to_backend(values.astype(reference.dtype), backend_name(reference))


class ResNet(nn.Module):
    """torchvision's ``ResNet(block, layers, ...)`` with a hand-written ``backward``.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks in layer1..layer4, e.g. ``[3, 4, 6, 3]``.
        num_classes: K, the width of ``fc``.
        zero_init_residual: start every block as the identity (last BN weight 0).
        groups, width_per_group: Bottleneck width = int(planes * width_per_group / 64) * groups
            (ResNeXt-50 32x4d: 32 and 4; Wide ResNet-50-2: 1 and 128).
        replace_stride_with_dilation: three bools for layer2..layer4: replace the stage's stride 2
            by dilation (output stride 16 or 8, for dense prediction).
        norm_layer: constructor of the normalisation layers (default ``nn.BatchNorm2d``).
        variant: ``"v1.5"`` (torchvision: a Bottleneck's stride on its 3x3 conv2) or ``"v1"``
            (the paper: on its first 1x1 conv1). BasicBlock networks are the same in both.
        seed, rng: where the initial weights come from (see ``make_rng``).

    ``model(x)``: (N, 3, H, W) -> logits (N, K). ``model.backward(dlogits)`` -> dL/dx (N, 3, H, W),
    accumulating every parameter's ``.grad``.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        replace_stride_with_dilation: Sequence[bool] | None = None,
        norm_layer: NormLayer | None = None,
        variant: str = "v1.5",
        seed: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if len(layers) != 4:
            raise ValueError(f"layers must give the number of blocks of the 4 stages, got {list(layers)}")
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(
                f"replace_stride_with_dilation should be None or a 3-element tuple, got {replace_stride_with_dilation}"
            )
        rng = make_rng(seed, rng)
        self._norm_layer = norm_layer if norm_layer is not None else nn.BatchNorm2d
        self._block_options: dict[str, Any] = {"stride_in_1x1": variant == "v1"} if block is Bottleneck else {}
        self.variant = variant
        self.inplanes = 64
        self.dilation = 1
        self.groups = groups
        self.base_width = width_per_group

        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False, rng=rng)
        self.bn1 = self._norm_layer(self.inplanes)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], rng=rng)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=replace_stride_with_dilation[0], rng=rng)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=replace_stride_with_dilation[1], rng=rng)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=replace_stride_with_dilation[2], rng=rng)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes, rng=rng)
        init_weights(self, rng, zero_init_residual)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
        rng: np.random.Generator | None = None,
    ) -> nn.Sequential:
        """One stage: ``blocks`` blocks; the first may change the stride and the channel count."""
        norm_layer = self._norm_layer
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride, rng=rng), norm_layer(planes * block.expansion)
            )
        layers = [
            block(
                self.inplanes,
                planes,
                stride,
                downsample,
                self.groups,
                self.base_width,
                previous_dilation,
                norm_layer,
                rng=rng,
                **self._block_options,
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
                    norm_layer=norm_layer,
                    rng=rng,
                    **self._block_options,
                )
            )
        return nn.Sequential(*layers)

    def forward(self, x: Any) -> Any:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)  # (N, 512E, 1, 1)
        self._save_for_backward(x.shape)
        return self.fc(x.reshape(x.shape[0], -1))  # flatten to (N, 512E), then (N, K)

    def backward(self, dlogits: Any) -> Any:
        """dlogits (N, K) -> dL/dx (N, 3, H, W): the forward in reverse."""
        d = self.fc.backward(dlogits).reshape(self._pop_cache())  # un-flatten to (N, 512E, 1, 1)
        d = self.avgpool.backward(d)
        d = self.layer1.backward(self.layer2.backward(self.layer3.backward(self.layer4.backward(d))))
        return self.conv1.backward(self.bn1.backward(self.relu.backward(self.maxpool.backward(d))))

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}"


def _fix(kwargs: dict[str, Any], **fixed: Any) -> None:
    """Set the arguments that define a named variant; a conflicting value is an error (torchvision's rule)."""
    for name, value in fixed.items():
        if kwargs.get(name, value) != value:
            raise ValueError(f"the parameter '{name}' expected value {value} but got {kwargs[name]} instead")
        kwargs[name] = value


def _resnet(block: type[BasicBlock] | type[Bottleneck], layers: list[int], **kwargs: Any) -> ResNet:
    return ResNet(block, layers, **kwargs)


def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18 (He et al. 2015): BasicBlocks [2, 2, 2, 2]; 11,689,512 parameters; 1.81 GMACs at 224."""
    return _resnet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34: BasicBlocks [3, 4, 6, 3]; 21,797,672 parameters; 3.66 GMACs at 224."""
    return _resnet(BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50: Bottlenecks [3, 4, 6, 3]; 25,557,032 parameters; 4.09 GMACs (v1.5) / 3.86 (v1) at 224."""
    return _resnet(Bottleneck, [3, 4, 6, 3], **kwargs)


def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101: Bottlenecks [3, 4, 23, 3]; 44,549,160 parameters; 7.80 GMACs (v1.5) at 224."""
    return _resnet(Bottleneck, [3, 4, 23, 3], **kwargs)


def resnet152(**kwargs: Any) -> ResNet:
    """ResNet-152: Bottlenecks [3, 8, 36, 3]; 60,192,808 parameters; 11.51 GMACs (v1.5) at 224."""
    return _resnet(Bottleneck, [3, 8, 36, 3], **kwargs)


def resnext50_32x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-50 32x4d (Xie et al. 2017): 32 groups of width 4 in every 3x3; 25,028,904 parameters."""
    _fix(kwargs, groups=32, width_per_group=4)
    return _resnet(Bottleneck, [3, 4, 6, 3], **kwargs)


def wide_resnet50_2(**kwargs: Any) -> ResNet:
    """Wide ResNet-50-2 (Zagoruyko & Komodakis 2016): Bottleneck inner width doubled; 68,883,240 parameters."""
    _fix(kwargs, width_per_group=64 * 2)
    return _resnet(Bottleneck, [3, 4, 6, 3], **kwargs)
