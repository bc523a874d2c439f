"""Layer configurations as values: what ``conv2d_configs()`` and friends draw, and the arrays for each.

A config holds everything needed to build the layer and its input (shapes, hyperparameters, dtype,
and the ``seed`` of its arrays), so a failing hypothesis example prints one line that replays
exactly. Each config builds the npresnet layer (``config.layer()``) and the torch layer
(``config.torch_layer()``, which imports torch), and ``arrays_for(config)`` draws its arrays:
the input ``x`` (tie-free for max pooling, kink-free otherwise), the upstream gradient ``dy``
(output shape), and the layer's parameters and statistics where it has them (``config.layer()``
holds the same ones).

Notation: N batch, C channels, H x W input, OH x OW output; pairs are (along H, along W).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..functional.im2col import conv_output_size
from ..nn import AvgPool2d, BatchNorm2d, Conv2d, MaxPool2d, Module
from .inputs import kink_free, tie_free

Pair = tuple[int, int]


@dataclass(frozen=True)
class Conv2dConfig:
    """``nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)``
    on an (N, C, H, W) input."""

    batch: int
    in_channels: int
    out_channels: int
    size: Pair  # (H, W)
    kernel_size: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int
    bias: bool
    dtype: str = "float64"
    seed: int = 0

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, *self.size)

    @property
    def output_size(self) -> Pair:
        """(OH, OW), each >= 1 for every config the strategies draw."""
        return tuple(
            conv_output_size(n, k, s, p, d)
            for n, k, s, p, d in zip(self.size, self.kernel_size, self.stride, self.padding, self.dilation)
        )

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, *self.output_size)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def layer_kwargs(self) -> dict[str, Any]:
        """The constructor arguments, the same for ``npresnet.nn.Conv2d`` and ``torch.nn.Conv2d``."""
        return dict(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias,
        )

    def layer(self) -> Module:
        """The npresnet layer in ``dtype``, with the weight and bias of ``arrays_for(self)``."""
        return _with_arrays(Conv2d(**self.layer_kwargs()).to(np.dtype(self.dtype)), arrays_for(self))

    def torch_layer(self) -> Any:
        import torch

        return torch.nn.Conv2d(**self.layer_kwargs()).to(getattr(torch, self.dtype))


@dataclass(frozen=True)
class Pool2dConfig:
    """``nn.MaxPool2d`` (``kind="max"``) or ``nn.AvgPool2d`` (``kind="avg"``) on an (N, C, H, W) input."""

    kind: str  # "max" or "avg"
    batch: int
    channels: int
    size: Pair
    kernel_size: Pair
    stride: Pair | None  # None: the kernel size (torch's default)
    padding: Pair
    dilation: Pair = (1, 1)  # max pooling only
    ceil_mode: bool = False
    count_include_pad: bool = True  # average pooling only
    divisor_override: int | None = None  # average pooling only
    dtype: str = "float64"
    seed: int = 0

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, *self.size)

    @property
    def output_size(self) -> Pair:
        stride = self.stride or self.kernel_size
        return tuple(
            conv_output_size(n, k, s, p, d, self.ceil_mode)
            for n, k, s, p, d in zip(self.size, self.kernel_size, stride, self.padding, self.dilation)
        )

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, *self.output_size)

    def layer_kwargs(self) -> dict[str, Any]:
        """The constructor arguments, the same for npresnet's and torch's pooling layer of this kind."""
        common = dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding, ceil_mode=self.ceil_mode)
        if self.kind == "max":
            return {**common, "dilation": self.dilation}
        return {**common, "count_include_pad": self.count_include_pad, "divisor_override": self.divisor_override}

    def layer(self) -> Module:
        return MaxPool2d(**self.layer_kwargs()) if self.kind == "max" else AvgPool2d(**self.layer_kwargs())

    def torch_layer(self) -> Any:
        import torch

        cls = torch.nn.MaxPool2d if self.kind == "max" else torch.nn.AvgPool2d
        return cls(**self.layer_kwargs())


@dataclass(frozen=True)
class BatchNormConfig:
    """``nn.BatchNorm2d(channels, eps, momentum, affine, track_running_stats)`` in train or eval mode."""

    batch: int
    channels: int
    size: Pair
    training: bool
    affine: bool = True
    track_running_stats: bool = True
    momentum: float | None = 0.1  # None: cumulative average
    eps: float = 1e-5
    dtype: str = "float64"
    seed: int = 0

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, *self.size)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return self.input_shape

    @property
    def uses_batch_statistics(self) -> bool:
        """Training, or no running statistics to use: normalise with the batch's mean and variance."""
        return self.training or not self.track_running_stats

    def layer_kwargs(self) -> dict[str, Any]:
        return dict(
            num_features=self.channels,
            eps=self.eps,
            momentum=self.momentum,
            affine=self.affine,
            track_running_stats=self.track_running_stats,
        )

    def layer(self) -> Module:
        """The npresnet layer in ``dtype`` and mode, with the parameters and statistics of ``arrays_for(self)``."""
        return _with_arrays(BatchNorm2d(**self.layer_kwargs()).to(np.dtype(self.dtype)), arrays_for(self)).train(
            self.training
        )

    def torch_layer(self) -> Any:
        import torch

        return torch.nn.BatchNorm2d(**self.layer_kwargs()).to(getattr(torch, self.dtype)).train(self.training)


@dataclass(frozen=True)
class Arrays:
    """The arrays for one config (in its dtype): ``x`` and ``dy`` always, the rest where the layer has them."""

    x: np.ndarray
    dy: np.ndarray
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    running_mean: np.ndarray | None = None
    running_var: np.ndarray | None = None


def _with_arrays(layer: Module, arrays: Arrays) -> Module:
    """Copy the parameters and statistics in ``arrays`` into the layer's arrays of the same name."""
    state = layer.state_dict()
    for name in ("weight", "bias", "running_mean", "running_var"):
        value = getattr(arrays, name)
        if value is not None and name in state:
            state[name][...] = value
    return layer


def arrays_for(config: Conv2dConfig | Pool2dConfig | BatchNormConfig) -> Arrays:
    """Draw the arrays for ``config`` from ``config.seed`` (the same arrays every time).

    x is tie-free for max pooling (distinct values: no ties within a window), kink-free otherwise;
    BatchNorm's x is scaled and shifted per channel, its weight kept away from 0 and its running
    variance positive, so a missing term shows. ``dy`` has the output's shape.
    """
    rng = np.random.default_rng(config.seed)
    dtype = np.dtype(config.dtype)
    if isinstance(config, Pool2dConfig):
        draw = tie_free if config.kind == "max" else kink_free
        x = draw(config.input_shape, rng)
        return Arrays(x.astype(dtype), rng.standard_normal(config.output_shape).astype(dtype))
    if isinstance(config, Conv2dConfig):
        x = kink_free(config.input_shape, rng)
        weight = rng.standard_normal(config.weight_shape) / np.sqrt(np.prod(config.weight_shape[1:]))
        bias = rng.standard_normal(config.out_channels) if config.bias else None
        dy = rng.standard_normal(config.output_shape)
        return Arrays(
            x.astype(dtype), dy.astype(dtype), weight.astype(dtype), None if bias is None else bias.astype(dtype)
        )
    if isinstance(config, BatchNormConfig):
        C = config.channels
        shift, scale = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
        x = kink_free(config.input_shape, rng) * scale.reshape(1, C, 1, 1) + shift.reshape(1, C, 1, 1)
        return Arrays(
            x.astype(dtype),
            rng.standard_normal(config.output_shape).astype(dtype),
            weight=rng.uniform(0.5, 1.5, C).astype(dtype),
            bias=rng.standard_normal(C).astype(dtype),
            running_mean=rng.standard_normal(C).astype(dtype),
            running_var=rng.uniform(0.5, 2.0, C).astype(dtype),
        )
    raise TypeError(f"arrays_for expects a Conv2dConfig, Pool2dConfig or BatchNormConfig, got {type(config).__name__}")
