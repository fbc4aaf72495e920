"""The built-in ``classifier`` trainable: a Ray Tune function trainable.

Each call is one trial. Everything a trial owns (seeds, model, optimizer, metrics) is
created inside the call, so a reused actor starts every trial from a clean state; the
only thing shared across trials in one process is the read-only data cache.
"""

from __future__ import annotations

import random
import tempfile
import time

import numpy as np
import torch

from raytune_suite.training import checkpoint as ckpt
from raytune_suite.training.config import ClassifierConfig
from raytune_suite.training.data import load_dataset
from raytune_suite.training.loop import evaluate, make_optimizer, train_epoch
from raytune_suite.training.models import build_model


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG a trial touches; returns the generator used for shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _threads_for_trial() -> int:
    from ray import tune

    try:
        cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    except Exception:  # noqa: BLE001 - outside a trial (tests): one thread
        cpus = 1
    return max(1, int(cpus))


def train_classifier(config: dict, checkpoint_every: int = 1) -> None:
    """Train a classifier; report val_loss/val_accuracy every epoch with checkpoints.

    Args:
        config: the trial's config (see :class:`ClassifierConfig`).
        checkpoint_every: epochs between checkpoints (the experiment's checkpoint.every).
    """
    from ray import tune

    cfg = ClassifierConfig.from_trial(config)
    torch.set_num_threads(_threads_for_trial())
    generator = seed_everything(cfg.seed)
    data = load_dataset(cfg.dataset, cfg.data_seed, cfg.val_fraction, cfg.test_fraction,
                        image=cfg.model == "cnn")
    model = build_model(cfg, data.input_shape, data.num_classes)
    optimizer = make_optimizer(cfg, model.parameters())

    start_epoch = 0
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            state = ckpt.load(directory)
        ckpt.load_into(state, model, optimizer)
        _apply_hyperparameters(optimizer, cfg)  # PBT: the new config wins over the donor's
        start_epoch = state["epoch"]
        torch.set_rng_state(state["rng"]["torch"])
        generator.set_state(state["rng"]["shuffle"])

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        train_loss = train_epoch(model, optimizer, data.x_train, data.y_train,
                                 cfg.batch_size, generator)
        val_loss, val_accuracy = evaluate(model, data.x_val, data.y_val)
        seconds = time.perf_counter() - t0
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "epoch_seconds": seconds,
            "samples_per_s": len(data.y_train) / seconds,
        }
        done = epoch + 1 == cfg.epochs
        if (epoch + 1) % checkpoint_every and not done:
            tune.report(metrics)
            continue
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "config": cfg.model_dump(),
            "data_seed": cfg.data_seed,
            "rng": {"torch": torch.get_rng_state(), "shuffle": generator.get_state()},
            "metrics": metrics,
        }
        with tempfile.TemporaryDirectory() as directory:
            ckpt.save(directory, state)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def _apply_hyperparameters(optimizer: torch.optim.Optimizer, cfg: ClassifierConfig) -> None:
    opt = cfg.optimizer_config()
    for group in optimizer.param_groups:
        group["lr"] = opt.lr or cfg.lr
        group["weight_decay"] = cfg.weight_decay
        if "momentum" in group:
            group["momentum"] = opt.momentum
