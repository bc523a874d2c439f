"""Loading never half-applies, and bad files end in one clear error (issue 13, defects 1, 2 and 8).

Every corruption here is a real file: an array of the wrong dtype or full of NaN, a meta entry of
the wrong type, a truncated or bit-flipped zip, a 100-byte member that declares an 8 TiB array, an
image that declares 100,000 x 100,000 pixels. Each must raise one exception type
(``npresnet.state_checks.StateError``; checkpoints raise its subclass ``CheckpointError``) with a
one-line message naming the file and what is wrong, and change nothing: the model's weights, the
optimizer's hyperparameters and state, and the schedule stay exactly as they were.
"""

from __future__ import annotations

import copy
import json
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import npresnet
from npresnet import nn
from npresnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from npresnet.optim import SGD, Adam
from npresnet.schedules import LinearLR, MultiStepLR, SequentialLR
from npresnet.state_checks import StateError

REPO = Path(__file__).resolve().parents[1]


def small_net(seed: int) -> nn.Sequential:
    """conv -> BN -> ReLU -> flatten -> linear on (N, 3, 4, 4) inputs; keys 0.*, 1.*, 4.*."""
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, rng=rng),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5, rng=rng),
    )


def trained(seed: int):
    """(model, SGD with momentum buffers, warm-up + multistep schedule) after two real steps."""
    model = small_net(seed)
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = SequentialLR(
        optimizer, [LinearLR(optimizer, 0.5, total_iters=2), MultiStepLR(optimizer, [3])], milestones=[2]
    )
    rng = np.random.default_rng(seed)
    criterion = nn.CrossEntropyLoss()
    for _ in range(2):
        loss = criterion(model(rng.standard_normal((4, 3, 4, 4)).astype(np.float32)), rng.integers(0, 5, 4))
        assert np.isfinite(float(loss))
        optimizer.zero_grad()
        model.backward(criterion.backward())
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def snapshot(model, optimizer=None, scheduler=None):
    """Everything a load could change, as plain copies (bytes for arrays: equal bits, not values)."""

    def bits(a):
        return (str(a.dtype), tuple(a.shape), np.ascontiguousarray(a).tobytes())

    state = {k: bits(np.asarray(v)) for k, v in model.state_dict().items()}
    if optimizer is None:
        return state
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    opt_state = {
        i: {n: bits(v) if hasattr(v, "dtype") else v for n, v in s.items()}
        for i, s in enumerate(optimizer.state.values())
    }
    return state, copy.deepcopy(groups), opt_state, copy.deepcopy(scheduler.state_dict())


def rewrite(path: Path, change) -> None:
    """Load every array of an .npz, let ``change(arrays, meta)`` edit them, write the file back."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(str(arrays["meta"][()])) if "meta" in arrays else None
    replaced = change(arrays, meta)
    if meta is not None:
        arrays["meta"] = np.array(json.dumps(replaced if replaced is not None else meta))
    os.unlink(path)
    np.savez(path, **arrays)


def one_line(message: str) -> bool:
    return "\n" not in message.strip()


# ---------------------------------------------------------------------------------------------- defect 1
def set_weight(key, value):
    def change(arrays, meta):
        arrays[key] = value(arrays[key])

    return change


def set_group(name, value):
    def change(arrays, meta):
        meta["optimizer"]["param_groups"][0][name] = value

    return change


def saved_setting(name, value):
    def change(arrays, meta):
        meta["extra"]["config"][name] = value

    return change


def set_schedule(name, value):
    def change(arrays, meta):
        meta["scheduler"][name] = value

    return change


BAD_CHECKPOINTS = {
    # the review's cases
    "string weights": (set_weight("model/4.weight", lambda a: a.astype(str)), "4.weight: expected a float32 array"),
    "non-numeric string weights": (
        set_weight("model/4.weight", lambda a: np.full(a.shape, "fast")),
        "4.weight: expected a float32 array, got <U4",
    ),
    "lr 'fast'": (set_group("lr", "fast"), "lr must be a number, got 'fast'"),
    "complex weights": (
        set_weight("model/4.weight", lambda a: a.astype(np.complex64)),
        "4.weight: expected a float32 array",
    ),
    "int8 weights": (set_weight("model/4.weight", lambda a: a.astype(np.int8)), "4.weight: expected a float32 array"),
    "all-NaN weights": (
        set_weight("model/4.weight", lambda a: np.full_like(a, np.nan)),
        "4.weight: 320 of 320 values are not finite",
    ),
    "int32 momentum buffer": (
        set_weight("optimizer/4/momentum_buffer", lambda a: a.astype(np.int32)),
        "momentum_buffer of parameter 4: expected a float",
    ),
    "schedule last_epoch 'x'": (set_schedule("last_epoch", "x"), "last_epoch must be an integer, got 'x'"),
    # more of the same kind
    "inf momentum buffer": (
        set_weight("optimizer/0/momentum_buffer", lambda a: np.full_like(a, np.inf)),
        "momentum_buffer of parameter 0: 108 of 108 values are not finite",
    ),
    "nesterov 'yes'": (set_group("nesterov", "yes"), "nesterov must be true or false, got 'yes'"),
    "negative lr": (set_group("lr", -1.0), "invalid learning rate -1.0"),
    "base_lrs of another length": (set_schedule("base_lrs", [0.1, 0.1]), "base_lrs must hold 1 number"),
    "float batch counter": (
        set_weight("model/1.num_batches_tracked", lambda a: a.astype(np.float64)),
        "1.num_batches_tracked: expected an integer",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_changes_nothing(tmp_path, case):
    corrupt, expected = BAD_CHECKPOINTS[case]
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, *trained(0), model_name="net", epoch=1, step=2)
    rewrite(path, corrupt)
    model, optimizer, scheduler = trained(1)  # other weights, buffers, momentum
    before = snapshot(model, optimizer, scheduler)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ComplexWarning is not an answer
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path, model, optimizer, scheduler, model_name="net")
    message = str(info.value)
    assert expected in message and str(path) in message and one_line(message), message
    assert snapshot(model, optimizer, scheduler) == before


def test_running_statistics_may_be_anything_torch_allows_but_weights_must_be_finite(tmp_path):
    """A NaN running_var (an eval that saw a NaN) loads, as in torch; a NaN weight never trains again."""
    source = small_net(0)
    source[1].running_var[...] = np.nan
    path = tmp_path / "weights.npz"
    npresnet.save(source, path)
    target = small_net(1)
    npresnet.load(target, path)
    assert np.isnan(target[1].running_var).all()
    source[0].weight.data[0, 0, 0, 0] = np.inf
    npresnet.save(source, path)
    before = snapshot(target)
    with pytest.raises(StateError, match=r"weights.npz: cannot load into Sequential .*0.weight: 1 of 108 values"):
        npresnet.load(target, path)
    assert snapshot(target) == before


@pytest.mark.parametrize("dtype, kind", [(str, "<U"), (np.complex64, "complex64"), (np.int8, "int8"), (bool, "bool")])
def test_npresnet_load_and_load_state_dict_refuse_non_float_weights(tmp_path, dtype, kind):
    source, target = small_net(0), small_net(1)
    state = {k: np.asarray(v) for k, v in source.state_dict().items()}
    state["4.weight"] = state["4.weight"].astype(dtype)
    path = tmp_path / "weights.npz"
    np.savez(path, **state)
    before = snapshot(target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(StateError, match=rf"weights.npz: .*4.weight: expected a float32 array, got {kind}"):
            npresnet.load(target, path)
        with pytest.raises(StateError, match=rf"4.weight: expected a float32 array, got {kind}"):
            target.load_state_dict(state)
    assert snapshot(target) == before


def test_optimizer_load_state_dict_checks_every_group_before_changing_one():
    model = small_net(0)
    decay, no_decay = list(model.parameters())[:2], list(model.parameters())[2:]
    optimizer = Adam([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)
    state = copy.deepcopy(optimizer.state_dict())
    state["param_groups"][0]["lr"] = 0.5  # fine
    state["param_groups"][1]["betas"] = [0.9, "high"]  # not
    before = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups])
    with pytest.raises(StateError, match=r"parameter group 1: betas must be a pair of numbers, got \[0.9, 'high'\]"):
        optimizer.load_state_dict(state)
    assert [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups] == before
    with pytest.raises(StateError, match="optimizer state_dict must be a dict with 'state' and 'param_groups'"):
        optimizer.load_state_dict([1, 2])


def test_schedule_load_state_dict_checks_types_before_changing_anything():
    _, optimizer, scheduler = trained(0)
    before = copy.deepcopy(scheduler.state_dict())
    bad = copy.deepcopy(before)
    bad["schedulers"][1]["milestones"] = [3, "four"]
    with pytest.raises(StateError, match=r"MultiStepLR state_dict: milestones must be a list of integers"):
        scheduler.load_state_dict(bad)
    bad = copy.deepcopy(before)
    bad["_step_count"] = 2.5
    with pytest.raises(StateError, match=r"SequentialLR state_dict: _step_count must be an integer, got 2.5"):
        scheduler.load_state_dict(bad)
    assert scheduler.state_dict() == before


# ---------------------------------------------------------------------------------------------- defect 2
def npz_member_declaring(shape: tuple[int, ...], dtype=np.float64) -> bytes:
    """The bytes of a .npy whose header declares ``shape`` but which holds only 16 bytes of data."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    text = repr(header).encode("latin1")
    text += b" " * (64 - (10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + bytes(16)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_bit(path: Path) -> None:
    """Flip one bit inside the largest array (the zip's CRC-32 no longer matches)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + 200] ^= 0x10  # local header, name, into the array
    path.write_bytes(bytes(data))


def huge_member(path: Path) -> None:
    """Replace the largest array (not meta) by 100 bytes that declare 8 TiB of float64."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    largest = max((n for n in members if n != "meta.npy"), key=lambda name: len(members[name]))
    members[largest] = npz_member_declaring((2**40,))
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def meta_twice(path: Path) -> None:
    """Append a second, forged meta.npy (read naively, the last member of a name wins)."""
    import zipfile

    with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as archive:
        warnings.simplefilter("ignore")  # zipfile's "Duplicate name" warning: the duplicate is the point
        with archive.open("meta.npy", "w") as member:
            np.lib.format.write_array(member, np.array(json.dumps({"model": "forged"})))


def meta_json(value):
    def change(path: Path) -> None:
        rewrite(path, lambda arrays, meta: value)

    return change


def meta_without(key):
    def change(path: Path) -> None:
        rewrite(path, lambda arrays, meta: {k: v for k, v in meta.items() if k != key})

    return change


def not_json(path: Path) -> None:
    def change(arrays, meta):
        arrays["meta"] = np.array("{not json")

    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    change(arrays, None)
    os.unlink(path)
    np.savez(path, **arrays)


CORRUPT_FILES = {
    "truncated": (truncate, "is not a readable .npz"),
    "bit-flipped": (flip_a_bit, ".npy is corrupt (Bad CRC-32"),
    "meta a JSON list": (meta_json([1, 2, 3]), "meta must be a JSON object, got a list"),
    "meta without model": (meta_without("model"), "meta lacks 'model'"),
    "meta not JSON": (not_json, "meta is not valid JSON"),
    "meta twice": (meta_twice, "the archive holds member meta.npy more than once"),
    "8 TiB member": (
        huge_member,
        "model/4.weight.npy declares shape (1099511627776,) float64 (8796093022208 bytes) but holds 16",
    ),
}


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "checkpoint.npz"
    save_checkpoint(path, *trained(0), model_name="net", epoch=1, step=2)
    return path


@pytest.mark.parametrize("case", list(CORRUPT_FILES))
def test_a_corrupt_checkpoint_is_one_clear_error(tmp_path, checkpoint_file, case):
    corrupt, expected = CORRUPT_FILES[case]
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(checkpoint_file.read_bytes())
    corrupt(path)
    model, optimizer, scheduler = trained(1)
    before = snapshot(model, optimizer, scheduler)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, model, optimizer, scheduler, model_name="net")
    message = str(info.value)
    assert expected in message and str(path) in message and one_line(message), message
    assert snapshot(model, optimizer, scheduler) == before


def test_a_weights_file_with_a_huge_member_is_refused_before_allocating(tmp_path):
    path = tmp_path / "weights.npz"
    npresnet.save(small_net(0), path)
    huge_member(path)
    target = small_net(1)
    before = snapshot(target)
    with pytest.raises(StateError, match=r"weights.npz: member 4.weight.npy declares shape \(1099511627776,\)"):
        npresnet.load(target, path)
    assert snapshot(target) == before
    truncate(path)
    with pytest.raises(StateError, match="weights.npz is not a readable .npz weights file"):
        npresnet.load(target, path)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A real one-epoch run of the command line (ResNet-20 on 64 digits)."""
    from npresnet.train import main

    out = tmp_path_factory.mktemp("run") / "run"
    assert (
        main(
            [
                "--epochs",
                "1",
                "--batch",
                "32",
                "--train-limit",
                "64",
                "--test-limit",
                "32",
                "--out",
                str(out),
                "--progress",
                "none",
            ]
        )
        == 0
    )
    return out


def resume_corrupted(tmp_path, run_folder, corrupt):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes((run_folder / "checkpoint.npz").read_bytes())
    corrupt(out / "checkpoint.npz")
    return out


CLI_CASES = {
    **{k: v for k, v in CORRUPT_FILES.items() if k != "8 TiB member"},
    "8 TiB member": (huge_member, "declares shape (1099511627776,) float64"),
    "int32 momentum buffer": (
        lambda p: rewrite(p, set_weight("optimizer/0/momentum_buffer", lambda a: a.astype(np.int32))),
        "momentum_buffer of parameter 0: expected a float32 array, got int32",
    ),
    "schedule last_epoch 'x'": (
        lambda p: rewrite(p, set_schedule("last_epoch", "x")),
        "last_epoch must be an integer, got 'x'",
    ),
    "saved settings lr 'fast'": (
        lambda p: rewrite(p, saved_setting("lr", "fast")),
        "the saved run settings are invalid: lr must be of type float, got 'fast'",
    ),
    "history of another length": (
        lambda p: rewrite(p, lambda arrays, meta: {**meta, "extra": {**meta["extra"], "history": []}}),
        "the saved history must hold one row of numbers per finished epoch (1)",
    ),
    "saved settings a list": (
        lambda p: rewrite(p, lambda arrays, meta: {**meta, "extra": {**meta["extra"], "config": [1]}}),
        "the saved run settings must be a JSON object, got [1]",
    ),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_resume_from_a_corrupt_checkpoint_is_a_one_line_error(tmp_path, run_folder, capsys, case):
    from npresnet.train import main

    corrupt, expected = CLI_CASES[case]
    out = resume_corrupted(tmp_path, run_folder, corrupt)
    capsys.readouterr()
    assert main(["--resume", str(out), "--epochs", "2", "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and one_line(err) and expected in err and str(out / "checkpoint.npz") in err, err


@pytest.mark.slow
def test_resume_from_a_truncated_checkpoint_in_a_real_process(tmp_path, run_folder):
    """The same through ``python -m npresnet.train``: no traceback on stderr, exit code 2."""
    out = resume_corrupted(tmp_path, run_folder, truncate)
    proc = subprocess.run(
        [sys.executable, "-m", "npresnet.train", "--resume", str(out), "--epochs", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and one_line(proc.stderr) and "Traceback" not in proc.stderr
    assert "checkpoint.npz is not a readable .npz checkpoint" in proc.stderr


# ---------------------------------------------------------------------------------------------- defect 8
def png_declaring(width: int, height: int) -> bytes:
    """A valid 1x1 RGB PNG whose IHDR claims ``width`` x ``height``: a decompression bomb's header."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00"))
        + chunk(b"IEND", b"")
    )


def image_folder(tmp_path: Path, bomb: bytes) -> Path:
    from PIL import Image

    root = tmp_path / "images"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / name / "a.png")
    (root / "dog" / "b.png").write_bytes(bomb)
    return root


@pytest.mark.parametrize(
    "pixels, what", [((100_000, 100_000), "decompression bomb"), ((12_000, 12_000), "decompression bomb")]
)
def test_a_decompression_bomb_is_a_clean_image_error(tmp_path, pixels, what):
    """10^10 pixels is over twice Pillow's MAX_IMAGE_PIXELS (an error); 1.44e8 is over it once (a warning)."""
    from npresnet.data import ImageFolder

    root = image_folder(tmp_path, png_declaring(*pixels))
    folder = ImageFolder(root, size=(8, 8))
    bomb = str(root / "dog" / "b.png")
    assert folder.files[-1] == bomb
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError) as info:
            folder.get_batch([0, 2])
    message = str(info.value)
    assert message.startswith(f"{bomb}: ") and what in message and one_line(message), message


def test_a_decompression_bomb_in_an_imagefolder_run_is_a_one_line_error(tmp_path, capsys):
    from npresnet.train import main

    root = tmp_path / "data"
    for split in ("train", "test"):
        image_folder(root / split, png_declaring(100_000, 100_000))
        os.rename(root / split / "images", root / f"{split}-tmp")
        os.rmdir(root / split)
        os.rename(root / f"{split}-tmp", root / split)
    code = main(
        [
            "--data",
            "imagefolder",
            "--data-root",
            str(root),
            "--epochs",
            "1",
            "--batch",
            "2",
            "--out",
            str(tmp_path / "run"),
            "--progress",
            "none",
            "--no-augment",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and one_line(err) and "decompression bomb" in err, err
