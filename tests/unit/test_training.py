"""The PyTorch side, without Ray: models, loop, schedules, checkpoints, exact restore."""

import math

import pytest
import torch

from raytune_suite.errors import CheckpointError
from raytune_suite.training import checkpoint as ckpt
from raytune_suite.training.config import ClassifierConfig
from raytune_suite.training.data import DataSpec, load_dataset
from raytune_suite.training.loop import Trainer, classification_metrics, lr_factor, make_optimizer
from raytune_suite.training.models import build_model, build_resnet


def digits(image=False):
    return load_dataset(DataSpec("digits", image=image))


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_model_learns_digits(model):
    cfg = ClassifierConfig(dataset="digits", model=model, lr=3e-3, epochs=3)
    torch.manual_seed(0)
    trainer = Trainer(cfg, digits(image=model == "cnn"))
    before = trainer.evaluate(trainer.data.x_val, trainer.data.y_val)["accuracy"]
    for _ in range(3):
        metrics = trainer.run_epoch()
    assert metrics["val_accuracy"] > 0.85 > before
    assert set(metrics) >= {"train_loss", "val_loss", "val_accuracy", "val_f1_macro",
                            "val_precision", "val_recall", "epoch_seconds", "samples_per_s",
                            "lr"}


def test_cnn_is_the_practitioners_cnn():
    cfg = ClassifierConfig(model="cnn", width=1.0, dropout=0.5, dataset="cifar10")
    net = build_model(cfg, (3, 32, 32), 10)
    convs = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert convs == [64, 128] and fcs == [512, 10]
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_loads_local_weights_adapts_head_and_freezes(tmp_path):
    import torchvision

    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18(weights=None)
    weights = tmp_path / "resnet18.pth"
    torch.save(imagenet.state_dict(), weights)
    net = build_resnet("resnet18", (3, 32, 32), 10, str(weights), freeze_backbone=True)
    assert torch.equal(net.layer1[0].conv1.weight, imagenet.layer1[0].conv1.weight)
    assert net.conv1.stride == (1, 1) and isinstance(net.maxpool, torch.nn.Identity)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"fc.1.weight", "fc.1.bias"}
    grey = build_resnet("resnet18", (1, 28, 28), 10, str(weights))
    assert grey(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_resnet_bad_weights_name_the_file(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(CheckpointError, match=f"pretrained_weights {bad} do not fit resnet18"):
        build_resnet("resnet18", (3, 32, 32), 10, str(bad))
    with pytest.raises(CheckpointError, match="no such file"):
        build_resnet("resnet18", (3, 32, 32), 10, str(tmp_path / "missing.pth"))


def test_optimizer_choice():
    net = torch.nn.Linear(2, 2)
    sgd = make_optimizer(ClassifierConfig(optimizer={"name": "sgd", "momentum": 0.8,
                                                     "nesterov": True}, lr=0.1), net.parameters())
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.8 and sgd.param_groups[0]["nesterov"]
    adamw = make_optimizer(ClassifierConfig(optimizer="adamw", weight_decay=0.01),
                           net.parameters())
    assert isinstance(adamw, torch.optim.AdamW)


def test_step_decay_at_milestones():
    cfg = ClassifierConfig(lr_schedule="step", lr_milestones=[10, 20, 30], lr_gamma=0.1,
                           epochs=40)
    assert [round(lr_factor(cfg, e), 6) for e in (0, 9.9, 10, 19, 20, 30, 39)] == \
        [1, 1, 0.1, 0.1, 0.01, 0.001, 0.001]


def test_warmup_cosine_exponential_onecycle():
    warm = ClassifierConfig(lr_schedule="cosine", warmup_epochs=2, epochs=10)
    assert lr_factor(warm, 0.5) == pytest.approx(0.25, abs=1e-6)
    assert lr_factor(warm, 2) == pytest.approx(1.0)
    assert lr_factor(warm, 6) == pytest.approx(0.5)
    assert lr_factor(warm, 10) == pytest.approx(0.0, abs=1e-9)
    exp = ClassifierConfig(lr_schedule="exponential", lr_gamma=0.5, epochs=5)
    assert [lr_factor(exp, e) for e in (0, 1.5, 3)] == [1, 0.5, 0.125]
    one = ClassifierConfig(lr_schedule="onecycle", epochs=10)
    assert lr_factor(one, 0) == pytest.approx(1 / 25)
    assert lr_factor(one, 3) == pytest.approx(1.0)
    assert lr_factor(one, 10) == pytest.approx(1 / 25 / 1e4)


def test_optimizer_lr_follows_schedule_during_training():
    cfg = ClassifierConfig(dataset="iris", lr=0.1, lr_schedule="step", lr_milestones=[2],
                           lr_gamma=0.1, epochs=3, optimizer="sgd")
    trainer = Trainer(cfg, load_dataset(DataSpec("iris")))
    lrs = [trainer.run_epoch()["lr"] for _ in range(3)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01])


def test_classification_metrics_macro():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 2, 0]), 3).float()
    m = classification_metrics(logits, y, 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # precision: c0 1/2, c1 2/3, c2 1; recall: c0 1/2, c1 1, c2 1/2
    assert m["precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["recall"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    f1 = [0.5, 2 * (2 / 3) / (5 / 3), 2 * 0.5 / 1.5]
    assert m["f1_macro"] == pytest.approx(sum(f1) / 3)


def test_label_smoothing_and_grad_clip_change_training():
    data = load_dataset(DataSpec("iris"))
    losses = {}
    for name, extra in {"plain": {}, "smooth": {"label_smoothing": 0.2},
                        "clip": {"grad_clip": 1e-3}}.items():
        torch.manual_seed(0)
        t = Trainer(ClassifierConfig(dataset="iris", lr=0.05, epochs=3, optimizer="sgd",
                                     **extra), data)
        losses[name] = [t.run_epoch()["train_loss"] for _ in range(3)]
    assert losses["smooth"] != losses["plain"] and losses["clip"] != losses["plain"]
    # A tiny clipping norm slows SGD down (Adam would not notice: it is scale-invariant).
    assert losses["clip"][-1] > losses["plain"][-1]


def test_early_stopping_on_plateau():
    cfg = ClassifierConfig(dataset="iris", lr=1e-9, epochs=50, early_stopping_patience=2,
                           early_stopping_min_delta=1.0)
    trainer = Trainer(cfg, load_dataset(DataSpec("iris")))
    while not trainer.finished:
        trainer.run_epoch()
    assert trainer.epoch == 3  # epoch 1 sets the best; 2 and 3 fail to beat it by 1.0


@pytest.mark.parametrize("schedule", ["none", "cosine"])
def test_restore_is_exact(tmp_path, schedule):
    """Stop after 2 epochs, save, restore into a fresh Trainer: epochs 3-4 match a run
    that never stopped, to the last bit."""
    cfg = ClassifierConfig(dataset="digits", model="cnn", epochs=4, dropout=0.3, lr=3e-3,
                           lr_schedule=schedule, augment=0.5)
    data = digits(image=True)
    torch.manual_seed(0)
    straight = Trainer(cfg, data)
    reference = [straight.run_epoch() for _ in range(4)]

    torch.manual_seed(0)
    first = Trainer(cfg, data)
    [first.run_epoch() for _ in range(2)]
    ckpt.save(tmp_path, first.state_dict())
    torch.manual_seed(123)  # whatever the process did in between
    resumed = Trainer(cfg, data)
    resumed.load_state_dict(ckpt.load(tmp_path))
    assert resumed.epoch == 2
    continued = [resumed.run_epoch() for _ in range(2)]
    for want, got in zip(reference[2:], continued):
        for key in ("epoch", "train_loss", "val_loss", "val_accuracy", "lr"):
            assert got[key] == want[key], key


def test_a_checkpoint_from_another_device_kind_reseeds_the_shuffling(tmp_path):
    """A GPU trial's shuffling state is a CUDA generator's (16 bytes: seed and offset),
    which a CPU generator refuses: the restored trial reseeds from seed and epoch, says
    so once, and trains on. (The gpu test in test_cuda_graph.py moves a real one.)"""
    cfg = ClassifierConfig(dataset="digits", model="mlp", epochs=4, seed=7)
    first = Trainer(cfg, digits())
    first.run_epoch()
    state = first.state_dict()
    state["rng"]["shuffle"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's size
    ckpt.save(tmp_path, state)
    runs = []
    for _ in range(2):
        resumed = Trainer(cfg, digits())
        with pytest.warns(RuntimeWarning, match="reseeds its shuffling from seed 7 and epoch 1"):
            resumed.load_state_dict(ckpt.load(tmp_path))
        runs.append(resumed.run_epoch())
    assert runs[0]["train_loss"] == runs[1]["train_loss"]  # the same reseed each restore
    assert runs[0]["epoch"] == 2 and math.isfinite(runs[0]["train_loss"])


def test_exploit_applies_the_new_hyperparameters(tmp_path):
    """PBT: weights and optimizer state from the donor, lr/momentum/batch size our own."""
    data = load_dataset(DataSpec("iris"))
    donor_cfg = ClassifierConfig(dataset="iris", optimizer="sgd", lr=0.1, momentum=0.9,
                                 batch_size=16, epochs=6)
    donor = Trainer(donor_cfg, data)
    donor.run_epoch()
    ckpt.save(tmp_path, donor.state_dict())
    new_cfg = donor_cfg.model_copy(update={"lr": 0.0125, "momentum": 0.5, "batch_size": 64})
    trial = Trainer(new_cfg, data)
    trial.load_state_dict(ckpt.load(tmp_path), exploit=True)
    assert ckpt.model_digest(trial.model.state_dict()) == \
        ckpt.model_digest(donor.model.state_dict())
    group = trial.optimizer.param_groups[0]
    assert group["lr"] == 0.0125 and group["momentum"] == 0.5
    # Momentum buffers came from the donor.
    donor_buf = donor.optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(trial.optimizer.state_dict()["state"][0]["momentum_buffer"], donor_buf)
    steps = []
    trial.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    metrics = trial.run_epoch()
    assert metrics["lr"] == 0.0125
    assert len(steps) == math.ceil(len(data.y_train) / 64)  # the new batch size


def test_exploit_across_optimizer_kinds_keeps_weights_only(tmp_path):
    data = load_dataset(DataSpec("iris"))
    donor = Trainer(ClassifierConfig(dataset="iris", optimizer="adam"), data)
    donor.run_epoch()
    ckpt.save(tmp_path, donor.state_dict())
    trial = Trainer(ClassifierConfig(dataset="iris", optimizer="sgd", lr=0.05), data)
    trial.load_state_dict(ckpt.load(tmp_path), exploit=True)
    assert torch.equal(trial.model.net[1].weight, donor.model.net[1].weight)
    assert isinstance(trial.optimizer, torch.optim.SGD)
    assert trial.optimizer.param_groups[0]["lr"] == 0.05


def _state(model, opt, epoch=3):
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
            "config": {"lr": 0.1}, "rng": {"torch": torch.get_rng_state()}}


def test_checkpoint_round_trip(tmp_path):
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 4)).sum().backward()
    opt.step()
    ckpt.save(tmp_path, _state(net, opt))
    state = ckpt.load(tmp_path)
    other = torch.nn.Linear(4, 3)
    other_opt = torch.optim.Adam(other.parameters())
    ckpt.load_into(state, other, other_opt)
    assert torch.equal(other.weight, net.weight)
    assert other_opt.state_dict()["state"][0]["step"] == 1
    assert state["epoch"] == 3


def test_truncated_checkpoint_is_an_error_naming_it(tmp_path):
    net = torch.nn.Linear(4, 3)
    ckpt.save(tmp_path, _state(net, torch.optim.SGD(net.parameters(), lr=0.1)))
    blob = (tmp_path / ckpt.STATE_FILE).read_bytes()
    (tmp_path / ckpt.STATE_FILE).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path}.*truncated or corrupt"):
        ckpt.load(tmp_path)


def test_wrong_shape_checkpoint_is_an_error_naming_it(tmp_path):
    net = torch.nn.Linear(4, 3)
    ckpt.save(tmp_path, _state(net, torch.optim.SGD(net.parameters(), lr=0.1)))
    state = ckpt.load(tmp_path)
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path} does not fit this model"):
        ckpt.load_into(state, torch.nn.Linear(5, 3))


def test_missing_files_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        ckpt.load(tmp_path)


def test_config_rejects_incoherent_values():
    with pytest.raises(ValueError, match="needs image data"):
        ClassifierConfig(dataset="iris", model="cnn")
    with pytest.raises(ValueError, match="cv_folds"):
        ClassifierConfig(dataset="iris", cv_folds=1)
