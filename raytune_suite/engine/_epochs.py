"""Trials and epochs of an experiment file: which numbers of the file feed which of the
schedulers' arithmetic (:mod:`raytune_suite.engine._rungs`), and what the notes of a plan
say about what the arithmetic cannot know."""

from __future__ import annotations

from typing import Optional

from raytune_suite.engine import _rungs
from raytune_suite.experiment import ExperimentSpec
from raytune_suite.experiment.space import Domain


def unit(spec: ExperimentSpec) -> str:
    """What the plan counts: epochs, or the scheduler's ``time_attr`` when its ``max_t``
    is in another unit (``time_total_s``: seconds of training)."""
    return spec.time_attr if spec.max_t and spec.time_attr != "training_iteration" \
        else "epochs"


def count_trials(spec: ExperimentSpec) -> int:
    """Trials Ray Tune creates: ``num_samples`` times the grid (every ``grid`` entry, and
    with the grid searcher every ``choice`` too, is enumerated)."""
    grid = 1
    for _, domain in spec.search_space.leaves():
        if domain.kind == "grid" or (domain.kind == "choice" and
                                     spec.search.algorithm == "grid"):
            grid *= len(domain.args)
    return spec.search.num_samples * grid


def _own_epochs(spec: ExperimentSpec) -> Optional[list[int]]:
    """The epochs after which a built-in classifier trial ends by itself (the values the
    trials can get, when ``epochs`` is searched); None for a user's trainable."""
    if spec.trainable != "classifier":
        return None
    from raytune_suite.training.config import ClassifierConfig

    domain = dict(spec.search_space.entries).get("epochs")
    if not isinstance(domain, Domain):
        return [spec.config.get("epochs", ClassifierConfig.model_fields["epochs"].default)]
    a = domain.args
    if domain.kind in ("choice", "grid"):
        return [int(v) for v in a]
    if domain.kind in ("randint", "qrandint") and a[1] - a[0] <= 10_000:
        return list(range(a[0], a[1], 1)) if domain.kind == "randint" else \
            list(range(a[0], a[1] + 1, a[2]))
    return [int(v) for v in (domain.bounds or (a[0], a[0]))]


def estimate_epochs(spec: ExperimentSpec, trials: int, at_once: Optional[int],
                    notes: list) -> Optional[_rungs.Estimate]:
    """The search's epochs (in ``time_attr`` units); None when nothing in the file fixes
    how long a trial runs.

    A trial runs at most the least of ``max_t``, ``stop.training_iteration`` and, for the
    built-in classifier, its own ``epochs`` (each value it can take, when searched). FIFO
    trains every trial that long (``low``/``high``: the shortest and longest values of a
    searched ``epochs``); ASHA, HyperBand and PBT are counted by :mod:`_rungs` with that
    length as ``max_t``. ``early_stopping_patience`` p lowers ``low`` to p + 1 epochs a
    trial, the soonest a trial can end itself; a user's trainable is taken to run until
    it is stopped. Notes say what the numbers cannot know."""
    s, epochs = spec.scheduler, unit(spec) == "epochs"
    own = _own_epochs(spec) if epochs else None
    cap = spec.max_iterations if epochs else spec.max_t
    if own is None and cap is None:
        notes.append(f"epochs unknown: {spec.trainable} decides when a trial ends; "
                     "scheduler.max_t or stop.training_iteration would fix it")
        return None
    per = [min(e, cap or e) for e in own] if own else [cap]
    if own is None:
        notes.append(f"a trial of {spec.trainable} may end sooner by itself; the numbers "
                     f"assume it runs until max_t or stop.training_iteration stops it")
    if len(set(per)) > 1:
        notes.append(f"epochs is searched: a trial runs {min(per)} to {max(per)}")
    longest, mean = max(per), sum(per) / len(per)
    if s.type == "fifo":
        est = _rungs.Estimate(trials * min(per), trials * mean, trials * longest)
    elif s.type == "asha":
        learns = spec.search.n_initial_points if spec.search.algorithm in ("hyperopt", "optuna") \
            else None
        est = _rungs.asha_epochs(trials, s.grace_period, s.reduction_factor, s.max_t,
                                 s.brackets, seed=spec.search.seed or 0, length=longest,
                                 improving_after=learns)
        notes.append("asha: low..high holds 98% of searches whose trials come in random "
                     "order of quality and keep their ranks from rung to rung" +
                     (f"; high also those in which the TPE searcher's trials after its first "
                      f"{learns} (random) beat all of these, and expected is midway "
                      "between the two" if learns else ""))
        if any(d.kind == "grid" or spec.search.algorithm == "grid"
               for _, d in spec.search_space.leaves()):
            notes.append("a grid runs in a fixed order: if quality rises or falls along "
                         "it, more or fewer trials pass ASHA's rungs than in random order")
    elif s.type == "hyperband":
        every = spec.checkpoint.every if own is not None else None
        est = _rungs.hyperband_epochs(trials, longest, s.reduction_factor,
                                      s.stop_last_trials, every, at_once)
    else:
        waves = at_once is not None and at_once < trials
        est, exploits = _rungs.pbt_epochs(trials, int(mean), s.perturbation_interval,
                                          s.burn_in_period, s.quantile_fraction, s.synch,
                                          waves)
        notes.append(f"pbt: about {exploits} exploits; each trains again (or skips) the "
                     "epochs between its donor's checkpoint and where it was")
    patience = spec.config.get("early_stopping_patience") if own else None
    if patience:
        fewest = trials * min(min(per), patience + 1)
        est = _rungs.Estimate(min(est.low, fewest), est.expected, est.high, est.rungs,
                              est.halving)
        notes.append(f"early_stopping_patience {patience}: a trial may end after "
                     f"{patience + 1} epochs; low counts that, expected assumes none does")
    if not epochs:
        notes.append(f"counted in {spec.time_attr}, the scheduler's time_attr, not epochs")
    return est


def stop_notes(spec: ExperimentSpec, notes: list) -> None:
    if spec.stop.time_budget_s:
        notes.append(f"stop.time_budget_s {spec.stop.time_budget_s:g}: the search may end "
                     "sooner, with fewer epochs than low")
    if spec.stop.thresholds:
        notes.append(f"stop {', '.join(spec.stop.thresholds)}: trials reaching it end "
                     "sooner, with fewer epochs")


# ------------------------------------------------------------------ concurrency
