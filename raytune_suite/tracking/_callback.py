"""Ray Tune callback logging every trial to MLflow from the driver (workers never need
access to the tracking store)."""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional

from ray.air.integrations.mlflow import MLflowLoggerCallback

from raytune_suite.tracking._mlflow import flatten, mlflow_client, param, short_reason
from raytune_suite.tracking._names import Layout, result_metrics, run_name
from raytune_suite.tracking._runs import (ROLE_TAG, TRIAL_ID_TAG, close_trial_run,
                                          child_runs)

logger = logging.getLogger(__name__)


def _offline_safe(method):
    """Run a callback method; the first MLflow failure turns the callback off for the rest
    of the search (with one warning) instead of stopping the search."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.offline:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - MLflow raises many types; tuning goes on
            self.go_offline(e)
            return None

    return wrapper


class TrialRunsCallback(MLflowLoggerCallback):
    """Ray's ``MLflowLoggerCallback`` with batched writes, lineage, outcomes and outages.

    Differences from the stock callback, each for a reason:
    - writes go through ``log_batch`` (one request per result instead of one per
      metric: with SQLite the stock callback stalls the driver loop);
    - runs are named for what tells trials apart (``tracking._names.run_name``), not
      ``train_classifier_<id>``; Ray's bookkeeping and the ``epoch`` copy of the step
      are not logged;
    - every trial run carries the Ray trial id and the parent search run, and is found
      again by that id after ``raytune-suite resume`` instead of being duplicated;
    - the final status says how the trial ended (``engine.outcomes``): completed,
      stopped early by the scheduler, stopped by the time budget, diverged (NaN or inf
      loss; the reason is the ``stop_reason`` tag) or errored;
    - after a resume, steps a run already holds are not logged again (a trial restored
      from a checkpoint repeats the iterations after it);
    - PBT changes a trial's hyperparameters mid-run; MLflow params are immutable (they
      keep the first values), so the mutated ones are also ``config/<name>`` metrics at
      every step, from step 1;
    - if the tracking server fails mid-search, tuning goes on: one warning, no more
      MLflow calls (``offline`` says why), and ``raytune-suite mlflow-sync`` backfills
      from Ray's results later.
    """

    def __init__(self, tracking_uri: str, experiment_name: str, parent_run_id: str,
                 max_t: Optional[int], experiment_path: str = "",
                 time_attr: str = "training_iteration", layout: Optional[Layout] = None):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment_name,
                         tags={"mlflow.parentRunId": parent_run_id, ROLE_TAG: "trial"})
        self.max_t = max_t
        self.time_attr = time_attr
        self.experiment_path = experiment_path
        self.layout = layout or Layout()  # what names the runs; what PBT mutates
        self.offline: Optional[str] = None
        self._params: dict[str, dict[str, str]] = {}  # run -> params MLflow holds
        self._pending: dict[str, list] = {}  # run -> params for its next request
        self._logged_through: dict[str, int] = {}  # run -> last step MLflow holds
        self._known: Optional[dict[str, Any]] = None  # Ray trial id -> an earlier run

    def setup(self, *args, **kwargs):
        self._trial_runs = {}
        self._known = None
        self._setup(*args, **kwargs)

    @_offline_safe
    def _setup(self, *args, **kwargs):
        super().setup(*args, **kwargs)
        self._client = mlflow_client(self.tracking_uri)

    def go_offline(self, error: BaseException) -> None:
        """Stop calling MLflow for the rest of the search; say so once, and record it in
        the experiment's state so the end of the run and ``best`` point at mlflow-sync."""
        self.offline = short_reason(error)
        logger.warning("MLflow at %s failed (%s): tuning goes on without MLflow. When it "
                       "is back, backfill the missing runs with: raytune-suite mlflow-sync "
                       "%s", self.tracking_uri, self.offline, self.experiment_path)
        if self.experiment_path:
            from raytune_suite.engine.state import update_state

            update_state(self.experiment_path, mlflow_offline=self.offline)

    def _find_run(self, trial) -> Optional[str]:
        """The run an earlier driver made for this trial (a resumed search), if any. One
        request per driver start: the search run's children, fetched at the first trial
        start (none yet on a fresh search), with their params and last logged steps."""
        if self._known is None:
            parent = self.tags["mlflow.parentRunId"]
            self._known = {r.data.tags.get(TRIAL_ID_TAG): r
                           for r in child_runs(self._client, parent)}
        run = self._known.pop(trial.trial_id, None)
        if run is None:
            return None
        self._params[run.info.run_id] = dict(run.data.params)
        steps = [m.step for m in getattr(run.data, "_metric_objs", [])]
        if steps:
            self._logged_through[run.info.run_id] = max(steps)
        return run.info.run_id

    @_offline_safe
    def log_trial_start(self, trial):
        run_id = self._trial_runs.get(trial) or self._find_run(trial)
        if run_id is None:
            tags = dict(self.tags, trial_name=str(trial), **{TRIAL_ID_TAG: trial.trial_id})
            name = run_name(trial.trial_id, trial.experiment_tag, trial.config,
                            self.layout.searched)
            run_id = self._client.create_run(self.mlflow_util.experiment_id,
                                             run_name=name, tags=tags).info.run_id
            self._params[run_id] = {}  # a new run has no params: no need to ask MLflow
        else:
            self._client.update_run(run_id, status="RUNNING")
        self._trial_runs[trial] = run_id
        self._log_params(trial, run_id)

    def _log_params(self, trial, run_id: str) -> None:
        """The trial's config as params, once (PBT's later values: ``config/`` metrics),
        sent with the run's next request (its first result, or its end)."""
        logged = self._params.setdefault(run_id, {})
        new = [param(k, v) for k, v in flatten(trial.config).items() if k not in logged]
        if new:
            self._pending.setdefault(run_id, []).extend(new)
        logged.update({p.key: p.value for p in new})

    @_offline_safe
    def log_trial_result(self, iteration: int, trial, result: dict):
        run_id = self._trial_runs[trial]
        step = int(result.get("training_iteration", iteration))
        if step <= self._logged_through.get(run_id, 0):
            return  # logged before the driver stopped; the restored trial repeats it
        self._logged_through.pop(run_id, None)
        self._client.log_batch(run_id, params=self._pending.pop(run_id, []),
                               metrics=result_metrics(result, step, self.layout.mutated))

    @_offline_safe
    def log_trial_end(self, trial, failed: bool = False):
        run_id = self._trial_runs.get(trial)
        if run_id is None:
            return
        close_trial_run(self._client, run_id, trial.last_result, failed, self.max_t,
                        trial.error_file if failed else None, self.time_attr,
                        params=self._pending.pop(run_id, []))
