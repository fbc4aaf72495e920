"""Data sets as numpy arrays and device tensors: read, split by seed, normalise, cache.

``load_arrays`` does the work and returns plain numpy, which a driver can put into Ray's
object store once for all trials. ``to_device`` wraps those arrays as tensors (no copy on
CPU). ``load_dataset`` does both and caches the result per process, so a reused Ray actor
reads and normalises a data set once, not once per trial.

Nothing here modifies an array after returning it, and the training loop never writes into
the data tensors: they may be read-only views of Ray's shared memory.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

from raytune_suite.training.config import IMAGE_MODELS, ClassifierConfig

if TYPE_CHECKING:  # torch loads with the first tensor: a driver that only reads arrays
    import torch  # (the runner's shared data set) never imports it

SKLEARN_DATASETS = ("digits", "iris", "wine", "breast_cancer")
TORCHVISION_DATASETS = ("cifar10", "mnist", "fashion_mnist")
DATASETS = SKLEARN_DATASETS + TORCHVISION_DATASETS + ("image_folder", "synthetic")

_TENSOR_FIELDS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
_CHUNK = 4096  # samples per step when computing normalisation statistics


@dataclass(frozen=True)
class DataSpec:
    """Which data set to load and how to split it. Hashable: it is the cache key.

    Attributes:
        name: one of ``DATASETS``.
        root: folder of a torchvision set (holding ``cifar-10-batches-py/`` or
            ``MNIST/raw/``) or of an ``image_folder`` (``root/<class>/<image>``).
        download: let torchvision download a missing set into ``root``.
        image_size: ``image_folder`` images are resized to ``image_size`` x ``image_size``.
        data_seed: seed of every split; the same seed gives the same split.
        val_fraction: share of the train pool (all but the test split) held out for
            validation. Ignored when ``folds`` is set.
        test_fraction: share of all samples held out for the test split; only for sets
            without an official test split (sklearn, image_folder, synthetic). 0 = no test.
        image: digits as 1x8x8 images instead of 64 features (other sets ignore it).
        folds: k-fold cross-validation over the train pool: 0 = off, else k >= 2.
        fold: which fold is the validation fold, ``0 <= fold < folds``.
        synthetic_samples: number of samples of the ``synthetic`` set.
        synthetic_shape: shape of one ``synthetic`` sample, e.g. ``(20,)`` or ``(3, 32, 32)``.
        synthetic_classes: number of classes of the ``synthetic`` set.
        limit: keep at most this many training samples (smoke runs).
    """

    name: str
    root: Optional[str] = None
    download: bool = False
    image_size: int = 32
    data_seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    image: bool = False
    folds: int = 0
    fold: int = 0
    synthetic_samples: int = 2048
    synthetic_shape: tuple[int, ...] = (3, 32, 32)
    synthetic_classes: int = 10
    limit: Optional[int] = None

    def __post_init__(self) -> None:
        # A list (from YAML) or a Path would make the spec unhashable or unequal to the
        # same spec written with a tuple or str; normalise both before validating.
        object.__setattr__(self, "synthetic_shape", tuple(self.synthetic_shape))
        if self.root is not None:
            object.__setattr__(self, "root", os.fspath(self.root))
        _validate(self)


def _validate(spec: DataSpec) -> None:
    if spec.name not in DATASETS:
        raise ValueError(f"name must be one of {', '.join(DATASETS)}, got {spec.name!r}")
    if not 0 < spec.val_fraction < 1:
        raise ValueError(
            f"val_fraction must satisfy 0 < val_fraction < 1, got {spec.val_fraction!r}")
    if not 0 <= spec.test_fraction < 1:
        raise ValueError(
            f"test_fraction must satisfy 0 <= test_fraction < 1, got {spec.test_fraction!r}")
    if spec.folds < 0 or spec.folds == 1:
        raise ValueError(f"folds must be 0 (off) or >= 2, got {spec.folds!r}")
    if spec.folds and not 0 <= spec.fold < spec.folds:
        raise ValueError(f"fold must satisfy 0 <= fold < folds ({spec.folds}), got {spec.fold!r}")
    if not spec.folds and spec.fold != 0:
        raise ValueError(f"fold needs folds >= 2 (k-fold is off), got fold={spec.fold!r}")
    if spec.image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {spec.image_size!r}")
    if spec.limit is not None and spec.limit < 1:
        raise ValueError(f"limit must be None or >= 1, got {spec.limit!r}")
    if spec.synthetic_samples < 1:
        raise ValueError(f"synthetic_samples must be >= 1, got {spec.synthetic_samples!r}")
    if spec.synthetic_classes < 2:
        raise ValueError(f"synthetic_classes must be >= 2, got {spec.synthetic_classes!r}")
    shape = spec.synthetic_shape
    if not shape or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise ValueError(f"synthetic_shape must be a non-empty tuple of ints >= 1, got {shape!r}")


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays elementwise is not equality
class Arrays:
    """A split, normalised data set as numpy: what goes into Ray's object store.

    Features are float32 and C-contiguous, labels int64. ``input_shape`` is the shape of
    one sample: ``(features,)`` or ``(C, H, W)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Dataset:
    """The same as :class:`Arrays`, as torch tensors on one device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class _Source:
    """A data set as read, before splitting: the pool, and the official test split if any.

    ``x`` is uint8 for images read from files (scaled to [0, 1] when normalised) and
    float32 otherwise; ``y`` is int64.
    """

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    x_test: Optional[np.ndarray] = None
    y_test: Optional[np.ndarray] = None


def load_arrays(spec: DataSpec) -> Arrays:
    """Read a data set, split it by ``spec.data_seed`` and normalise it on the train split.

    Tabular features are standardised per feature, images per channel (digits images with
    one mean and std), always with the statistics of the whole train split, before
    ``limit`` is applied. Nothing is cached: see :func:`load_dataset`.

    Args:
        spec: which data set and how to split it.

    Returns:
        The train, validation and test splits as C-contiguous numpy arrays.

    Raises:
        ValueError: the files are missing or unreadable, or the set is too small to split.
    """
    source = _READERS[spec.name](spec)
    for x, y, split in ((source.x, source.y, "train"), (source.x_test, source.y_test, "test")):
        if x is not None:
            _check_labels(spec.name, split, x, y, len(source.class_names))
    official_test = source.x_test is not None
    train, val, test = _split(spec, source.y, official_test)
    if official_test:
        x_test, y_test, test = source.x_test, source.y_test, np.arange(len(source.y_test))
    else:
        x_test, y_test = source.x, source.y
    scale = 1 / 255 if source.x.dtype == np.uint8 else 1.0
    axes = _statistics_axes(source.x.ndim)
    mean, std = _moments(source.x, train, scale, axes)
    if spec.limit is not None:
        train = train[: spec.limit]
    take = functools.partial(_normalised, scale=scale, mean=mean, std=std)
    return Arrays(
        x_train=take(source.x, train), y_train=source.y[train],
        x_val=take(source.x, val), y_val=source.y[val],
        x_test=take(x_test, test), y_test=y_test[test],
        num_classes=len(source.class_names),
        input_shape=tuple(source.x.shape[1:]),
        class_names=source.class_names,
    )


def to_device(arrays: Arrays, device: Union[str, torch.device] = "cpu") -> Dataset:
    """Wrap arrays as tensors: shared memory on CPU (no copy), copied to any other device.

    Args:
        arrays: the output of :func:`load_arrays`, possibly read-only (from Ray's object store).
        device: where the tensors live.
    """
    import torch

    device = torch.device(device)
    with warnings.catch_warnings():
        # Arrays from Ray's object store are read-only views of shared memory, and torch
        # warns that it cannot mark a tensor read-only. The training loop never writes into
        # data tensors, so sharing the memory is safe and saves one copy per process.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {field: torch.from_numpy(getattr(arrays, field)) for field in _TENSOR_FIELDS}
    if device.type != "cpu":
        tensors = {field: tensor.to(device) for field, tensor in tensors.items()}
    return Dataset(**tensors, num_classes=arrays.num_classes, input_shape=arrays.input_shape,
                   class_names=arrays.class_names)


_CACHE: dict[tuple[DataSpec, str], Dataset] = {}


def load_dataset(spec: DataSpec, device: Union[str, torch.device] = "cpu") -> Dataset:
    """:func:`load_arrays` then :func:`to_device`, cached per process by ``(spec, device)``.

    Args:
        spec: which data set and how to split it.
        device: where the tensors live.
    """
    if not isinstance(spec, DataSpec):
        raise TypeError(f"spec must be a DataSpec, got {type(spec).__name__}: {spec!r}")
    import torch

    key = (spec, str(torch.device(device)))
    if key not in _CACHE:
        _CACHE[key] = to_device(load_arrays(spec), device)
    return _CACHE[key]


def dataset_cache_clear() -> None:
    """Forget every cached :class:`Dataset` of this process."""
    _CACHE.clear()


# --- splitting and normalising -------------------------------------------------------


def _split(spec: DataSpec, y: np.ndarray, official_test: bool):
    """Indices of (train, val, test) into the pool; test is empty with an official test set."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    everything = np.arange(len(y))
    try:
        if official_test or spec.test_fraction == 0:
            pool, test = everything, everything[:0]
        else:
            pool, test = train_test_split(everything, test_size=spec.test_fraction,
                                          random_state=spec.data_seed, stratify=y)
        if spec.folds:
            kfold = StratifiedKFold(spec.folds, shuffle=True, random_state=spec.data_seed)
            train_at, val_at = list(kfold.split(pool, y[pool]))[spec.fold]
            train, val = pool[train_at], pool[val_at]
        else:
            train, val = train_test_split(pool, test_size=spec.val_fraction,
                                          random_state=spec.data_seed, stratify=y[pool])
    except ValueError as err:
        raise ValueError(
            f"{spec.name}: cannot split {len(y)} samples of {len(np.unique(y))} classes "
            f"stratified by class (val_fraction={spec.val_fraction}, test_fraction="
            f"{spec.test_fraction}, folds={spec.folds}): {err}") from err
    # Without a drawn test split the pool is in file order and k-fold keeps that order;
    # shuffling by data_seed makes `limit` a random subset in every case.
    train = np.random.default_rng(spec.data_seed).permutation(train)
    return train, val, test


def _statistics_axes(ndim: int) -> tuple[int, ...]:
    if ndim == 2:
        return (0,)  # per feature
    if ndim == 4:
        return (0, 2, 3)  # per channel
    return tuple(range(ndim))  # any other shape: one mean and std


def _moments(x: np.ndarray, idx: np.ndarray, scale: float, axes: tuple[int, ...]):
    """Mean and std of ``x[idx] * scale`` over ``axes`` (keepdims), as float64.

    One pass over chunks of samples, merged with Chan's parallel formula: a 50 000-image
    set is never converted at once, and deviations from each chunk's own mean avoid the
    cancellation of E[x²] - E[x]².
    """
    count, mean, m2 = 0, 0.0, 0.0
    for start in range(0, len(idx), _CHUNK):
        values = x[idx[start:start + _CHUNK]].astype(np.float32) * np.float32(scale)
        chunk_mean = values.mean(axis=axes, keepdims=True, dtype=np.float64)
        n = values.size // chunk_mean.size  # values per feature or channel
        chunk_m2 = np.square(values - chunk_mean.astype(np.float32)).sum(
            axis=axes, keepdims=True, dtype=np.float64)
        delta = chunk_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + chunk_m2 + delta**2 * (count * n / total)
        count = total
    std = np.sqrt(m2 / count)
    return mean, np.where(std > 0, std, 1.0)  # a constant feature stays constant (0)


def _normalised(x: np.ndarray, idx: np.ndarray, scale: float, mean: np.ndarray,
                std: np.ndarray) -> np.ndarray:
    """``(x[idx] * scale - mean) / std`` as a new C-contiguous float32 array."""
    out = x[idx].astype(np.float32, copy=False)  # fancy indexing already copied
    out *= (scale / std).astype(np.float32)
    out -= (mean / std).astype(np.float32)
    return out


def _check_labels(name: str, split: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> None:
    if len(x) != len(y):
        raise ValueError(f"{name}: the {split} split has {len(x)} samples but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name}: labels of the {split} split must lie in [0, {num_classes}), "
                         f"got [{y.min()}, {y.max()}]")


# --- readers -------------------------------------------------------------------------


def _read_sklearn(spec: DataSpec) -> _Source:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{spec.name}")()
    x = bunch.data.astype(np.float32)
    if spec.image and spec.name == "digits":
        x = x.reshape(-1, 1, 8, 8)
    return _Source(x, bunch.target.astype(np.int64), tuple(str(n) for n in bunch.target_names))


def _read_synthetic(spec: DataSpec) -> _Source:
    """Class-conditional Gaussian data: sample = its class's mean pattern + N(0, 1) noise.

    Each element of a class mean is N(0, 9 / d) for d elements per sample, so two class
    means lie about 4 noise standard deviations apart at every shape: the best possible
    accuracy does not depend on the shape, and large shapes are harder only because the
    means must be learnt from few samples (a small MLP reaches ~50% with 10 classes and
    2048 samples of 3x32x32, more with more samples).
    """
    rng = np.random.default_rng(spec.data_seed)
    shape, k, n = spec.synthetic_shape, spec.synthetic_classes, spec.synthetic_samples
    spread = np.float32(3 / np.prod(shape) ** 0.5)
    means = rng.standard_normal((k, *shape), dtype=np.float32) * spread
    counts = np.full(k, n // k) + (np.arange(k) < n % k)
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for label in range(k):
        # Samples are sorted by class, so each class is one slice: added in place, no
        # second array of the set's size (splits shuffle anyway).
        x[bounds[label]:bounds[label + 1]] += means[label]
    y = np.repeat(np.arange(k, dtype=np.int64), counts)
    return _Source(x, y, tuple(str(label) for label in range(k)))


def _require_root(spec: DataSpec, expected: str) -> str:
    if not spec.root:
        raise ValueError(f"{spec.name}: root is required: the folder holding {expected}")
    return os.path.expanduser(spec.root)


def _missing_files_error(spec: DataSpec, what: str, root: str, expected: str,
                         folder: str) -> ValueError:
    hint = ""
    if os.path.basename(os.path.normpath(root)) == folder:
        hint = f" (root is the folder that contains {folder}/, not {folder}/ itself)"
    return ValueError(f"{spec.name}: no {what} under {root} (expected {expected}){hint}; "
                      "set download: true on a machine with internet")


@functools.cache
def _local_cifar10():
    """torchvision's CIFAR10 reader without the md5 check of each extracted file.

    torchvision compares every batch file with the md5 of the official release before
    reading it. That rejects any folder in the same format that is not byte-for-byte the
    release (a folder written by a test, a re-packed subset) and re-hashes 170 MB on every
    load. Here the check is that the files exist; torchvision's own code still parses them,
    so a damaged file still fails (as a ValueError from :func:`_read_cifar10`). A download
    is still verified by torchvision against the md5 of the archive (``tgz_md5``).
    """
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [[name, None] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    return LocalCIFAR10


def _read_cifar10(spec: DataSpec) -> _Source:
    folder = "cifar-10-batches-py"
    root = _require_root(spec, f"{folder}/ (the extracted cifar-10-python.tar.gz)")
    expected = f"{os.path.join(root, folder)}/data_batch_1..5, test_batch, batches.meta"
    missing = [f for f in _CIFAR10_FILES if not os.path.isfile(os.path.join(root, folder, f))]
    if missing and not spec.download:
        raise _missing_files_error(spec, "CIFAR-10 batches", root, expected, folder)
    cifar10 = _local_cifar10()
    try:
        train = cifar10(root, train=True, download=spec.download)
        test = cifar10(root, train=False)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{spec.name}: cannot read the CIFAR-10 batches in "
                         f"{os.path.join(root, folder)}: {type(err).__name__}: {err}") from err
    return _Source(
        x=np.ascontiguousarray(train.data.transpose(0, 3, 1, 2)),  # torchvision keeps HWC
        y=np.asarray(train.targets, dtype=np.int64),
        class_names=tuple(train.classes),
        x_test=np.ascontiguousarray(test.data.transpose(0, 3, 1, 2)),
        y_test=np.asarray(test.targets, dtype=np.int64),
    )


def _read_mnist(spec: DataSpec) -> _Source:
    from torchvision import datasets

    reader = datasets.MNIST if spec.name == "mnist" else datasets.FashionMNIST
    folder = reader.__name__  # torchvision reads root/<class name>/raw/
    root = _require_root(spec, f"{folder}/raw/ with the idx files")
    raw = os.path.join(root, folder, "raw")
    names = [os.path.splitext(filename)[0] for filename, _ in reader.resources]
    _gunzip_missing(raw, names)
    legacy = all(os.path.isfile(os.path.join(root, folder, "processed", f))
                 for f in ("training.pt", "test.pt"))  # old torchvision's cache, still read
    if not legacy and not spec.download and not all(
            os.path.isfile(os.path.join(raw, name)) for name in names):
        expected = f"{raw}/{', '.join(names)}, uncompressed or .gz"
        raise _missing_files_error(spec, f"{folder} idx files", root, expected, folder)
    try:
        train = reader(root, train=True, download=spec.download)
        test = reader(root, train=False)
    except (AssertionError, RuntimeError, TypeError, ValueError) as err:
        # torchvision checks the idx header with `assert`; a wrong size fails in `view`.
        raise ValueError(f"{spec.name}: cannot load {folder} from {raw}: "
                         f"{type(err).__name__}: {err}") from err

    def images(data: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(data.numpy()[:, None])  # (N, 28, 28) -> (N, 1, 28, 28)

    return _Source(x=images(train.data), y=train.targets.numpy().astype(np.int64),
                   class_names=tuple(train.classes), x_test=images(test.data),
                   y_test=test.targets.numpy().astype(np.int64))


def _gunzip_missing(folder: str, names: list[str]) -> None:
    """Unpack ``name.gz`` next to itself where only the .gz is there.

    torchvision's MNIST reads only the uncompressed idx files; its own download keeps both.
    A folder holding just the .gz files (as on the mirrors) gets what the download would
    have left. Written to a temporary file first, so nothing half-written remains.
    """
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path) or not os.path.isfile(path + ".gz"):
            continue
        fd, partial = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        try:
            with gzip.open(path + ".gz", "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)


def _read_image_folder(spec: DataSpec) -> _Source:
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = _require_root(spec, "one subfolder of images per class")
    expected = f"{root}/<class>/<image> with images ending in {', '.join(IMG_EXTENSIONS)}"
    size = (spec.image_size, spec.image_size)

    def resize(image):
        return image.resize(size, Image.Resampling.BILINEAR)

    try:
        # ImageFolder's loader converts every image to RGB; resizing once here means the
        # set is held at its training size.
        folder = ImageFolder(root, transform=resize)
    except OSError as err:  # missing root, no class folders, a class without images
        raise ValueError(
            f"image_folder: no images under {root} (expected {expected}): {err}") from err
    x = np.empty((len(folder), *size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(folder.samples):
        try:
            x[i] = np.asarray(folder[i][0])
        except OSError as err:  # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f"image_folder: cannot read image {path}: {err}") from err
    return _Source(np.ascontiguousarray(x.transpose(0, 3, 1, 2)),
                   np.asarray(folder.targets, dtype=np.int64), tuple(folder.classes))


_READERS = {
    **{name: _read_sklearn for name in SKLEARN_DATASETS},
    "cifar10": _read_cifar10,
    "mnist": _read_mnist,
    "fashion_mnist": _read_mnist,
    "image_folder": _read_image_folder,
    "synthetic": _read_synthetic,
}


def data_spec(cfg: ClassifierConfig, fold: int = 0) -> DataSpec:
    """The :class:`DataSpec` a config describes (``fold`` for k-fold CV)."""
    return DataSpec(
        name=cfg.dataset, root=cfg.data_root, download=cfg.download, image_size=cfg.image_size,
        data_seed=cfg.data_seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
        image=cfg.model in IMAGE_MODELS, folds=cfg.cv_folds, fold=fold,
        synthetic_samples=cfg.synthetic_samples, synthetic_shape=tuple(cfg.synthetic_shape),
        synthetic_classes=cfg.synthetic_classes, limit=cfg.limit_train,
    )


def load_arrays_for(config: dict) -> Optional[Arrays]:
    """Arrays to share through the object store for this (fixed) config, or None when
    trials load their own (k-fold CV)."""
    cfg = ClassifierConfig.from_trial(config)
    if cfg.cv_folds:
        return None
    return load_arrays(data_spec(cfg))
