"""The CIFAR-10 ResNets of He et al. 2015 (section 4.2, Table 6) and their plain counterparts.

Notation: N batch, 3 x 32 x 32 input images, K = ``num_classes`` (10).

6n + 2 weighted layers: a 3x3 conv stem with 16 filters, three stages of n blocks (each block two
3x3 convs) on 32x32, 16x16 and 8x8 maps with 16, 32 and 64 filters, global average pooling and
a K-way fully connected layer::

    x        (N, 3, 32, 32)
    conv1    (N, 16, 32, 32)    3x3, stride 1, padding 1; then bn1, relu
    layer1   (N, 16, 32, 32)    n blocks
    layer2   (N, 32, 16, 16)    n blocks, the first with stride 2
    layer3   (N, 64, 8, 8)      n blocks, the first with stride 2
    avgpool  (N, 64, 1, 1)      global average, then flattened to (N, 64)
    fc       (N, K)             logits

ResNet-20/32/44/56/110 have n = 3/5/7/9/18. Shortcuts (``shortcut=``):

* ``"A"`` (the paper's CIFAR choice, the default): the identity, and where the shape changes,
  stride-2 subsampling plus zero-padded extra channels (``ShortcutA``). No parameters, so
  ResNet-20/32/44/56/110 have exactly 269,722 / 464,154 / 658,586 / 853,018 / 1,727,962.
* ``"B"``: the identity, and where the shape changes, a 1x1 conv (stride 2) + BatchNorm projection.
* ``None``: no shortcut at all: the "plain" networks of the paper's Figure 6 (``plain20`` ...),
  with the same layers and parameters as option A.

Names follow akamaster/pytorch_resnet_cifar10 (``conv1, bn1, layer1..layer3``, blocks ``conv1,
bn1, conv2, bn2, shortcut``), except that the classifier is called ``fc`` (akamaster: ``linear``),
as in the ImageNet models. Initialisation is the ImageNet models' (``resnet.init_weights``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import nn
from ..backend import get_array_module
from .blocks import ResidualBlock, conv1x1, conv3x3
from .resnet import init_weights, make_rng

SHORTCUTS = ("A", "B", None)


class ShortcutA(nn.Module):
    """Option A shortcut: (N, C, H, W) -> (N, O, OH, OW), no parameters, O >= C.

    Forward: keep every ``stride``-th pixel, ``x[:, :, ::s, ::s]``, and put the C channels in the
    middle of O, with zeros around them (``(O - C) // 2`` channels before, the rest after)::

        y[:, before:before + C] = x[:, :, ::s, ::s]        all other channels of y are 0

    Backward is the adjoint of that copy: the gradient's middle C channels go back to the pixels
    they came from; the zero channels and the skipped pixels get no gradient::

        dx = 0;  dx[:, :, ::s, ::s] = dy[:, before:before + C]
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"option A pads channels with zeros, so out_channels ({out_channels}) must be >= "
                f"in_channels ({in_channels})"
            )
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.before = (out_channels - in_channels) // 2

    def forward(self, x: Any) -> Any:
        N, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(
                f"ShortcutA expects input with {self.in_channels} channels in dim 1 (N, C, H, W), "
                f"got shape {tuple(x.shape)}"
            )
        xp = get_array_module(x)
        s = self.stride
        subsampled = x[:, :, ::s, ::s]
        y = xp.zeros((N, self.out_channels, *subsampled.shape[2:]), dtype=x.dtype)
        y[:, self.before : self.before + C] = subsampled
        self._save_for_backward(tuple(x.shape))
        return y

    def backward(self, dout: Any) -> Any:
        x_shape = self._pop_cache()
        xp = get_array_module(dout)
        s, C = self.stride, self.in_channels
        dx = xp.zeros(x_shape, dtype=dout.dtype)
        dx[:, :, ::s, ::s] = dout[:, self.before : self.before + C]
        return dx

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class CifarBlock(ResidualBlock):
    """Two 3x3 convolutions, with (``residual=True``) or without a shortcut. (N, C, H, W) -> (N, P, OH, OW)::

        x ──┬── conv1 3x3/s ── bn1 ── relu1 ── conv2 3x3 ── bn2 ──┐
            │                                                     (+) ── relu_out ── y
            └───────────────────────── shortcut(x) ───────────────┘

    ``shortcut`` is ``Identity`` when the shape is kept, else ``ShortcutA`` (option A) or
    ``Sequential(conv1x1/s, BatchNorm2d)`` (option B). A plain block (``residual=False``) has no
    shortcut and no (+): y = relu_out(bn2(conv2(relu1(bn1(conv1(x)))))).
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        shortcut: str | None = "A",
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be 'A', 'B' or None (plain), got {shortcut!r}")
        self.conv1 = conv3x3(inplanes, planes, stride, rng=rng)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, rng=rng)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu_out = nn.ReLU()
        self.residual = shortcut is not None
        self.shortcut: nn.Module | None
        if not self.residual:
            self.shortcut = None
        elif stride == 1 and inplanes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ShortcutA(inplanes, planes, stride)
        else:
            self.shortcut = nn.Sequential(conv1x1(inplanes, planes, stride, rng=rng), nn.BatchNorm2d(planes))

    @property
    def main_branch_entry(self) -> nn.Module:
        return self.conv1

    @property
    def shortcut_branch(self) -> nn.Module | None:
        return self.shortcut  # Identity, ShortcutA or a projection; None in a plain block

    @property
    def output_activation(self) -> nn.Module:
        return self.relu_out

    @property
    def is_residual(self) -> bool:
        return self.residual

    def forward(self, x: Any) -> Any:
        # one layer a line: rebinding out frees the activation before (nested calls keep it to the line's end)
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu1(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.shortcut is not None:  # residual
            out = out + self.shortcut(x)  # a new array: never add in place into one a cache may hold
        return self.relu_out(out)

    def backward(self, dout: Any) -> Any:
        d_sum = self.relu_out.backward(dout)  # gradient at the (+) node (or at bn2's output if plain)
        d_branch = self.conv2.backward(self.bn2.backward(d_sum))
        dx_branch = self.conv1.backward(self.bn1.backward(self.relu1.backward(d_branch)))
        if self.shortcut is None:  # plain
            return dx_branch
        # (+) passed d_sum to the shortcut too; x forked into both paths, so its gradient is the sum.
        return dx_branch + self.shortcut.backward(d_sum)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR network with ``6 * num_blocks + 2`` layers (see the module docstring).

    Args:
        num_blocks: n, the number of blocks per stage (3 for ResNet-20).
        num_classes: K, the width of ``fc``.
        shortcut: ``"A"``, ``"B"`` or ``None`` (plain network).
        zero_init_residual: start every residual block as the identity (bn2 weight 0).
        seed, rng: where the initial weights come from (see ``resnet.make_rng``).

    ``model(x)``: (N, 3, H, W) -> logits (N, K). ``model.backward(dlogits)`` -> dL/dx.
    """

    def __init__(
        self,
        num_blocks: int,
        num_classes: int = 10,
        shortcut: str | None = "A",
        zero_init_residual: bool = False,
        seed: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be 'A', 'B' or None (plain), got {shortcut!r}")
        if zero_init_residual and shortcut is None:
            raise ValueError("zero_init_residual needs shortcuts: a plain network would start with its signal cut")
        rng = make_rng(seed, rng)
        self.shortcut_type = shortcut
        self.conv1 = conv3x3(3, 16, rng=rng)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        inplanes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(num_blocks):
                blocks.append(CifarBlock(inplanes, planes, stride if i == 0 else 1, shortcut, rng=rng))
                inplanes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes, rng=rng)
        init_weights(self, rng, zero_init_residual)

    def forward(self, x: Any) -> Any:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(x)  # (N, 64, 1, 1)
        self._save_for_backward(x.shape)
        return self.fc(x.reshape(x.shape[0], -1))  # flatten to (N, 64), then (N, K)

    def backward(self, dlogits: Any) -> Any:
        """dlogits (N, K) -> dL/dx (N, 3, H, W): the forward in reverse."""
        d = self.fc.backward(dlogits).reshape(self._pop_cache())  # un-flatten to (N, 64, 1, 1)
        d = self.avgpool.backward(d)
        d = self.layer1.backward(self.layer2.backward(self.layer3.backward(d)))
        return self.conv1.backward(self.bn1.backward(self.relu.backward(d)))

    def extra_repr(self) -> str:
        return f"shortcut={self.shortcut_type!r}"


def _cifar(depth: int, shortcut: str | None, **kwargs: Any) -> CifarResNet:
    return CifarResNet((depth - 2) // 6, shortcut=shortcut, **kwargs)


def resnet20(shortcut: str = "A", **kwargs: Any) -> CifarResNet:
    """ResNet-20 (n=3): 269,722 parameters with option A; 8.75% CIFAR-10 test error in the paper."""
    return _cifar(20, shortcut, **kwargs)


def resnet32(shortcut: str = "A", **kwargs: Any) -> CifarResNet:
    """ResNet-32 (n=5): 464,154 parameters with option A; 7.51% in the paper."""
    return _cifar(32, shortcut, **kwargs)


def resnet44(shortcut: str = "A", **kwargs: Any) -> CifarResNet:
    """ResNet-44 (n=7): 658,586 parameters with option A; 7.17% in the paper."""
    return _cifar(44, shortcut, **kwargs)


def resnet56(shortcut: str = "A", **kwargs: Any) -> CifarResNet:
    """ResNet-56 (n=9): 853,018 parameters with option A; 6.97% in the paper."""
    return _cifar(56, shortcut, **kwargs)


def resnet110(shortcut: str = "A", **kwargs: Any) -> CifarResNet:
    """ResNet-110 (n=18): 1,727,962 parameters with option A; 6.43% (best of 5) in the paper."""
    return _cifar(110, shortcut, **kwargs)


def plain20(**kwargs: Any) -> CifarResNet:
    """Plain-20: ResNet-20 without shortcuts (269,722 parameters)."""
    return _cifar(20, None, **kwargs)


def plain32(**kwargs: Any) -> CifarResNet:
    """Plain-32: ResNet-32 without shortcuts."""
    return _cifar(32, None, **kwargs)


def plain44(**kwargs: Any) -> CifarResNet:
    """Plain-44: ResNet-44 without shortcuts."""
    return _cifar(44, None, **kwargs)


def plain56(**kwargs: Any) -> CifarResNet:
    """Plain-56: ResNet-56 without shortcuts."""
    return _cifar(56, None, **kwargs)


def plain110(**kwargs: Any) -> CifarResNet:
    """Plain-110: ResNet-110 without shortcuts."""
    return _cifar(110, None, **kwargs)
