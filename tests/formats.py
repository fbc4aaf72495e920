"""Writers of the real on-disk formats of the image data sets, so tests never download.

Every writer makes class-dependent images (learnable, for integration tests) and marks
each image with pixel (0, 0) = 0 and pixel (0, 1) = 255 in every channel, so a test can
undo any per-channel affine normalisation image by image and compare exact bytes
(see :func:`denormalise`).
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import NamedTuple, Sequence, Union

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


class Written(NamedTuple):
    """What a writer put on disk: images as uint8 (N, C, H, W) and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def class_images(rng: np.random.Generator, labels: np.ndarray,
                 shape: tuple[int, ...]) -> np.ndarray:
    """uint8 images whose brightness depends on the label, plus noise and the two markers."""
    base = 25 + 20 * labels.reshape(-1, *[1] * len(shape))
    noise = rng.integers(-20, 21, size=(len(labels), *shape))
    images = np.clip(base + noise, 0, 255).astype(np.uint8)
    images[..., 0, 0] = 0
    images[..., 0, 1] = 255
    return images


def denormalise(x: np.ndarray) -> np.ndarray:
    """Undo a per-channel affine map of marked images: back to their uint8 pixels."""
    low, high = x[:, :, :1, :1], x[:, :, :1, 1:2]
    return np.rint((x - low) / (high - low) * 255).astype(np.uint8)


def _labels(rng: np.random.Generator, n: int, classes: int = 10) -> np.ndarray:
    return rng.permutation(np.arange(n) % classes).astype(np.int64)  # every class present


# --- CIFAR-10: python pickles as written by the release (Python 2) -------------------


class _Py2Str(str):
    """A string pickled as Python 2's ``str``, like every string in the CIFAR-10 release.

    Loaded with ``encoding="latin1"`` (torchvision) it is a ``str``; loaded with
    ``encoding="bytes"`` (the snippet on the CIFAR-10 page) it is ``bytes``: ``b"data"``.
    """


class _Py2Pickler(pickle._Pickler):  # the Python pickler: its dispatch table is extensible
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: _Py2Str) -> None:
        data = obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[_Py2Str] = _save_py2_str


def _py2(value):
    if isinstance(value, str):
        return _Py2Str(value)
    if isinstance(value, dict):
        return {_py2(k): _py2(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_py2(v) for v in value]
    return value


def _dump_py2(path: Path, value: dict) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(_py2(value))


def write_cifar10(root: Union[str, Path], n_train_per_batch: int = 10, n_test: int = 10,
                  seed: int = 0) -> Written:
    """Write ``root/cifar-10-batches-py/`` as in cifar-10-python.tar.gz, with fewer images.

    Five ``data_batch_i`` and one ``test_batch``: dicts with ``data`` uint8 (N, 3072) in
    CHW order, ``labels``, ``batch_label`` and ``filenames``; ``batches.meta`` with
    ``label_names``. The md5 sums of course differ from the release.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    parts = {}
    for i, (name, n) in enumerate([(f"data_batch_{b}", n_train_per_batch) for b in range(1, 6)]
                                  + [("test_batch", n_test)]):
        labels = _labels(rng, n)
        images = class_images(rng, labels, (3, 32, 32))
        _dump_py2(folder / name, {
            "batch_label": "testing batch 1 of 1" if i == 5 else f"training batch {i + 1} of 5",
            "labels": labels.tolist(),
            "data": images.reshape(n, 3 * 32 * 32),
            "filenames": [f"image_{i}_{j}.png" for j in range(n)],
        })
        parts[name] = (images, labels)
    _dump_py2(folder / "batches.meta", {"num_cases_per_batch": n_train_per_batch,
                                        "label_names": list(CIFAR10_CLASSES), "num_vis": 3072})
    train = [parts[f"data_batch_{b}"] for b in range(1, 6)]
    return Written(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                   *parts["test_batch"])


# --- MNIST and Fashion-MNIST: idx files ----------------------------------------------


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    # Header: magic (0, 0, type 0x08 = uint8, number of dims), then each dim, big-endian.
    magic = 0x0800 + array.ndim  # 2049 for labels, 2051 for images
    payload = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape)
    payload += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist(root: Union[str, Path], n_train: int = 50, n_test: int = 10, seed: int = 0,
                kind: str = "MNIST", gz: bool = False) -> Written:
    """Write ``root/<kind>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (28x28 uint8).

    Args:
        kind: ``"MNIST"`` or ``"FashionMNIST"`` (torchvision's folder names).
        gz: write only the ``.gz`` files, as served by the mirrors.
    """
    if kind not in ("MNIST", "FashionMNIST"):
        raise ValueError(f"kind must be 'MNIST' or 'FashionMNIST', got {kind!r}")
    rng = np.random.default_rng(seed)
    raw = Path(root) / kind / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    written = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = _labels(rng, n)
        images = class_images(rng, labels, (28, 28))
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images, gz)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz)
        written += [images[:, None], labels]
    return Written(*written)


# --- ImageFolder ---------------------------------------------------------------------


def write_image_folder(root: Union[str, Path], classes: Sequence[str] = ("cat", "dog"),
                       per_class: Union[int, Sequence[int]] = 5,
                       size_range: tuple[int, int] = (8, 24), seed: int = 0):
    """Write ``root/<class>/<i>.png``: solid-colour RGB PNGs, one colour per class.

    Args:
        per_class: images per class, one number for all or one per class.
        size_range: smallest and largest side; width and height are drawn independently.

    Returns:
        A list of (path, class index, RGB colour) per image.
    """
    rng = np.random.default_rng(seed)
    counts = [per_class] * len(classes) if isinstance(per_class, int) else list(per_class)
    # Distinct in every channel, so no two classes share a colour.
    colours = np.stack([rng.permutation(256)[:len(classes)] for _ in range(3)], axis=1)
    images = []
    for label, (name, count) in enumerate(zip(classes, counts)):
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            height, width = rng.integers(size_range[0], size_range[1] + 1, size=2)
            path = Path(root) / name / f"{i}.png"
            pixels = np.broadcast_to(colours[label].astype(np.uint8), (height, width, 3))
            Image.fromarray(np.ascontiguousarray(pixels)).save(path)
            images.append((path, label, tuple(int(c) for c in colours[label])))
    return images
