"""How each trial ended, from what really happened, and the rules that end trials.

Ray Tune marks every ending ``done`` alike. The suite tells them apart:

- ``completed``: the trial reached ``max_t``, a ``stop`` rule, or its own end;
- ``stopped_early``: the scheduler (ASHA, HyperBand) stopped it before ``max_t``;
- ``stopped_by_budget``: the search's ``time_budget_s`` ran out first;
- ``diverged``: it reported a NaN or inf loss (``diverged=1``) and ended;
- ``errored``: it raised (after its retries).

The schedulers here are Ray's own, each noting on the trial when *it* stopped one; the
:class:`OutcomeCallback` writes the outcome into the trial's last result (key
``outcome``) as the trial ends, for MLflow. Trials the time budget stops never reach a
callback, so once ``fit`` returns the runner settles every finished trial's outcome
(:func:`settle`) and keeps them in ``outcomes.jsonl`` beside Ray's state, where ``best``,
reports and ``mlflow-sync`` read them.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

from ray.tune import Callback, Stopper
from ray.tune import schedulers as ray_schedulers
from ray.tune.schedulers import TrialScheduler

logger = logging.getLogger(__name__)

OUTCOME_KEY = "outcome"
OUTCOMES = ("completed", "stopped_early", "stopped_by_budget", "diverged", "errored")


def decide_outcome(last_result: Optional[dict], failed: bool, stopped_by_scheduler: bool,
                   max_t: Optional[int], time_attr: str = "training_iteration",
                   budget: bool = False) -> str:
    """The outcome of a trial that ended (see the module docstring)."""
    last = last_result or {}
    if failed:
        return "errored"
    if last.get("diverged"):
        return "diverged"
    reached_max = bool(max_t) and _number(last.get(time_attr)) >= max_t
    if stopped_by_scheduler and not reached_max:
        return "stopped_early"
    if last.get("done") or reached_max:
        return "completed"
    return "stopped_by_budget" if budget else "stopped"


def recorded_outcome(last_result: Optional[dict], failed: bool, max_t: Optional[int],
                     time_attr: str = "training_iteration", recorded: Optional[str] = None
                     ) -> str:
    """The outcome the search recorded for a trial (``recorded``, from outcomes.jsonl, or
    the one in its last result), or else the best inference from its last result."""
    last = last_result or {}
    if failed:
        return "errored"
    if recorded in OUTCOMES:
        return recorded
    if last.get(OUTCOME_KEY) in OUTCOMES:
        return last[OUTCOME_KEY]
    return decide_outcome(last, False, bool(max_t) and _number(last.get(time_attr)) < max_t,
                          max_t, time_attr)


def _number(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return -math.inf
    return -math.inf if math.isnan(value) else value


# ------------------------------------------------------------------ stop rules


class StopRules(Stopper):
    """``scheduler.max_t`` and the file's ``stop`` rules.

    Args:
        limits: key -> value at which a trial stops (``training_iteration: 20``).
        thresholds: metric -> value a trial stops at once it reaches it. For the
            experiment's own metric "reaches" follows ``mode`` (a loss stops at or
            below, an accuracy at or above); any other key stops at or above, as in Ray.
    """

    def __init__(self, limits: dict[str, float], thresholds: dict[str, float],
                 metric: str, mode: str):
        self.limits = dict(limits)
        self.thresholds = dict(thresholds)
        self.metric, self.mode = metric, mode

    def __call__(self, trial_id: str, result: dict) -> bool:
        for key, limit in self.limits.items():
            if _number(result.get(key)) >= limit:
                return True
        for key, value in self.thresholds.items():
            got = result.get(key)
            if isinstance(got, bool) or not isinstance(got, (int, float)) or math.isnan(got):
                continue
            if key == self.metric and self.mode == "min":
                if got <= value:
                    return True
            elif got >= value:
                return True
        return False

    def stop_all(self) -> bool:
        return False


# ------------------------------------------------------------------ schedulers


def note_stopped(trial) -> None:
    """Mark ``trial`` as stopped by the scheduler (for its outcome; this session only)."""
    trial.temporary_state.stopped_by_scheduler = True


def stopped_by_scheduler(trial) -> bool:
    return getattr(trial.temporary_state, "stopped_by_scheduler", False)


def forget_missing_checkpoints(trial) -> None:
    """Drop the checkpoints a restored trial's bookkeeping lists but storage no longer
    holds: Ray's experiment state is saved every few seconds, so it can name checkpoints
    that ``keep`` deleted after it was written. Without this, Ray tries to delete them
    again on the trial's next checkpoint and logs a FileNotFoundError traceback."""
    from ray.train._internal.storage import _exists_at_fs_path

    manager = trial.run_metadata.checkpoint_manager
    kept = []
    for result in manager._checkpoint_results:
        ckpt = result.checkpoint
        if ckpt is not None and _exists_at_fs_path(ckpt.filesystem, ckpt.path):
            kept.append(result)
    manager._checkpoint_results = kept
    latest = manager.latest_checkpoint_result
    if latest is not None and latest.checkpoint is not None and not _exists_at_fs_path(
            latest.checkpoint.filesystem, latest.checkpoint.path):
        fallback = kept[-1] if kept else None
        logger.warning("trial %s: its latest checkpoint %s is gone; it resumes from %s",
                       trial.trial_id, latest.checkpoint.path,
                       fallback.checkpoint.path if fallback else "the start")
        manager._latest_checkpoint_result = fallback


class _Recording:
    """Mixin for Ray's schedulers: note the trials the scheduler itself stops, and tidy
    restored trials' checkpoint lists."""

    def on_trial_add(self, tune_controller, trial):
        if trial.run_metadata.checkpoint_manager.latest_checkpoint_result is not None:
            forget_missing_checkpoints(trial)  # a restored trial
        return super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(_StopNoter(tune_controller), trial, result)
        if decision == TrialScheduler.STOP:
            note_stopped(trial)
        return decision


class _StopNoter:
    """The controller as a scheduler sees it, noting trials it stops directly
    (HyperBand stops paused trials of a finished rung this way)."""

    def __init__(self, controller):
        self._controller = controller

    def stop_trial(self, trial):
        note_stopped(trial)
        return self._controller.stop_trial(trial)

    def __getattr__(self, name):
        return getattr(self._controller, name)


class FIFOScheduler(_Recording, ray_schedulers.FIFOScheduler):
    pass


class ASHAScheduler(_Recording, ray_schedulers.ASHAScheduler):
    pass


class HyperBandScheduler(_Recording, ray_schedulers.HyperBandScheduler):
    pass


def settle(trials: list, max_t: Optional[int], time_attr: str, budget: bool
           ) -> dict[str, str]:
    """Outcomes of every finished Ray trial once ``fit`` has returned (not after Ctrl-C).
    A trial that ended without reaching a callback was stopped by the search's time
    budget; its last result gets the outcome too, for MLflow."""
    outcomes = {}
    for trial in trials:
        if trial.status not in ("TERMINATED", "ERROR"):
            continue
        last = trial.run_metadata.last_result
        if trial.status == "ERROR":
            outcome = "errored"
        elif last.get(OUTCOME_KEY) in OUTCOMES:
            outcome = last[OUTCOME_KEY]
        else:
            outcome = decide_outcome(last, False, stopped_by_scheduler(trial), max_t,
                                     time_attr, budget)
        last[OUTCOME_KEY] = outcome
        outcomes[trial.trial_id] = outcome
    return outcomes


# ------------------------------------------------------------------ callback


class OutcomeCallback(Callback):
    """Writes each ended trial's outcome into its last result (``outcome``); listed
    before every other callback so that they read it."""

    def __init__(self, max_t: Optional[int], time_attr: str, budget: bool):
        self.max_t, self.time_attr, self.budget = max_t, time_attr, budget

    def on_trial_complete(self, iteration: int, trials: list, trial, **info):
        self._record(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info):
        self._record(trial, failed=True)

    def _record(self, trial, failed: bool) -> None:
        last = trial.run_metadata.last_result
        last[OUTCOME_KEY] = decide_outcome(last, failed, stopped_by_scheduler(trial),
                                           self.max_t, self.time_attr, self.budget)
