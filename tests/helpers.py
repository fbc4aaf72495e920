"""Paths and commands shared by the tests."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
CLI = [sys.executable, "-m", "raytune_suite.cli"]


def cli_env(**extra) -> dict:
    """Environment for running the CLI as a subprocess, from this checkout."""
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **extra)


def mlflow_runs(workdir, experiment: str):
    """All MLflow runs of ``experiment`` in ``workdir``/mlflow.db, as a DataFrame."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    return mlflow.search_runs(experiment_names=[experiment])


def result_rows(results_dir) -> dict[str, list[dict]]:
    """Each trial folder's result rows (result.json, one row per reported result)."""
    import json

    return {p.parent.name: [json.loads(line) for line in p.open() if line.strip()]
            for p in Path(results_dir).glob("*/result.json")}
