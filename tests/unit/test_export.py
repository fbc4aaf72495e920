"""The exported model (``training.export``): raw inputs in, the Trainer's predictions out.

Small untrained networks (random weights make every class reachable, so a wrong
normalisation or layout changes the probabilities); no Ray, no MLflow.
"""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, load_iris

from formats import write_cifar10, write_image_folder, write_mnist
from raytune_suite.training import checkpoint as ckpt
from raytune_suite.training.config import ClassifierConfig
from raytune_suite.training.data import data_spec, load_dataset
from raytune_suite.training.export import export_checkpoint, raw_inputs
from raytune_suite.training.loop import Trainer


def _checkpoint(tmp_path, **config):
    """A checkpoint of an untrained Trainer, and the Trainer with its data."""
    cfg = ClassifierConfig(**config)
    torch.manual_seed(cfg.seed)
    trainer = Trainer(cfg, load_dataset(data_spec(cfg)), train=False)
    folder = ckpt.save(tmp_path / "checkpoint", {
        "model": trainer.model.state_dict(), "optimizer": {}, "epoch": 1,
        "config": cfg.model_dump()})
    return folder, trainer


CASES = {
    "digits-cnn": dict(dataset="digits", model="cnn", width=0.25),
    "digits-mlp": dict(dataset="digits", model="mlp", hidden=16),
    "iris-mlp": dict(dataset="iris", model="mlp", hidden=8),
    "synthetic-cnn": dict(dataset="synthetic", model="cnn", synthetic_shape=[2, 8, 8],
                          synthetic_samples=120, synthetic_classes=3),
    "synthetic-mlp-limit": dict(dataset="synthetic", synthetic_shape=[5], limit_train=20,
                                synthetic_samples=100, synthetic_classes=4),
    "cifar10-cnn": dict(dataset="cifar10", model="cnn", width=0.125),
    "mnist-cnn": dict(dataset="mnist", model="cnn", width=0.125),
    "image_folder-cnn": dict(dataset="image_folder", model="cnn", width=0.125, image_size=12,
                             test_fraction=0.3),
}


def _write_files(name: str, root) -> dict:
    if name.startswith("cifar10"):
        write_cifar10(root, n_train_per_batch=6, n_test=12)
    elif name.startswith("mnist"):
        write_mnist(root, n_train=60, n_test=12)
    elif name.startswith("image_folder"):
        write_image_folder(root, classes=("cat", "dog", "owl"), per_class=6)
    else:
        return {}
    return {"data_root": str(root)}


@pytest.mark.parametrize("name", list(CASES))
def test_raw_inputs_give_the_trainers_predictions_on_preprocessed_inputs(tmp_path, name):
    folder, trainer = _checkpoint(tmp_path, **CASES[name], **_write_files(name, tmp_path / "data"))
    exported = export_checkpoint(folder)
    data = trainer.data
    raw, labels = raw_inputs(data_spec(trainer.cfg), "test")
    assert raw.dtype == np.dtype(exported.raw.dtype) and raw.shape[1:] == exported.raw.shape
    assert torch.equal(torch.from_numpy(labels), data.y_test)

    probabilities = exported.module(torch.from_numpy(raw))
    expected = torch.softmax(trainer.predict(data.x_test), dim=1)
    torch.testing.assert_close(probabilities, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(probabilities.argmax(1), expected.argmax(1))
    assert float(expected.std(0).max()) > 1e-3  # the output depends on the input
    # the input example is raw data too, with its probabilities
    assert exported.example.dtype == raw.dtype and exported.example.shape[1:] == raw.shape[1:]
    np.testing.assert_allclose(exported.output_example.sum(1), 1.0, rtol=1e-5)
    assert len(exported.class_names) == data.num_classes
    assert not exported.module.training and exported.module.multiplier.device.type == "cpu"


def test_raw_digits_are_sklearns_own_features(tmp_path):
    folder, trainer = _checkpoint(tmp_path, dataset="digits", model="cnn")
    raw, labels = raw_inputs(data_spec(trainer.cfg), "test")
    sklearn = load_digits()
    rows = {row.tobytes(): target for row, target in zip(sklearn.data, sklearn.target)}
    assert raw.dtype == np.float64 and raw.shape[1] == 64
    assert all(rows[row.tobytes()] == label for row, label in zip(raw, labels))
    exported = export_checkpoint(folder)
    assert "load_digits().data" in exported.raw.text and exported.raw.shape == (64,)
    assert exported.class_names == tuple(str(n) for n in sklearn.target_names)


def test_raw_iris_features_are_unscaled(tmp_path):
    folder, trainer = _checkpoint(tmp_path, dataset="iris", model="mlp")
    raw, _ = raw_inputs(data_spec(trainer.cfg), "val")
    iris = {row.tobytes() for row in load_iris().data}
    assert all(row.tobytes() in iris for row in raw)
    # the network itself saw standardised features: the module scales them
    assert abs(float(trainer.data.x_val.mean())) < 0.5 < float(raw.mean())


def test_raw_cifar10_images_are_channels_last_uint8_as_torchvision_gives_them(tmp_path):
    written = write_cifar10(tmp_path, n_train_per_batch=6, n_test=12)
    folder, trainer = _checkpoint(tmp_path, dataset="cifar10", model="cnn", width=0.125,
                                  data_root=str(tmp_path))
    raw, labels = raw_inputs(data_spec(trainer.cfg), "test")
    np.testing.assert_array_equal(raw, written.x_test.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(labels, written.y_test)
    exported = export_checkpoint(folder)
    assert exported.raw.shape == (32, 32, 3) and exported.raw.dtype == "uint8"
    assert "height x width x channel" in exported.raw.text


def test_one_sample_and_a_batch_give_the_same_probabilities(tmp_path):
    folder, trainer = _checkpoint(tmp_path, dataset="digits", model="cnn")
    module = export_checkpoint(folder).module
    raw, _ = raw_inputs(data_spec(trainer.cfg), "test")
    batch = module(torch.from_numpy(raw[:8]))
    single = torch.cat([module(torch.from_numpy(raw[i:i + 1])) for i in range(8)])
    torch.testing.assert_close(single, batch)
