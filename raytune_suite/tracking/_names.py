"""What a trial run is called and which of a Tune result's values become its metrics.

A run's name puts what tells trials apart first, so that a table or chart legend cut
to 20 characters still shows it: the trial's ordinal, its Ray trial id, then the
searched values in short form (``07 3982a165 adam lr=7.3e-3 bs=64``). The name is
made from the trial's first config, so it stays the same across PBT exploits, resumes
and ``mlflow-sync``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional

from raytune_suite.tracking._mlflow import as_float, flatten, metric

# Short names of common hyperparameters; a nested key is named by its last part.
ABBREVIATIONS = {"learning_rate": "lr", "batch_size": "bs", "weight_decay": "wd",
                 "dropout": "drop", "momentum": "mom", "num_layers": "layers",
                 "hidden_size": "hidden", "label_smoothing": "ls", "warmup_epochs": "warmup",
                 "activation": "act", "optimizer": "opt"}
MAX_NAME = 250  # MLflow keeps longer run names, but no table shows them

# Ray Tune's bookkeeping (and the suite's own) in every result: not worth a metric.
SKIP_METRICS = frozenset({
    "done", "pid", "timestamp", "training_iteration", "iterations_since_restore",
    "time_since_restore", "time_this_iter_s", "time_total_s", "timesteps_total",
    "episodes_total", "timesteps_since_restore", "episodes_this_iter",
    "timesteps_this_iter", "node_ip", "hostname", "date", "trial_id", "experiment_tag",
    "should_checkpoint", "checkpoint_dir_name", "warmup_time", "outcome",
    "restored_from", "restored_from_epoch"})
STEP_DUPLICATES = ("epoch",)  # logged only where they differ from the step


@dataclass(frozen=True)
class Layout:
    """Which config entries a search varies (flattened ``a/b`` paths): ``searched`` name
    the runs; ``mutated`` (PBT only) are logged as ``config/<name>`` at every step."""

    searched: tuple[str, ...] = ()
    mutated: tuple[str, ...] = ()


def layout(spec) -> Layout:
    """The :class:`Layout` of a validated experiment."""
    searched = tuple(p.replace(".", "/") for p, _ in spec.search_space.leaves())
    mutated: tuple[str, ...] = ()
    if spec.scheduler.type == "pbt":
        from raytune_suite.experiment import mutation_space

        mutated = tuple(dict.fromkeys(
            [p.replace(".", "/") for p, _ in mutation_space(spec).leaves()] + list(searched)))
    return Layout(searched, mutated)


def _under(key: str, paths: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + "/") for p in paths)


def short_number(v: float) -> str:
    """``0.0073`` -> ``7.3e-3``; ``0.25`` -> ``0.25``; ``64`` -> ``64``."""
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e6):
        return str(int(v))
    if not math.isfinite(v):
        return str(v)
    if 1e-2 <= abs(v) < 1e4:
        return f"{v:.3g}"
    mantissa, exponent = f"{v:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def ordinal(trial_id: str, experiment_tag: str) -> Optional[int]:
    """The trial's number in its search, counted from 1 (Ray's experiment tag starts
    with it: from 0 for grid and random search, whose trial ids end with it, from 1
    for searchers)."""
    found = re.match(r"(\d+)", experiment_tag or "")
    if not found:
        return None
    n = int(found.group(1))
    suffix = re.search(r"_(\d{5})$", trial_id)
    return n + 1 if suffix and int(suffix.group(1)) == n else n


def run_name(trial_id: str, experiment_tag: str, config: dict[str, Any],
             searched: tuple[str, ...] = ()) -> str:
    """The MLflow run name of a trial (see the module docstring).

    Args:
        trial_id: Ray's trial id.
        experiment_tag: Ray's experiment tag of the trial (``7_lr=0.0073,...``).
        config: the trial's first config (nested or flattened with ``/``).
        searched: the searched entries, flattened; empty: every entry of ``config``.
    """
    flat = flatten(config)
    keys = [k for k in flat if _under(k, searched)] if searched else list(flat)
    if searched:  # the experiment file's order
        keys.sort(key=lambda k: next(i for i, p in enumerate(searched) if _under(k, (p,))))
    words, pairs = [], []
    for k in keys:
        v = flat[k]
        if isinstance(v, str):
            words.append(v)
        elif isinstance(v, bool):
            pairs.append(f"{_short_key(k)}={'yes' if v else 'no'}")
        elif isinstance(v, (int, float)):
            pairs.append(f"{_short_key(k)}={short_number(v)}")
        elif v is not None:
            pairs.append(f"{_short_key(k)}={v}")
    n = ordinal(trial_id, experiment_tag)
    head = [f"{n:02d}"] if n is not None else []
    return " ".join([*head, trial_id, *words, *pairs])[:MAX_NAME]


def _short_key(key: str) -> str:
    last = key.rsplit("/", 1)[-1]
    return ABBREVIATIONS.get(last, last)


def result_metrics(result: dict, step: int, mutated: tuple[str, ...] = ()) -> list:
    """The MLflow metrics of one Tune result (nested, or flattened as in Ray's result
    table): its numeric values, minus Ray's bookkeeping and values equal to the step;
    of the ``config/...`` copy of the hyperparameters, only the ``mutated`` ones (PBT
    changes them mid-run: one value per step draws the schedule from step 1)."""
    metrics = []
    for k, v in flatten(result).items():
        if k.startswith("config/"):
            if not _under(k[len("config/"):], mutated):
                continue
        elif k in SKIP_METRICS:
            continue
        value = as_float(v)
        if value is None or (isinstance(v, float) and math.isnan(v) and k.startswith("config/")):
            continue
        if k in STEP_DUPLICATES and value == step:
            continue
        metrics.append(metric(k, value, step))
    return metrics
