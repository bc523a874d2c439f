"""Datasets: scikit-learn's 8x8 digits, CIFAR-10 from its binary files, and a folder of images.

Each returns ``ArrayDataset``-like objects: ``len``, ``num_classes``, ``classes`` and
``get_batch(indices) -> (x float32 (B, C, H, W) in [0, 1], y int64 (B,))``. Nothing is downloaded.

``digits()``
    The 1,797 handwritten digits that ship with scikit-learn (``sklearn.datasets.load_digits``;
    ``pip install 'npresnet[data]'``): 8x8 grey images with values 0..16, ten classes. Fixed split:
    stratified and seeded, 20% of each class for testing (seed 0: 1,438 train / 359 test images).
    Pixels are scaled to [0, 1] (divided by 16). The grey channel is repeated ``channels=3`` times,
    so the RGB models take the images unchanged: x is (N, 3, 8, 8).

``cifar10(root)``
    The official *binary* version (``cifar-10-binary.tar.gz``, unpacked): ``data_batch_1.bin`` ...
    ``data_batch_5.bin`` (train, 50,000 images) and ``test_batch.bin`` (10,000). Each file is a run
    of 3,073-byte records: 1 label byte (0..9), then 3,072 pixel bytes, the 1,024 red, 1,024 green
    and 1,024 blue values of a 32x32 image in row-major order, i.e. exactly (3, 32, 32) in NCHW.
    Parsed with ``np.fromfile``: no pickle. ``root`` may be the folder with the files or its parent
    (holding ``cifar-10-batches-bin/``). A missing or truncated file is an error naming it.

``ImageFolder(root)``
    ``root/<class name>/<image>`` (class names sorted alphabetically give labels 0, 1, ...), read
    with Pillow (``pip install 'npresnet[images]'``) batch by batch. Every image must have the same
    size, or pass ``size=(H, W)`` to resize.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, NamedTuple

import numpy as np

from .loader import ArrayDataset, dataset_statistics

__all__ = ["CIFAR10_CLASSES", "ImageFolder", "Splits", "cifar10", "digits", "read_cifar10_file", "stratified_split"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"
CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class Splits(NamedTuple):
    train: Any
    test: Any


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): from each class, ``round(test_fraction * n_class)`` samples,
    chosen by a seeded permutation, go to the test set. Both index arrays are sorted."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test.append(members[: int(round(test_fraction * len(members)))])
    test_indices = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(labels)), test_indices), test_indices


def digits(test_fraction: float = 0.2, seed: int = 0, channels: int = 3) -> Splits:
    """scikit-learn's 8x8 digits as (train, test) ``ArrayDataset``s of (N, channels, 8, 8) float32 in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("digits() needs scikit-learn, which ships the data: pip install 'npresnet[data]'") from exc
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (grey repeated for RGB models), got {channels}")
    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / np.float32(16))[:, None]  # (1797, 1, 8, 8)
    images = np.ascontiguousarray(np.repeat(images, channels, axis=1))
    labels = bunch.target.astype(np.int64)
    train, test = stratified_split(labels, test_fraction, seed)
    classes = [str(d) for d in range(10)]
    return Splits(
        ArrayDataset(images[train], labels[train], classes, name="digits/train"),
        ArrayDataset(images[test], labels[test], classes, name="digits/test"),
    )


def read_cifar10_file(path: str | os.PathLike, records: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary file -> images uint8 (N, 3, 32, 32), labels int64 (N,).

    ``records``: the number of records the file must hold (10,000 for the official files); None
    accepts any whole number. A size that is not a whole number of records means a truncated file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-10 file not found: {path}")
    size = os.path.getsize(path)
    count, remainder = divmod(size, CIFAR10_RECORD_BYTES)
    if remainder or count == 0:
        raise ValueError(
            f"{path}: {size} bytes is not a whole, non-zero number of {CIFAR10_RECORD_BYTES}-byte "
            "CIFAR-10 records (1 label byte + 3072 pixel bytes): the file is truncated or not in the "
            "binary format"
        )
    if records is not None and count != records:
        raise ValueError(
            f"{path}: holds {count} records, expected {records}: the file is truncated or not an "
            "official CIFAR-10 batch (pass records_per_file=None to accept any count)"
        )
    raw = np.fromfile(path, dtype=np.uint8).reshape(count, CIFAR10_RECORD_BYTES)
    labels = raw[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise ValueError(
            f"{path}: record {int(bad[0])} has label {int(labels[bad[0]])}, expected 0..9 "
            "(is this CIFAR-100 or a corrupt file?)"
        )
    return np.ascontiguousarray(raw[:, 1:].reshape(count, 3, 32, 32)), labels


def _cifar10_directory(root: str) -> str:
    expected = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    for candidate in (root, os.path.join(root, "cifar-10-batches-bin")):
        if any(os.path.isfile(os.path.join(candidate, name)) for name in expected):
            return candidate
    if not os.path.isdir(root):
        raise FileNotFoundError(f"CIFAR-10 directory not found: {root}")
    raise FileNotFoundError(
        f"{root} holds no CIFAR-10 binary files: expected {', '.join(expected)} there or in "
        f"{os.path.join(root, 'cifar-10-batches-bin')} (the unpacked cifar-10-binary.tar.gz; "
        "the Python/pickle version is not read)"
    )


def cifar10(root: str | os.PathLike, records_per_file: int | None = 10000) -> Splits:
    """CIFAR-10 (train 5 x 10,000, test 10,000) as uint8 ``ArrayDataset``s, scaled to [0, 1] per batch."""
    directory = _cifar10_directory(os.fspath(root))
    paths = [os.path.join(directory, name) for name in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError("CIFAR-10 file(s) missing: " + ", ".join(missing))
    parts = [read_cifar10_file(p, records_per_file) for p in paths]
    classes = list(CIFAR10_CLASSES)
    meta = os.path.join(directory, "batches.meta.txt")
    if os.path.isfile(meta):
        with open(meta, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) == 10:
            classes = names
    train_images = np.concatenate([images for images, _ in parts[:-1]])
    train_labels = np.concatenate([labels for _, labels in parts[:-1]])
    return Splits(
        ArrayDataset(train_images, train_labels, classes, name="cifar10/train"),
        ArrayDataset(parts[-1][0], parts[-1][1], classes, name="cifar10/test"),
    )


class ImageFolder:
    """Images in ``root/<class>/<file>``, read with Pillow batch by batch (``get_batch``).

    Args:
        root: the folder of class folders; class names sorted alphabetically give labels 0, 1, ...
        size: (H, W) to resize every image to; None requires every image to have the first one's size.
        channels: 3 (RGB) or 1 (grey).

    ``load()`` reads everything into an in-memory ``ArrayDataset`` (uint8).
    """

    def __init__(self, root: str | os.PathLike, size: tuple[int, int] | None = None, channels: int = 3) -> None:
        try:
            from PIL import Image
        except ImportError as exc:
            raise ImportError("ImageFolder needs Pillow: pip install 'npresnet[images]'") from exc
        self._Image = Image
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder not found: {root}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if not classes:
            raise FileNotFoundError(f"{root} has no class sub-folders: expected {root}/<class name>/<image files>")
        files, labels = [], []
        for label, name in enumerate(classes):
            folder = os.path.join(root, name)
            found = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
            files += [os.path.join(folder, f) for f in found]
            labels += [label] * len(found)
        if not files:
            raise FileNotFoundError(
                f"{root}: the class folders {classes} hold no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        self.root, self.files, self.channels, self.name = root, files, channels, f"ImageFolder({root})"
        self.classes, self.num_classes = classes, len(classes)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.resize = size is not None
        height, width = tuple(size) if size is not None else self._open(files[0]).size[::-1]
        self.size: tuple[int, int] = (int(height), int(width))

    def __len__(self) -> int:
        return len(self.files)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)

    def _open(self, path: str) -> Any:
        """The decoded image; any decode failure is a one-line ``ValueError`` naming the file.

        That includes Pillow's decompression-bomb guard: an image of more than
        ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (89.5 million by default) is refused before it is decoded
        (Pillow only warns up to twice that; here it is an error too). Raise the limit to read larger images.
        """
        Image = self._Image
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    return image.convert("RGB" if self.channels == 3 else "L")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ValueError(
                f"{path}: refused as a possible decompression bomb ({exc}); to read it, raise "
                "PIL.Image.MAX_IMAGE_PIXELS"
            ) from exc
        except MemoryError as exc:
            raise ValueError(f"{path}: too large to decode in memory ({exc})") from exc
        except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError, EOFError, ...
            raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 (C, H, W)."""
        path = self.files[index]
        image = self._open(path)
        if image.size[::-1] != self.size:
            if not self.resize:
                raise ValueError(
                    f"{path} is {image.size[1]}x{image.size[0]} but the first image is "
                    f"{self.size[0]}x{self.size[1]}; pass size=(H, W) to resize them all"
                )
            image = image.resize(self.size[::-1], self._Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

    def get_batch(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        indices = np.atleast_1d(np.asarray(indices))
        x = np.stack([self.read(int(i)) for i in indices]).astype(np.float32) / np.float32(255)
        return x, self.labels[indices]

    def load(self) -> ArrayDataset:
        """Every image in memory, as a uint8 ``ArrayDataset``."""
        return self.subset(np.arange(len(self)))

    def subset(self, indices: Any, name: str | None = None) -> ArrayDataset:
        """The given images, read into memory, as a uint8 ``ArrayDataset``."""
        indices = np.atleast_1d(np.asarray(indices))
        images = np.stack([self.read(int(i)) for i in indices])
        return ArrayDataset(images, self.labels[indices], self.classes, self.num_classes, name or self.name)

    def statistics(self, per_pixel: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """mean and std per channel (C,) or per pixel (C, H, W) (reads every image once)."""
        return dataset_statistics(self, per_pixel)

    def __repr__(self) -> str:
        return f"ImageFolder({self.root!r}, {len(self)} images of shape {self.image_shape}, {self.num_classes} classes)"
