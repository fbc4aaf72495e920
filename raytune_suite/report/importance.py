"""Hyperparameter importance with Optuna's fANOVA evaluator over the finished trials.

The trials are copied into an in-memory Optuna study (``optuna.trial.create_trial``,
with distributions taken from the search space), so any searcher's trials can be
evaluated, not only Optuna's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from raytune_suite.experiment.space import INTEGER_KINDS, Domain
from raytune_suite.report.data import param_scale, param_value

METHOD = ("fANOVA (optuna.importance.FanovaImportanceEvaluator, a random forest over the "
          "finished trials' searched values and best metric)")


@dataclass
class Importance:
    """Importances (name -> share of the metric's variance, summing to 1), or why none."""

    method: str
    values: dict[str, float] = field(default_factory=dict)
    note: Optional[str] = None  # why some or all parameters have no importance


def param_importance(trials: list[dict[str, Any]], params: list[tuple[str, Domain]],
                     mode: str, seed: int = 0) -> Importance:
    """Importance of each searched hyperparameter for the metric.

    Args:
        trials: one mapping per finished trial: ``config`` (path -> value) and ``value``
            (its best metric); trials without a finite value are left out.
        params: the searched hyperparameters (path, domain).
        mode: ``min`` or ``max``.
        seed: the random forest's seed (the same trials give the same importances).
    """
    import optuna

    rows = [t for t in trials if _finite(t.get("value"))]
    if len(rows) < 2:
        return Importance(METHOD, note=f"needs at least 2 finished trials with a finite "
                                       f"metric, but got {len(rows)}")
    scores = {float(t["value"]) for t in rows}
    if len(scores) == 1:
        return Importance(METHOD, note=f"every finished trial has the same best metric "
                                       f"({scores.pop():g}), so there is no variance for any "
                                       "hyperparameter to explain")
    distributions, constant = {}, []
    for name, domain in params:
        values = [param_value(t["config"].get(name)) for t in rows]
        dist = _distribution(domain, values)
        if dist is None:
            constant.append(name)
        else:
            distributions[name] = dist
    note = (f"{', '.join(constant)}: the same value (or not numeric) in every finished trial, "
            "so no importance" if constant else None)
    if not distributions:
        return Importance(METHOD, note=note or "no searched hyperparameters")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for t in rows:
        values = {name: _internal(dist, param_value(t["config"].get(name)))
                  for name, dist in distributions.items()}
        study.add_trial(optuna.trial.create_trial(params=values, distributions=distributions,
                                                  value=float(t["value"])))
    if len(distributions) == 1:
        # fANOVA of a single parameter is 1 by definition.
        return Importance(METHOD, {next(iter(distributions)): 1.0}, note)
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return Importance(METHOD, {k: float(v) for k, v in found.items()}, note)


def _distribution(domain: Domain, values: list):
    """Optuna's distribution for these observed values (None if all are equal). Bounds
    are the observed range: PBT can move values, and Optuna rejects out-of-range ones."""
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    if param_scale(domain) == "categorical" or not all(_finite(v) for v in values):
        labels = sorted({str(v) for v in values})
        return CategoricalDistribution(labels) if len(labels) > 1 else None
    low, high = min(values), max(values)
    if low == high:
        return None
    log = param_scale(domain) == "log" and low > 0
    if domain.kind in INTEGER_KINDS and all(float(v).is_integer() for v in values):
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(float(low), float(high), log=log)


def _internal(dist, value):
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return str(value)
    return int(value) if isinstance(dist, IntDistribution) else float(value)


def _finite(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
