"""npresnet.save / npresnet.load (.npz, atomic) and npresnet.io.load_torch (.pth)."""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pytest

import npresnet
from npresnet import nn
from npresnet.io import load_torch


def small_net(rng: np.random.Generator) -> nn.Sequential:
    """conv -> BN -> ReLU -> flatten -> linear on (N, 3, 4, 4) inputs."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, rng=rng),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5, rng=rng),
    )


def trained_net(rng: np.random.Generator, dtype) -> nn.Sequential:
    """A net whose every parameter and buffer differs from a fresh one's (running statistics moved,
    a large batch counter, special floating-point values that a lossy round trip would change).

    Weights must be finite to load (npresnet.state_checks), so inf and NaN go into a running
    statistic, which, as in torch, may hold anything."""
    net = small_net(rng).to(dtype)
    for _ in range(2):
        net(rng.standard_normal((2, 3, 4, 4)).astype(dtype))
    net[1].num_batches_tracked[...] = 2**40 + 3  # needs int64
    net[0].weight.data.reshape(-1)[:2] = [-0.0, np.finfo(dtype).tiny / 2]  # -0, a subnormal
    net[1].running_mean[:2] = [np.inf, np.nan]
    return net


def bits(array: np.ndarray) -> bytes:
    """The raw bytes of an array: equal bits, not merely equal values (NaN, -0.0)."""
    return np.ascontiguousarray(array).tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bit_exact(tmp_path, rng, dtype):
    source = trained_net(rng, dtype)
    path = tmp_path / "weights.npz"
    npresnet.save(source, path)

    # The file itself: one entry per state_dict key, each with its own dtype.
    with np.load(path, allow_pickle=False) as archive:
        assert archive.files == list(source.state_dict())
        assert archive["1.num_batches_tracked"].dtype == np.int64
        assert archive["1.num_batches_tracked"] == 2**40 + 3
        assert archive["0.weight"].dtype == dtype

    target = small_net(np.random.default_rng(1)).to(dtype)
    assert not np.array_equal(target[0].bias.data, source[0].bias.data)
    result = npresnet.load(target, path)
    assert result.missing_keys == [] and result.unexpected_keys == []
    expected, loaded = source.state_dict(), target.state_dict()
    assert list(loaded) == list(expected)
    for key in expected:
        assert loaded[key].dtype == expected[key].dtype, key
        assert loaded[key].shape == expected[key].shape, key
        assert bits(loaded[key]) == bits(expected[key]), key


def test_saved_file_is_exactly_at_path_with_normal_permissions(tmp_path, rng):
    path = tmp_path / "no_suffix"
    npresnet.save(small_net(rng), str(path))
    assert sorted(os.listdir(tmp_path)) == ["no_suffix"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


class PartialWriteError(OSError):
    pass


@pytest.mark.parametrize("error", [PartialWriteError, KeyboardInterrupt])
def test_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, rng, monkeypatch, error):
    path = tmp_path / "weights.npz"
    npresnet.save(small_net(rng), path)
    before = path.read_bytes()

    def savez_that_dies_halfway(file, **arrays):
        file.write(b"PK\x03\x04 half of a zip archive")  # some bytes reach the temporary file
        raise error("disk full")

    monkeypatch.setattr(np, "savez", savez_that_dies_halfway)
    with pytest.raises(error):
        npresnet.save(small_net(np.random.default_rng(1)), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["weights.npz"]
    monkeypatch.undo()
    npresnet.load(small_net(np.random.default_rng(2)), path)  # still a valid file


def test_failed_rename_keeps_the_old_file_and_leaves_no_temporary(tmp_path, rng, monkeypatch):
    path = tmp_path / "weights.npz"
    npresnet.save(small_net(rng), path)
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise PermissionError("rename refused")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        npresnet.save(small_net(np.random.default_rng(1)), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["weights.npz"]


def test_save_overwrites_an_existing_file(tmp_path):
    path = tmp_path / "weights.npz"
    first, second = small_net(np.random.default_rng(1)), small_net(np.random.default_rng(2))
    npresnet.save(first, path)
    npresnet.save(second, path)
    target = small_net(np.random.default_rng(3))
    npresnet.load(target, path)
    np.testing.assert_array_equal(target[4].weight.data, second[4].weight.data)
    assert os.listdir(tmp_path) == ["weights.npz"]


def test_load_into_another_architecture_lists_every_mismatched_key(tmp_path, rng):
    source = small_net(rng)  # keys 0.*, 1.* (BN), 4.* (Linear 64 -> 5)
    path = tmp_path / "weights.npz"
    npresnet.save(source, path)
    other = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, rng=rng),  # 0.weight, 0.bias: wrong shapes
        nn.ReLU(),
        nn.BatchNorm2d(8),  # 2.*: missing; 1.*: unexpected
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5, rng=rng),  # 4.weight: wrong shape, 4.bias fits
        nn.Linear(5, 2, rng=rng),
    )  # 5.*: missing
    before = {key: value.copy() for key, value in other.state_dict().items()}
    with pytest.raises(RuntimeError) as info:
        npresnet.load(other, path)
    message = str(info.value)
    missing = ["2.weight", "2.bias", "2.running_mean", "2.running_var", "5.weight", "5.bias"]
    unexpected = ["1.weight", "1.bias", "1.running_mean", "1.running_var"]
    wrong_shapes = [
        "0.weight: expected (8, 3, 3, 3), got (4, 3, 3, 3)",
        "0.bias: expected (8,), got (4,)",
        "4.weight: expected (5, 128), got (5, 64)",
    ]
    for text in missing + unexpected + wrong_shapes:
        assert text in message, f"{text!r} not in:\n{message}"
    # Nothing was half-loaded.
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_non_strict_load_reports_missing_and_unexpected_keys(tmp_path, rng):
    path = tmp_path / "weights.npz"
    npresnet.save(nn.Sequential(nn.Linear(3, 4, rng=rng), nn.ReLU()), path)
    target = nn.Sequential(nn.Linear(3, 4, rng=rng), nn.Linear(4, 2, rng=rng))
    result = npresnet.load(target, path, strict=False)
    assert result.missing_keys == ["1.weight", "1.bias"]
    assert result.unexpected_keys == []
    with np.load(path) as archive:
        np.testing.assert_array_equal(target[0].weight.data, archive["0.weight"])


def test_load_refuses_pickled_objects(tmp_path, rng):
    path = tmp_path / "evil.npz"
    np.savez(path, **{"0.weight": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="allow_pickle"):
        npresnet.load(nn.Sequential(nn.Linear(3, 4, rng=rng)), path)


def test_load_rejects_a_plain_npy_file(tmp_path, rng):
    path = tmp_path / "weights.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match="not an .npz archive"):
        npresnet.load(nn.Sequential(nn.Linear(3, 4, rng=rng)), path)


def test_save_and_load_reject_non_modules(tmp_path):
    with pytest.raises(TypeError, match="npresnet Module"):
        npresnet.save({"w": np.zeros(3)}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="npresnet Module"):
        npresnet.load({"w": np.zeros(3)}, tmp_path / "x.npz")


# ------------------------------------------------------------------------------------------ .pth


def torch_net_and_twin(seed: int):
    """A torch conv -> BN -> ReLU -> flatten -> linear and an npresnet twin (same keys, other weights)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    reference = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 5),
    )
    with torch.no_grad():  # non-trivial running statistics and batch counter
        for _ in range(3):
            reference(torch.randn(2, 3, 4, 4))
    return reference.eval(), small_net(np.random.default_rng(seed)).eval()


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_load_torch_reads_a_state_dict_saved_by_torch(tmp_path, wrapper, tol, max_rel_err):
    torch = pytest.importorskip("torch")
    reference, twin = torch_net_and_twin(0)
    state = reference.state_dict()
    path = tmp_path / "weights.pth"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 7}, path)

    arrays = load_torch(path)
    assert list(arrays) == list(state)
    for key, tensor in state.items():
        assert isinstance(arrays[key], np.ndarray), key
        assert arrays[key].dtype == tensor.numpy().dtype, key
        assert bits(arrays[key]) == bits(tensor.numpy()), key
    assert arrays["1.num_batches_tracked"].dtype == np.int64 and arrays["1.num_batches_tracked"] == 3

    twin.load_state_dict(arrays)
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    assert max_rel_err(twin(x), expected) < tol[np.dtype(np.float32)]


_unpickled: list[str] = []


def _record(tag: str) -> str:
    _unpickled.append(tag)
    return tag


class CodeOnUnpickle:
    """Unpickling this calls _record: the kind of object weights_only must refuse to build."""

    def __reduce__(self):
        return (_record, ("ran",))


def test_load_torch_uses_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "evil.pth"
    torch.save({"0.weight": torch.zeros(2), "payload": CodeOnUnpickle()}, path)
    _unpickled.clear()
    with pytest.raises(pickle.UnpicklingError):
        load_torch(path)
    assert _unpickled == []
    # The same file does run code under a full unpickle: the refusal above is what protects.
    torch.load(path, weights_only=False)
    assert _unpickled == ["ran"]


def test_load_torch_rejects_a_checkpoint_without_a_state_dict(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 7, "weights": {"0.weight": torch.zeros(2)}}, path)
    with pytest.raises(TypeError, match="'epoch' is of type int, not a tensor"):
        load_torch(path)
    torch.save([torch.zeros(2)], path)
    with pytest.raises(TypeError, match="holds a list, expected a state_dict"):
        load_torch(path)


def test_load_torch_without_torch_says_torch_is_only_for_pth(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match=r"needs PyTorch, only to read the \.pth file format"):
        load_torch(tmp_path / "weights.pth")
