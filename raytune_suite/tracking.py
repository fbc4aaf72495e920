"""MLflow: one experiment per experiment file, a parent run for the search, one child
run per trial. Everything is logged from the driver (Ray's ``MLflowLoggerCallback``),
so workers never need access to the tracking store.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.utils import flatten_dict

logger = logging.getLogger(__name__)

TRIAL_ID_TAG = "ray.trial_id"
OUTCOME_TAG = "raytune_suite.outcome"  # completed | stopped_early | errored
ROLE_TAG = "raytune_suite.role"  # search | trial
EXPERIMENT_PATH_TAG = "raytune_suite.experiment_path"

# Ray's bookkeeping fields that are not worth a metric history in MLflow.
_SKIP_METRICS = {"done", "pid", "timestamp", "training_iteration", "iterations_since_restore",
                 "time_since_restore", "timesteps_total", "episodes_total", "node_ip",
                 "hostname", "date", "trial_id", "experiment_tag", "time_total_s",
                 "timesteps_since_restore", "should_checkpoint", "checkpoint_dir_name"}


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` absolute (against the working directory)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).expanduser().resolve())
    return uri


def ui_command(uri: str) -> str:
    """The command that shows these runs in the MLflow UI."""
    if uri.startswith("sqlite:"):
        return f"uv run mlflow ui --backend-store-uri {uri} --host 127.0.0.1"
    return f"open {uri} in a browser"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def start_search_run(uri: str, experiment: str, run_name: str, experiment_path: str,
                     spec_file: Path, params: dict[str, Any]) -> str:
    """Create the experiment (if new) and the parent run of this search; returns its id."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    exp_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=run_name, tags={
        ROLE_TAG: "search", EXPERIMENT_PATH_TAG: experiment_path})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[_param(k, v) for k, v in flatten_dict(params).items()])
    client.log_artifact(run_id, str(spec_file))
    return run_id


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a parent run RUNNING again on resume."""
    _client(uri).update_run(run_id, status="RUNNING")


def finish_search_run(uri: str, run_id: str, best: Optional[dict[str, Any]],
                      status: str = "FINISHED") -> None:
    """Record the best trial on the parent run and close it."""
    client = _client(uri)
    if best:
        client.log_batch(
            run_id,
            metrics=[_metric(f"best_{best['metric']}", best["value"], 0)],
            tags=[_tag("best.trial_id", best["trial_id"]),
                  _tag("best.checkpoint", best.get("checkpoint") or ""),
                  _tag("best.config", repr(best["config"])[:5000])],
        )
    client.set_terminated(run_id, status=status)


def _param(k, v):
    from mlflow.entities import Param

    return Param(str(k), str(v)[:6000])


def _metric(k, v, step):
    import time

    from mlflow.entities import Metric

    return Metric(str(k), float(v), int(time.time() * 1000), int(step))


def _tag(k, v):
    from mlflow.entities import RunTag

    return RunTag(str(k), str(v))


class TrialRunsCallback(MLflowLoggerCallback):
    """Ray's ``MLflowLoggerCallback`` with batched writes, lineage and outcomes.

    Differences from the stock callback, each for a reason:
    - writes go through ``log_batch`` (one request per result instead of one per
      metric: with SQLite the stock callback stalls the driver loop);
    - every trial run carries the Ray trial id and the parent search run, and is found
      again by that id after ``raytune-suite resume`` instead of being duplicated;
    - the final status says how the trial ended: completed, stopped early by the
      scheduler, or errored;
    - PBT changes a trial's hyperparameters mid-run; MLflow params are immutable, so
      later values are logged as ``config/<name>`` metrics.
    """

    def __init__(self, tracking_uri: str, experiment_name: str, parent_run_id: str,
                 max_t: Optional[int]):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment_name,
                         tags={"mlflow.parentRunId": parent_run_id, ROLE_TAG: "trial"})
        self.max_t = max_t

    def setup(self, *args, **kwargs):
        super().setup(*args, **kwargs)
        self._client = _client(self.tracking_uri)
        self._stopped_early: set[str] = set()
        self._params: dict[str, dict[str, str]] = {}

    def _find_run(self, trial) -> Optional[str]:
        runs = self._client.search_runs(
            [self.mlflow_util.experiment_id],
            filter_string=f"tags.`{TRIAL_ID_TAG}` = '{trial.trial_id}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def log_trial_start(self, trial):
        run_id = self._trial_runs.get(trial) or self._find_run(trial)
        if run_id is None:
            tags = dict(self.tags, trial_name=str(trial), **{TRIAL_ID_TAG: trial.trial_id})
            run_id = self._client.create_run(self.mlflow_util.experiment_id,
                                             run_name=str(trial), tags=tags).info.run_id
        else:
            self._client.update_run(run_id, status="RUNNING")
        self._trial_runs[trial] = run_id
        self._log_config(trial, run_id)

    def _log_config(self, trial, run_id: str) -> None:
        flat = {k: str(v)[:6000] for k, v in flatten_dict(trial.config).items()}
        if run_id not in self._params:
            self._params[run_id] = dict(self._client.get_run(run_id).data.params)
        logged = self._params[run_id]
        new = [_param(k, v) for k, v in flat.items() if k not in logged]
        step = trial.last_result.get("training_iteration", 0) if trial.last_result else 0
        changed = []
        for k, v in flat.items():
            if k in logged and logged[k] != v and (value := _as_float(v)) is not None:
                changed.append(_metric(f"config/{k}", value, step))
        if new or changed:
            self._client.log_batch(run_id, params=new, metrics=changed)
        logged.update({p.key: p.value for p in new})

    def log_trial_result(self, iteration: int, trial, result: dict):
        run_id = self._trial_runs[trial]
        step = int(result.get("training_iteration", iteration))
        metrics = []
        for k, v in flatten_dict(result).items():
            if k in _SKIP_METRICS or k.startswith("config/"):
                continue
            value = _as_float(v)
            if value is not None:
                metrics.append(_metric(k, value, step))
        self._client.log_batch(run_id, metrics=metrics)
        if result.get("done") and not (self.max_t and step >= self.max_t):
            # Callbacks only see done=True when Tune stopped the trial; the stop
            # criterion (max_t) is excluded above, so the scheduler did it.
            self._stopped_early.add(trial.trial_id)

    def log_trial_end(self, trial, failed: bool = False):
        run_id = self._trial_runs.get(trial)
        if run_id is None:
            return
        if failed:
            outcome, status = "errored", "FAILED"
        elif trial.trial_id in self._stopped_early:
            outcome, status = "stopped_early", "FINISHED"
        else:
            outcome, status = "completed", "FINISHED"
        tags = [_tag(OUTCOME_TAG, outcome)]
        if failed and trial.error_file and os.path.exists(trial.error_file):
            tags.append(_tag("error", Path(trial.error_file).read_text()[-4000:]))
        self._client.log_batch(run_id, tags=tags)
        self._client.set_terminated(run_id, status=status)


def _as_float(v: Any) -> Optional[float]:
    if isinstance(v, bool):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
