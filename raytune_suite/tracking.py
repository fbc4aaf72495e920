"""MLflow: one experiment per experiment file, a parent run for the search, one child
run per trial. Everything is logged from the driver (Ray's ``MLflowLoggerCallback``),
so workers never need access to the tracking store.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path
from typing import Any, Optional

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.utils import flatten_dict

from raytune_suite.engine.outcomes import recorded_outcome

logger = logging.getLogger(__name__)

TRIAL_ID_TAG = "ray.trial_id"
# completed | stopped_early | stopped_by_budget | diverged | errored (engine.outcomes)
OUTCOME_TAG = "raytune_suite.outcome"
ROLE_TAG = "raytune_suite.role"  # search | trial
STOP_REASON_TAG = "raytune_suite.stop_reason"  # why a diverged trial stopped
EXPERIMENT_PATH_TAG = "raytune_suite.experiment_path"

# Ray's bookkeeping fields that are not worth a metric history in MLflow.
_SKIP_METRICS = {"done", "pid", "timestamp", "training_iteration", "iterations_since_restore",
                 "time_since_restore", "timesteps_total", "episodes_total", "node_ip",
                 "hostname", "date", "trial_id", "experiment_tag", "time_total_s",
                 "timesteps_since_restore", "should_checkpoint", "checkpoint_dir_name",
                 "outcome"}


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` absolute (against the working directory)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).expanduser().resolve())
    return uri


def configure_client() -> None:
    """Fail over in seconds, not minutes. MLflow's HTTP client retries a request 7 times
    with exponential backoff by default (about 4 minutes); the driver logs every result,
    so a dead server would stall tuning. The user's own settings win."""
    for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
                        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")):
        os.environ.setdefault(name, value)


def short_reason(error: BaseException) -> str:
    """The useful part of an MLflow client error (``Connection refused``, a status code)."""
    text = " ".join(str(error).split())
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return found.group(1).strip() if found else text[:200]


def check_reachable(uri: str) -> None:
    """Raise a :class:`SpecError` (before Ray starts) when runs cannot be logged to ``uri``.

    A SQLite file's folder must exist (the file itself is created on first use); a
    tracking server must answer a request within the client's timeout.
    """
    from raytune_suite.errors import SpecError

    field = "tracking.mlflow.tracking_uri"
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise SpecError(field, f"the SQLite file's folder {folder} must exist", uri)
        return
    if uri.startswith(("http://", "https://")):
        configure_client()
        try:
            mlflow_client(uri).search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - connection, auth and server errors alike
            raise SpecError(field, f"no MLflow tracking server answered ({short_reason(e)}); "
                                   "start it, fix the URI, or run with --no-mlflow",
                            uri) from None


def ui_command(uri: str) -> str:
    """The command that shows these runs in the MLflow UI."""
    if uri.startswith("sqlite:"):
        return f"uv run mlflow ui --backend-store-uri {uri} --host 127.0.0.1"
    return f"open {uri} in a browser"


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def start_search_run(uri: str, experiment: str, run_name: str, experiment_path: str,
                     spec_file: Path, params: dict[str, Any]) -> str:
    """Create the experiment (if new) and the parent run of this search; returns its id."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow_client(uri)
    found = client.get_experiment_by_name(experiment)
    exp_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=run_name, tags={
        ROLE_TAG: "search", EXPERIMENT_PATH_TAG: experiment_path})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[param(k, v) for k, v in flatten_dict(params).items()])
    client.log_artifact(run_id, str(spec_file))
    return run_id


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a parent run RUNNING again on resume."""
    mlflow_client(uri).update_run(run_id, status="RUNNING")


def finish_search_run(uri: str, run_id: str, best: Optional[dict[str, Any]],
                      status: str = "FINISHED") -> None:
    """Record the best trial on the parent run and close it."""
    client = mlflow_client(uri)
    if best:
        client.log_batch(
            run_id,
            metrics=[_metric(f"best_{best['metric']}", best["value"], 0)],
            tags=[_tag("best.trial_id", best["trial_id"]),
                  _tag("best.checkpoint", best.get("checkpoint") or ""),
                  _tag("best.config", repr(best["config"])[:5000])],
        )
    client.set_terminated(run_id, status=status)


def param(k, v):
    from mlflow.entities import Param

    return Param(str(k), str(v)[:6000])


def _metric(k, v, step):
    import time

    from mlflow.entities import Metric

    return Metric(str(k), float(v), int(time.time() * 1000), int(step))


def _tag(k, v):
    from mlflow.entities import RunTag

    return RunTag(str(k), str(v))


def result_metrics(result: dict, step: int) -> list:
    """The MLflow metrics of one Tune result: its numeric values, minus Ray's bookkeeping
    and the ``config/...`` copy of the hyperparameters."""
    metrics = []
    for k, v in flatten_dict(result).items():
        if k in _SKIP_METRICS or k.startswith("config/"):
            continue
        value = _as_float(v)
        if value is not None:
            metrics.append(_metric(k, value, step))
    return metrics


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
    - every trial run carries the Ray trial id and the parent search run, and is found
      again by that id after ``raytune-suite resume`` instead of being duplicated;
    - the final status says how the trial ended (``engine.outcomes``): completed,
      stopped early by the scheduler, stopped by the time budget, diverged (NaN or inf
      loss; the reason is the ``stop_reason`` tag) or errored;
    - after a resume, steps a run already holds are not logged again (a trial restored
      from a checkpoint repeats the iterations after it);
    - PBT changes a trial's hyperparameters mid-run; MLflow params are immutable, so
      later values are logged as ``config/<name>`` metrics;
    - if the tracking server fails mid-search, tuning goes on: one warning, no more
      MLflow calls (``offline`` says why), and ``raytune-suite mlflow-sync`` backfills
      from Ray's results later.
    """

    def __init__(self, tracking_uri: str, experiment_name: str, parent_run_id: str,
                 max_t: Optional[int], experiment_path: str = "",
                 time_attr: str = "training_iteration"):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment_name,
                         tags={"mlflow.parentRunId": parent_run_id, ROLE_TAG: "trial"})
        self.max_t = max_t
        self.time_attr = time_attr
        self.experiment_path = experiment_path
        self.offline: Optional[str] = None
        self._params: dict[str, dict[str, str]] = {}
        self._logged_through: dict[str, int] = {}  # run -> last step MLflow holds

    def setup(self, *args, **kwargs):
        self._trial_runs = {}
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
        run = find_trial_run(self._client, self.mlflow_util.experiment_id, trial.trial_id,
                             full=True)
        if run is None:
            return None
        steps = [m.step for m in getattr(run.data, "_metric_objs", [])]
        if steps:
            self._logged_through[run.info.run_id] = max(steps)
        return run.info.run_id

    @_offline_safe
    def log_trial_start(self, trial):
        run_id = self._trial_runs.get(trial) or self._find_run(trial)
        if run_id is None:
            tags = dict(self.tags, trial_name=str(trial), **{TRIAL_ID_TAG: trial.trial_id})
            run_id = self._client.create_run(self.mlflow_util.experiment_id,
                                             run_name=str(trial), tags=tags).info.run_id
            self._params[run_id] = {}  # a new run has no params: no need to ask MLflow
        else:
            self._client.update_run(run_id, status="RUNNING")
        self._trial_runs[trial] = run_id
        self._log_config(trial, run_id)

    def _log_config(self, trial, run_id: str) -> None:
        flat = {k: str(v)[:6000] for k, v in flatten_dict(trial.config).items()}
        if run_id not in self._params:
            self._params[run_id] = dict(self._client.get_run(run_id).data.params)
        logged = self._params[run_id]
        new = [param(k, v) for k, v in flat.items() if k not in logged]
        step = trial.last_result.get("training_iteration", 0) if trial.last_result else 0
        changed = []
        for k, v in flat.items():
            if k in logged and logged[k] != v and (value := _as_float(v)) is not None:
                changed.append(_metric(f"config/{k}", value, step))
        if new or changed:
            self._client.log_batch(run_id, params=new, metrics=changed)
        logged.update({p.key: p.value for p in new})

    @_offline_safe
    def log_trial_result(self, iteration: int, trial, result: dict):
        run_id = self._trial_runs[trial]
        step = int(result.get("training_iteration", iteration))
        if step <= self._logged_through.get(run_id, 0):
            return  # logged before the driver stopped; the restored trial repeats it
        self._logged_through.pop(run_id, None)
        self._client.log_batch(run_id, metrics=result_metrics(result, step))

    @_offline_safe
    def log_trial_end(self, trial, failed: bool = False):
        run_id = self._trial_runs.get(trial)
        if run_id is None:
            return
        close_trial_run(self._client, run_id, trial.last_result, failed, self.max_t,
                        trial.error_file if failed else None, self.time_attr)


def find_trial_run(client, experiment_id: str, trial_id: str, full: bool = False):
    """The MLflow run id of a Ray trial (by its ``ray.trial_id`` tag), or None; the whole
    ``Run`` with ``full``."""
    runs = client.search_runs([experiment_id],
                              filter_string=f"tags.`{TRIAL_ID_TAG}` = '{trial_id}'",
                              max_results=1)
    if not runs:
        return None
    return runs[0] if full else runs[0].info.run_id


def discard_search(uri: str, parent_run_id: str) -> None:
    """Delete the MLflow runs of a search that stopped before Ray saved any state (it
    starts again from scratch; MLflow keeps deleted runs restorable)."""
    client = mlflow_client(uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    for run in client.search_runs([experiment_id], max_results=10000,
                                  filter_string=f"tags.`mlflow.parentRunId` = "
                                                f"'{parent_run_id}'"):
        client.delete_run(run.info.run_id)
    client.delete_run(parent_run_id)


def close_open_runs(uri: str, parent_run_id: str, trials: dict, max_t: Optional[int],
                    status: Optional[str], time_attr: str = "training_iteration") -> None:
    """Make the search's trial runs agree with Ray's trials after a stop or a crash.

    - a run still RUNNING whose trial Ray finished (the driver died before its end
      reached MLflow) is closed as Ray ended it;
    - a run still RUNNING whose trial is unfinished gets ``status`` (e.g. KILLED; None
      leaves it open);
    - a run of a trial Ray does not know (created just before a crash, after Ray last
      saved its state; Ray then never ran that trial again) is tagged ``lost`` and
      deleted (MLflow keeps deleted runs restorable), so every run is one real trial.

    Args:
        trials: Ray trial id -> Ray ``Trial`` (status, last_result, error_file) for every
            trial of the experiment; empty when Ray's trials are unknown (the search
            itself failed), and then no run is taken for lost.
    """
    client = mlflow_client(uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment_id], max_results=10000,
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    for run in runs:
        trial = trials.get(run.data.tags.get(TRIAL_ID_TAG))
        if trial is None and trials:
            client.set_tag(run.info.run_id, OUTCOME_TAG, "lost")
            client.delete_run(run.info.run_id)
        elif run.info.status != "RUNNING":
            continue
        elif trial is not None and trial.status in ("TERMINATED", "ERROR"):
            close_trial_run(client, run.info.run_id, trial.last_result, trial.status == "ERROR",
                            max_t, trial.error_file, time_attr)
        elif status:
            client.set_terminated(run.info.run_id, status=status)


def close_trial_run(client, run_id: str, last_result: Optional[dict], failed: bool,
                    max_t: Optional[int], error_file: Optional[str] = None,
                    time_attr: str = "training_iteration") -> str:
    """Tag how a trial ended (and why, when it diverged or errored); end its run."""
    last_result = last_result or {}
    outcome = recorded_outcome(last_result, failed, max_t, time_attr)
    status = "FAILED" if outcome == "errored" else "FINISHED"
    tags = [_tag(OUTCOME_TAG, outcome)]
    if outcome == "diverged":
        tags.append(_tag(STOP_REASON_TAG, last_result.get("stop_reason", "")))
    if failed and error_file and os.path.exists(error_file):
        tags.append(_tag("error", Path(error_file).read_text()[-4000:]))
    client.log_batch(run_id, tags=tags)
    client.set_terminated(run_id, status=status)
    return outcome


def _as_float(v: Any) -> Optional[float]:
    if isinstance(v, bool):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
