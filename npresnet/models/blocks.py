"""The two residual blocks of torchvision's ResNets, with their backward passes written out.

Notation: N batch, C input channels (``inplanes``), P = ``planes``, H x W input, OH x OW output
(H/stride x W/stride).

A residual block computes ``y = relu(F(x) + shortcut(x))``. In the forward pass ``x`` *forks*: it
feeds the residual branch F and the shortcut. In the backward pass a fork becomes a *sum*: dL/dx
is the gradient through F plus the gradient through the shortcut. Both blocks' ``backward``
methods are the forward read from bottom to top, and say so line by line.

Attribute names are torchvision's (``conv1, bn1, conv2, bn2[, conv3, bn3], downsample``), so a
block's ``state_dict`` keys are torchvision's. torchvision applies one ``relu`` module three times;
here every ReLU is its own module (``relu1``, ``relu2``, ``relu_out``) because a module keeps a
single cache for its backward. ReLUs have no parameters, so the names never reach the state_dict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import nn

NormLayer = Callable[[int], nn.Module]


def conv3x3(
    in_planes: int,
    out_planes: int,
    stride: int = 1,
    groups: int = 1,
    dilation: int = 1,
    rng: np.random.Generator | None = None,
) -> nn.Conv2d:
    """3x3 convolution, no bias, padding = dilation (keeps H x W at stride 1), as torchvision."""
    return nn.Conv2d(
        in_planes,
        out_planes,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        groups=groups,
        bias=False,
        dilation=dilation,
        rng=rng,
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1, rng: np.random.Generator | None = None) -> nn.Conv2d:
    """1x1 convolution, no bias, as torchvision."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False, rng=rng)


class ResidualBlock(nn.Module):
    """What every block here declares about itself: y = output_activation(F(x) + S(x)).

    Tools that look inside blocks (``npresnet.inspect.GradientFlow``) read these properties
    instead of guessing from child names:

    * ``main_branch_entry``: the first layer of the main (residual) branch F; its backward
      returns dx_main, the part of dL/dx that went through F.
    * ``shortcut_branch``: the shortcut module S, or ``None`` when S is the bare identity (x is
      added as it is, so dx_short = the gradient at the (+)) or when there is no shortcut.
    * ``is_residual``: ``False`` for a plain block, which has no S and no (+): y = relu(F(x)).
    * ``output_activation``: the ReLU after the (+); its backward returns the gradient at the (+).
    """

    @property
    def main_branch_entry(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} does not declare main_branch_entry")

    @property
    def shortcut_branch(self) -> nn.Module | None:
        raise NotImplementedError(f"{type(self).__name__} does not declare shortcut_branch")

    @property
    def output_activation(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} does not declare output_activation")

    @property
    def is_residual(self) -> bool:
        return True


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34). (N, C, H, W) -> (N, P, OH, OW)::

        x ──┬── conv1 3x3/s ── bn1 ── relu1 ── conv2 3x3 ── bn2 ──┐
            │                                                     (+) ── relu_out ── y
            └──────────── identity, or downsample(x) ─────────────┘

    ``downsample`` (a ``Sequential(conv1x1(C, P, stride), BatchNorm2d(P))`` in torchvision's
    ResNet) is needed when the shape changes (stride != 1 or C != P); otherwise the shortcut is x.
    Raises ``ValueError`` for groups != 1 or base_width != 64 and ``NotImplementedError`` for
    dilation > 1, as torchvision does.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: NormLayer | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer if norm_layer is not None else nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError(
                f"BasicBlock only supports groups=1 and base_width=64, got groups={groups}, base_width={base_width}"
            )
        if dilation > 1:
            raise NotImplementedError(f"Dilation > 1 not supported in BasicBlock (got dilation={dilation})")
        self.conv1 = conv3x3(inplanes, planes, stride, rng=rng)
        self.bn1 = norm_layer(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, rng=rng)
        self.bn2 = norm_layer(planes)
        self.relu_out = nn.ReLU()
        self.downsample = downsample  # registered last, so its keys follow bn2's as in torchvision
        self.stride = stride

    @property
    def main_branch_entry(self) -> nn.Module:
        return self.conv1

    @property
    def shortcut_branch(self) -> nn.Module | None:
        return self.downsample

    @property
    def output_activation(self) -> nn.Module:
        return self.relu_out

    def forward(self, x: Any) -> Any:
        # one layer a line: rebinding out frees the activation before (nested calls keep it to the line's end)
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu1(out)
        out = self.conv2(out)
        out = self.bn2(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        out = out + shortcut  # a new array: never add in place into one a cache may hold
        return self.relu_out(out)

    def backward(self, dout: Any) -> Any:
        d_sum = self.relu_out.backward(dout)  # gradient at the (+) node
        # (+) passes its gradient unchanged to both of its inputs.
        d_branch = self.conv2.backward(self.bn2.backward(d_sum))
        dx_branch = self.conv1.backward(self.bn1.backward(self.relu1.backward(d_branch)))
        dx_shortcut = d_sum if self.downsample is None else self.downsample.backward(d_sum)
        # x forked into the branch and the shortcut, so its gradient is the sum of the two.
        return dx_branch + dx_shortcut


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3, 1x1 expand, and a shortcut (ResNet-50/101/152, ResNeXt, Wide ResNet).

    (N, C, H, W) -> (N, 4P, OH, OW), with an inner width Wd = int(P * base_width / 64) * groups::

                C -> Wd                      Wd -> Wd, groups               Wd -> 4P
        x ──┬── conv1 1x1 ── bn1 ── relu1 ── conv2 3x3/s ── bn2 ── relu2 ── conv3 1x1 ── bn3 ──┐
            │                                                                                 (+) ── relu_out ── y
            └─────────────────────────── identity, or downsample(x) ───────────────────────────┘

    Where the stride s goes: ``stride_in_1x1=False`` (ResNet v1.5, torchvision's default) puts it
    on the 3x3 conv2, as drawn; ``stride_in_1x1=True`` (v1, the paper and Caffe) on the first 1x1
    conv1. The two have identical parameters. In v1 the 3x3 conv2 runs on the already subsampled
    map, so ResNet-50 v1 costs 3.86 GMACs against v1.5's 4.09; NVIDIA reports v1.5 ~0.5% more
    accurate (top-1) and ~5% slower.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: NormLayer | None = None,
        stride_in_1x1: bool = False,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer if norm_layer is not None else nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(inplanes, width, stride_1x1, rng=rng)
        self.bn1 = norm_layer(width)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(width, width, stride_3x3, groups, dilation, rng=rng)
        self.bn2 = norm_layer(width)
        self.relu2 = nn.ReLU()
        self.conv3 = conv1x1(width, planes * self.expansion, rng=rng)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu_out = nn.ReLU()
        self.downsample = downsample  # registered last, so its keys follow bn3's as in torchvision
        self.stride = stride

    @property
    def main_branch_entry(self) -> nn.Module:
        return self.conv1

    @property
    def shortcut_branch(self) -> nn.Module | None:
        return self.downsample

    @property
    def output_activation(self) -> nn.Module:
        return self.relu_out

    def forward(self, x: Any) -> Any:
        # one layer a line: rebinding out frees the activation before (nested calls keep it to the line's end)
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu1(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu2(out)
        out = self.conv3(out)
        out = self.bn3(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        out = out + shortcut  # a new array: never add in place into one a cache may hold
        return self.relu_out(out)

    def backward(self, dout: Any) -> Any:
        d_sum = self.relu_out.backward(dout)  # gradient at the (+) node
        # (+) passes its gradient unchanged to both of its inputs.
        d_branch = self.conv3.backward(self.bn3.backward(d_sum))
        d_branch = self.conv2.backward(self.bn2.backward(self.relu2.backward(d_branch)))
        dx_branch = self.conv1.backward(self.bn1.backward(self.relu1.backward(d_branch)))
        dx_shortcut = d_sum if self.downsample is None else self.downsample.backward(d_sum)
        # x forked into the branch and the shortcut, so its gradient is the sum of the two.
        return dx_branch + dx_shortcut
