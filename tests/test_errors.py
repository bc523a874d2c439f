"""Bad input gets a clear error that names what was expected and what was received.

Every test asserts on the message (``match=``), not just the exception type: a deep NumPy
traceback ("operands could not be broadcast ...") would be a failure here.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import npresnet
from npresnet import nn


def esc(text: str) -> str:
    return re.escape(text)


@pytest.fixture
def x32(rng):
    return rng.standard_normal((2, 3, 8, 6)).astype(np.float32)


def _layers():
    """Every layer that takes an (N, C, H, W) input with 3 channels, and its name in messages."""
    return {
        "Conv2d": (lambda: nn.Conv2d(3, 4, 3), "Conv2d"),
        "BatchNorm2d": (lambda: nn.BatchNorm2d(3), "BatchNorm2d"),
        "MaxPool2d": (lambda: nn.MaxPool2d(2), "max_pool2d"),
        "AvgPool2d": (lambda: nn.AvgPool2d(2), "avg_pool2d"),
        "AdaptiveAvgPool2d": (lambda: nn.AdaptiveAvgPool2d((3, 2)), "adaptive_avg_pool2d"),
    }


LAYERS = _layers()


# ------------------------------------------------------------------------------------------ the input


@pytest.mark.parametrize("layer", list(LAYERS))
def test_wrong_ndim_names_expected_layout_and_received_shape(layer, x32):
    make, name = LAYERS[layer]
    with pytest.raises(
        ValueError, match=esc(f"{name} expects a 4-D input of shape (N, C, H, W), got 3-D shape (3, 8, 6)")
    ):
        make()(x32[0])
    with pytest.raises(ValueError, match="got 5-D shape"):
        make()(x32[None])


@pytest.mark.parametrize("layer", ["Conv2d", "BatchNorm2d"])
def test_nhwc_input_gets_a_hint(layer, x32):
    make, name = LAYERS[layer]
    nhwc = np.ascontiguousarray(x32.transpose(0, 2, 3, 1))  # (2, 8, 6, 3)
    with pytest.raises(
        ValueError,
        match=esc(
            f"{name} expects input with 3 channels in dim 1 (N, C, H, W), got "
            "shape (2, 8, 6, 3) (is it NHWC? npresnet uses NCHW)"
        ),
    ):
        make()(nhwc)


def test_wrong_channel_count_without_nhwc_hint(x32):
    with pytest.raises(
        ValueError, match=esc("expects input with 4 channels in dim 1 (N, C, H, W), got shape (2, 3, 8, 6)")
    ) as info:
        nn.Conv2d(4, 2, 3)(x32)
    assert "NHWC" not in str(info.value)
    with pytest.raises(ValueError, match=esc("conv2d expects input with 6 channels")):  # the functional op
        npresnet.functional.conv2d_forward(x32, np.zeros((2, 3, 1, 1), np.float32), groups=2)


@pytest.mark.parametrize("layer", [*LAYERS, "ReLU", "Dropout", "Linear"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_integer_input_is_rejected(layer, dtype, x32):
    module = {"ReLU": nn.ReLU, "Dropout": lambda: nn.Dropout(0.5, seed=0), "Linear": lambda: nn.Linear(6, 2)}.get(
        layer, LAYERS.get(layer, (None,))[0]
    )()
    with pytest.raises(
        TypeError, match=r"must be a floating-point array \(float32 or float64\), got dtype " + np.dtype(dtype).name
    ):
        module(x32.astype(dtype))


@pytest.mark.parametrize(
    "make, x_shape, expected",
    [
        (
            lambda: nn.Conv2d(3, 4, 5),
            (2, 3, 3, 4),
            "conv2d input of spatial size 3x4 (padding (0, 0)) is smaller than the dilated kernel 5x5",
        ),
        (
            lambda: nn.Conv2d(3, 4, 3, dilation=(3, 1)),
            (1, 3, 6, 9),
            "spatial size 6x9 (padding (0, 0)) is smaller than the dilated kernel 7x3",
        ),
        (
            lambda: nn.MaxPool2d((4, 2)),
            (2, 3, 3, 8),
            "max_pool2d: input of spatial size 3x8 (padding (0, 0)) is smaller than the kernel (4, 2)",
        ),
        (
            lambda: nn.AvgPool2d(5, padding=1),
            (2, 3, 2, 2),
            "avg_pool2d: input of spatial size 2x2 (padding (1, 1)) is smaller than the kernel (5, 5)",
        ),
    ],
)
def test_input_smaller_than_kernel(make, x_shape, expected, rng):
    with pytest.raises(ValueError, match=esc(expected)):
        make()(rng.standard_normal(x_shape).astype(np.float32))


@pytest.mark.parametrize("module_dtype, input_dtype", [(np.float64, np.float32), (np.float32, np.float64)])
@pytest.mark.parametrize(
    "make, name, shape",
    [
        (lambda: nn.Conv2d(3, 4, 3), "Conv2d", (2, 3, 5, 5)),
        (lambda: nn.BatchNorm2d(3), "BatchNorm2d", (2, 3, 5, 5)),
        (lambda: nn.BatchNorm2d(3, affine=False), "BatchNorm2d", (2, 3, 5, 5)),
        (lambda: nn.Linear(5, 4), "Linear", (2, 5)),
    ],
)
def test_mixed_dtypes_name_both(make, name, shape, module_dtype, input_dtype, rng):
    module = make().to(module_dtype)
    x = rng.standard_normal(shape).astype(input_dtype)
    message = (
        f"input has dtype {np.dtype(input_dtype).name} but the {name} parameters have dtype "
        f"{np.dtype(module_dtype).name}; cast the input or call module.to('{np.dtype(input_dtype).name}')"
    )
    with pytest.raises(TypeError, match=esc(message)):
        module(x)


def test_mixed_dtypes_in_a_network_name_the_first_layer(rng):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).to(np.float64)
    with pytest.raises(TypeError, match="dtype float32 but the Conv2d parameters have dtype float64"):
        model(rng.standard_normal((1, 3, 4, 4)).astype(np.float32))


class FakeCupyArray:
    """Looks like a CuPy array to npresnet's backend detection (the top-level module is 'cupy'), so the
    mixed-backend checks run without CuPy or a GPU. It must be rejected before any data is touched."""

    __module__ = "cupy._core.core"

    def __init__(self, array: np.ndarray) -> None:
        self.shape, self.ndim, self.dtype, self.size = array.shape, array.ndim, array.dtype, array.size


@pytest.mark.parametrize(
    "make, name, shape",
    [
        (lambda: nn.Conv2d(3, 4, 3), "Conv2d", (2, 3, 5, 5)),
        (lambda: nn.BatchNorm2d(3), "BatchNorm2d", (2, 3, 5, 5)),
        (lambda: nn.Linear(5, 4), "Linear", (2, 5)),
    ],
)
def test_mixed_backends_name_both(make, name, shape):
    x = FakeCupyArray(np.zeros(shape, np.float32))
    with pytest.raises(
        TypeError,
        match=esc(f"input is a cupy array but the {name} parameters are numpy arrays; move one with .to('cupy')"),
    ):
        make()(x)


def test_mixed_backends_in_get_array_module():
    with pytest.raises(TypeError, match=esc("arrays live on different backends: ['cupy', 'numpy']")):
        npresnet.backend.get_array_module(np.zeros(2), FakeCupyArray(np.zeros(2)))


def test_dout_on_another_backend(x32):
    conv = nn.Conv2d(3, 4, 3)
    y = conv(x32)
    with pytest.raises(TypeError, match=esc("conv2d.backward got a cupy dout but the forward ran on numpy")):
        conv.backward(FakeCupyArray(y))


@pytest.mark.parametrize(
    "module",
    [
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
        nn.Dropout(0.5, seed=0),
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()),
    ],
    ids=lambda m: type(m).__name__,
)
@pytest.mark.parametrize("kind", ["torch", "list"])
def test_torch_tensor_or_list_input_is_a_clear_type_error(module, kind, x32):
    x = torch.from_numpy(x32) if kind == "torch" else x32.tolist()
    expected = "torch.Tensor" if kind == "torch" else "builtins.list"
    with pytest.raises(TypeError, match=esc(f"expected a numpy or cupy array, got {expected}")):
        module(x)


# ------------------------------------------------------------------------------------------- backward


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Conv2d(3, 4, 3),
        nn.ReLU,
        lambda: nn.MaxPool2d(2),
        nn.Flatten,
        lambda: nn.BatchNorm2d(3),
        lambda: nn.Linear(6, 2),
        nn.CrossEntropyLoss,
        lambda: nn.Dropout(0.3, seed=1),
    ],
)
def test_backward_before_forward(make):
    module = make()
    with pytest.raises(
        RuntimeError,
        match=esc(f"{type(module).__name__}.backward() called without a matching forward(): run forward first"),
    ):
        module.backward(np.zeros((2, 3, 8, 6), np.float32))


def test_backward_twice(x32, rng):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    y = model(x32)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    model.backward(dy)
    with pytest.raises(
        RuntimeError, match="ReLU.backward.. called without a matching forward.*call backward once per forward"
    ):
        model.backward(dy)
    criterion = nn.CrossEntropyLoss()
    criterion(rng.standard_normal((3, 4)), np.array([0, 1, 3]))
    criterion.backward()
    with pytest.raises(RuntimeError, match=esc("CrossEntropyLoss.backward() called without a matching forward()")):
        criterion.backward()


def test_backward_after_no_grad_forward(x32):
    conv = nn.Conv2d(3, 4, 3)
    with npresnet.no_grad():
        y = conv(x32)
    with pytest.raises(RuntimeError, match=esc("run forward first (outside no_grad())")):
        conv.backward(np.zeros_like(y))


BACKWARD_LAYERS = {
    # id: (module factory, input shape, name in the message)
    "Conv2d": (lambda: nn.Conv2d(3, 4, 3), (2, 3, 8, 6), "conv2d"),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(3), (2, 3, 8, 6), "batch_norm"),
    "ReLU": (nn.ReLU, (2, 3, 8, 6), "relu"),
    "MaxPool2d": (lambda: nn.MaxPool2d(2), (2, 3, 8, 6), "max_pool2d"),
    "AvgPool2d": (lambda: nn.AvgPool2d(2), (2, 3, 8, 6), "avg_pool2d"),
    "AdaptiveAvgPool2d": (lambda: nn.AdaptiveAvgPool2d((3, 2)), (2, 3, 8, 6), "adaptive_avg_pool2d"),
    "GlobalAvgPool": (lambda: nn.AdaptiveAvgPool2d(1), (2, 3, 8, 6), "adaptive_avg_pool2d"),
    "Flatten": (nn.Flatten, (2, 3, 8, 6), "flatten"),
    "Linear": (lambda: nn.Linear(6, 5), (2, 3, 6), "linear"),
    "Dropout": (lambda: nn.Dropout(0.5, seed=0), (2, 3, 8, 6), "dropout"),
}


def _bad_shapes(shape):
    """A wrong last dim, a broadcastable shape, and (same size!) the shape reversed."""
    return [(*shape[:-1], shape[-1] + 1), (1,) * (len(shape) - 1) + (shape[-1],), tuple(reversed(shape))]


@pytest.mark.parametrize("layer", list(BACKWARD_LAYERS))
def test_dout_of_the_wrong_shape(layer, rng):
    make, x_shape, name = BACKWARD_LAYERS[layer]
    module = make()
    x = rng.standard_normal(x_shape).astype(np.float32)
    for bad in _bad_shapes(module(x).shape):
        y = module(x)
        if bad == y.shape:
            continue
        with pytest.raises(
            ValueError, match=esc(f"{name}.backward expects dout of shape {y.shape} (the forward output's), got {bad}")
        ):
            module.backward(np.zeros(bad, np.float32))


@pytest.mark.parametrize("layer", [k for k in BACKWARD_LAYERS if k != "Flatten"])
def test_dout_of_the_wrong_dtype(layer, rng):
    make, x_shape, name = BACKWARD_LAYERS[layer]
    module = make()
    y = module(rng.standard_normal(x_shape).astype(np.float32))
    with pytest.raises(TypeError, match=esc(f"{name}.backward expects dout of dtype float32, got float64")):
        module.backward(np.zeros(y.shape, np.float64))


@pytest.mark.parametrize("layer", list(BACKWARD_LAYERS))
def test_dout_as_torch_tensor(layer, rng):
    make, x_shape, _ = BACKWARD_LAYERS[layer]
    module = make()
    y = module(rng.standard_normal(x_shape).astype(np.float32))
    with pytest.raises(TypeError, match=esc("expected a numpy or cupy array, got torch.Tensor")):
        module.backward(torch.zeros(y.shape))


@pytest.mark.parametrize(
    "reduction, bad",
    [("none", np.ones(3)), ("none", np.ones((4, 1))), ("none", 1.0), ("mean", np.ones(4)), ("sum", np.ones((1,)))],
)
def test_cross_entropy_dout_of_the_wrong_shape(reduction, bad, rng):
    criterion = nn.CrossEntropyLoss(reduction=reduction)
    loss = criterion(rng.standard_normal((4, 5)), np.array([0, 1, 4, 2]))
    with pytest.raises(
        ValueError,
        match=esc(
            f"cross_entropy.backward expects dout of shape {loss.shape} (the "
            f"loss's, reduction={reduction!r}), got {np.shape(bad)}"
        ),
    ):
        criterion.backward(bad)


# -------------------------------------------------------------------------------------- load_state_dict


def test_load_state_dict_lists_every_problem_at_once():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = {k: np.array(v) for k, v in model.state_dict().items()}
    del state["0.weight"], state["1.running_var"]
    state["2.weight"] = np.zeros(3)
    state["fc.bias"] = np.zeros(3)
    state["1.bias"] = np.zeros(5)
    state["0.bias"] = np.zeros((4, 1))
    with pytest.raises(RuntimeError) as info:
        model.load_state_dict(state)
    message = str(info.value)
    assert "error(s) loading state_dict into Sequential" in message
    assert "missing keys: 0.weight, 1.running_var" in message
    assert "unexpected keys: 2.weight, fc.bias" in message
    assert "wrong shapes: 0.bias: expected (4,), got (4, 1); 1.bias: expected (4,), got (5,)" in message
    # Nothing was loaded: the failed call left the module untouched.
    assert model[1].bias.shape == (4,) and np.all(model[1].bias.data == 0)


def test_load_state_dict_wrong_shape_is_an_error_even_when_not_strict():
    model = nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match=esc("wrong shapes: weight: expected (2, 3), got (3, 2)")):
        model.load_state_dict({"weight": np.zeros((3, 2)), "bias": np.zeros(2)}, strict=False)


def test_load_state_dict_from_torch_names_torch_shapes():
    model = nn.Conv2d(3, 4, 3)
    state = torch.nn.Conv2d(3, 4, 2).state_dict()
    with pytest.raises(RuntimeError, match=esc("weight: expected (4, 3, 3, 3), got (4, 3, 2, 2)")):
        model.load_state_dict(state)


# ------------------------------------------------------------------------------------ CrossEntropyLoss


@pytest.mark.parametrize(
    "target, expected",
    [
        ([0, 1, 5, 2], "target class indices must lie in [0, 5), got min 0 and max 5"),
        ([0, -1, 3, 2], "target class indices must lie in [0, 5), got min -1 and max 3"),
        ([7, 9, 8, 6], "got min 6 and max 9"),
    ],
)
def test_cross_entropy_out_of_range_targets(target, expected, rng):
    with pytest.raises(ValueError, match=esc(expected)):
        nn.CrossEntropyLoss()(rng.standard_normal((4, 5)), np.array(target))


@pytest.mark.parametrize(
    "target, expected",
    [
        (
            np.array([0.0, 1.0, 3.0, 2.0]),
            "expects integer class indices of shape (4,), got dtype float64 and shape (4,)",
        ),
        (np.array([0.0, 1.0, 3.0, 2.0], np.float32), "got dtype float32"),
        (np.array([0, 1, 3]), "expects integer class indices of shape (4,), got dtype int64 and shape (3,)"),
        (np.eye(5)[[0, 1, 3, 2]].astype(np.int64), "got dtype int64 and shape (4, 5)"),  # one-hot, not indices
    ],
)
def test_cross_entropy_float_or_misshapen_targets(target, expected, rng):
    with pytest.raises(TypeError, match=esc(expected)):
        nn.CrossEntropyLoss()(rng.standard_normal((4, 5)), target)


def test_cross_entropy_bad_logits(rng):
    with pytest.raises(ValueError, match=esc("cross_entropy expects logits of shape (N, K), got (2, 5, 1)")):
        nn.CrossEntropyLoss()(rng.standard_normal((2, 5, 1)), np.array([0, 1]))
    with pytest.raises(TypeError, match="logits must be a floating-point array .* got dtype int64"):
        nn.CrossEntropyLoss()(np.ones((2, 5), np.int64), np.array([0, 1]))
    with pytest.raises(TypeError, match=esc("expected a numpy or cupy array, got torch.Tensor")):
        nn.CrossEntropyLoss()(rng.standard_normal((2, 5)), torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- constructor arguments


@pytest.mark.parametrize(
    "make, error, expected",
    [
        (lambda: nn.Conv2d(3, 4, 3, groups=2), ValueError, "groups=2 must divide in_channels=3 and out_channels=4"),
        (lambda: nn.Conv2d(3, 4, (3, 3, 3)), TypeError, "kernel_size must be an int or a pair of ints, got (3, 3, 3)"),
        (lambda: nn.Dropout(1.5), ValueError, "dropout probability must be in [0, 1], got 1.5"),
        (
            lambda: nn.CrossEntropyLoss(reduction="avg"),
            ValueError,
            "reduction must be one of ('mean', 'sum', 'none'), got 'avg'",
        ),
        (
            lambda: nn.Conv2d(3, 4, 3).to(np.int32),
            TypeError,
            "Module.to() can only cast to a floating dtype, got int32",
        ),
        (
            lambda: nn.Conv2d(3, 4, 3).to("gpu"),
            TypeError,
            "Module.to() expects a backend ('numpy', 'cupy') or a floating dtype, got 'gpu'",
        ),
    ],
)
def test_bad_constructor_arguments(make, error, expected):
    with pytest.raises(error, match=esc(expected)):
        make()


def test_pool_padding_above_half_the_kernel(x32):
    with pytest.raises(ValueError, match=esc("max_pool2d: padding (2, 2) must be at most half")):
        nn.MaxPool2d(3, padding=2)(x32)
    with pytest.raises(ValueError, match=esc("avg_pool2d: padding (2, 2) must be at most half")):
        nn.AvgPool2d(2, padding=2)(x32)


def test_moving_a_parameterless_module_to_an_unusable_cupy_is_a_clear_error():
    from npresnet import backend, nn

    if backend.cupy_available():
        pytest.skip("a CUDA device is usable here")
    with pytest.raises(RuntimeError, match="cupy"):
        nn.ReLU().to("cupy")


def test_out_of_range_class_index_error_names_the_range_and_the_values():
    from npresnet.functional.loss import cross_entropy_forward

    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\), got min 0 and max 4"):
        cross_entropy_forward(logits, np.array([0, 4, 1]))
