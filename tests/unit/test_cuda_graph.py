"""The training step replayed from CUDA graphs (training/cuda_graph.py).

The CPU tests check what the CPU can: the CPU path stays eager and its checkpoints are
unchanged, the optimizer's round trip between its capturable and its ordinary form, and
which configurations use graphs. The ``gpu`` tests (skipped without a CUDA GPU) train
graphed against eager, restore a graphed trial, fall back when capture fails, and move a
GPU checkpoint to the CPU.
"""

import math
import warnings

import pytest
import torch

from raytune_suite.training import checkpoint as ckpt
from raytune_suite.training import cuda_graph
from raytune_suite.training.config import ClassifierConfig
from raytune_suite.training.data import DataSpec, load_dataset
from raytune_suite.training.loop import Trainer, make_optimizer


def test_which_configurations_use_graphs():
    assert cuda_graph.unsupported(ClassifierConfig()) is None
    assert cuda_graph.unsupported(ClassifierConfig(cuda_graphs=False)) == "cuda_graphs: false"
    assert "adversarial" in cuda_graph.unsupported(ClassifierConfig(adversarial_eps=0.1))


def test_a_cpu_trainer_trains_eagerly_and_saves_the_ordinary_optimizer():
    data = load_dataset(DataSpec("iris"))
    for optimizer in ("adam", "sgd"):
        trainer = Trainer(ClassifierConfig(dataset="iris", optimizer=optimizer), data)
        assert trainer.graphs is None
        trainer.run_epoch()
        saved = trainer.state_dict()["optimizer"]
        assert saved == trainer.optimizer.state_dict()  # portable() changed nothing
        group = saved["param_groups"][0]
        assert isinstance(group["lr"], float) and not group.get("fused")
        assert not group.get("capturable", False)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_capturable_and_back_to_the_ordinary_form(optimizer):
    cfg = ClassifierConfig(dataset="iris", optimizer=optimizer, lr=0.02)
    net = torch.nn.Linear(4, 3)
    opt = make_optimizer(cfg, net.parameters())
    net(torch.ones(2, 4)).sum().backward()
    opt.step()  # Adam's state (its step count) exists, on the CPU
    ordinary = opt.state_dict()

    cuda_graph.make_capturable(opt)
    group = opt.param_groups[0]
    assert torch.is_tensor(group["lr"]) and group["lr"].item() == pytest.approx(0.02)
    if optimizer == "sgd":
        assert group["fused"] is True and not group["foreach"]
    else:
        assert group["capturable"] is True
        assert opt.state[net.weight]["step"].device == net.weight.device

    live = make_optimizer(cfg, net.parameters())
    cuda_graph.make_capturable(live)
    cuda_graph.make_ordinary(live)  # a trial that falls back trains on with it
    assert isinstance(live.param_groups[0]["lr"], float)
    assert not live.param_groups[0].get("capturable") and not live.param_groups[0]["fused"]

    back = cuda_graph.portable(opt.state_dict())
    back_group, ordinary_group = back["param_groups"][0], ordinary["param_groups"][0]
    assert isinstance(back_group["lr"], float)
    assert back_group["lr"] == pytest.approx(ordinary_group["lr"])
    assert not back_group.get("capturable", False) and not back_group.get("fused")
    # An ordinary optimizer loads it and steps on the CPU.
    fresh = make_optimizer(cfg, net.parameters())
    fresh.load_state_dict(back)
    net(torch.ones(2, 4)).sum().backward()
    fresh.step()


# ------------------------------------------------------------------ on a GPU

def _gpu_data(image: bool = True):
    return load_dataset(DataSpec("digits", image=image), torch.device("cuda", 0))


def _cfg(**over) -> ClassifierConfig:
    base = dict(dataset="digits", model="cnn", width=0.5, dropout=0.0, lr=3e-3, epochs=4,
                batch_size=100, amp=False)  # 1149 training samples: a partial last batch
    return ClassifierConfig(**{**base, **over})


@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_graphed_training_follows_eager_training(optimizer, monkeypatch):
    """Same seed, same batches, fp32 without TF32, deterministic cuDNN, no dropout.

    Replaying the graphs computes what the same steps compute eagerly with the same
    (capturable) optimizer, to float rounding; against the ordinary optimizer (foreach,
    a float lr) the losses differ by that optimizer's own arithmetic, which 3 epochs
    amplify (1.05e-3 relative at most, measured on an H200). One graph for the full
    batches, one for the partial last batch."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    data = _gpu_data()
    runs = {}
    for mode in ("graphs", "capturable, eager", "ordinary, eager"):
        if mode == "capturable, eager":  # every step a warm-up step: nothing captured
            monkeypatch.setattr(cuda_graph, "WARMUP", 10**9)
        torch.manual_seed(0)
        trainer = Trainer(_cfg(optimizer=optimizer, cuda_graphs=mode != "ordinary, eager"),
                          data, "cuda")
        runs[mode] = [trainer.run_epoch() for _ in range(3)]
        if mode == "graphs":
            assert trainer.graphs is not None and trainer.graphs.failed is None
            assert sorted(trainer.graphs.graphs) == [len(data.y_train) % 100, 100]
        elif mode == "capturable, eager":
            assert trainer.graphs is not None and not trainer.graphs.graphs
        else:
            assert trainer.graphs is None
    for graphed, same, ordinary in zip(*runs.values()):
        for key in ("train_loss", "val_loss"):
            assert graphed[key] == pytest.approx(same[key], rel=1e-4), key
            assert graphed[key] == pytest.approx(ordinary[key], rel=3e-3), key
        assert graphed["lr"] == pytest.approx(ordinary["lr"])


@pytest.mark.gpu
def test_a_restored_graphed_trial_continues_within_bf16_tolerance(tmp_path):
    # No dropout: a graph draws its masks in another order than eager steps do.
    cfg = _cfg(amp=True, augment=0.5, lr_schedule="cosine")
    data = _gpu_data()
    torch.manual_seed(0)
    straight = Trainer(cfg, data, "cuda")
    reference = [straight.run_epoch() for _ in range(4)]
    torch.manual_seed(0)
    first = Trainer(cfg, data, "cuda")
    [first.run_epoch() for _ in range(2)]
    ckpt.save(tmp_path, first.state_dict())
    resumed = Trainer(cfg, data, "cuda")
    resumed.load_state_dict(ckpt.load(tmp_path))
    continued = [resumed.run_epoch() for _ in range(2)]
    for want, got in zip(reference[2:], continued):
        assert got["epoch"] == want["epoch"] and got["lr"] == pytest.approx(want["lr"])
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=0.05)
        assert got["val_accuracy"] == pytest.approx(want["val_accuracy"], abs=0.03)
    assert resumed.graphs is not None and resumed.graphs.graphs


@pytest.mark.gpu
def test_an_exploit_recaptures_with_the_new_hyperparameters(tmp_path):
    data = _gpu_data()
    donor = Trainer(_cfg(optimizer="sgd", lr=0.05, momentum=0.9), data, "cuda")
    donor.run_epoch()
    ckpt.save(tmp_path, donor.state_dict())
    trial = Trainer(_cfg(optimizer="sgd", lr=0.01, momentum=0.5, batch_size=64), data, "cuda")
    trial.load_state_dict(ckpt.load(tmp_path), exploit=True)
    assert trial.optimizer.param_groups[0]["momentum"] == 0.5
    metrics = trial.run_epoch()
    assert metrics["lr"] == pytest.approx(0.01)
    assert 64 in trial.graphs.graphs


@pytest.mark.gpu
def test_a_step_that_cannot_be_captured_falls_back_with_one_warning():
    data = _gpu_data()
    torch.manual_seed(0)
    trainer = Trainer(_cfg(), data, "cuda")
    forward = trainer.model.forward

    def syncing_forward(x):  # a host sync: CUDA graphs cannot capture it
        out = forward(x)
        if out.sum().item() != out.sum().item():
            raise AssertionError("unreachable")
        return out

    trainer.model.forward = syncing_forward
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = trainer.run_epoch()
        second = trainer.run_epoch()
    said = [w for w in caught if "cuda_graphs" in str(w.message)]
    assert len(said) == 1 and "could not be captured" in str(said[0].message)
    assert trainer.graphs is None
    assert second["train_loss"] < first["train_loss"]


@pytest.mark.gpu
def test_a_gpu_checkpoint_restores_on_the_cpu(tmp_path):
    gpu = Trainer(_cfg(optimizer="adam"), _gpu_data(), "cuda")
    gpu.run_epoch()
    ckpt.save(tmp_path, gpu.state_dict())
    cpu = Trainer(_cfg(optimizer="adam"), load_dataset(DataSpec("digits", image=True)))
    with pytest.warns(RuntimeWarning, match="reseeds its shuffling"):
        cpu.load_state_dict(ckpt.load(tmp_path))
    assert cpu.graphs is None and cpu.epoch == 1
    assert cpu.run_epoch()["train_loss"] > 0


# Every technique of the built-in classifier, one short trial each on the GPU: graphed
# where graphs apply (adversarial steps stay eager), finite losses, better than chance.
TECHNIQUES = {
    "mlp-onecycle-smoothing-clip": dict(model="mlp", hidden=[64, 32], lr_schedule="onecycle",
                                        label_smoothing=0.1, grad_clip=1.0),
    "cnn-sgd-augment-dropout-step": dict(optimizer="sgd", nesterov=True, lr=0.05,
                                         augment=0.5, dropout=0.3, weight_decay=1e-4,
                                         lr_schedule="step", lr_milestones=[3],
                                         batch_size=32),
    "resnet18-adamw-warmup-cosine": dict(model="resnet18", optimizer="adamw",
                                         weight_decay=0.01, batch_size=64, warmup_epochs=1,
                                         lr_schedule="cosine"),
    "prune-int8": dict(prune_amount=0.5, quantize="int8"),
    "adversarial-pgd": dict(adversarial_eps=0.1, adversarial_method="pgd",
                            adversarial_steps=2),
    "distillation": dict(distill_alpha=0.7),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(TECHNIQUES))
def test_every_technique_trains_on_the_gpu(name, tmp_path):
    over = dict(TECHNIQUES[name])
    data = _gpu_data(image=over.get("model") != "mlp")
    if name == "distillation":
        teacher = Trainer(_cfg(width=1.0, amp=True), data, "cuda")
        [teacher.run_epoch() for _ in range(2)]
        ckpt.save(tmp_path, teacher.state_dict())
        over["distill_from"] = str(tmp_path)
    torch.manual_seed(0)
    trainer = Trainer(_cfg(amp=True, epochs=3, **over), data, "cuda")
    results = [trainer.run_epoch() for _ in range(3)]
    for r in results:
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]), r
    assert results[-1]["val_accuracy"] > 0.5, results
    if "adversarial_eps" in over:
        assert trainer.graphs is None
    else:
        assert trainer.graphs is not None and trainer.graphs.failed is None
        assert trainer.graphs.graphs
    if "quantize" in over:
        val, measured = trainer.evaluate_compressed()
        assert val["accuracy"] > 0.5 and measured["nonzero_params"] > 0
