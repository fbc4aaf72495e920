"""Before a resume: write to MLflow what Ray recorded and the stopped driver had not.

The writer (``tracking._writer``) keeps each run's requests in order, so after a SIGKILL
MLflow holds, for every trial, the run's first steps up to some step (or no run at all),
and Ray's ``result.json`` holds every result the driver received. Before the restored
search starts, :func:`backfill_runs` creates the runs that are missing and logs every
result after the last step each run holds. One lookup of the search's runs, then one
``log_batch`` per run that lacks something (``create_run`` first for a missing run).
Runs of trials that Ray finished are closed by the runner at the end of the search
(``close_open_runs``); ``raytune-suite mlflow-sync`` does the same for any gap, step by
step, without a resume.
"""

from __future__ import annotations

import json
from pathlib import Path

from raytune_suite.tracking._mlflow import flatten, mlflow_client, param
from raytune_suite.tracking._names import Layout, result_metrics, run_name
from raytune_suite.tracking._runs import ROLE_TAG, TRIAL_ID_TAG, child_runs

_BATCH = 1000  # metrics per log_batch (MLflow's limit), params included


def _results(trial_dir: Path) -> list[dict]:
    rows = []
    with (trial_dir / "result.json").open() as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut short by the kill
                break
    return rows


def backfill_runs(uri: str, parent_run_id: str, experiment_path: str,
                  layout: Layout = Layout()) -> tuple[int, int]:
    """Make every trial of the experiment in ``experiment_path`` (a local folder) have its
    run, params and every (metric, step) of its ``result.json``; returns (runs created,
    metrics logged)."""
    client = mlflow_client(uri)
    runs = {r.data.tags.get(TRIAL_ID_TAG): r for r in child_runs(client, parent_run_id)}
    experiment_id = None
    created = logged = 0
    for trial_dir in sorted(Path(experiment_path).iterdir()):
        if not (trial_dir / "result.json").is_file():
            continue
        rows = _results(trial_dir)
        if not rows or "trial_id" not in rows[0]:
            continue
        trial_id = str(rows[0]["trial_id"])
        config = rows[0].get("config") or {}
        run = runs.get(trial_id)
        if run is None:
            if experiment_id is None:
                experiment_id = client.get_run(parent_run_id).info.experiment_id
            name = trial_dir.name
            trial_name = name[:name.index(trial_id) + len(trial_id)] if trial_id in name \
                else name
            run_id = client.create_run(experiment_id, run_name=run_name(
                trial_id, str(rows[0].get("experiment_tag", "")), config, layout.searched),
                tags={"mlflow.parentRunId": parent_run_id, ROLE_TAG: "trial",
                      "trial_name": trial_name, TRIAL_ID_TAG: trial_id}).info.run_id
            held_params, through = set(), 0
            created += 1
        else:
            run_id, held_params = run.info.run_id, set(run.data.params)
            through = max((m.step for m in getattr(run.data, "_metric_objs", [])), default=0)
        params = [param(k, v) for k, v in flatten(config).items() if k not in held_params]
        metrics, seen = [], set()
        for row in rows:
            step = int(row.get("training_iteration", 0))
            if step > through and step not in seen:  # a restored trial repeats steps
                seen.add(step)
                metrics.extend(result_metrics(row, step, layout.mutated))
        first = _BATCH - min(len(params), 100)
        batches = [metrics[:first]] + [metrics[i:i + _BATCH]
                                       for i in range(first, len(metrics), _BATCH)]
        for i, batch in enumerate(batches):
            if batch or (i == 0 and params):
                client.log_batch(run_id, metrics=batch, params=params[:100] if i == 0 else [])
        for i in range(100, len(params), 100):
            client.log_batch(run_id, params=params[i:i + 100])
        logged += len(metrics)
    return created, logged
