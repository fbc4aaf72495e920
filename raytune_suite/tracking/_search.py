"""The search run: its settings at the start; at the end the leaderboard (as its
description and ``leaderboard.csv``) and, on every trial run, what sorts the runs as the
leaderboard does (``best_<metric>`` and ``epochs_trained``, which the callback already
logged with the trial's end when it saw all of its results; the ``rank`` tag on the
leaderboard's top rows)."""

from __future__ import annotations

import csv
import io
import math
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from raytune_suite.tracking._mlflow import flatten, metric, mlflow_client, param, tag
from raytune_suite.tracking._names import short_number
from raytune_suite.tracking._runs import (EXPERIMENT_PATH_TAG, OUTCOME_TAG, ROLE_TAG,
                                          TRIAL_ID_TAG, child_runs)
from raytune_suite.tracking._ui import save_view

RANK_TAG = "rank"
PARETO_TAG = "pareto"  # "true" on the trial runs of a multi-objective search's Pareto front
EPOCHS_METRIC = "epochs_trained"
EXPLOIT_TAG = "pbt.exploit"  # pbt.exploit.01, .02, ...: one per exploit of the trial
DESCRIPTION_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
DESCRIPTION_ROWS = 20
RANKED = DESCRIPTION_ROWS  # trials whose run gets the rank tag: the description's rows


def start_search_run(uri: str, experiment: str, run_name: str, experiment_path: str,
                     spec_file: Path, params: dict[str, Any], source: Optional[Path] = None,
                     metric_name: Optional[str] = None, mode: str = "max",
                     searched: Sequence[str] = ()) -> str:
    """Create the experiment (if new) and the parent run of this search; returns its id.

    Args:
        spec_file: the experiment as the suite saved it (``spec.yaml``).
        params: the search's settings (nested mappings are flattened to ``a.b``).
        source: the experiment file the user wrote, logged under its own name with its
            comments; None when unknown (a resumed or backfilled search).
        metric_name, mode, searched: what the runs view of the printed link shows.
    """
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow_client(uri)
    found = client.get_experiment_by_name(experiment)
    exp_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=run_name, tags={
        ROLE_TAG: "search", EXPERIMENT_PATH_TAG: experiment_path})
    run_id = run.info.run_id
    flat = {k.replace("/", "."): v for k, v in flatten(params).items() if v is not None}
    client.log_batch(run_id, params=[param(k, v) for k, v in flat.items()])
    client.log_artifact(run_id, str(spec_file))
    if source is not None and Path(source).is_file():
        client.log_artifact(run_id, str(source))
    if metric_name:
        save_view(client, exp_id, run_id, metric_name, mode, list(searched))
    return run_id


NUM_SAMPLES_TAG = "raytune_suite.num_samples"


def reopen_run(uri: str, run_id: str, num_samples: Optional[int] = None,
               spec_file: Optional[Path] = None) -> None:
    """Mark a parent run RUNNING again on resume. An extended search (``num_samples``,
    its new trial count) says so in the tag ``raytune_suite.num_samples`` (MLflow never
    changes a param: ``search.num_samples`` keeps the count it started with) and logs
    its grown ``spec_file`` again."""
    client = mlflow_client(uri)
    client.update_run(run_id, status="RUNNING")
    if num_samples is not None:
        client.set_tag(run_id, NUM_SAMPLES_TAG, str(num_samples))
    if spec_file is not None:
        client.log_artifact(run_id, str(spec_file))


def finish_search_run(uri: str, run_id: str, best: Optional[dict[str, Any]],
                      status: str = "FINISHED", outcome=None,
                      runs: Optional[list] = None) -> None:
    """Record the best trial on the parent run and close it.

    Args:
        outcome: the search's ``engine.runner.Outcome``; when given, the leaderboard is
            recorded too (:func:`record_leaderboard`).
        runs: the search's trial runs as just fetched (``close_open_runs`` returns
            them), if at hand; else the leaderboard fetches them.
    """
    client = mlflow_client(uri)
    if best:
        client.log_batch(
            run_id,
            metrics=[metric(f"best_{best['metric']}", best["value"], 0)],
            tags=[tag("best.trial_id", best["trial_id"]),
                  tag("best.checkpoint", best.get("checkpoint") or ""),
                  tag("best.config", repr(best["config"])[:5000])],
        )
    if outcome is not None:
        record_leaderboard(client, run_id, outcome.trials, outcome.spec.metric,
                           outcome.spec.mode, outcome.path,
                           pareto={t.trial_id for t in outcome.pareto}, runs=runs)
    client.set_terminated(run_id, status=status)


def record_leaderboard(client, parent_run_id: str, trials: list, metric_name: str,
                       mode: str, experiment_path: str = "",
                       pareto: Optional[set[str]] = None, runs: Optional[list] = None) -> None:
    """Label the trial runs as the leaderboard ranks them, and describe the search: every
    run gets the ``best_<metric>`` and ``epochs_trained`` the leaderboard shows (one
    request for each run that lacks them), the top :data:`RANKED` the ``rank`` tag, the
    trials on a multi-objective search's Pareto front the ``pareto`` tag, and PBT
    receivers a tag per exploit.

    Args:
        trials: ``engine.results.TrialSummary`` records, best first (``summarize``).
        pareto: trial ids on the Pareto front (several objectives), else None.
        runs: the trial runs, if just fetched; else fetched here.
    """
    if runs is None:
        runs = child_runs(client, parent_run_id)
    runs = {r.data.tags.get(TRIAL_ID_TAG): r for r in runs}
    exploits = read_exploits(experiment_path)
    width = len(str(len(trials)))
    names = {}
    for rank, t in enumerate(trials, 1):
        run = runs.get(t.trial_id)
        if run is None:
            continue
        names[t.trial_id] = run.info.run_name
        held = run.data.metrics
        metrics = []  # what the callback logged at the trial's end, when it could not
        if held.get(EPOCHS_METRIC) != t.epochs:
            metrics.append(metric(EPOCHS_METRIC, t.epochs, 0))
        if t.best is not None and not _same(held.get(f"best_{metric_name}"), t.best):
            metrics.append(metric(f"best_{metric_name}", t.best, 0))
        tags = [tag(RANK_TAG, f"{rank:0{width}d}")] if rank <= RANKED else []
        if pareto and t.trial_id in pareto:
            tags.append(tag(PARETO_TAG, "true"))
        for i, e in enumerate(exploits.get(t.trial_id, []), 1):
            tags.append(tag(f"{EXPLOIT_TAG}.{i:02d}", describe_exploit(e)))
        tags = [x for x in tags if run.data.tags.get(x.key) != x.value]
        if metrics or tags:
            client.log_batch(run.info.run_id, metrics=metrics, tags=tags)
    client.log_batch(parent_run_id, tags=[
        tag(DESCRIPTION_TAG, leaderboard_markdown(trials, metric_name, mode, names))])
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder, "leaderboard.csv")
        file.write_text(leaderboard_csv(trials, metric_name, names))
        client.log_artifact(parent_run_id, str(file))
    if runs:
        experiment_id = next(iter(runs.values())).info.experiment_id
        params = list(dict.fromkeys(k for t in trials for k in flatten(t.config)))
        save_view(client, experiment_id, parent_run_id, metric_name, mode, params)


def _same(held: Optional[float], value: float) -> bool:
    return held is not None and math.isclose(held, value, rel_tol=1e-9, abs_tol=0.0)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return short_number(v) if abs(v) < 1e-2 else f"{v:.4g}"
    return "-" if v is None else str(v)


def leaderboard_markdown(trials: list, metric_name: str, mode: str,
                         names: Optional[dict[str, str]] = None) -> str:
    """The leaderboard as a Markdown table (the search run's description)."""
    names = names or {}
    lines = [f"**{len(trials)} trials**, ranked by their best `{metric_name}` over epochs "
             f"({mode}). Sort the trial runs by `best_{metric_name}` or the `{RANK_TAG}` "
             "tag for the same order; `leaderboard.csv` lists every trial.", "",
             f"| rank | run | best {metric_name} | epochs | outcome |",
             "|---:|---|---:|---:|---|"]
    for rank, t in enumerate(trials[:DESCRIPTION_ROWS], 1):
        name = names.get(t.trial_id, t.trial_id).replace("|", "/")
        best = f"{t.best:.4f}" if t.best is not None else "-"
        lines.append(f"| {rank} | {name} | {best} | {t.epochs} | "
                     f"{t.outcome.replace('_', ' ')} |")
    if len(trials) > DESCRIPTION_ROWS:
        lines.append(f"\n… and {len(trials) - DESCRIPTION_ROWS} more in leaderboard.csv")
    return "\n".join(lines)


def leaderboard_csv(trials: list, metric_name: str,
                    names: Optional[dict[str, str]] = None) -> str:
    """Every trial, best first, with its searched values (one column each)."""
    names = names or {}
    configs = [flatten(t.config) for t in trials]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["rank", "trial_id", "run_name", f"best_{metric_name}", "epochs",
                     "outcome", "status", *keys, "checkpoint"])
    for rank, (t, config) in enumerate(zip(trials, configs), 1):
        writer.writerow([rank, t.trial_id, names.get(t.trial_id, ""),
                         "" if t.best is None else repr(t.best), t.epochs, t.outcome,
                         t.status, *("" if config.get(k) is None else config[k] for k in keys),
                         t.checkpoint or ""])
    return out.getvalue()


def read_exploits(experiment_path: str) -> dict[str, list[dict]]:
    """Receiver trial id -> its PBT exploits, in order (``pbt_exploits.jsonl``)."""
    from raytune_suite.engine.pbt import read_exploits as read_records

    if not experiment_path or "://" in experiment_path:
        return {}
    out: dict[str, list[dict]] = {}
    for record in read_records(None, experiment_path):
        if record.get("event") == "exploit":
            out.setdefault(record["receiver"], []).append(record)
    return out


def describe_exploit(e: dict) -> str:
    """One exploit as a tag value: donor, iterations, hyperparameters before -> after."""
    def config(c: Optional[dict]) -> str:
        return ", ".join(f"{k}={_fmt(v)}" for k, v in flatten(c or {}).items())

    return (f"at iteration {e['iteration']} from trial {e['donor']} (its checkpoint of "
            f"iteration {e['checkpoint_iteration']}): {config(e.get('before'))} -> "
            f"{config(e.get('after'))}")


def log_report(uri: str, run_id: str, path) -> None:
    """Log an HTML report (any file) as an artifact of the search run ``run_id``."""
    mlflow_client(uri).log_artifact(run_id, str(path))


__all__ = ["start_search_run", "reopen_run", "finish_search_run", "record_leaderboard",
           "leaderboard_markdown", "leaderboard_csv", "read_exploits", "describe_exploit",
           "log_report", "RANK_TAG", "PARETO_TAG", "EPOCHS_METRIC", "EXPLOIT_TAG",
           "DESCRIPTION_TAG", "OUTCOME_TAG"]
