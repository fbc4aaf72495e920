"""A checkpoint of the built-in classifier as one module that takes raw data.

The suite trains on data it has already normalised (``data.load_arrays``): features
standardised per feature, images scaled to [0, 1] and standardised per channel, with
statistics of the train split. A model handed to someone else must do that itself, so
:func:`export_checkpoint` wraps the trained network in :class:`RawInputClassifier`:
the same normalisation (the train split's statistics as buffers), the reshape to the
network's input, the network in eval mode on the CPU, and a softmax. Its input is the
data as the user has it before any preprocessing (:func:`raw_format` says what that is
per data set), its output class probabilities whose argmax is the class.

No MLflow or Ray here: ``tracking._model_registry`` logs what this builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raytune_suite.training import checkpoint as ckpt
from raytune_suite.training.config import ClassifierConfig
from raytune_suite.training.data import SKLEARN_DATASETS, DataSpec, data_spec
from raytune_suite.training.models import build_model

EXAMPLE_SAMPLES = 2  # raw samples in the input example (>1: the batch size stays dynamic)


@dataclass(frozen=True)
class RawFormat:
    """What one raw input looks like for a data set.

    Attributes:
        shape: one sample, without the batch dimension.
        dtype: numpy dtype name (``float64``, ``float32`` or ``uint8``).
        channels_last: images come as (H, W, C) and are turned to (C, H, W).
        text: the format in words, for the registered model's description.
    """

    shape: tuple[int, ...]
    dtype: str
    channels_last: bool
    text: str


def raw_format(spec: DataSpec, input_shape: tuple[int, ...]) -> RawFormat:
    """The raw input of ``spec``'s data set, for a network taking ``input_shape``."""
    n = f"(n, {', '.join(str(d) for d in _raw_shape(spec, input_shape))})"
    if spec.name == "digits":
        return RawFormat((64,), "float64", False,
                         f"float64 {n}: the 64 pixel values 0..16 of each 8x8 digit, row by "
                         "row, as sklearn.datasets.load_digits().data gives them")
    if spec.name in SKLEARN_DATASETS:
        return RawFormat((input_shape[0],), "float64", False,
                         f"float64 {n}: the features as sklearn.datasets.load_{spec.name}()"
                         ".data gives them, unscaled")
    if spec.name in ("cifar10", "image_folder"):
        channels, height, width = input_shape
        resized = (f", resized to {height}x{width} (PIL bilinear) and converted to RGB"
                   if spec.name == "image_folder" else "")
        return RawFormat((height, width, channels), "uint8", True,
                         f"uint8 {n}: RGB pixels 0..255, height x width x channel, as "
                         f"numpy.asarray(PIL image) gives them{resized}")
    if spec.name in ("mnist", "fashion_mnist"):
        return RawFormat(input_shape[1:], "uint8", False,
                         f"uint8 {n}: grey pixels 0..255, as torchvision's "
                         f"{'MNIST' if spec.name == 'mnist' else 'FashionMNIST'}.data")
    return RawFormat(tuple(input_shape), "float32", False,
                     f"float32 {n}: samples as the synthetic generator makes them")


def _raw_shape(spec: DataSpec, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    if spec.name == "digits":
        return (64,)
    if spec.name in ("cifar10", "image_folder"):
        return (*input_shape[1:], input_shape[0])
    if spec.name in ("mnist", "fashion_mnist"):
        return tuple(input_shape[1:])
    return tuple(input_shape)


class RawInputClassifier(nn.Module):
    """Raw inputs -> class probabilities: normalisation, reshape, network, softmax.

    The normalisation is ``x * multiplier - offset`` in float32, the same arithmetic as
    ``data.load_arrays`` (``multiplier = scale / std``, ``offset = mean / std``), so the
    network sees bit-for-bit what it saw in training.
    """

    def __init__(self, network: nn.Module, input_shape: tuple[int, ...],
                 multiplier: np.ndarray, offset: np.ndarray, channels_last: bool):
        super().__init__()
        self.network = network
        self.input_shape = tuple(int(d) for d in input_shape)
        self.channels_last = channels_last
        self.register_buffer("multiplier", torch.as_tensor(multiplier, dtype=torch.float32))
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32))
        self.eval()  # dropout off: a deployed model predicts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        x = x.reshape((x.shape[0],) + self.input_shape)
        x = x * self.multiplier - self.offset
        return torch.softmax(self.network(x), dim=1)


@dataclass(frozen=True)
class Exported:
    """A checkpoint made ready to deploy (see :func:`export_checkpoint`).

    Attributes:
        module: the model on raw inputs, eval mode, CPU.
        example: a few raw samples of the data set (the input example).
        output_example: ``module``'s probabilities for ``example``.
        raw: the raw input format.
        class_names: the class of each output column.
        config: the checkpoint's full classifier config.
        dataset: the data set's name.
    """

    module: RawInputClassifier
    example: np.ndarray
    output_example: np.ndarray
    raw: RawFormat
    class_names: tuple[str, ...]
    config: dict[str, Any]
    dataset: str


def export_checkpoint(path: str | Path) -> Exported:
    """Rebuild the network a classifier checkpoint describes, wrapped for raw inputs.

    The normalisation statistics are recomputed from the data set and split the trial
    trained on (the checkpoint records its config and data seed), as ``load_arrays``
    computed them: the network is given exactly what it was trained and validated on.

    Raises:
        CheckpointError: an unreadable checkpoint, or one that does not fit its config.
        ValueError: the data set cannot be read here.
    """
    state = ckpt.load(path)
    cfg = ClassifierConfig.model_validate(state["config"])
    spec = data_spec(cfg)
    source, splits = _read(spec)
    input_shape = tuple(source.x.shape[1:])
    network = build_model(cfg, input_shape, len(source.class_names))
    ckpt.load_into(state, network)
    multiplier, offset = _normalisation(source, splits[0])
    raw = raw_format(spec, input_shape)
    module = RawInputClassifier(network, input_shape, multiplier, offset, raw.channels_last)
    split = "test" if len(splits[2]) or source.x_test is not None else "val"
    example = raw_inputs(spec, split, (source, splits))[0][:EXAMPLE_SAMPLES]
    with torch.no_grad():
        output = module(torch.from_numpy(example)).numpy()
    return Exported(module, example, output, raw, source.class_names, cfg.model_dump(),
                    cfg.dataset)


def _normalisation(source, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(multiplier, offset)`` with ``normalised = raw_float32 * multiplier - offset`` in the
    network's input layout, from the train split's statistics (as ``data.load_arrays``)."""
    from raytune_suite.training.data import _moments, _statistics_axes

    scale = 1 / 255 if source.x.dtype == np.uint8 else 1.0
    mean, std = _moments(source.x, train, scale, _statistics_axes(source.x.ndim))
    return (scale / std).astype(np.float32), (mean / std).astype(np.float32)


def raw_inputs(spec: DataSpec, split: str = "test", read=None) -> tuple[np.ndarray, np.ndarray]:
    """The raw inputs and labels of one split (``train``, ``val`` or ``test``) in
    :func:`raw_format`'s format, in the order of ``data.load_arrays``'s split (the train
    split before ``limit``). For the sklearn sets the values are sklearn's own (float64),
    not the float32 copy the suite trains from.

    Args:
        spec: the data set and its split.
        split: which split.
        read: what :func:`_read` returned for ``spec``, if already at hand.
    """
    source, (train, val, test) = read or _read(spec)
    x, y, idx = source.x, source.y, {"train": train, "val": val, "test": test}[split]
    if split == "test" and source.x_test is not None:
        x, y, idx = source.x_test, source.y_test, np.arange(len(source.y_test))
    if spec.name in SKLEARN_DATASETS:
        from sklearn import datasets

        x = getattr(datasets, f"load_{spec.name}")().data
    raw = x[idx]
    if spec.name in ("cifar10", "image_folder"):
        raw = raw.transpose(0, 2, 3, 1)
    rows = _raw_shape(spec, tuple(source.x.shape[1:]))
    return np.ascontiguousarray(raw.reshape(len(idx), *rows)), y[idx]


def _read(spec: DataSpec):
    """The data set as read, and its (train, val, test) indices, as ``load_arrays``
    draws them (before ``limit``, which does not change the statistics)."""
    from raytune_suite.training.data import _READERS, _split

    source = _READERS[spec.name](spec)
    return source, _split(spec, source.y, source.x_test is not None)
