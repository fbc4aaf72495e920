"""What a search found: one summary per trial of a Ray ``ResultGrid``, best first."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from raytune_suite.engine.outcomes import recorded_outcome


@dataclass(frozen=True)
class TrialSummary:
    trial_id: str
    config: dict[str, Any]  # the searched values only
    best: Optional[float]  # best value of the metric over the trial's epochs
    epochs: int  # training iterations the trial ran
    status: str  # TERMINATED, ERROR or DIVERGED
    checkpoint: Optional[str]  # folder of the best retained checkpoint
    outcome: str = "completed"  # see raytune_suite.engine.outcomes
    # With several objectives: each objective's last reported value (what the searcher
    # was told when the trial ended); empty with one objective.
    values: dict[str, float] = field(default_factory=dict)


def _get(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def summarize(results, spec, searched: list[str], outcomes: Optional[dict] = None
              ) -> list[TrialSummary]:
    """One summary per trial of a Ray ``ResultGrid``, best first; trials with no finite
    value of the metric come last, and so do diverged trials (a NaN or inf loss): their
    earlier epochs do not make a model anyone should pick."""
    metric, mode = spec.metric, spec.mode
    # A trial that errored before its first result has no config in its Result; Ray's
    # Trial has it.
    analysis = getattr(results, "_experiment_analysis", None)
    trial_configs = {t.trial_id: t.config for t in getattr(analysis, "trials", None) or []}
    rows = []
    for r in results:
        history = r.metrics_dataframe
        metrics = r.metrics or {}
        diverged = bool(metrics.get("diverged"))
        values = ([float(v) for v in history[metric] if _finite(v)]
                  if history is not None and metric in history and not diverged else [])
        best = (max(values) if mode == "max" else min(values)) if values else None
        ckpt = None
        if r.best_checkpoints:
            pick = max if mode == "max" else min
            scored = [(c, m.get(metric)) for c, m in r.best_checkpoints if _finite(m.get(metric))]
            if scored:
                ckpt = pick(scored, key=lambda cm: cm[1])[0].path
            else:
                ckpt = r.best_checkpoints[-1][0].path
        trial_id = str(metrics.get("trial_id", r.path.rsplit("/", 1)[-1]))
        config = r.config or trial_configs.get(trial_id) or {}
        rows.append(TrialSummary(
            trial_id=trial_id,
            config={k: _get(config, k) for k in searched},
            best=best,
            epochs=int(metrics.get("training_iteration", 0)),
            status="ERROR" if r.error else "DIVERGED" if diverged else "TERMINATED",
            checkpoint=ckpt,
            outcome=recorded_outcome(metrics, r.error is not None, spec.max_t, spec.time_attr,
                                     (outcomes or {}).get(str(metrics.get("trial_id")))),
            values={m: float(metrics[m]) for m, _ in spec.objectives
                    if not diverged and _finite(metrics.get(m))},
        ))
    sign = -1 if mode == "max" else 1
    return sorted(rows, key=lambda t: (t.best is None, sign * (t.best or 0.0)))


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def pareto_front(trials: Sequence[TrialSummary], objectives: Sequence[tuple[str, str]]
                 ) -> list[TrialSummary]:
    """The trials no other trial dominates (at least as good in every objective, better in
    one), in the order given; only trials with a finite value of every objective count.

    Args:
        trials: summaries whose ``values`` hold the objectives.
        objectives: (metric, mode) pairs, mode ``min`` or ``max``.
    """
    signs = [(m, -1.0 if mode == "max" else 1.0) for m, mode in objectives]
    scored = [(t, [sign * t.values[m] for m, sign in signs]) for t in trials
              if all(m in t.values for m, _ in signs)]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return [t for t, v in scored if not any(dominates(w, v) for _, w in scored)]
