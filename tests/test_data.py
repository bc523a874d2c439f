"""Data: the DataLoader (batching, seeded shuffling, prefetch), the batch transforms, and the
datasets (digits, CIFAR-10 binary files written here in the official format, image folders)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from npresnet.data import (
    ArrayDataset,
    Compose,
    DataLoader,
    ImageFolder,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    cifar10,
    digits,
    read_cifar10_file,
)


@pytest.fixture
def dataset(rng):
    images = rng.standard_normal((23, 2, 5, 4)).astype(np.float32)
    return ArrayDataset(images, np.arange(23) % 4, name="toy")


# ------------------------------------------------------------------ ArrayDataset
def test_array_dataset_rejects_bad_labels_and_shapes(rng):
    images = rng.standard_normal((6, 1, 4, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), but label 3 at index 4"):
        ArrayDataset(images, [0, 1, 2, 0, 3, 1], classes=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"label -1 at index 0"):
        ArrayDataset(images, [-1, 1, 2, 0, 1, 1], num_classes=3)
    with pytest.raises(ValueError, match="6 images but 5 labels"):
        ArrayDataset(images, [0, 1, 2, 0, 1])
    with pytest.raises(TypeError, match="1-D integer array"):
        ArrayDataset(images, np.zeros(6))
    with pytest.raises(ValueError, match=r"4-D \(N, C, H, W\)"):
        ArrayDataset(images[:, 0], np.zeros(6, int))


def test_uint8_images_are_scaled_to_unit_range():
    images = np.arange(2 * 3 * 2 * 2, dtype=np.uint8).reshape(2, 3, 2, 2) * 10
    x, y = ArrayDataset(images, [1, 0]).get_batch(np.array([1, 0]))
    assert x.dtype == np.float32 and y.dtype == np.int64 and list(y) == [0, 1]
    np.testing.assert_array_equal(x, images[[1, 0]].astype(np.float32) / np.float32(255))


def test_statistics_per_channel_and_per_pixel(dataset):
    mean, std = dataset.statistics()
    x = dataset.images.astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-10)
    mean, std = dataset.statistics(per_pixel=True)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(std, x.std(axis=0), rtol=1e-9)


# ------------------------------------------------------------------ DataLoader
def test_batches_cover_the_epoch_once_with_a_short_last_batch(dataset):
    loader = DataLoader(dataset, batch_size=5, shuffle=True, seed=3)
    batches = list(loader)
    assert len(loader) == 5 and [x.shape[0] for x, _ in batches] == [5, 5, 5, 5, 3]
    seen = np.concatenate([y for _, y in batches])
    order = loader.order(0)
    np.testing.assert_array_equal(seen, dataset.labels[order])
    assert sorted(order) == list(range(23)) and list(order) != list(range(23))
    x0, _ = batches[0]
    np.testing.assert_array_equal(x0, dataset.images[order[:5]])
    dropped = DataLoader(dataset, batch_size=5, drop_last=True)
    assert len(dropped) == 4 and [x.shape[0] for x, _ in dropped] == [5] * 4


def test_shuffling_is_seeded_per_epoch(dataset):
    a, b = DataLoader(dataset, 4, shuffle=True, seed=1), DataLoader(dataset, 4, shuffle=True, seed=1)
    first, second = [np.concatenate([y for _, y in a]) for _ in range(2)]  # iter() runs epoch 0, then 1
    assert not np.array_equal(a.order(0), a.order(1))
    np.testing.assert_array_equal(first, dataset.labels[a.order(0)])
    np.testing.assert_array_equal(second, dataset.labels[a.order(1)])
    b.set_epoch(1)
    np.testing.assert_array_equal(np.concatenate([y for _, y in b]), second)
    assert not np.array_equal(DataLoader(dataset, 4, shuffle=True, seed=2).order(0), a.order(0))
    np.testing.assert_array_equal(DataLoader(dataset, 4).order(5), np.arange(23))


def test_prefetch_thread_gives_identical_batches(dataset):
    augment = Compose([RandomCrop((5, 4), padding=2), RandomHorizontalFlip()])
    inline = DataLoader(dataset, 6, shuffle=True, seed=9, transform=augment)
    ahead = DataLoader(dataset, 6, shuffle=True, seed=9, transform=augment, prefetch=2)
    for (x, y), (xp, yp) in zip(inline, ahead, strict=True):
        np.testing.assert_array_equal(x, xp)
        np.testing.assert_array_equal(y, yp)


def test_prefetch_prepares_batches_ahead_in_a_background_thread(dataset):
    """prefetch=2: while the consumer holds batch 0, the thread makes batches 1 and 2 (queued) and 3
    (waiting for room), no more; prefetch=0 makes each batch inline, in the consumer's thread."""
    made, ahead = [], threading.Event()

    def watch(x, rng):
        made.append(threading.current_thread().name)
        if len(made) >= 3:
            ahead.set()
        return x

    batches = iter(DataLoader(dataset, 2, prefetch=2, transform=watch))
    next(batches)
    assert ahead.wait(30), f"prefetch=2 made only {len(made)} batch(es) while the first one was in use"
    time.sleep(0.2)  # room for a runaway producer to show itself
    assert 3 <= len(made) <= 4, f"{len(made)} batches made with one consumed and prefetch=2"
    assert set(made) == {"npresnet-prefetch"}, made
    batches.close()
    made.clear()
    inline = iter(DataLoader(dataset, 2, prefetch=0, transform=watch))
    next(inline)
    assert made == [threading.current_thread().name]


def test_prefetch_stops_on_break_and_reraises_worker_errors(dataset):
    before = threading.active_count()
    for i, _ in enumerate(DataLoader(dataset, 2, prefetch=1)):
        if i == 1:
            break
    assert threading.active_count() == before

    def failing(x, rng):
        raise RuntimeError("transform exploded")

    with pytest.raises(RuntimeError, match="transform exploded"):
        list(DataLoader(dataset, 2, prefetch=2, transform=failing))
    assert threading.active_count() == before


def test_loader_argument_errors(dataset):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        DataLoader(dataset, 0)
    with pytest.raises(ValueError, match="leaves no batch"):
        DataLoader(dataset, 50, drop_last=True)
    with pytest.raises(ValueError, match="empty"):
        DataLoader(ArrayDataset(np.zeros((0, 1, 2, 2), np.float32), np.zeros(0, int)), 2)


def test_loader_delivers_requested_dtype(dataset):
    x, y = next(iter(DataLoader(dataset, 4, dtype=np.float64)))
    assert x.dtype == np.float64 and y.dtype == np.int64


# ------------------------------------------------------------------ transforms
def test_random_crop_equals_a_per_image_reference(rng):
    x = rng.standard_normal((7, 3, 6, 5)).astype(np.float32)
    out = RandomCrop((4, 5), padding=2)(x, np.random.default_rng(11))
    draw = np.random.default_rng(11)  # the same draws, in the transform's order
    tops, lefts = draw.integers(0, 6 + 4 - 4 + 1, size=7), draw.integers(0, 5 + 4 - 5 + 1, size=7)
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    assert out.shape == (7, 3, 4, 5) and out.dtype == np.float32
    for i in range(7):
        np.testing.assert_array_equal(out[i], padded[i, :, tops[i] : tops[i] + 4, lefts[i] : lefts[i] + 5])
    assert len(set(zip(tops, lefts))) > 1
    np.testing.assert_array_equal(RandomCrop((6, 5))(x, rng), x)  # no padding, full size: identity
    with pytest.raises(ValueError, match="does not fit"):
        RandomCrop(9, padding=1)(x, rng)


def test_horizontal_flip_mirrors_about_half_the_images(rng):
    x = rng.standard_normal((200, 2, 3, 4))
    out = RandomHorizontalFlip(0.5)(x, np.random.default_rng(5))
    flipped = np.random.default_rng(5).random(200) < 0.5
    for i in range(200):
        np.testing.assert_array_equal(out[i], x[i, :, :, ::-1] if flipped[i] else x[i])
    assert 70 < flipped.sum() < 130
    np.testing.assert_array_equal(RandomHorizontalFlip(0.0)(x, rng), x)


def test_normalize_per_channel_and_per_pixel(rng):
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    mean, std = np.array([0.1, 0.2, 0.3]), np.array([0.5, 2.0, 4.0])
    out = Normalize(mean, std)(x)
    expected = (x - mean.astype(np.float32)[:, None, None]) / std.astype(np.float32)[:, None, None]
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float32
    pixel_mean = rng.standard_normal((3, 2, 2))
    np.testing.assert_array_equal(Normalize(pixel_mean)(x), x - pixel_mean.astype(np.float32))
    with pytest.raises(ValueError, match=r"statistics of shape \(3,\)"):
        Normalize(mean, std)(x[:, :2])
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalize(mean, [1.0, 0.0, 1.0])


# ------------------------------------------------------------------ digits
def test_digits_split_is_fixed_stratified_and_scaled():
    train, test = digits()
    assert (len(train), len(test)) == (1438, 359)
    assert train.images.shape == (1438, 3, 8, 8) and train.images.dtype == np.float32
    assert 0.0 == train.images.min() and train.images.max() == 1.0
    np.testing.assert_array_equal(train.images[:, 0], train.images[:, 2])  # grey repeated
    from sklearn.datasets import load_digits

    labels = load_digits().target
    for c in range(10):  # 20% of every class
        assert np.sum(test.labels == c) == round(0.2 * np.sum(labels == c))
    again = digits()
    np.testing.assert_array_equal(again.test.images, test.images)
    grey = digits(channels=1)
    assert grey.train.images.shape == (1438, 1, 8, 8)
    np.testing.assert_array_equal(grey.train.images[:, 0], train.images[:, 0])
    all_images = np.concatenate([train.images[:, 0], test.images[:, 0]]).reshape(1797, -1)
    assert len(np.unique(all_images, axis=0)) == len(np.unique(load_digits().data, axis=0))


# ------------------------------------------------------------------ CIFAR-10 binary files
def _write_cifar(directory, records=(7, 7, 7, 7, 7, 5), seed=0):
    """Files in the official format: per record 1 label byte, then R, G, B planes of 32x32 bytes."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    written = {}
    for name, count in zip(names, records):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        pixels = rng.integers(0, 256, (count, 3072)).astype(np.uint8)
        with open(os.path.join(directory, name), "wb") as f:
            for label, row in zip(labels, pixels):
                f.write(bytes([label]) + row.tobytes())
        written[name] = (labels, pixels)
    return written


def test_cifar10_reader_parses_the_binary_layout(tmp_path):
    written = _write_cifar(tmp_path)
    train, test = cifar10(tmp_path, records_per_file=None)
    assert (len(train), len(test)) == (35, 5) and train.images.dtype == np.uint8
    labels, pixels = written["data_batch_2.bin"]
    np.testing.assert_array_equal(train.labels[7:14], labels)
    image = train.images[7 + 3]  # record 3 of the second file
    for c, h, w in [(0, 0, 0), (1, 5, 7), (2, 31, 31), (0, 17, 2)]:
        assert image[c, h, w] == pixels[3, c * 1024 + h * 32 + w]
    x, y = test.get_batch(np.arange(5))
    np.testing.assert_array_equal(x, written["test_batch.bin"][1].reshape(5, 3, 32, 32) / np.float32(255))
    assert train.classes[0] == "airplane" and train.num_classes == 10
    nested = tmp_path / "parent"
    _write_cifar(nested / "cifar-10-batches-bin", records=(2,) * 6)
    (nested / "cifar-10-batches-bin" / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    train, _ = cifar10(nested, records_per_file=2)
    assert len(train) == 10 and train.classes[9] == "c9"


def test_cifar10_missing_truncated_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 binary files"):
        cifar10(tmp_path)
    with pytest.raises(FileNotFoundError, match="directory not found"):
        cifar10(tmp_path / "nowhere")
    _write_cifar(tmp_path)
    os.remove(tmp_path / "data_batch_4.bin")
    with pytest.raises(FileNotFoundError, match="data_batch_4.bin"):
        cifar10(tmp_path, records_per_file=None)
    _write_cifar(tmp_path)
    with pytest.raises(ValueError, match=r"data_batch_1.bin: holds 7 records, expected 10000"):
        cifar10(tmp_path)
    path = tmp_path / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"test_batch.bin: 15265 bytes is not a whole"):
        cifar10(tmp_path, records_per_file=None)
    bad = bytearray((tmp_path / "data_batch_1.bin").read_bytes())
    bad[3073 * 2] = 10
    (tmp_path / "data_batch_1.bin").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="record 2 has label 10"):
        read_cifar10_file(tmp_path / "data_batch_1.bin")


# ------------------------------------------------------------------ image folders
def test_image_folder_reads_classes_and_pixels(tmp_path, rng):
    from PIL import Image

    arrays = {}
    for cls in ("cat", "ant"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            array = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            Image.fromarray(array).save(tmp_path / cls / f"{i}.png")
            arrays[(cls, i)] = array
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    folder = ImageFolder(tmp_path)
    assert folder.classes == ["ant", "cat"] and len(folder) == 6 and folder.image_shape == (3, 6, 5)
    x, y = folder.get_batch([4, 0])
    assert list(y) == [1, 0]
    np.testing.assert_array_equal(x[0], arrays[("cat", 1)].transpose(2, 0, 1) / np.float32(255))
    loaded = folder.load()
    np.testing.assert_array_equal(loaded.images[0], arrays[("ant", 0)].transpose(2, 0, 1))
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "cat" / "9.png")
    with pytest.raises(ValueError, match=r"9.png is 8x8 but the first image is 6x5"):
        ImageFolder(tmp_path).get_batch([6])
    resized = ImageFolder(tmp_path, size=(4, 4))
    assert resized.get_batch([6])[0].shape == (1, 3, 4, 4)


def test_image_folder_without_class_folders_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        ImageFolder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="hold no images"):
        ImageFolder(tmp_path)
