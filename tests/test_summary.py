"""npresnet.summary: shapes, parameters, MACs, weighted layers and measured memory, against hand-computed
figures and the published ResNet figures (docs/figures.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import npresnet
from npresnet import models, nn
from npresnet.summary import LayerRow, answers, held_for_backward, main, stage_table, summary

FIGURES_PAGE = Path(__file__).resolve().parents[1] / "docs" / "figures.md"

# ------------------------------------------------------------------------------------------ hand-built nets


def tiny_net(rng: np.random.Generator) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1, rng=rng),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 5, rng=rng),
    )


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
    assert s.param_bytes == 205 * 4 + (4 + 4) * 4 + 8  # + running mean/var (float32), batch counter (int64)


def test_grouped_dilated_rectangular_conv_macs(rng):
    conv = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, rng=rng)
    s = summary(conv, (3, 4, 9, 7))
    # OH = floor((9 + 2 - 1*(3-1) - 1) / 2) + 1 = 5; OW = floor((7 - 2*(2-1) - 1) / 1) + 1 = 5
    # MACs = N*O*OH*OW*(C/G)*KH*KW = 3*6*5*5*2*3*2; params = 6*2*3*2 + 6
    assert s.rows == [LayerRow("", "Conv2d", (3, 6, 5, 5), 78, 5400)]
    assert s.total_macs == 5400 and s.weighted_layers == 1


def test_printed_table_labels_macs_and_flops(rng):
    text = str(summary(tiny_net(rng), (2, 3, 8, 8)))
    for expected in [
        "Layer (type)",
        "Output shape",
        "Params",
        "MACs",
        "0 (Conv2d)",
        "[2, 4, 4, 4]",
        "3,456",
        "Total params: 205",
        "Trainable params: 205",
        "Total MACs (multiply-accumulates, conv + linear, batch of 2): 3,616",
        "Total FLOPs (= 2 x MACs, batch of 2): 7,232",
        "Input size (MB): ",
        "Params + buffers size (MB): ",
        "Activations held for backward (MB, measured): ",
        "Total size (MB): ",
    ]:
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
    object.__setattr__(m1, "_cache", (a, a[1:], 3, (a.T, None)))  # views of one block
    object.__setattr__(m2, "_cache", {"x": a.reshape(-1)[::2], "y": [b]})
    object.__setattr__(m3, "_cache", np.lib.stride_tricks.sliding_window_view(c, 4))  # nbytes 7*4*8 > c's
    object.__setattr__(m4, "_cache", b)  # the same array in two caches
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
        summary(tiny_net(rng), (2, 3, 8, 8), dtype=np.float64)  # float32 model
    with pytest.raises(ValueError, match="input_shape"):
        summary(tiny_net(rng), (0, 3, 8, 8))
    with pytest.raises(TypeError, match="npresnet Module"):
        summary(lambda x: x, (1, 3, 8, 8))


# ------------------------------------------------------------------------------------------ model state


def net_with_state(seed: int) -> nn.Sequential:
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, rng=rng),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.5, seed=1),
        nn.Linear(4 * 6 * 6, 3, rng=rng),
    )


@pytest.mark.parametrize("measure_memory", [True, False])
def test_summary_leaves_the_model_unchanged(measure_memory):
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    dy = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    subject, reference = net_with_state(0), net_with_state(0)
    for net in (subject, reference):
        net[1].eval()  # a per-module flag that model.train() would overwrite
        net(x)  # running statistics move; caches pending for backward
    buffers = {key: value for key, value in subject.named_buffers()}
    hook_calls = []
    subject[0].register_forward_hook(lambda m, i, o: hook_calls.append(o.shape))

    summary(subject, (4, 3, 6, 6), measure_memory=measure_memory)

    assert hook_calls == [(4, 4, 6, 6)]  # the user's hook ran, and is still registered
    assert [m.training for m in subject.modules()] == [m.training for m in reference.modules()]
    assert all(len(m._forward_hooks) == (1 if m is subject[0] else 0) for m in subject.modules())
    for key, value in subject.named_buffers():
        assert value is buffers[key], key  # the same array objects
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


# ------------------------------------------------------------------------------------------ the published figures


def page_table(heading: str) -> list[dict[str, str]]:
    """The first markdown table of the section ``## heading`` of docs/figures.md, one dict per row."""
    section = FIGURES_PAGE.read_text(encoding="utf-8").split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip().strip("|") for line in section.splitlines() if line.strip().startswith("|")]
    header = [cell.strip() for cell in lines[0].split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.split("|")))) for line in lines[2:]]


def cell(row: dict[str, str], prefix: str) -> str:
    (value,) = [v for k, v in row.items() if k.startswith(prefix)]
    return value


def number(text: str) -> int:
    """'25,557,032' or '4,089,184,256 (4.09 G)' -> the integer."""
    return int(text.split()[0].replace(",", ""))


IMAGENET = page_table("ImageNet ResNets")
CIFAR = page_table("CIFAR-10 ResNets")


def test_the_figures_page_has_the_tables():
    assert [row["model"] for row in IMAGENET] == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    assert [row["model"] for row in CIFAR] == ["ResNet-20", "ResNet-32", "ResNet-44", "ResNet-56", "ResNet-110"]


def resnet_macs(block: str, layers: list[int], stride_in_1x1: bool) -> int:
    """MACs of an ImageNet ResNet at 224x224, batch 1, counted from the architecture table
    (He et al. 2015, Table 1) independently of npresnet: 7x7/2 stem conv to 112x112, 3x3/2 max pool
    to 56x56, four stages (the first block of stages 2-4 halves H and W), global pool, fc 1000."""
    macs = 64 * 112 * 112 * 3 * 7 * 7
    size, inplanes = 56, 64
    expansion = 1 if block == "BasicBlock" else 4
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
        for index in range(blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            out = size // stride
            if block == "BasicBlock":
                macs += planes * out * out * inplanes * 9 + planes * out * out * planes * 9
            else:
                first = out if stride_in_1x1 else size  # where the 1x1 reduce conv runs
                macs += planes * first * first * inplanes
                macs += planes * out * out * planes * 9 + planes * expansion * out * out * planes
            if stride != 1 or inplanes != planes * expansion:
                macs += planes * expansion * out * out * inplanes  # projection shortcut
            size, inplanes = out, planes * expansion
    return macs + inplanes * 1000


@pytest.mark.parametrize("row", IMAGENET, ids=lambda row: row["model"])
def test_imagenet_answers_equal_the_published_figures(row):
    name, block = row["model"], row["block"]
    layers = [int(b) for b in row["blocks per stage"].split(",")]
    params, without_fc = number(cell(row, "params (torchvision)")), number(cell(row, "params without fc"))
    gmacs_v15, gmacs_v1 = float(cell(row, "GMACs, v1.5")), float(cell(row, "GMACs, v1 "))
    variants = ["v1.5", "v1"] if block == "Bottleneck" else ["v1.5"]  # v1 only moves a Bottleneck's stride
    for variant in variants:
        s = summary(models.get_model(name, variant=variant, seed=0), (1, 3, 224, 224), measure_memory=False)
        a = answers(s)
        assert a["blocks_per_stage"] == layers and a["blocks"] == sum(layers)
        assert [t.split()[0] for t in a["block_types"]] == [block]
        assert a["weighted_layers"] == s.weighted_layers == int(row["weighted layers"]) == int(name[len("resnet") :])
        per_block = 2 if block == "BasicBlock" else 3
        assert a["weighted_layers_counted_as"] == f"1 stem conv + {sum(layers)} x {per_block} convs + 1 fc"
        assert a["projection_shortcuts"] == (3 if block == "BasicBlock" else 4)
        assert a["params"] == a["trainable_params"] == params and a["frozen_params"] == 0
        assert a["params_without_classifier"] == without_fc
        assert a["classifier"] == "fc" and a["classifier_params"] == params - without_fc
        assert s.rows[0] == LayerRow("conv1", "Conv2d", (1, 64, 112, 112), 64 * 3 * 7 * 7, 118_013_952)
        assert s.rows[-1] == LayerRow(
            "fc", "Linear", (1, 1000), params - without_fc, (512 if block == "BasicBlock" else 2048) * 1000
        )
        assert a["macs"] == s.total_macs == resnet_macs(block, layers, stride_in_1x1=variant == "v1")
        if block == "Bottleneck":  # v1 strides in the first 1x1 conv, v1.5 in the 3x3 (same parameters)
            shapes = {r.name: r.output_shape for r in s.rows}
            assert shapes["layer2.0.conv1"] == ((1, 128, 28, 28) if variant == "v1" else (1, 128, 56, 56))
            assert shapes["layer2.0.conv2"] == (1, 128, 28, 28)
        if name == "resnet50":
            assert a["macs"] == {"v1.5": 4_089_184_256, "v1": 3_857_973_248}[variant]
        if variant == "v1.5":  # torchvision's "GFLOPS" (which are MACs), given to 3-4 significant digits
            assert round(a["macs"] / 1e9, 2) == gmacs_v15
        else:  # the paper's "FLOPs (multiply-adds)", given to one decimal (not always rounded: 3.86 -> 3.8)
            assert abs(a["macs"] / 1e9 - gmacs_v1) < 0.1
        assert a["flops"] == s.total_flops == 2 * a["macs"]


@pytest.mark.parametrize("row", CIFAR, ids=lambda row: row["model"])
def test_cifar_answers_equal_he_et_al_table_6(row):
    n, depth = int(row["n"]), int(row["model"].removeprefix("ResNet-"))
    exact, paper = number(cell(row, "params exact")), cell(row, "params (He et al.")
    decimals = len(paper.rstrip("M").partition(".")[2])
    for name in (f"resnet{depth}", f"plain{depth}"):
        a = answers(summary(models.get_model(name, seed=0), (1, 3, 32, 32), measure_memory=False))
        assert a["blocks_per_stage"] == [n, n, n]
        assert a["weighted_layers"] == 6 * n + 2 == depth
        assert a["weighted_layers_counted_as"] == f"1 stem conv + {3 * n} x 2 convs + 1 fc"
        assert a["params"] == exact and round(exact / 1e6, decimals) == float(paper.rstrip("M"))
        assert a["params_without_classifier"] == exact - (64 * 10 + 10)
        assert a["projection_shortcuts"] == 0
        assert a["residual"] == name.startswith("resnet")
        assert a["shortcut_kinds"] == (["identity", "ShortcutA"] if a["residual"] else [])


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
    strided_1x1 = sum(
        4 * int(np.prod(by_name[name].output_shape)) // m.out_channels * m.in_channels
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
    )
    assert s.activation_bytes >= relu_bytes + bn_bytes
    pool_bytes = sum(2 * 4 * int(np.prod(r.output_shape)) for r in s.rows if r.type == "MaxPool2d")
    assert s.activation_bytes <= relu_bytes + bn_bytes + strided_1x1 + pool_bytes + 4 * 30_000
    assert (
        s.param_bytes
        == 4 * (25_557_032 + 2 * sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))) + 8 * 53
    )
    assert s.memory.batchnorm_in_eval == () and s.memory.batchnorm_layers == 53
    np.testing.assert_array_equal(model.layer1[0].bn1.running_var, running_var)
    assert int(model.bn1.num_batches_tracked) == 0
    assert all(m.saved_for_backward is None for m in model.modules())


@pytest.mark.parametrize(
    "name, shortcut, params, macs",
    [
        ("resnet20", "A", 269_722, 40_551_040),
        ("resnet20", "B", 272_474, 40_813_184),  # + two 1x1 projections (16->32 at 16x16, 32->64 at 8x8) + their BN
        ("plain20", None, 269_722, 40_551_040),
        ("resnet56", "A", 853_018, None),
        ("resnet110", "A", 1_727_962, None),
    ],
)
def test_cifar_resnet_figures(name, shortcut, params, macs):
    model = models.get_model(name, seed=0) if shortcut is None else models.get_model(name, shortcut=shortcut, seed=0)
    s = summary(model, (1, 3, 32, 32), measure_memory=name == "resnet20")
    assert s.total_params == params
    assert s.weighted_layers == int(name.removeprefix("resnet").removeprefix("plain"))
    assert s.structure.projection_shortcuts == (2 if shortcut == "B" else 0)
    # 3x3 stem 16@32x32; stage 1: 6 convs 16->16 @32x32; stages 2, 3: one 16->32 @16x16 (32->64 @8x8)
    # and 5 convs 32->32 (64->64); fc 64->10.
    if macs is not None:
        hand = (
            16 * 32 * 32 * 3 * 9
            + 6 * 16 * 32 * 32 * 16 * 9
            + 32 * 16 * 16 * 16 * 9
            + 5 * 32 * 16 * 16 * 32 * 9
            + 64 * 8 * 8 * 32 * 9
            + 5 * 64 * 8 * 8 * 64 * 9
            + 64 * 10
        )
        assert hand == 40_551_040
        assert s.total_macs == macs


# ------------------------------------------------------------------------------------------ structure, stages, depth


def test_answers_come_from_the_modules_not_the_name():
    # A ResNet no table lists: 1+2+3+1 BasicBlocks and a 7-way classifier.
    model = models.ResNet(models.BasicBlock, [1, 2, 3, 1], num_classes=7, seed=0)
    a = answers(summary(model, (1, 3, 64, 64), measure_memory=False))
    assert a["blocks_per_stage"] == [1, 2, 3, 1] and a["weighted_layers"] == 1 + 7 * 2 + 1
    assert a["classifier_params"] == 512 * 7 + 7 and a["projection_shortcuts"] == 3
    backbone = a["params_without_classifier"]
    # A fine-tuning head (Linear-ReLU-Dropout-Linear) is the classifier as a whole: two more weighted layers.
    model.replace_child("fc", nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 7)))
    a = answers(summary(model, (1, 3, 64, 64), measure_memory=False))
    assert a["classifier"] == "fc" and a["classifier_params"] == 512 * 64 + 64 + 64 * 7 + 7
    assert a["classifier_layers"] == "Linear 512 -> 64, ReLU, Dropout, Linear 64 -> 7"
    assert a["weighted_layers"] == 17
    assert a["weighted_layers_counted_as"] == "1 stem conv + 7 x 2 convs + 2 layers in fc"
    assert a["params_without_classifier"] == backbone


def test_trainable_and_frozen_after_requires_grad_false(capsys):
    row = IMAGENET[2]
    params, without_fc = number(cell(row, "params (torchvision)")), number(cell(row, "params without fc"))
    model = models.resnet50(seed=0)
    model.requires_grad_(False)
    a = answers(summary(model, measure_memory=False))
    assert (a["trainable_params"], a["frozen_params"]) == (0, params)
    model.fc.requires_grad_(True)  # fine-tuning the head only
    a = answers(summary(model, measure_memory=False))
    assert (a["trainable_params"], a["frozen_params"]) == (params - without_fc, without_fc)
    assert main(["--model", "resnet50", "--freeze", "backbone", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert f"trainable: {params - without_fc:,}; frozen (requires_grad=False): {without_fc:,}" in out


def test_stage_table_sits_between_the_layers_and_the_totals(capsys):
    s = summary(models.resnet50(seed=0), measure_memory=False)
    rows = stage_table(s.calls, s.structure)
    assert [(r.name, r.output_shape, r.blocks) for r in rows] == [
        ("stem", (1, 64, 56, 56), 0),
        ("layer1", (1, 256, 56, 56), 3),
        ("layer2", (1, 512, 28, 28), 4),
        ("layer3", (1, 1024, 14, 14), 6),
        ("layer4", (1, 2048, 7, 7), 3),
        ("head", (1, 1000), 0),
    ]
    assert rows[0].members == ("conv1", "bn1", "relu", "maxpool") and rows[-1].members == ("avgpool", "fc")
    assert sum(r.params for r in rows) == s.total_params and sum(r.macs for r in rows) == s.total_macs
    lines = str(s).splitlines()
    stage_header = next(i for i, line in enumerate(lines) if line.startswith("Stage "))
    assert max(i for i, line in enumerate(lines) if line.startswith("layer4.2.relu_out")) < stage_header
    assert stage_header < next(i for i, line in enumerate(lines) if line.startswith("Total params"))
    assert re.search(r"^layer2\s+\[1, 512, 28, 28\]\s+4\s+1,219,584\s+", "\n".join(lines), re.M)


def test_depth_shows_the_whole_network_the_stages_or_the_blocks(capsys):
    s = summary(models.resnet20(seed=0), (2, 3, 32, 32), measure_memory=False)
    assert s.table(0) == [LayerRow("", "CifarResNet", (2, 10), 269_722, s.total_macs)]
    top = s.table(1)
    assert [r.name for r in top] == ["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "fc"]
    blocks = s.table(2)
    assert [r.name for r in blocks if r.type == "CifarBlock"] == [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(3)]
    for table in (top, blocks):
        assert sum(r.params for r in table) == s.total_params and sum(r.macs for r in table) == s.total_macs
    assert s.table(3) == s.table() == s.rows  # every leaf of ResNet-20 is at most 3 deep
    assert main(["--model", "resnet20", "--depth", "1", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "layer2 (Sequential)" in out and "layer2.0" not in out
    with pytest.raises(SystemExit):
        main(["--model", "resnet20", "--depth", "-1"])
    assert "--depth must be 0 or more" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ batch 1, bad input


def test_memory_at_batch_1_where_batchnorm_sees_one_value_per_channel():
    # ResNet-18 on a 32x32 image ends at 1x1 maps: at batch 1 its last stage's BatchNorms see one value per
    # channel, which training mode refuses (as torch does). They run on their running statistics instead.
    model = models.resnet18(seed=0)
    one = summary(model, (1, 3, 32, 32))
    assert one.memory.batchnorm_in_eval == (
        "layer4.0.bn1",
        "layer4.0.bn2",
        "layer4.0.downsample.1",
        "layer4.1.bn1",
        "layer4.1.bn2",
    )
    assert one.memory.batchnorm_layers == 20 and "5 of 20 BatchNorm layers" in one.memory.method
    two = summary(model, (2, 3, 32, 32))
    assert two.memory.batchnorm_in_eval == ()
    # Every array a sample adds is the same at batch 1 and 2 (in eval mode BatchNorm keeps its input x where
    # training mode keeps x_hat: the same size). Only the per-channel arrays do not double: C values of 1/std
    # per BatchNorm, and in eval mode a copy of the running mean. So 2 * one - two is exactly their difference.
    channels = {name: m.num_features for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    per_channel_one = 4 * sum(c * (2 if name in one.memory.batchnorm_in_eval else 1) for name, c in channels.items())
    per_channel_two = 4 * sum(channels.values())
    assert 2 * one.activation_bytes - two.activation_bytes == 2 * per_channel_one - per_channel_two
    assert all(m.training for m in model.modules())
    assert all(int(m.num_batches_tracked) == 0 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_command_line_at_batch_1_says_how_memory_was_measured(capsys):
    assert main(["--model", "resnet18", "--input-shape", "1,3,32,32"]) == 0
    out = capsys.readouterr().out
    assert (
        "activation memory, training step at batch 1: " in out
        and "5 of 20 BatchNorm layers see one value per channel (N*H*W = 1) and used their running statistics "
        "(eval mode)"
        in out
    )


@pytest.mark.parametrize(
    "shape, message",
    [
        ("3,224,224", "expected N,C,H,W, the batch first, like 1,3,224,224 (4 values); got '3,224,224' (3 values)"),
        ("1,3,224,224,1", "(5 values)"),
        ("1,3,x,224", "like 1,3,224,224; got '1,3,x,224'"),
        ("1,3,0,224", "at least 1"),
        ("1,1,224,224", "resnet18 takes 3 input channels (C, the second value), got 1"),
    ],
)
def test_bad_input_shape_is_an_argparse_error(capsys, shape, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "resnet18", "--input-shape", shape, "--no-memory"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "python -m npresnet.summary: error: " in err and message in err, err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------ formats, side by side


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in ``text``: rows of cells, header first, the alignment row dropped."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(set(c) <= set("-:") for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_side_by_side_markdown_and_json_round_trip_the_same_numbers(capsys):
    names = ["resnet18", "resnet20", "plain20"]
    assert main(["--model", *names, "--input-shape", "2,3,32,32", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["model"] for m in data["models"]] == names
    assert main(["--model", *names, "--input-shape", "2,3,32,32", "--format", "markdown"]) == 0
    (table,) = markdown_tables(capsys.readouterr().out)
    assert table[0] == ["", *names]
    rows = {cells[0]: cells[1:] for cells in table[1:]}
    assert all(len(cells) == len(names) for cells in rows.values())
    for column, model in enumerate(data["models"]):
        a = model["answers"]
        assert number(rows["parameters"][column]) == a["params"]
        assert number(rows["without the classifier"][column]) == a["params_without_classifier"]
        assert number(rows["trainable"][column]) == a["trainable_params"]
        assert number(rows["frozen"][column]) == a["frozen_params"]
        assert number(rows["weighted layers"][column]) == a["weighted_layers"]
        assert rows["counted as"][column] == a["weighted_layers_counted_as"]
        assert number(rows["MACs"][column]) == a["macs"] and number(rows["FLOPs (2 x MACs)"][column]) == a["flops"]
        assert rows["blocks per stage"][column] == "+".join(map(str, a["blocks_per_stage"])) + f" = {a['blocks']}"
        assert float(rows["activation memory, training step (MB)"][column]) == a["activation_mb"]
        assert a["activation_mb"] == round(a["activation_bytes"] / 2**20, 2)
    assert [m["answers"]["params"] for m in data["models"]] == [11_689_512, 269_722, 269_722]


def test_one_model_markdown_and_json_agree(capsys):
    assert main(["--model", "resnet20", "--depth", "2", "--format", "json"]) == 0
    (model,) = json.loads(capsys.readouterr().out)["models"]
    assert main(["--model", "resnet20", "--depth", "2", "--format", "markdown"]) == 0
    layers, stages, questions = markdown_tables(capsys.readouterr().out)
    assert layers[0] == ["Layer", "Type", "Output shape", "Params", "MACs"]
    assert [(r[0], r[1], number(r[3]), number(r[4])) for r in layers[1:]] == [
        (r["name"], r["type"], r["params"], r["macs"]) for r in model["layers"]
    ]
    assert [(r[0], r[2], number(r[3]), number(r[4])) for r in stages[1:]] == [
        (r["stage"], str(r["blocks"] or "-"), r["params"], r["macs"]) for r in model["stages"]
    ]
    answered = dict(questions[1:])
    a = model["answers"]
    assert answered["parameters"].startswith(
        f"{a['params']:,}; without the classifier fc (Linear 64 -> 10: 650): {a['params_without_classifier']:,}"
    )
    assert answered["residual blocks"] == "3+3+3 = 9 CifarBlock (3x3, 3x3 convs)"
    assert sum(r["params"] for r in model["stages"]) == a["params"] == 269_722


def test_side_by_side_text_has_one_column_per_model(capsys):
    names = [row["model"] for row in IMAGENET[:3]]
    assert main(["--model", *names, "--no-memory"]) == 0
    header, rule, *body = capsys.readouterr().out.splitlines()
    assert header.split() == names and set(rule) == {"-"}
    rows = {}
    for line in body:
        cells = re.split(r"\s{2,}", line.strip())  # cells are at least two spaces apart
        assert len(cells) == 1 + len(names), line
        rows[cells[0]] = cells[1:]
    assert rows["parameters"] == [cell(row, "params (torchvision)") for row in IMAGENET[:3]]
    assert rows["without the classifier"] == [cell(row, "params without fc") for row in IMAGENET[:3]]
    assert rows["blocks per stage"] == ["2+2+2+2 = 8", "3+4+6+3 = 16", "3+4+6+3 = 16"]
    assert rows["weighted layers"] == [row["weighted layers"] for row in IMAGENET[:3]]


# ------------------------------------------------------------------------------------------ command line


def test_command_line(capsys):
    assert main(["--model", "resnet50", "--variant", "v1", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 25,557,032" in out
    assert "Total MACs (multiply-accumulates, conv + linear, batch of 1): 3,857,973,248 (3.86 G)" in out
    assert "Weighted layers (conv + linear on the main path): 50" in out
    assert main(["--model", "resnet34", "--no-memory"]) == 0
    out = capsys.readouterr().out
    for answer in [
        "residual blocks: 3+4+6+3 = 16 BasicBlock (3x3, 3x3 convs)",
        "weighted layers: 34 = 1 stem conv + 16 x 2 convs + 1 fc; the 3 projection shortcuts "
        "(conv 1x1 + BatchNorm2d) are not counted, as in the paper",
        "parameters: 21,797,672; without the classifier fc (Linear 512 -> 1000: 513,000): 21,284,672",
        "trainable: 21,797,672; frozen (requires_grad=False): 0",
        "MACs: 3,663,761,408 (3.66 G) at 1x3x224x224; FLOPs (2 x MACs): 7,327,522,816 (7.33 G)",
    ]:
        assert f"  {answer}\n" in out, answer
    assert main(["--model", "resnet20", "--input-shape", "2,3,32,32"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 269,722" in out and "[2, 64, 8, 8]" in out and "batch of 2): 81,102,080" in out
    assert "activation memory, training step at batch 2: 2.88 MB (measured: training-mode forward" in out
    with pytest.raises(SystemExit):
        main(["--model", "resnet7"])
    assert "unknown model 'resnet7'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "plain20", "--shortcut", "B"])
    assert "--shortcut does not apply to plain20" in capsys.readouterr().err


def test_python_dash_m_runs_the_command():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "npresnet.summary", "--model", "resnet20", "--no-memory", "--depth", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Total params: 269,722" in result.stdout
    assert "RuntimeWarning" not in result.stderr  # runpy's "found in sys.modules" warning: __main__.py runs it
