"""Compression (training/compress.py) and its metrics in the Trainer, on CPU without Ray."""

import math

import pytest
import torch

from raytune_suite.training import compress
from raytune_suite.training.config import ClassifierConfig
from raytune_suite.training.data import DataSpec, load_dataset
from raytune_suite.training.loop import Trainer
from raytune_suite.training.models import CNN

COMPRESSION_KEYS = {"model_size_kb", "nonzero_params", "latency_ms",
                    "val_accuracy_uncompressed"}


def digits_cnn(width=0.25, epochs=4, **extra) -> Trainer:
    cfg = ClassifierConfig(dataset="digits", model="cnn", width=width, lr=3e-3,
                           epochs=epochs, **extra)
    torch.manual_seed(0)
    return Trainer(cfg, load_dataset(DataSpec("digits", image=True)))


@pytest.fixture(scope="module")
def trained():
    trainer = digits_cnn()
    for _ in range(4):
        trainer.run_epoch()
    return trainer


def prunable_zeros(model) -> tuple[int, int]:
    weights = [m.weight for m, _ in compress.prunable_weights(model)]
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


@pytest.mark.parametrize("amount", [0.5, 0.9])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_pruning_zeroes_the_requested_share_permanently(amount, channels_last):
    """Also of a channels_last model (every GPU trial's), whose conv weights are not
    contiguous."""
    torch.manual_seed(0)
    model = CNN((1, 8, 8), 10, width=0.25)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    small = compress.compressed_copy(model, amount)
    zeros, total = prunable_zeros(small)
    assert zeros == round(amount * total)
    assert prunable_zeros(model)[0] == 0  # the original trains on, dense
    assert not any(k.endswith(("_orig", "_mask")) for k in small.state_dict())
    assert compress.nonzero_params(small) == compress.nonzero_params(model) - zeros


def test_pruning_ranks_weights_over_all_layers_together():
    torch.manual_seed(0)
    model = CNN((1, 8, 8), 10, width=0.25)
    fc = model.head[1].weight
    with torch.no_grad():  # the large fc layer's weights now all outweigh every other one
        fc.copy_(fc.sign() * (fc.abs() + 1))
    small = compress.compressed_copy(model, 0.2)
    zeros, total = prunable_zeros(small)
    assert zeros == round(0.2 * total) < total - model.head[1].weight.numel()
    assert int((small.head[1].weight == 0).sum()) == 0  # all taken from the other layers


def test_int8_shrinks_the_model_and_keeps_accuracy_on_digits(trained):
    """Stated bound: int8 dynamic quantization of the linear layers changes validation
    accuracy on digits (288 samples) by at most 0.02."""
    dense = trained.evaluate(trained.data.x_val, trained.data.y_val)["accuracy"]
    small = compress.compressed_copy(trained.model, quantize="int8")
    assert trained.evaluate(trained.data.x_val, trained.data.y_val, model=small)["accuracy"] \
        == pytest.approx(dense, abs=0.02)
    assert dense > 0.9
    linear = sum(m.weight.numel() for m in trained.model.modules()
                 if isinstance(m, torch.nn.Linear))
    saved = compress.model_size_kb(trained.model) - compress.model_size_kb(small)
    assert saved * 1024 > 0.7 * 3 * linear  # ~3 of every 4 bytes of each linear weight
    assert compress.nonzero_params(small) > 0.99 * compress.nonzero_params(trained.model)


def test_pruned_weights_are_stored_sparse_where_smaller(trained):
    dense = compress.model_size_kb(trained.model)
    assert compress.model_size_kb(compress.compressed_copy(trained.model, 0.3)) == \
        pytest.approx(dense, rel=0.01)  # CSR would be larger than dense at 30%
    assert compress.model_size_kb(compress.compressed_copy(trained.model, 0.9)) < 0.3 * dense


def test_latency_is_the_median_of_cpu_passes_of_one_batch(trained):
    batch = compress.latency_batch(trained.data.x_val[:10])
    assert batch.shape == (64, 1, 8, 8) and torch.equal(batch[10], batch[0])
    ms = compress.latency_ms(trained.model.eval(), batch, warmup=1, repeats=5)
    assert 0 < ms < 1000 and math.isfinite(ms)


def test_trainer_reports_compression_only_when_asked_and_trains_dense():
    plain = digits_cnn(epochs=2)
    pruned = digits_cnn(epochs=2, prune_amount=0.9, quantize="int8")
    off = [plain.run_epoch() for _ in range(2)]
    on = [pruned.run_epoch() for _ in range(2)]
    assert not COMPRESSION_KEYS & set(off[-1])
    assert COMPRESSION_KEYS <= set(on[-1])
    # The model that trains is never pruned: the same losses, to the bit.
    assert [m["train_loss"] for m in on] == [m["train_loss"] for m in off]
    assert on[-1]["val_accuracy_uncompressed"] == off[-1]["val_accuracy"]
    assert on[-1]["val_accuracy"] != off[-1]["val_accuracy"]  # the compressed model's
    assert on[-1]["latency_ms"] == on[0]["latency_ms"]  # measured once per setting
    assert prunable_zeros(pruned.model)[0] == 0


def test_zero_pruning_and_no_quantization_still_reports_the_size():
    """A searched prune_amount of 0 (the dense end of a size/accuracy front) reports
    the same metrics, of the dense model."""
    trainer = digits_cnn(epochs=1, prune_amount=0.0, quantize="none")
    metrics = trainer.run_epoch()
    assert metrics["val_accuracy"] == metrics["val_accuracy_uncompressed"]
    assert metrics["nonzero_params"] == compress.nonzero_params(trainer.model)
    assert metrics["model_size_kb"] == pytest.approx(compress.model_size_kb(trainer.model))
