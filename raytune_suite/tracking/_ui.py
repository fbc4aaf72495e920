"""Opening the runs in the MLflow UI: a command that works from any folder, and a link
to the search's trial runs in the "Model training" runs table.

MLflow 3.17's UI opens an experiment on its GenAI overview unless the URL says
``workflowType=machine_learning``; an experiment tag ``mlflow.sharedViewState.<key>``
holds a saved view of the runs table (filter, sort, columns, runs shown in charts),
opened by ``viewStateShareKey=<key>``, as the UI's own "Share" button does. (The
``mlflow.experimentKind`` tag does not change the page the UI opens on.)
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import quote

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
UI_HOST, UI_PORT = "127.0.0.1", 5000


def mlflow_executable() -> list[str]:
    """The MLflow CLI of this Python environment, by absolute path (``uv run mlflow``
    only works inside the project folder)."""
    exe = Path(sys.executable).parent / "mlflow"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "mlflow"]


def ui_command(uri: str, port: int = UI_PORT) -> str:
    """The command that serves these runs in the MLflow UI (for a SQLite store), or
    what to open (for a tracking server)."""
    if uri.startswith("sqlite:"):
        return " ".join(shlex.quote(w) for w in [
            *mlflow_executable(), "ui", "--backend-store-uri", uri, "--host", UI_HOST,
            "--port", str(port), "--workers", "1"])
    return f"open {uri} in a browser"


def ui_base(uri: str, port: int = UI_PORT) -> str:
    """The UI's address: the tracking server itself, or the local ``mlflow ui``."""
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return f"http://{UI_HOST}:{port}"


def ui_link(uri: str, experiment_id: str, share_key: Optional[str] = None,
            port: int = UI_PORT) -> str:
    """The runs table of an experiment (MLflow 3.17: not its GenAI overview); with
    ``share_key`` (the search run's id), that search's trial runs as
    :func:`save_view` arranged them."""
    link = (f"{ui_base(uri, port)}/#/experiments/{quote(str(experiment_id))}/runs"
            "?workflowType=machine_learning")
    return link + (f"&viewStateShareKey={quote(share_key)}" if share_key else "")


def view_state(parent_run_id: str, metric_name: str, mode: str,
               params: Sequence[str] = ()) -> dict:
    """The runs-table view of one search: its trial runs, best first, with the metric,
    ``epochs_trained``, ``rank``, outcome and searched values as columns, every run
    drawn in the charts (the UI draws the first 10 otherwise)."""
    columns = [f"metrics.`best_{metric_name}`", f"metrics.`{metric_name}`",
               "metrics.`epochs_trained`", "tags.`rank`", "tags.`raytune_suite.outcome`",
               *(f"params.`{p}`" for p in params)]
    return {"searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
            "orderByKey": f"metrics.`best_{metric_name}`", "orderByAsc": mode == "min",
            "selectedColumns": columns, "runsHiddenMode": "SHOW_ALL"}


def save_view(client, experiment_id: str, parent_run_id: str, metric_name: str, mode: str,
              params: Sequence[str] = ()) -> None:
    """Save :func:`view_state` on the experiment under the search run's id."""
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + parent_run_id,
                              json.dumps(view_state(parent_run_id, metric_name, mode,
                                                    params)))


def ui_hint(uri: str, parent_run_id: Optional[str] = None) -> str:
    """What the end of a run prints: the UI command and the link to the search's runs
    (the link alone for a tracking server). MLflow is asked for the experiment id; if
    it does not answer, the command and the experiment list are given."""
    experiment_id = None
    if parent_run_id:
        try:
            from raytune_suite.tracking._mlflow import mlflow_client

            experiment_id = mlflow_client(uri).get_run(parent_run_id).info.experiment_id
        except Exception:  # noqa: BLE001 - a hint, not worth failing the run
            experiment_id = None
    link = (ui_link(uri, experiment_id, parent_run_id) if experiment_id
            else f"{ui_base(uri)}/#/experiments")
    if uri.startswith(("http://", "https://")):
        return link
    return f"{ui_command(uri)}\n         then open {link}"
