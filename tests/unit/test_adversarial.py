"""Adversarial examples (training/adversarial.py) and adversarial training, on CPU."""

import pytest
import torch
from torch import nn

from raytune_suite.training import adversarial
from raytune_suite.training import checkpoint as ckpt
from raytune_suite.training.config import ClassifierConfig
from raytune_suite.training.data import data_spec, load_dataset
from raytune_suite.training.loop import Trainer


def digits_trainer(**extra) -> Trainer:
    cfg = ClassifierConfig(dataset="digits", model="cnn", width=0.25, lr=3e-3,
                           **{"epochs": 3, **extra})
    torch.manual_seed(0)
    return Trainer(cfg, load_dataset(data_spec(cfg)))


@pytest.fixture(scope="module")
def trained():
    trainer = digits_trainer()
    for _ in range(3):
        trainer.run_epoch()
    trainer.model.eval()
    return trainer


def loss(trainer, x, y) -> float:
    with torch.no_grad():
        return nn.functional.cross_entropy(trainer.model(x), y).item()


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_perturbations_stay_inside_eps_and_raise_the_loss(trained, method):
    x, y = trained.data.x_val[:128], trained.data.y_val[:128]
    adv = adversarial.perturb(trained.model, x, y, method, eps=0.2, steps=5,
                              generator=torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= 0.2 + 1e-6
    if method == "fgsm":  # every input moves by exactly eps (where the gradient is nonzero)
        moved = (adv - x).abs()
        assert torch.allclose(moved[moved > 0], torch.tensor(0.2))
    assert loss(trained, adv, y) > 1.5 * loss(trained, x, y)


def test_pgd_is_at_least_as_strong_as_fgsm_and_repeatable(trained):
    x, y = trained.data.x_val, trained.data.y_val
    fgsm = adversarial.robust_accuracy(trained.model, x, y, "fgsm", 0.3)
    pgd = adversarial.robust_accuracy(trained.model, x, y, "pgd", 0.3, steps=10)
    assert pgd <= fgsm < trained.evaluate(x, y)["accuracy"]
    assert adversarial.robust_accuracy(trained.model, x, y, "pgd", 0.3, steps=10) == pgd
    # eps 0 is no attack at all
    assert adversarial.robust_accuracy(trained.model, x, y, "fgsm", 0.0) == \
        trained.evaluate(x, y)["accuracy"]


def test_attacks_leave_parameter_gradients_alone(trained):
    for p in trained.model.parameters():
        p.grad = None
    adversarial.pgd(trained.model, trained.data.x_val[:32], trained.data.y_val[:32], 0.1, 3)
    assert all(p.grad is None for p in trained.model.parameters())


def test_training_perturbs_the_second_half_of_each_batch():
    trainer = digits_trainer(adversarial_eps=0.25)
    x, y = trainer.data.x_train[:64], trainer.data.y_train[:64]
    mixed = trainer._perturb_half(x, y)
    assert torch.equal(mixed[:32], x[:32])
    delta = (mixed[32:] - x[32:]).abs()
    assert delta.max() <= 0.25 + 1e-6 and (delta > 0).float().mean() > 0.9
    assert trainer.model.training  # back in train mode after the attack


def test_adversarial_training_reports_robust_accuracy_and_makes_the_model_robust():
    plain = digits_trainer(epochs=4, limit_train=600)
    robust = digits_trainer(epochs=4, limit_train=600, adversarial_eps=0.3)
    metrics_plain = [plain.run_epoch() for _ in range(4)][-1]
    metrics = [robust.run_epoch() for _ in range(4)][-1]
    assert "val_robust_accuracy" not in metrics_plain
    assert 0 <= metrics["val_robust_accuracy"] <= 1
    x, y = plain.data.x_val, plain.data.y_val
    plain.model.eval()
    attacked = adversarial.robust_accuracy(plain._forward, x, y, "fgsm", 0.3)
    assert metrics["val_robust_accuracy"] > attacked + 0.1


def test_restore_is_exact_with_pgd_training(tmp_path):
    """PGD's random starts come from the trial's generator, saved with the checkpoint."""
    extra = dict(epochs=3, adversarial_eps=0.2, adversarial_method="pgd",
                 adversarial_steps=2, dropout=0.3, limit_train=200)
    straight = digits_trainer(**extra)
    reference = [straight.run_epoch() for _ in range(3)]
    first = digits_trainer(**extra)
    first.run_epoch()
    ckpt.save(tmp_path, first.state_dict())
    torch.manual_seed(123)
    resumed = digits_trainer(**extra)
    resumed.load_state_dict(ckpt.load(tmp_path))
    continued = [resumed.run_epoch() for _ in range(2)]
    for want, got in zip(reference[1:], continued):
        for key in ("train_loss", "val_loss", "val_robust_accuracy"):
            assert got[key] == want[key], key
