"""Top-K ensembles on the test split (``raytune-suite best --evaluate --ensemble K``).

The K best trials' checkpoints each predict class probabilities (softmax) for the
held-out test split; the ensemble's prediction is the class of their mean, with equal
weights. Averaging probabilities, rather than counting votes, lets a confident member
outweigh two hesitant ones, and is what "model averaging" means in the tuning literature.

All members must be scored on the same test samples: their checkpoints' data keys that
decide which samples form the test split must agree (else a SpecError). Keys that change
only the training side or the input layout (val_fraction, cv_folds, limit_train,
image_size, the model) may differ: each member then sees the test samples exactly as it
was trained to (its own normalisation statistics, size and shape).

The result is kept in the experiment folder as ``ensembles.jsonl`` (one JSON line per K,
the latest of each), which the HTML report shows. Not ``.json``: see
:mod:`raytune_suite.engine.state` for why no file of the suite's ends in ``.json``.

No Ray and no MLflow here; torch loads with the first checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from raytune_suite.errors import SpecError

ENSEMBLES_FILE = "ensembles.jsonl"
FIELD = "--ensemble"
# The config keys that decide which samples make the test split, and in which order.
# (image_size, like the model, changes only how a member sees the samples.)
TEST_SPLIT_KEYS = ("dataset", "data_root", "data_seed", "test_fraction", "synthetic_samples",
                   "synthetic_shape", "synthetic_classes")


def pick_members(trials: Sequence[Any], k: int, metric: str) -> list[Any]:
    """The K best trials that can be scored: a finite metric and a checkpoint.

    Args:
        trials: trial summaries (``engine.results.TrialSummary``), best first.
        k: the ensemble's size, at least 2 (K=1 is the single best: ``--evaluate`` alone).
        metric: the experiment's metric, for the error message.

    Raises:
        SpecError: ``k`` below 2, or more than the trials that can be scored.
    """
    if k < 2:
        raise SpecError(FIELD, "K must be at least 2 (K=1 is the single best, which "
                               "--evaluate alone scores)", k)
    usable = [t for t in trials if t.best is not None and t.checkpoint]
    if k > len(usable):
        raise SpecError(FIELD, f"K must be at most {len(usable)}, the trials with a finite "
                               f"{metric} and a checkpoint", k)
    return usable[:k]


def evaluate_top_k(trials: Sequence[Any], k: int, metric: str,
                   device: str = "cpu") -> dict[str, Any]:
    """The ensemble of the K best trials next to the single best, on the test split.

    Args:
        trials: trial summaries (``engine.results.TrialSummary``), best first.
        k: the ensemble's size (see :func:`pick_members`).
        metric: the experiment's metric: each member's best value of it is kept with its
            scores (why it was picked).
        device: as for :func:`ensemble_scores`.

    Returns:
        :func:`ensemble_scores`'s result, with ``metric`` and each member's ``value``.
    """
    members = pick_members(trials, k, metric)
    result = ensemble_scores([(t.trial_id, t.checkpoint) for t in members], device)
    for row, trial in zip(result["members"], members):
        row["value"] = trial.best
    return {**result, "metric": metric}


def ensemble_scores(members: Sequence[tuple[str, str | Path]],
                    device: str = "cpu") -> dict[str, Any]:
    """Score each checkpoint and the mean of their softmax outputs on the test split.

    Args:
        members: ``(trial id, checkpoint folder)`` pairs, best first; the first is the
            single best.
        device: where the models run. The default, CPU, gives the same scores as
            ``evaluate_checkpoint`` (``best --evaluate``).

    Returns:
        ``k``, ``test_samples``, ``members`` (each: ``trial_id``, ``checkpoint``,
        ``test_accuracy``, ``test_f1_macro``), ``single`` (the first member's scores)
        and ``ensemble`` (``test_accuracy``, ``test_f1_macro`` of the averaged outputs).

    Raises:
        SpecError: the members do not share one test split, or it is empty.
        CheckpointError: a checkpoint is missing, corrupt or does not fit its model.
    """
    import torch

    from raytune_suite.training import checkpoint as ckpt
    from raytune_suite.training.config import ClassifierConfig

    if not members:
        raise ValueError("members must hold at least one (trial id, checkpoint) pair")
    states = [ckpt.load(path) for _, path in members]
    configs = [ClassifierConfig.model_validate(s["config"]) for s in states]
    _check_one_test_split([name for name, _ in members], configs)
    probabilities, labels, num_classes = [], None, 0
    for (name, _), state, cfg in zip(members, states, configs):
        probs, y, num_classes = _member_probabilities(state, cfg, device)
        if labels is not None and not torch.equal(y, labels):
            # Same keys, other samples: the data files changed since a member trained.
            raise SpecError(FIELD, "the top K trials must be scored on the same test "
                                   f"samples, but {name}'s test labels differ from "
                                   f"{members[0][0]}'s (did the data files change?)",
                            str(cfg.data_root or cfg.dataset))
        labels = y
        probabilities.append(probs)
    return _scores(members, probabilities, labels, num_classes)


def _check_one_test_split(names: list[str], configs: list) -> None:
    from raytune_suite.training.data import TORCHVISION_DATASETS

    # torchvision sets come with their own test split: test_fraction does not apply.
    official = configs[0].dataset in TORCHVISION_DATASETS
    for key in TEST_SPLIT_KEYS:
        if key == "test_fraction" and official:
            continue
        values = {name: getattr(cfg, key) for name, cfg in zip(names, configs)}
        if len({json.dumps(v, default=str) for v in values.values()}) > 1:
            raise SpecError(FIELD, f"the top K trials must share one test split, but their "
                                   f"config.{key} differs", values)
    if configs[0].test_fraction == 0 and not official:
        raise SpecError(FIELD, "needs a test split, but the trials' config.test_fraction "
                               "is 0", 0)


def _member_probabilities(state: dict, cfg, device: str):
    """One checkpoint's softmax over the test split: (probabilities, labels, classes)."""
    from raytune_suite.training import checkpoint as ckpt
    from raytune_suite.training.data import data_spec, load_dataset
    from raytune_suite.training.loop import Trainer

    # A k-fold checkpoint's top-level weights are fold 0's (trained with that fold's
    # normalisation), as best --evaluate scores it.
    data = load_dataset(data_spec(cfg), device)
    trainer = Trainer(cfg, data, device, train=False)
    ckpt.load_into(state, trainer.model)
    return trainer.predict(data.x_test).softmax(1), data.y_test, data.num_classes


def _scores(members, probabilities: list, labels, num_classes: int) -> dict[str, Any]:
    import torch

    from raytune_suite.training.loop import classification_metrics

    def scored(probs) -> dict[str, float]:
        # classification_metrics takes the argmax of its input: probabilities do as logits.
        m = classification_metrics(probs, labels, num_classes)
        return {"test_accuracy": m["accuracy"], "test_f1_macro": m["f1_macro"]}

    rows = [{"trial_id": trial_id, "checkpoint": str(path), **scored(probs)}
            for (trial_id, path), probs in zip(members, probabilities)]
    mean = torch.stack(probabilities).mean(0)
    return {"k": len(members), "test_samples": len(labels), "members": rows,
            "single": {k: rows[0][k] for k in ("trial_id", "test_accuracy", "test_f1_macro")},
            "ensemble": scored(mean)}


# ------------------------------------------------------------------ the experiment's record


def record_ensemble(folder: str | Path, result: dict[str, Any]) -> Path:
    """Keep ``result`` (from :func:`evaluate_top_k`) in the experiment folder's
    ``ensembles.jsonl``, replacing an earlier result for the same K; the file's path."""
    folder = Path(folder)
    record = {**result, "time": time.time()}
    kept = [r for r in read_ensembles(folder) if r.get("k") != result["k"]]
    records = sorted([*kept, record], key=lambda r: r["k"])
    partial = folder / f".{ENSEMBLES_FILE}.partial"  # a crash leaves the old file or the new
    partial.write_text("".join(json.dumps(r) + "\n" for r in records))
    partial.replace(folder / ENSEMBLES_FILE)
    return folder / ENSEMBLES_FILE


def read_ensembles(folder: str | Path) -> list[dict[str, Any]]:
    """The ensemble results kept in an experiment folder, by K ([] if none)."""
    file = Path(folder) / ENSEMBLES_FILE
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
