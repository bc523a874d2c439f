"""The CuPy backend end to end: every layer, two ResNets, the optimizers, gradcheck, summary and the
CUDA kernels, each compared with the NumPy backend and with PyTorch on CUDA (TF32 off).

Run them on a GPU machine with ``python -m pytest -m gpu -rA``. Without a usable CUDA device (no
CuPy, or CuPy without a driver/device) every ``gpu`` test is skipped and the reason printed
(``-ra`` shows it). torch runs on CUDA when it can, otherwise on the CPU (said in the output).

Tolerances, as worst relative error max|a - b| / max|b|: float64 1e-10, float32 1e-5 for layers
and 1e-4 for whole models (cuBLAS and OpenBLAS sum in different orders). Pooling and the CUDA
kernels must agree *exactly*: both backends run kernels that reproduce the NumPy reference bit for bit.

``NPRESNET_GPU_TEST_BACKEND=numpy`` runs the ``gpu`` tests with NumPy standing in for the device:
a dry run of these tests' own logic on a machine without a GPU (CuPy-only checks then skip).

The unmarked tests at the end need no GPU: the clear error when CuPy is requested without a
device, and the DLPack helpers on CPU tensors.
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from cases import CONV2D_LAYER_CASES

import npresnet
from npresnet import backend, kernels, models, nn, optim
from npresnet import functional as F
from npresnet.testing import kink_free, tie_free
from npresnet.torch_reference import build as torch_build

ROOT = Path(__file__).resolve().parent.parent
DEVICE = os.environ.get("NPRESNET_GPU_TEST_BACKEND", "cupy").strip().lower()
DRY_RUN = DEVICE == "numpy"
TORCH_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [np.float64, np.float32]
LAYER_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
MODEL_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
gpu = pytest.mark.gpu


@pytest.fixture(scope="module")
def xp():
    """The device array module (CuPy), or a skip that says why there is none."""
    if DRY_RUN:
        return np
    try:
        cupy = backend.require_cupy()
    except RuntimeError as exc:
        print(f"\nGPU tests skipped: {exc}")
        pytest.skip(f"no usable CUDA device: {exc}")
    assert os.environ.get("CUPY_TF32", "0") == "0", "unset CUPY_TF32: TF32 GEMMs cannot match float32 references"
    print(
        f"\nGPU tests on {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, CuPy {cupy.__version__}, "
        f"CUDA kernels: {kernels.cuda_active()}, torch on {TORCH_DEVICE}"
    )
    return cupy


@pytest.fixture(scope="module", autouse=True)
def _torch_without_tf32():
    """cuDNN convolutions default to TF32 on Ampere and later: switch it off for the references."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def real_cupy_only():
    if DRY_RUN:
        pytest.skip("needs real CuPy arrays (dry run with NumPy)")


def dev(a):
    """A NumPy array on the device backend."""
    return backend.to_backend(np.ascontiguousarray(a), DEVICE)


def host(a):
    return None if a is None else backend.to_numpy(a)


def tt(a, requires_grad=False):
    """A torch tensor on TORCH_DEVICE (a copy of a host or device array)."""
    return torch.from_numpy(np.array(host(a), copy=True)).to(TORCH_DEVICE).requires_grad_(requires_grad)


def rel(ours, reference) -> float:
    """max |ours - reference| / max |reference| in float64, on the host."""
    if isinstance(reference, torch.Tensor):
        reference = reference.detach().cpu().numpy()
    a, b = np.asarray(host(ours), np.float64), np.asarray(host(reference), np.float64)
    assert a.shape == b.shape, f"shape mismatch: {a.shape} vs {b.shape}"
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), 1e-300)


def assert_on_device(*arrays):
    for a in arrays:
        if a is not None and not (DRY_RUN and isinstance(a, np.generic)):  # NumPy reductions give scalars
            assert backend.backend_name(a) == DEVICE, f"a {backend.backend_name(a)} array escaped the device"


def assert_exact(got, want, what):
    got, want = host(got), host(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    np.testing.assert_array_equal(got, want, err_msg=what, strict=True)


# ------------------------------------------------------------------------------------------------
# Every layer: CuPy == NumPy (exactly for pooling), and CuPy ~ torch on CUDA.


def _conv(**kw):
    return lambda rng: nn.Conv2d(**kw, rng=rng), lambda m, xt, p: TF.conv2d(
        xt, p["weight"], p.get("bias"), m.stride, m.padding, m.dilation, m.groups
    )


def _bn(training):
    def make(rng):
        bn = nn.BatchNorm2d(3)
        bn.weight.data = rng.uniform(0.5, 2.0, 3)
        bn.bias.data = rng.standard_normal(3)
        bn.running_mean = rng.standard_normal(3)
        bn.running_var = rng.uniform(0.5, 3.0, 3)
        return bn.train(training)

    def reference(m, xt, p):
        # In evaluation mode the running statistics are constants (the forward leaves them as they were).
        mean, var = (None, None) if training else (tt(m.running_mean), tt(m.running_var))
        return TF.batch_norm(xt, mean, var, p["weight"], p["bias"], training=training, eps=m.eps)

    return make, reference


LAYERS = {
    # id: (input shape, make(rng) -> module, torch_fn(module, xt, params) -> yt, input kind, exact)
    **{
        f"conv-{case}": (shape, *_conv(**kwargs), "normal", False)
        for case, (shape, kwargs) in CONV2D_LAYER_CASES.items()
    },
    "batchnorm-train": ((4, 3, 5, 6), *_bn(True), "shifted", False),
    "batchnorm-eval": ((2, 3, 4, 3), *_bn(False), "normal", False),
    "relu": ((2, 3, 4, 5), lambda rng: nn.ReLU(), lambda m, xt, p: TF.relu(xt), "kink_free", True),
    "maxpool-stem": (
        (2, 3, 10, 10),
        lambda rng: nn.MaxPool2d(3, 2, 1),
        lambda m, xt, p: TF.max_pool2d(xt, 3, 2, 1),
        "tie_free",
        True,
    ),
    "maxpool-dilated-ceil": (
        (2, 3, 7, 9),
        lambda rng: nn.MaxPool2d((3, 2), (2, 1), 1, (1, 2), ceil_mode=True),
        lambda m, xt, p: TF.max_pool2d(xt, (3, 2), (2, 1), 1, (1, 2), ceil_mode=True),
        "tie_free",
        True,
    ),
    "avgpool-ceil-exclude-pad": (
        (2, 3, 7, 9),
        lambda rng: nn.AvgPool2d((3, 2), (2, 1), 1, True, False),
        lambda m, xt, p: TF.avg_pool2d(xt, (3, 2), (2, 1), 1, True, False),
        "normal",
        True,
    ),
    "avgpool-divisor-override": (
        (1, 2, 6, 10),
        lambda rng: nn.AvgPool2d((2, 4), (3, 1), (1, 2), divisor_override=5),
        lambda m, xt, p: TF.avg_pool2d(xt, (2, 4), (3, 1), (1, 2), divisor_override=5),
        "normal",
        True,
    ),
    "adaptive-avgpool-1": (
        (2, 3, 5, 7),
        lambda rng: nn.AdaptiveAvgPool2d(1),
        lambda m, xt, p: TF.adaptive_avg_pool2d(xt, 1),
        "normal",
        False,
    ),
    "adaptive-avgpool-2x3": (
        (2, 3, 5, 7),
        lambda rng: nn.AdaptiveAvgPool2d((2, 3)),
        lambda m, xt, p: TF.adaptive_avg_pool2d(xt, (2, 3)),
        "normal",
        False,
    ),
    "linear": (
        (3, 2, 7),
        lambda rng: nn.Linear(7, 5, rng=rng),
        lambda m, xt, p: TF.linear(xt, p["weight"], p["bias"]),
        "normal",
        False,
    ),
    "flatten": ((2, 3, 4, 5), lambda rng: nn.Flatten(), lambda m, xt, p: torch.flatten(xt, 1), "normal", True),
    "identity": ((2, 3), lambda rng: nn.Identity(), lambda m, xt, p: xt * 1, "normal", True),
    "dropout-eval": ((2, 3, 4), lambda rng: nn.Dropout(0.4).eval(), lambda m, xt, p: xt * 1, "normal", True),
    "sequential": (
        (2, 3, 6, 6),
        lambda rng: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2)),
        lambda m, xt, p: TF.max_pool2d(TF.relu(TF.conv2d(xt, p["0.weight"], p["0.bias"], padding=1)), 2),
        "normal",
        False,
    ),
}


def _layer_input(kind, shape, rng, dtype):
    if kind == "tie_free":
        return tie_free(shape, rng, dtype)
    if kind == "kink_free":
        return kink_free(shape, rng, dtype=dtype)
    x = rng.standard_normal(shape)
    return (3.0 + 2.0 * x if kind == "shifted" else x).astype(dtype)


def _run_layer(make, x, dy, dtype, on):
    """Build the layer from a fixed seed on backend ``on``, run forward and backward; host copies back."""
    module = make(np.random.default_rng(7)).to(dtype).to(on)
    to = dev if on == DEVICE else np.asarray
    y = module(to(x))
    dx = module.backward(to(dy))
    if on == DEVICE:
        assert_on_device(y, dx, *(p.grad for p in module.parameters()), *module.buffers())
    grads = {name: host(p.grad) for name, p in module.named_parameters()}
    buffers = {name: host(b) for name, b in module.named_buffers()}
    return module, host(y), host(dx), grads, buffers


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(LAYERS))
def test_layer_on_cupy_matches_numpy_and_torch(case, dtype, xp):
    shape, make, torch_fn, kind, exact = LAYERS[case]
    rng = np.random.default_rng(1)
    x = _layer_input(kind, shape, rng, dtype)
    probe = make(np.random.default_rng(7)).to(dtype)  # for the output shape only
    dy = rng.standard_normal(probe(x).shape).astype(dtype)

    ref_module, y_np, dx_np, grads_np, buffers_np = _run_layer(make, x, dy, dtype, "numpy")
    module, y, dx, grads, buffers = _run_layer(make, x, dy, dtype, DEVICE)
    tol = LAYER_TOL[np.dtype(dtype)]
    outputs = [
        ("y", y, y_np),
        ("dx", dx, dx_np),
        *((f"grad {k}", grads[k], grads_np[k]) for k in grads_np),
        *((f"buffer {k}", buffers[k], buffers_np[k]) for k in buffers_np),
    ]
    assert grads.keys() == grads_np.keys() and buffers.keys() == buffers_np.keys()
    for what, ours, want in outputs:
        assert ours.dtype == want.dtype, (what, ours.dtype, want.dtype)
        if exact:
            assert_exact(ours, want, f"{case} {what}: cupy vs numpy")
        else:
            assert rel(ours, want) <= tol, f"{case} {what}: cupy vs numpy error {rel(ours, want):.2e} > {tol:.0e}"

    xt = tt(x, requires_grad=True)
    params = {name: tt(p.data, requires_grad=True) for name, p in ref_module.named_parameters()}
    yt = torch_fn(ref_module, xt, params)
    yt.backward(tt(dy))
    checks = [("y", y, yt), ("dx", dx, xt.grad), *((f"grad {k}", grads[k], params[k].grad) for k in grads)]
    for what, ours, want in checks:
        err = rel(ours, want)
        assert err <= tol, f"{case} {what}: cupy vs torch ({TORCH_DEVICE}) error {err:.2e} > {tol:.0e}"


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_cross_entropy_on_cupy(dtype, xp):
    rng = np.random.default_rng(3)
    logits, target = rng.standard_normal((6, 5)).astype(dtype), rng.integers(0, 5, 6)
    for reduction in ("mean", "sum", "none"):
        criterion = nn.CrossEntropyLoss(label_smoothing=0.1, reduction=reduction)
        loss = criterion(dev(logits), dev(target))
        dout = rng.standard_normal(loss.shape).astype(dtype) if reduction == "none" else 1.0
        dlogits = criterion.backward(dev(dout) if reduction == "none" else dout)
        assert_on_device(loss, dlogits)
        lt = tt(logits, requires_grad=True)
        loss_t = TF.cross_entropy(lt, tt(target), label_smoothing=0.1, reduction=reduction)
        loss_t.backward(tt(dout) if reduction == "none" else None)
        tol = LAYER_TOL[np.dtype(dtype)]
        assert rel(loss, loss_t) <= tol and rel(dlogits, lt.grad) <= tol, reduction


@gpu
def test_dropout_training_on_cupy_uses_one_mask_both_ways(xp):
    x = dev(np.random.default_rng(4).standard_normal((64, 64)) + 5.0)  # no zeros in x
    drop = nn.Dropout(0.25, seed=0).to(DEVICE)
    y = drop(x)
    dy = dev(np.random.default_rng(5).standard_normal((64, 64)))
    dx = drop.backward(dy)
    assert_on_device(y, dx)
    y, x, dy, dx = host(y), host(x), host(dy), host(dx)
    kept = y != 0
    assert 0.65 < kept.mean() < 0.85, kept.mean()  # p = 0.25 of 4096 values
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-12)
    np.testing.assert_allclose(dx, np.where(kept, dy / 0.75, 0.0), rtol=1e-12, atol=0)  # the same mask
    assert (dx[~kept] == 0).all()


# ------------------------------------------------------------------------------------------------
# Whole models: one training step and an eval forward, CuPy vs NumPy vs torch.


def _randomized_pair(name, kwargs, dtype):
    """A torch reference with BN moved away from 1/0, and the npresnet model loaded from it (NumPy)."""
    torch.manual_seed(0)
    reference = torch_build(name, **kwargs).to(torch.float64 if dtype == np.float64 else torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    model = models.get_model(name, seed=0, **kwargs).to(dtype)
    model.load_state_dict(reference.state_dict())
    return model, reference


def _train_step(model, x, target, no_sync=False):
    """Forward, loss, backward, one SGD step; host copies of everything back.

    With ``no_sync`` the forward and the backward + step run under ``cupyx.allow_synchronize(False)``:
    CuPy raises ``DeviceSynchronized`` if they read anything back to the host (CuPy calls the check
    best effort and deprecated it; where it is gone, nothing is checked). The loss forward is
    outside (it validates the class indices, and reading the loss is the user's choice).
    """

    def guard():
        stack = contextlib.ExitStack()
        cupyx = __import__("cupyx") if no_sync else None
        if cupyx is not None and hasattr(cupyx, "allow_synchronize"):  # deprecated in CuPy 10, best effort
            stack.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", message="cupyx.allow_synchronize will be removed")
            stack.enter_context(cupyx.allow_synchronize(False))
        return stack

    criterion = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train().zero_grad()
    with guard():
        logits = model(x)
    loss = criterion(logits, target)
    with guard():
        dx = model.backward(criterion.backward())
        opt.step()
    grads = {k: host(p.grad) for k, p in model.named_parameters()}
    return host(logits), host(loss), host(dx), grads, {k: host(p.data) for k, p in model.named_parameters()}


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize(
    "name, kwargs, shape",
    [
        ("resnet18", {"num_classes": 7}, (2, 3, 64, 64)),
        ("resnet20", {}, (2, 3, 32, 32)),
    ],
)
def test_model_training_step_on_cupy(name, kwargs, shape, dtype, xp):
    model_np, reference = _randomized_pair(name, kwargs, dtype)
    model_dev = copy.deepcopy(model_np).to(DEVICE)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(dtype)
    target = rng.integers(0, kwargs.get("num_classes", 10), shape[0])

    want = _train_step(model_np, x, target)
    got = _train_step(model_dev, dev(x), dev(target), no_sync=not DRY_RUN)
    assert_on_device(*(p.data for p in model_dev.parameters()), *model_dev.buffers())
    tol = MODEL_TOL[np.dtype(dtype)]
    errors = {"logits": rel(got[0], want[0]), "loss": rel(got[1], want[1]), "dx": rel(got[2], want[2])}
    errors.update({f"grad {k}": rel(got[3][k], want[3][k]) for k in want[3]})
    errors.update({f"param after step {k}": rel(got[4][k], want[4][k]) for k in want[4]})
    errors.update({f"buffer {k}": rel(b, dict(model_np.named_buffers())[k]) for k, b in model_dev.named_buffers()})
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tol, f"cupy vs numpy: worst {worst} {errors[worst]:.2e} > {tol:.0e}"

    # torch on CUDA: the same forward and backward (the SGD step is checked against NumPy above).
    reference = reference.to(TORCH_DEVICE).train()
    xt = tt(x, requires_grad=True)
    logits_t = reference(xt)
    loss_t = TF.cross_entropy(logits_t, tt(target))
    loss_t.backward()
    errors = {"logits": rel(got[0], logits_t), "loss": rel(got[1], loss_t), "dx": rel(got[2], xt.grad)}
    errors.update({f"grad {k}": rel(got[3][k], p.grad) for k, p in reference.named_parameters()})
    errors.update(
        {
            f"buffer {k}": rel(b, dict(reference.named_buffers())[k])
            for k, b in model_dev.named_buffers()
            if k.split(".")[-1] != "num_batches_tracked"
        }
    )
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tol, f"cupy vs torch ({TORCH_DEVICE}): worst {worst} {errors[worst]:.2e} > {tol:.0e}"

    with npresnet.no_grad():  # evaluation mode after the step, on both backends
        err = rel(model_dev.eval()(dev(x)), model_np.eval()(x))
    assert err <= tol, f"eval logits after the step, cupy vs numpy: {err:.2e} > {tol:.0e}"


# ------------------------------------------------------------------------------------------------
# Optimizers, gradcheck, summary


@gpu
@pytest.mark.parametrize(
    "make, make_torch",
    [
        (
            lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
            lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
        ),
        (
            lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=1e-3, amsgrad=True),
            lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3, amsgrad=True),
        ),
        (lambda ps: optim.AdamW(ps, lr=1e-2), lambda ps: torch.optim.AdamW(ps, lr=1e-2)),
    ],
    ids=["sgd-nesterov", "adam-amsgrad", "adamw"],
)
def test_optimizer_steps_on_cupy(make, make_torch, xp):
    rng = np.random.default_rng(6)
    values = [rng.standard_normal((4, 3)), rng.standard_normal(5)]
    grads = [[rng.standard_normal(v.shape) for v in values] for _ in range(3)]
    results = {}
    for on in ("numpy", DEVICE):
        params = [nn.Parameter(backend.to_backend(v.copy(), on)) for v in values]
        opt = make(params)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = backend.to_backend(g.copy(), on)
            opt.step()
        if on == DEVICE:
            assert_on_device(*(p.data for p in params))
        results[on] = [host(p.data) for p in params]
    params_t = [tt(v, requires_grad=True) for v in values]
    opt_t = make_torch(params_t)
    for step in grads:
        for p, g in zip(params_t, step):
            p.grad = tt(g)
        opt_t.step()
    for ours, want, torch_value in zip(results[DEVICE], results["numpy"], params_t):
        assert rel(ours, want) <= 1e-13
        assert rel(ours, torch_value) <= 1e-12


@gpu
def test_gradcheck_on_cupy(xp):
    rng = np.random.default_rng(8)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, rng=rng),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(3, 2, (2, 1), stride=(1, 2), rng=rng),
        nn.AvgPool2d(2, padding=1),
    ).to(np.float64)
    x = tie_free((2, 2, 5, 5), rng)
    report_np = npresnet.gradcheck.gradcheck(model, x, mode="directional")
    report = npresnet.gradcheck.gradcheck(copy.deepcopy(model).to(DEVICE), dev(x), mode="directional")
    assert report.passed and report_np.passed, str(report)
    assert [a.name for a in report.arrays] == [a.name for a in report_np.arrays]
    small = nn.Conv2d(2, 2, 3, stride=2, padding=1, rng=rng).to(np.float64).to(DEVICE)
    full = npresnet.gradcheck.gradcheck(small, dev(rng.standard_normal((1, 2, 4, 5))), mode="full")
    assert full.passed, str(full)


@gpu
def test_summary_on_cupy_equals_numpy(xp):
    model = models.resnet20(seed=0)
    on_host = npresnet.summary.summary(model, (2, 3, 32, 32))
    on_device = npresnet.summary.summary(copy.deepcopy(model).to(DEVICE), (2, 3, 32, 32))
    assert on_device.rows == on_host.rows
    for field in ("total_params", "total_macs", "weighted_layers", "input_bytes", "param_bytes", "activation_bytes"):
        assert getattr(on_device, field) == getattr(on_host, field), field
    assert str(on_device) == str(on_host)


# ------------------------------------------------------------------------------------------------
# The CUDA kernels on real CuPy arrays (the simulator covers them on NumPy arrays).

KERNEL_CASES = [
    # (N, C, H, W), kernel, stride, padding, dilation, ceil_mode
    ((2, 3, 7, 9), (3, 2), (2, 1), (1, 1), (1, 2), True),
    ((1, 2, 12, 7), (2, 3), (3, 2), (1, 1), (2, 1), False),
    ((8, 64, 56, 56), (3, 3), (2, 2), (1, 1), (1, 1), False),  # ResNet-50 stem pool size: a big grid
]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape, ksize, stride, padding, dilation, ceil_mode", KERNEL_CASES)
def test_cuda_kernels_on_cupy_equal_the_references(shape, ksize, stride, padding, dilation, ceil_mode, dtype, xp):
    real_cupy_only()
    if kernels.cuda_active() != "numba-cuda":
        pytest.skip(f"Numba CUDA kernels not in use: {kernels.cuda_problem()}")
    rng = np.random.default_rng(9)
    x_host = rng.integers(-3, 4, size=shape).astype(dtype)  # ties everywhere
    x_host[0, 0, 1, 0:2] = np.nan
    x = dev(x_host)
    names = ("im2col", "col2im", "maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward")
    launchers = {name: kernels.get(name, x) for name in names}
    assert all(f is not None and f.__module__.startswith("npresnet.kernels.cuda_") for f in launchers.values())

    with kernels.reference_only():
        cols_ref = F.im2col(x, ksize, stride, padding, dilation)
        y_ref, cache = F.maxpool2d_forward(x, ksize, stride, padding, dilation, ceil_mode)
    stream = xp.cuda.Stream(non_blocking=True)  # not the default stream: launches must follow CuPy's
    xp.cuda.Device().synchronize()  # x is ready before the other stream reads it
    with stream:
        cols = launchers["im2col"](x, ksize, stride, padding, dilation)
        y, argmax = launchers["maxpool2d_forward"](x, cache.geometry)
    stream.synchronize()
    assert_exact(cols, cols_ref, "im2col")
    assert_exact(y, y_ref, "max pool y")
    assert_exact(argmax, cache.argmax, "max pool argmax")
    assert_exact(y, F.maxpool2d_forward(x_host, ksize, stride, padding, dilation, ceil_mode)[0], "max pool vs numpy")

    dcols = dev(rng.standard_normal(cols.shape).astype(dtype))
    dy = dev(rng.standard_normal(y.shape).astype(dtype))
    with kernels.reference_only():
        dx_ref = F.col2im(dcols, shape, stride, padding, dilation)
        dxp_ref = F.maxpool2d_backward(dy, cache)
    dx = launchers["col2im"](dcols, shape, stride, padding, dilation)
    assert_exact(dx, dx_ref, "col2im")
    assert_exact(dx, launchers["col2im"](dcols, shape, stride, padding, dilation), "col2im run twice")
    assert_exact(launchers["maxpool2d_backward"](dy, argmax, shape, cache.geometry), dxp_ref, "max pool backward")

    x_avg = dev(rng.standard_normal(shape).astype(dtype))
    with kernels.reference_only():
        ya_ref, acache = F.avgpool2d_forward(x_avg, ksize, stride, padding, ceil_mode, False)
        dya = dev(rng.standard_normal(ya_ref.shape).astype(dtype))
        dxa_ref = F.avgpool2d_backward(dya, acache)
    assert_exact(launchers["avgpool2d_forward"](x_avg, acache.divisor, acache.geometry), ya_ref, "avg pool")
    assert_exact(
        launchers["avgpool2d_backward"](dya, acache.divisor, shape, acache.geometry), dxa_ref, "avg pool backward"
    )


# ------------------------------------------------------------------------------------------------
# Backend helpers on the GPU: DLPack without copies, set_default, NPRESNET_BACKEND.


@gpu
def test_dlpack_crossings_share_device_memory(xp):
    real_cupy_only()
    if TORCH_DEVICE != "cuda":
        pytest.skip("torch has no CUDA here: CUDA tensors cannot be made")
    t = torch.arange(6.0, device="cuda", requires_grad=True)
    a = backend.from_dlpack(t)
    assert backend.backend_name(a) == "cupy"
    t.data[0] = 42.0
    assert float(a[0]) == 42.0  # same memory, no copy
    back = backend.to_torch(a)
    assert back.device.type == "cuda" and back.data_ptr() == t.data_ptr()
    np.testing.assert_array_equal(backend.to_numpy(t), [42, 1, 2, 3, 4, 5])
    assert backend.backend_name(backend.from_dlpack(t, backend="numpy")) == "numpy"
    cpu = torch.arange(3.0)
    moved = backend.from_dlpack(cpu, backend="cupy")
    assert backend.backend_name(moved) == "cupy" and float(moved[2]) == 2.0


@gpu
def test_default_backend_cupy_creates_modules_on_the_device(xp):
    real_cupy_only()
    saved = backend.get_default()
    try:
        backend.set_default("cupy")
        conv = nn.Conv2d(2, 3, 3)
        assert backend.backend_name(conv.weight.data) == "cupy"
        assert all(backend.backend_name(b) == "cupy" for b in nn.BatchNorm2d(3).buffers())
    finally:
        backend.set_default(saved)
    code = "import npresnet; m = npresnet.models.resnet20(seed=0); print(type(m.fc.weight.data).__module__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NPRESNET_BACKEND": "cupy"},
    )
    assert out.returncode == 0 and out.stdout.strip().startswith("cupy"), out.stderr[-2000:]


# ------------------------------------------------------------------------------------------------
# No GPU needed.


def test_requesting_cupy_without_a_device_is_a_clear_error():
    if backend.cupy_available():
        pytest.skip("a CUDA device is usable here; this test is about machines without one")
    expected = r"the 'cupy' backend was requested.*(CuPy is not installed|no CUDA device is usable)"
    saved = backend.get_default()
    attempts = {
        "xp_for": lambda: backend.xp_for("cupy"),
        "set_default": lambda: backend.set_default("CuPy"),
        "to_backend": lambda: backend.to_backend(np.zeros(2), "cupy"),
        "Module.to": lambda: nn.Conv2d(1, 1, 1).to("cupy"),
        "from_dlpack": lambda: backend.from_dlpack(torch.zeros(2), backend="cupy"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(RuntimeError, match=expected):
            attempt()
        assert backend.get_default() == saved, what


def test_dlpack_helpers_on_cpu_share_memory():
    t = torch.arange(4.0, dtype=torch.float64, requires_grad=True)
    a = backend.from_dlpack(t)  # detached, still the same memory
    assert isinstance(a, np.ndarray) and a.dtype == np.float64
    with torch.no_grad():
        t[1] = 7.0
    assert a[1] == 7.0
    b = np.arange(3, dtype=np.float32)
    shared = backend.to_torch(b)
    shared[0] = 5.0
    assert b[0] == 5.0 and shared.dtype == torch.float32
    assert backend.from_dlpack(b) is b and backend.from_dlpack(b, backend="numpy") is b
    np.testing.assert_array_equal(backend.to_numpy(t), [0, 7, 2, 3])
    np.testing.assert_array_equal(backend.to_numpy([1, 2]), [1, 2])
    with pytest.raises(TypeError, match="from_dlpack expects an object with __dlpack__.*got builtins.list"):
        backend.from_dlpack([1.0, 2.0])
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        backend.from_dlpack(b, backend="gpu")
    with pytest.raises(TypeError, match="expected a numpy or cupy array, got builtins.list"):
        backend.to_torch([1.0])
