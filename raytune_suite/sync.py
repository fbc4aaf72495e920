"""``raytune-suite mlflow-sync``: backfill MLflow from Ray's own results.

Ray Tune keeps every trial's config and every reported result in the experiment
folder, whatever happened to the tracking server meanwhile. This writes what MLflow
is missing: the search run (if MLflow never saw it), one run per trial (found by its
``ray.trial_id`` tag, created if absent), the params it lacks, every (metric, step)
not yet logged, and the outcome of trials whose end never reached MLflow; then the
leaderboard, as at the end of a run. Runs it creates get the names, params and metrics
the live callback gives (``tracking``). Running it twice writes nothing new the second
time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_BATCH = 1000  # MLflow's limit of metrics per log_batch request


@dataclass
class SyncReport:
    path: str
    tracking_uri: str
    runs_created: int = 0
    runs_closed: int = 0
    metrics_logged: int = 0
    trials: int = 0


def sync_experiment(ref: str) -> SyncReport:
    """Make MLflow hold everything Ray recorded for experiment ``ref`` (a folder or a
    name under ./ray_results). Raises SpecError if the tracking store is unreachable."""
    from raytune_suite import tracking
    from raytune_suite.engine.runner import load_outcome, load_results, start_search_run
    from raytune_suite.engine.state import read_outcomes, update_state

    path, spec, state, results = load_results(ref)
    uri = state.get("tracking_uri") or tracking.resolve_tracking_uri(
        spec.tracking.mlflow.tracking_uri)
    tracking.check_reachable(uri)
    client = tracking.mlflow_client(uri)
    report = SyncReport(str(path), uri)
    layout = tracking.layout(spec)

    parent = state.get("parent_run_id")
    if not parent or not _exists(client, parent):
        parent = start_search_run(spec, uri, path)
        update_state(path, tracking_uri=uri, parent_run_id=parent)
        report.runs_created += 1
    experiment_id = client.get_run(parent).info.experiment_id

    outcomes = read_outcomes(path)
    for result in results:
        last = result.metrics or {}
        name = result.path.rstrip("/").rsplit("/", 1)[-1]
        trial_id = str(last.get("trial_id") or "_".join(name.split("_")[-2:]))
        report.trials += 1
        run_id = tracking.find_trial_run(client, experiment_id, trial_id)
        history = result.metrics_dataframe
        if run_id is None:
            run_name = tracking.run_name(trial_id, str(last.get("experiment_tag", "")),
                                         _first_config(result),
                                         layout.searched)
            run_id = client.create_run(experiment_id, run_name=run_name, tags={
                "mlflow.parentRunId": parent, tracking.ROLE_TAG: "trial",
                tracking.TRIAL_ID_TAG: trial_id, "trial_name": name}).info.run_id
            report.runs_created += 1
        run = client.get_run(run_id)
        params = {k: str(v)[:6000] for k, v in tracking.flatten(_first_config(result)).items()}
        missing = [tracking.param(k, v) for k, v in params.items() if k not in run.data.params]
        metrics = _missing_metrics(client, run_id, history, layout.mutated)
        for start in range(0, max(len(metrics), 1), _BATCH):
            batch = metrics[start:start + _BATCH]
            if batch or (missing and start == 0):
                client.log_batch(run_id, metrics=batch, params=missing if start == 0 else [])
        report.metrics_logged += len(metrics)
        if run.info.status != "FINISHED" and run.info.status != "FAILED":
            if trial_id in outcomes:
                last = {**last, "outcome": outcomes[trial_id]}
            tracking.close_trial_run(client, run_id, last, result.error is not None,
                                     spec.max_t, None, spec.time_attr)
            if result.error is not None:
                client.set_tag(run_id, "error", str(result.error)[-4000:])
            report.runs_closed += 1

    outcome = load_outcome(str(path))
    tracking.finish_search_run(uri, parent, outcome.best_record(), outcome=outcome)
    update_state(path, mlflow_offline=None)
    return report


def _exists(client, run_id: str) -> bool:
    try:
        client.get_run(run_id)
        return True
    except Exception:  # noqa: BLE001 - RESOURCE_DOES_NOT_EXIST and friends
        return False


def _first_config(result) -> dict:
    """The trial's config at its first result, as the live callback named the run and
    logged its params (PBT changes the config later)."""
    import json
    from pathlib import Path

    file = Path(result.path, "result.json")
    if "://" not in result.path and file.is_file():
        with file.open() as f:
            first = next((line for line in f if line.strip()), "")
        if first:
            return json.loads(first).get("config") or result.config or {}
    return result.config or {}


def _missing_metrics(client, run_id: str, history, mutated: tuple = ()) -> list:
    """Every (metric, step) of Ray's result history that the run does not have yet."""
    from raytune_suite.tracking import result_metrics

    if history is None or "training_iteration" not in history:
        return []
    logged: dict[str, set[int]] = {}
    out = []
    for row in history.to_dict("records"):
        step = int(row["training_iteration"])
        values = {k: v for k, v in row.items()
                  if not (isinstance(v, float) and math.isnan(v))}  # absent in that row
        for metric in result_metrics(values, step, mutated):
            if metric.key not in logged:
                logged[metric.key] = {m.step for m in client.get_metric_history(run_id,
                                                                                  metric.key)}
            if step not in logged[metric.key]:
                logged[metric.key].add(step)
                out.append(metric)
    return out
