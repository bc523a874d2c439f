"""npresnet.summary: shapes, parameters, MACs, weighted layers and measured memory, against hand-computed
figures and the published ResNet figures (docs/figures.md)."""

from __future__ import annotations

import numpy as np
import pytest

import npresnet
from npresnet import models, nn
from npresnet.summary import LayerRow, held_for_backward, main, summary

# ------------------------------------------------------------------------------------------ hand-built nets


def tiny_net(rng: np.random.Generator) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, rng=rng), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 5, rng=rng))


def test_tiny_net_figures_by_hand(rng):
    s = summary(tiny_net(rng), (2, 3, 8, 8))
    # conv: 8x8 -> floor((8 + 2 - 3) / 2) + 1 = 4; params 4*3*3*3 + 4 = 112; MACs N*O*OH*OW*C*KH*KW = 2*4*4*4*3*9
    # pool 2: 4x4 -> 2x2; flatten 4*2*2 = 16; linear params 16*5 + 5 = 85, MACs N*in*out = 2*16*5
    assert s.rows == [
        LayerRow("0", "Conv2d", (2, 4, 4, 4), 112, 3456),
        LayerRow("1", "BatchNorm2d", (2, 4, 4, 4), 8, 0),
        LayerRow("2", "ReLU", (2, 4, 4, 4), 0, 0),
        LayerRow("3", "MaxPool2d", (2, 4, 2, 2), 0, 0),
        LayerRow("4", "Flatten", (2, 16), 0, 0),
        LayerRow("5", "Linear", (2, 5), 85, 160),
    ]
    assert (s.total_params, s.trainable_params, s.non_trainable_params) == (205, 205, 0)
    assert (s.total_macs, s.total_flops, s.macs_per_sample) == (3616, 7232, 1808)
    assert s.weighted_layers == 2
    assert s.input_bytes == 2 * 3 * 8 * 8 * 4
    assert s.param_bytes == 205 * 4 + (4 + 4) * 4 + 8         # + running mean/var (float32), batch counter (int64)


def test_grouped_dilated_rectangular_conv_macs(rng):
    conv = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, rng=rng)
    s = summary(conv, (3, 4, 9, 7))
    # OH = floor((9 + 2 - 1*(3-1) - 1) / 2) + 1 = 5; OW = floor((7 - 2*(2-1) - 1) / 1) + 1 = 5
    # MACs = N*O*OH*OW*(C/G)*KH*KW = 3*6*5*5*2*3*2; params = 6*2*3*2 + 6
    assert s.rows == [LayerRow("", "Conv2d", (3, 6, 5, 5), 78, 5400)]
    assert s.total_macs == 5400 and s.weighted_layers == 1


def test_printed_table_labels_macs_and_flops(rng):
    text = str(summary(tiny_net(rng), (2, 3, 8, 8)))
    for expected in ["Layer (type)", "Output shape", "Params", "MACs", "0 (Conv2d)", "[2, 4, 4, 4]", "3,456",
                     "Total params: 205", "Trainable params: 205",
                     "Total MACs (multiply-accumulates, conv + linear, batch of 2): 3,616",
                     "Total FLOPs (= 2 x MACs, batch of 2): 7,232",
                     "Input size (MB): ", "Params + buffers size (MB): ",
                     "Activations held for backward (MB, measured): ", "Total size (MB): "]:
        assert expected in text, f"{expected!r} not in:\n{text}"
    unmeasured = str(summary(tiny_net(rng), (2, 3, 8, 8), measure_memory=False))
    assert "Activations held for backward (MB, measured): not measured" in unmeasured


# ------------------------------------------------------------------------------------------ measured memory


def test_activation_memory_counts_each_buffer_once(rng):
    # ReLU caches its output y (N*C*H*W float64); Linear caches its input, which is a view of that
    # same y (through Flatten), and its weight, a parameter: so y counts once and nothing else.
    net = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(48, 5, rng=rng)).to(np.float64)
    s = summary(net, (2, 3, 4, 4), dtype=np.float64)
    assert s.activation_bytes == 2 * 48 * 8
    # A second ReLU caches a second, distinct output.
    net = nn.Sequential(nn.ReLU(), nn.ReLU(), nn.Flatten(), nn.Linear(48, 5, rng=rng)).to(np.float64)
    assert summary(net, (2, 3, 4, 4), dtype=np.float64).activation_bytes == 2 * 2 * 48 * 8


def test_activation_memory_of_a_conv_is_its_input_not_its_columns(rng):
    # Conv2d keeps its input x (backward rebuilds the KH*KW times larger im2col columns), so a conv
    # fed by a ReLU holds nothing of its own: the ReLU's output y is counted once, for both.
    net = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1, bias=False, rng=rng))
    s = summary(net, (2, 3, 5, 6))
    assert s.activation_bytes == 2 * 3 * 5 * 6 * 4
    assert s.total_mb == pytest.approx((s.input_bytes + s.param_bytes + s.activation_bytes) / 2**20)
    # A strided 1x1 conv keeps only the samples it reads: x[:, :, ::2, ::2], a copy of a quarter.
    net = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 1, stride=2, bias=False, rng=rng))
    assert summary(net, (2, 3, 6, 8)).activation_bytes == 2 * 3 * 6 * 8 * 4 + 2 * 3 * 3 * 4 * 4


def test_held_for_backward_dedupes_by_memory_block(rng):
    a = rng.standard_normal((4, 5))
    b = rng.standard_normal(7)
    c = rng.standard_normal(10)
    m1, m2, m3, m4 = nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.ReLU()
    net = nn.Sequential(m1, m2, m3, m4)
    object.__setattr__(m1, "_cache", (a, a[1:], 3, (a.T, None)))        # views of one block
    object.__setattr__(m2, "_cache", {"x": a.reshape(-1)[::2], "y": [b]})
    object.__setattr__(m3, "_cache", np.lib.stride_tricks.sliding_window_view(c, 4))   # nbytes 7*4*8 > c's
    object.__setattr__(m4, "_cache", b)                                   # the same array in two caches
    assert held_for_backward(net) == a.nbytes + b.nbytes + c.nbytes
    assert held_for_backward(net, exclude=[b[2:]]) == a.nbytes + c.nbytes
    object.__setattr__(m3, "_cache", None)
    assert held_for_backward(net) == a.nbytes + b.nbytes


def test_measure_memory_needs_gradients_on(rng):
    net = tiny_net(rng)
    with npresnet.no_grad(), pytest.raises(RuntimeError, match="no_grad"):
        summary(net, (2, 3, 8, 8))
    with npresnet.no_grad():
        assert summary(net, (2, 3, 8, 8), measure_memory=False).total_macs == 3616


def test_wrong_input_is_a_clear_error(rng):
    with pytest.raises(TypeError, match="float64"):
        summary(tiny_net(rng), (2, 3, 8, 8), dtype=np.float64)     # float32 model
    with pytest.raises(ValueError, match="input_shape"):
        summary(tiny_net(rng), (0, 3, 8, 8))
    with pytest.raises(TypeError, match="npresnet Module"):
        summary(lambda x: x, (1, 3, 8, 8))


# ------------------------------------------------------------------------------------------ model state


def net_with_state(seed: int) -> nn.Sequential:
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, rng=rng), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.5, seed=1), nn.Linear(4 * 6 * 6, 3, rng=rng))


@pytest.mark.parametrize("measure_memory", [True, False])
def test_summary_leaves_the_model_unchanged(measure_memory):
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    dy = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    subject, reference = net_with_state(0), net_with_state(0)
    for net in (subject, reference):
        net[1].eval()                            # a per-module flag that model.train() would overwrite
        net(x)                                   # running statistics move; caches pending for backward
    buffers = {key: value for key, value in subject.named_buffers()}
    hook_calls = []
    subject[0].register_forward_hook(lambda m, i, o: hook_calls.append(o.shape))

    summary(subject, (4, 3, 6, 6), measure_memory=measure_memory)

    assert hook_calls == [(4, 4, 6, 6)]          # the user's hook ran, and is still registered
    assert [m.training for m in subject.modules()] == [m.training for m in reference.modules()]
    assert all(len(m._forward_hooks) == (1 if m is subject[0] else 0) for m in subject.modules())
    for key, value in subject.named_buffers():
        assert value is buffers[key], key       # the same array objects
        np.testing.assert_array_equal(value, reference.state_dict()[key], err_msg=key)
    # The pending caches survived: backward gives exactly the reference's gradients.
    np.testing.assert_array_equal(subject.backward(dy), reference.backward(dy))
    for (key, p), (_, q) in zip(subject.named_parameters(), reference.named_parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=key)
    # Dropout's generator is where it was: the next masks are the reference's.
    subject.train()
    reference.train()
    np.testing.assert_array_equal(subject(x), reference(x))


def test_summary_does_not_create_state_lazily():
    # Dropout creates its generator on its first forward: a summary run first must not do it for it.
    subject, reference = net_with_state(0), net_with_state(0)
    summary(subject, (2, 3, 6, 6))
    assert subject[4]._rngs == {}
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(subject(x), reference(x))


# ------------------------------------------------------------------------------------------ ResNets


def resnet_macs(block: str, layers: list[int], stride_in_1x1: bool) -> int:
    """MACs of an ImageNet ResNet at 224x224, batch 1, counted from the architecture table
    (He et al. 2015, Table 1) independently of npresnet: 7x7/2 stem conv to 112x112, 3x3/2 max pool
    to 56x56, four stages (the first block of stages 2-4 halves H and W), global pool, fc 1000."""
    macs = 64 * 112 * 112 * 3 * 7 * 7
    size, inplanes = 56, 64
    expansion = 1 if block == "basic" else 4
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
        for index in range(blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            out = size // stride
            if block == "basic":
                macs += planes * out * out * inplanes * 9 + planes * out * out * planes * 9
            else:
                first = out if stride_in_1x1 else size       # where the 1x1 reduce conv runs
                macs += planes * first * first * inplanes
                macs += planes * out * out * planes * 9 + planes * expansion * out * out * planes
            if stride != 1 or inplanes != planes * expansion:
                macs += planes * expansion * out * out * inplanes       # projection shortcut
            size, inplanes = out, planes * expansion
    return macs + inplanes * 1000


RESNETS = [  # name, block, stages, params (torchvision), GMACs v1.5 (torchvision), GMACs v1 (paper)
    ("resnet18", "basic", [2, 2, 2, 2], 11_689_512, 1.81, 1.8),
    ("resnet34", "basic", [3, 4, 6, 3], 21_797_672, 3.66, 3.6),
    ("resnet50", "bottleneck", [3, 4, 6, 3], 25_557_032, 4.09, 3.8),
    ("resnet101", "bottleneck", [3, 4, 23, 3], 44_549_160, 7.80, 7.6),
    ("resnet152", "bottleneck", [3, 8, 36, 3], 60_192_808, 11.51, 11.3),
]


@pytest.mark.parametrize("name, block, layers, params, gmacs_v15, gmacs_v1", RESNETS)
def test_imagenet_resnet_figures(name, block, layers, params, gmacs_v15, gmacs_v1):
    depth = int(name[len("resnet"):])
    variants = ["v1.5", "v1"] if block == "bottleneck" else ["v1.5"]   # v1 only moves a Bottleneck's stride
    for variant in variants:
        model = models.get_model(name, variant=variant, seed=0)
        s = summary(model, (1, 3, 224, 224), measure_memory=False)
        assert s.total_params == s.trainable_params == params
        assert s.weighted_layers == depth
        assert s.rows[0] == LayerRow("conv1", "Conv2d", (1, 64, 112, 112), 64 * 3 * 7 * 7, 118_013_952)
        assert s.rows[-1] == LayerRow("fc", "Linear", (1, 1000), params - sum(r.params for r in s.rows[:-1]),
                                      (512 if block == "basic" else 2048) * 1000)
        assert s.total_macs == resnet_macs(block, layers, stride_in_1x1=variant == "v1")
        if block == "bottleneck":   # v1 strides in the first 1x1 conv, v1.5 in the 3x3 (same parameters)
            shapes = {r.name: r.output_shape for r in s.rows}
            assert shapes["layer2.0.conv1"] == ((1, 128, 28, 28) if variant == "v1" else (1, 128, 56, 56))
            assert shapes["layer2.0.conv2"] == (1, 128, 28, 28)
        if name == "resnet50":
            assert s.total_macs == {"v1.5": 4_089_184_256, "v1": 3_857_973_248}[variant]
        if variant == "v1.5":   # torchvision's "GFLOPS" (which are MACs), given to 3-4 significant digits
            assert round(s.total_macs / 1e9, 2) == gmacs_v15
        else:   # the paper's "FLOPs (multiply-adds)", given to one decimal (not always rounded: 3.86 -> 3.8)
            assert abs(s.total_macs / 1e9 - gmacs_v1) < 0.1
        assert s.total_flops == 2 * s.total_macs


def test_resnet50_measured_memory_and_state():
    model = models.resnet50(seed=0)
    running_var = model.layer1[0].bn1.running_var.copy()
    s = summary(model, (1, 3, 224, 224))
    assert s.weighted_layers == 50 and s.total_params == 25_557_032
    # Every ReLU keeps its own output and every BatchNorm its normalised input x_hat (the shape of the
    # conv output before it); convs keep their input, which is a ReLU output or the image, except a
    # strided 1x1 conv, which keeps the quarter of its input it reads. So the measured total is at
    # least the ReLU and BN outputs and at most that plus a quarter of the downsample inputs, plus
    # the max-pool's output (layer1's first convs keep it) and its int32 argmax of the same size.
    by_name = {r.name: r for r in s.rows}
    relu_bytes = sum(4 * int(np.prod(r.output_shape)) for r in s.rows if r.type == "ReLU")
    bn_bytes = sum(4 * int(np.prod(r.output_shape)) for r in s.rows if r.type == "BatchNorm2d")
    strided_1x1 = sum(4 * int(np.prod(by_name[name].output_shape)) // m.out_channels * m.in_channels
                      for name, m in model.named_modules()
                      if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1))
    assert s.activation_bytes >= relu_bytes + bn_bytes
    pool_bytes = sum(2 * 4 * int(np.prod(r.output_shape)) for r in s.rows if r.type == "MaxPool2d")
    assert s.activation_bytes <= relu_bytes + bn_bytes + strided_1x1 + pool_bytes + 4 * 30_000
    assert s.param_bytes == 4 * (25_557_032 + 2 * sum(m.num_features for m in model.modules()
                                                      if isinstance(m, nn.BatchNorm2d))) + 8 * 53
    np.testing.assert_array_equal(model.layer1[0].bn1.running_var, running_var)
    assert int(model.bn1.num_batches_tracked) == 0
    assert all(m._cache is None for m in model.modules())


@pytest.mark.parametrize("name, shortcut, params, macs", [
    ("resnet20", "A", 269_722, 40_551_040),
    ("resnet20", "B", 272_474, 40_813_184),   # + two 1x1 projections (16->32 at 16x16, 32->64 at 8x8) + their BN
    ("plain20", None, 269_722, 40_551_040),
    ("resnet56", "A", 853_018, None),
    ("resnet110", "A", 1_727_962, None),
])
def test_cifar_resnet_figures(name, shortcut, params, macs):
    model = models.get_model(name, seed=0) if shortcut is None else models.get_model(name, shortcut=shortcut, seed=0)
    s = summary(model, (1, 3, 32, 32), measure_memory=name == "resnet20")
    assert s.total_params == params
    assert s.weighted_layers == int(name.removeprefix("resnet").removeprefix("plain"))
    # 3x3 stem 16@32x32; stage 1: 6 convs 16->16 @32x32; stages 2, 3: one 16->32 @16x16 (32->64 @8x8)
    # and 5 convs 32->32 (64->64); fc 64->10.
    if macs is not None:
        hand = (16 * 32 * 32 * 3 * 9 + 6 * 16 * 32 * 32 * 16 * 9 + 32 * 16 * 16 * 16 * 9 + 5 * 32 * 16 * 16 * 32 * 9
                + 64 * 8 * 8 * 32 * 9 + 5 * 64 * 8 * 8 * 64 * 9 + 64 * 10)
        assert hand == 40_551_040
        assert s.total_macs == macs


# ------------------------------------------------------------------------------------------ command line


def test_command_line(capsys):
    assert main(["resnet50", "--variant", "v1", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 25,557,032" in out
    assert "Total MACs (multiply-accumulates, conv + linear, batch of 1): 3,857,973,248 (3.86 G)" in out
    assert "Weighted layers (conv + linear on the main path): 50" in out
    assert main(["resnet20", "--input-shape", "2,3,32,32"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 269,722" in out and "[2, 64, 8, 8]" in out and "batch of 2): 81,102,080" in out
    with pytest.raises(SystemExit):
        main(["resnet7"])
    assert "unknown model 'resnet7'" in capsys.readouterr().err
