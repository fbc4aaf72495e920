"""The built-in ``classifier`` trainable: a Ray Tune function trainable.

Each call is one trial. Everything a trial owns (seeds, model, optimizer, metrics) is
created inside the call, so a reused actor starts every trial from a clean state. What
is shared across trials in one process is read-only: the data set (from Ray's object
store, or loaded once per process) and its copy on the trial's device.
"""

from __future__ import annotations

import random
import tempfile
from typing import Optional

import numpy as np
import torch

from raytune_suite.training import checkpoint as ckpt
from raytune_suite.training.config import ClassifierConfig
from raytune_suite.training.data import Arrays, DataSpec, data_spec, load_dataset, to_device
from raytune_suite.training.loop import Trainer

_DEVICE_DATA: dict[tuple, object] = {}  # (data key, device) -> Dataset on that device


def seed_everything(seed: int) -> None:
    """Seed every global RNG a trial touches (the shuffling generator is the Trainer's)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def trial_device() -> torch.device:
    """The GPU Ray assigned to this trial (CUDA_VISIBLE_DEVICES), else the CPU."""
    import ray

    if torch.cuda.is_available() and ray.is_initialized() and ray.get_gpu_ids():
        return torch.device("cuda", 0)  # Ray exposes only the assigned GPU(s)
    return torch.device("cpu")


def trial_threads() -> int:
    from ray import tune

    try:
        cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    except Exception:  # noqa: BLE001 - outside a trial: one thread
        cpus = 1
    return max(1, int(cpus))


def _device_data(spec: DataSpec, device: torch.device, shared: Optional[Arrays]):
    """The data set on ``device``, built once per process and device."""
    if shared is None:
        return load_dataset(spec, device)
    key = (spec, str(device))
    if key not in _DEVICE_DATA:
        _DEVICE_DATA.clear()  # one data set per process: drop another experiment's
        _DEVICE_DATA[key] = to_device(shared, device)
    return _DEVICE_DATA[key]


def train_classifier(config: dict, checkpoint_every: int = 1,
                     data: Optional[Arrays] = None) -> None:
    """Train a classifier; report metrics every epoch with a checkpoint every N epochs.

    Args:
        config: the trial's config (see :class:`ClassifierConfig`).
        checkpoint_every: epochs between checkpoints (the experiment's checkpoint.every).
        data: the data set, shared through Ray's object store by the runner (read-only
            numpy arrays, one copy per node); None loads it in this process.
    """
    from ray import tune

    cfg = ClassifierConfig.from_trial(config)
    torch.set_num_threads(trial_threads())
    seed_everything(cfg.seed)
    device = trial_device()
    if cfg.cv_folds:
        _train_cross_validated(cfg, device, checkpoint_every)
        return
    trainer = Trainer(cfg, _device_data(data_spec(cfg), device, data), device)

    restored = tune.get_checkpoint()
    extra: dict = {}
    if restored is not None:
        with restored.as_directory() as directory:
            state = ckpt.load(directory)
        trainer.load_state_dict(state, exploit=state["config"] != cfg.model_dump())
        extra = {"restored_from": state["_path"], "restored_from_epoch": state["epoch"],
                 "restored_model_digest": ckpt.model_digest(trainer.model.state_dict())}

    while not trainer.finished:
        metrics = {**trainer.run_epoch(), **extra}
        extra = {}
        _report(metrics, trainer.epoch, trainer.finished, checkpoint_every,
                lambda: {**trainer.state_dict(), "metrics": metrics}, trainer.diverged)


def _report(metrics: dict, epoch: int, done: bool, checkpoint_every: int, state,
            diverged: Optional[str] = None) -> None:
    """Report an epoch to Tune, with a checkpoint every ``checkpoint_every`` epochs and
    at the end (``state`` builds the checkpoint's contents only when one is due).

    A diverged trial (NaN or inf loss) reports ``diverged=1`` and the reason in
    ``stop_reason``, saves no checkpoint of its broken weights, and ends: the runner,
    MLflow and best-result selection read those keys.
    """
    from ray import tune

    if diverged:
        tune.report({**metrics, "diverged": 1, "stop_reason": diverged})
        return
    if epoch % checkpoint_every and not done:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        ckpt.save(directory, state())
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def _train_cross_validated(cfg: ClassifierConfig, device: torch.device,
                           checkpoint_every: int) -> None:
    """k models, one per fold, trained in lockstep; reports mean and std over folds.

    For small tabular sets, where one validation split is too noisy to rank trials.
    Checkpoints hold every fold's state.
    """
    from ray import tune

    trainers = [Trainer(cfg, load_dataset(data_spec(cfg, fold), device), device)
                for fold in range(cfg.cv_folds)]
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            state = ckpt.load(directory)
        for trainer, fold_state in zip(trainers, state["folds"]):
            trainer.load_state_dict({**fold_state, "_path": state["_path"]},
                                    exploit=state["config"] != cfg.model_dump())
    while not all(t.finished for t in trainers):
        per_fold = [t.run_epoch() for t in trainers]
        metrics = {"epoch": trainers[0].epoch}
        for key in per_fold[0]:
            values = np.array([m[key] for m in per_fold], dtype=float)
            metrics[key] = float(values.mean())
            if key.startswith("val_"):
                metrics[f"{key}_std"] = float(values.std())
        diverged = "; ".join(f"fold {i}: {t.diverged}" for i, t in enumerate(trainers)
                             if t.diverged)
        _report(metrics, trainers[0].epoch, all(t.finished for t in trainers),
                checkpoint_every,
                lambda: {**trainers[0].state_dict(), "metrics": metrics,
                         "folds": [t.state_dict() for t in trainers]}, diverged or None)
        if diverged:
            return
