"""In-memory data sets as tensors, split deterministically, cached per process.

A reused Ray actor runs many trials in one process; the cache means the data set is
read and standardised once per process, not once per trial. Cached tensors are never
modified in place by the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SKLEARN_DATASETS = ("digits", "iris", "wine", "breast_cancer")


@dataclass(frozen=True)
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]  # one sample, e.g. (64,) or (1, 8, 8)


_CACHE: dict[tuple, Dataset] = {}


def load_dataset(name: str, data_seed: int = 0, val_fraction: float = 0.2,
                 test_fraction: float = 0.2, image: bool = False) -> Dataset:
    """Load a bundled sklearn data set, split by ``data_seed``, standardised on train.

    Args:
        name: one of ``SKLEARN_DATASETS``.
        data_seed: seed of the stratified split; the same seed gives the same split.
        val_fraction: share of all samples held out for validation.
        test_fraction: share of all samples held out for the final test.
        image: keep digits as 1x8x8 images (for the CNN) instead of 64 features.
    """
    key = (name, data_seed, val_fraction, test_fraction, image)
    if key not in _CACHE:
        _CACHE[key] = _build(name, data_seed, val_fraction, test_fraction, image)
    return _CACHE[key]


def _build(name, data_seed, val_fraction, test_fraction, image) -> Dataset:
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    if name not in SKLEARN_DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(SKLEARN_DATASETS)}, got {name!r}")
    bunch = getattr(datasets, f"load_{name}")()
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int64)
    idx = np.arange(len(y))
    rest, test = (train_test_split(idx, test_size=test_fraction, random_state=data_seed,
                                   stratify=y) if test_fraction > 0 else (idx, idx[:0]))
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction),
                                  random_state=data_seed, stratify=y[rest])
    if image and name == "digits":
        # One scale for all pixels keeps the image an image.
        mean, std = x[train].mean(), x[train].std()
        x = ((x - mean) / std).reshape(-1, 1, 8, 8)
    else:
        mean, std = x[train].mean(axis=0), x[train].std(axis=0)
        x = (x - mean) / np.where(std > 0, std, 1.0)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return Dataset(
        x_train=t(x[train]), y_train=t(y[train]),
        x_val=t(x[val]), y_val=t(y[val]),
        x_test=t(x[test]), y_test=t(y[test]),
        num_classes=int(y.max()) + 1,
        input_shape=tuple(x.shape[1:]),
    )
