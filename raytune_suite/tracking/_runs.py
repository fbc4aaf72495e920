"""Finding, closing and discarding a search's runs after stops, crashes and restarts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from raytune_suite.tracking._mlflow import mlflow_client, tag

TRIAL_ID_TAG = "ray.trial_id"
# completed | stopped_early | stopped_by_budget | diverged | errored (engine.outcomes)
OUTCOME_TAG = "raytune_suite.outcome"
ROLE_TAG = "raytune_suite.role"  # search | trial
STOP_REASON_TAG = "raytune_suite.stop_reason"  # why a diverged trial stopped
EXPERIMENT_PATH_TAG = "raytune_suite.experiment_path"


def find_trial_run(client, experiment_id: str, trial_id: str, full: bool = False):
    """The MLflow run id of a Ray trial (by its ``ray.trial_id`` tag), or None; the whole
    ``Run`` with ``full``."""
    runs = client.search_runs([experiment_id],
                              filter_string=f"tags.`{TRIAL_ID_TAG}` = '{trial_id}'",
                              max_results=1)
    if not runs:
        return None
    return runs[0] if full else runs[0].info.run_id


def child_runs(client, parent_run_id: str) -> list:
    """The trial runs of a search run."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment_id], max_results=10000,
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def discard_search(uri: str, parent_run_id: str) -> None:
    """Delete the MLflow runs of a search that stopped before Ray saved any state (it
    starts again from scratch; MLflow keeps deleted runs restorable)."""
    client = mlflow_client(uri)
    for run in child_runs(client, parent_run_id):
        client.delete_run(run.info.run_id)
    client.delete_run(parent_run_id)


def close_open_runs(uri: str, parent_run_id: str, trials: dict, max_t: Optional[int],
                    status: Optional[str], time_attr: str = "training_iteration") -> list:
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

    Returns the search's trial runs as found (those taken for lost left out), for
    :func:`~raytune_suite.tracking._search.finish_search_run` to label without fetching
    them again (a fetch reads every run's params, metrics and tags).
    """
    client = mlflow_client(uri)
    kept = []
    for run in child_runs(client, parent_run_id):
        trial = trials.get(run.data.tags.get(TRIAL_ID_TAG))
        if trial is None and trials:
            client.set_tag(run.info.run_id, OUTCOME_TAG, "lost")
            client.delete_run(run.info.run_id)
            continue
        kept.append(run)
        if run.info.status != "RUNNING":
            continue
        if trial is not None and trial.status in ("TERMINATED", "ERROR"):
            close_trial_run(client, run.info.run_id, trial.last_result, trial.status == "ERROR",
                            max_t, trial.error_file, time_attr)
        elif status:
            client.set_terminated(run.info.run_id, status=status)
    return kept


def end_tags(last_result: Optional[dict], failed: bool, max_t: Optional[int],
             error_file: Optional[str] = None,
             time_attr: str = "training_iteration") -> tuple[str, list]:
    """(outcome, tags) of a trial's end: the outcome, and why when it diverged or errored
    (the end of its ``error.txt``)."""
    from raytune_suite.engine.outcomes import recorded_outcome

    last_result = last_result or {}
    outcome = recorded_outcome(last_result, failed, max_t, time_attr)
    tags = [tag(OUTCOME_TAG, outcome)]
    if outcome == "diverged":
        tags.append(tag(STOP_REASON_TAG, last_result.get("stop_reason", "")))
    if failed and error_file and os.path.exists(error_file):
        tags.append(tag("error", Path(error_file).read_text()[-4000:]))
    return outcome, tags


def close_trial_run(client, run_id: str, last_result: Optional[dict], failed: bool,
                    max_t: Optional[int], error_file: Optional[str] = None,
                    time_attr: str = "training_iteration", params: Sequence = ()) -> str:
    """Tag how a trial ended (:func:`end_tags`); end its run. ``params`` not logged yet go
    in the same request as the tags."""
    outcome, tags = end_tags(last_result, failed, max_t, error_file, time_attr)
    client.log_batch(run_id, params=list(params), tags=tags)
    client.set_terminated(run_id, status="FAILED" if outcome == "errored" else "FINISHED")
    return outcome
