"""npresnet's ResNets against the same networks built in PyTorch (the referee), in float64 and float32.

torchvision is not a dependency, so the reference networks come from ``npresnet.torch_reference``
(also the bench's referee): torchvision's structure and names, the paper's v1 option, and the
CIFAR networks with option A/B shortcuts, written compactly in torch. Weights go from torch to
npresnet through ``load_state_dict``; then, in training mode, the logits, the loss, dL/dx, every
parameter's gradient and every running statistic after the step must agree, and in evaluation
mode the logits.

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
from npresnet.torch_reference import build as torch_build

FLOAT64_LIMIT = 1e-10
FLOAT32_LIMIT = 1e-4


# ------------------------------------------------------------------------------------------------
# Helpers


def rel_err(ours: Any, reference: Any) -> float:
    """max |ours - reference| / max |reference|, in float64."""
    a = np.asarray(ours, dtype=np.float64)
    b = (
        reference.detach().numpy().astype(np.float64)
        if isinstance(reference, torch.Tensor)
        else np.asarray(reference, dtype=np.float64)
    )
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
    reference = torch_build(name, **kwargs).to(torch.float64 if dtype == np.float64 else torch.float32)
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
    with torch.device("meta"):  # shapes and names only: nothing is allocated
        expected = {k: tuple(v.shape) for k, v in torch_build(name, **kwargs).state_dict().items()}
    ours = {k: tuple(np.shape(v)) for k, v in models.get_model(name, seed=0, **kwargs).state_dict().items()}
    assert list(ours) == list(expected)
    assert ours == expected


@pytest.mark.parametrize("kwargs", [{"shortcut": "B"}, {"variant": "v1"}], ids=["resnet20-B", "resnet50-v1"])
def test_state_dict_keys_of_options(kwargs):
    name = "resnet20" if "shortcut" in kwargs else "resnet50"
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in torch_build(name, **kwargs).state_dict().items()}
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
    pytest.param(
        "resnet50",
        {"num_classes": 7, "replace_stride_with_dilation": [False, True, True]},
        IMAGENET_INPUT,
        id="resnet50-dilated",
        marks=pytest.mark.slow,
    ),
    pytest.param("wide_resnet50_2", {"num_classes": 7}, IMAGENET_INPUT, id="wide_resnet50_2", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name, kwargs, shape", PARITY_CASES)
def test_training_step_matches_torch_float64(name, kwargs, shape):
    errors = compare_with_torch(name, kwargs, shape, np.float64)
    print(f"\n{name} {kwargs} float64: worst {worst(errors, 1)}")
    assert max(errors.values()) < FLOAT64_LIMIT, worst(errors)


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [
        pytest.param("resnet18", {"num_classes": 7}, IMAGENET_INPUT, id="resnet18"),
        pytest.param("resnet20", {}, CIFAR_INPUT, id="resnet20-A"),
    ],
)
def test_training_step_matches_torch_float32(name, kwargs, shape):
    errors = compare_with_torch(name, kwargs, shape, np.float32)
    print(f"\n{name} {kwargs} float32: worst {worst(errors, 1)}")
    assert max(errors.values()) < FLOAT32_LIMIT, worst(errors)


def test_zero_init_residual_matches_torch():
    """Same seed-independent init facts on both sides: the last BN weight of every block is 0."""
    for name in ("resnet18", "resnet50", "resnet20"):
        reference = torch_build(name, zero_init_residual=True) if name != "resnet20" else None
        model = models.get_model(name, zero_init_residual=True, seed=0)
        zeroed = {k for k, v in model.state_dict().items() if k.endswith(".weight") and not np.any(v)}
        last_bn = "bn3" if name == "resnet50" else "bn2"
        expected = {k for k in model.state_dict() if k.startswith("layer") and k.endswith(f".{last_bn}.weight")}
        assert zeroed == expected
        if reference is not None:
            assert zeroed == {k for k, v in reference.state_dict().items() if k.endswith(".weight") and not v.any()}
