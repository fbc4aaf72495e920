"""The best model in MLflow's Model Registry (``raytune-suite best --register NAME``).

The built-in classifier's best checkpoint becomes an MLflow ``pytorch`` model (MLflow's
default ``pt2`` format: ``torch.export``, no pickle) that takes raw data and returns class
probabilities (``training.export``). It is logged on the search's own run, with a raw
input example, its signature, the experiment file and the search's result as metadata,
and registered as a new version of NAME, so ``mlflow.pyfunc.load_model("models:/NAME/V")``
predicts. A user's own trainable has no model MLflow could rebuild: its best checkpoint
folder is logged as files on the search run and registered as such.

The search run keeps its status: the model is logged by run id, never by reopening the
run (``mlflow.start_run`` would mark it RUNNING).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from raytune_suite.errors import CheckpointError, SpecError
from raytune_suite.tracking._mlflow import configure_client, flatten, mlflow_client, short_reason

FIELD = "--register"
MODEL_NAME = "best_model"  # the LoggedModel's name on the search run
TAG_PREFIX = "raytune_suite."  # model version tags: trial_id, metric, value, ...
_NO_FLAVOUR = ("no MLflow model flavour applies to a user's own trainable ({}): the "
               "version holds its checkpoint folder as files")


def register_best_model(outcome, name: str) -> dict[str, Any]:
    """Log the best trial of a finished search on its MLflow run and register it as a new
    version of ``name`` (created if new).

    Args:
        outcome: the search's ``engine.runner.Outcome`` (``load_outcome``).
        name: the registered model's name.

    Returns:
        ``name``, ``version``, ``model_uri`` (``models:/NAME/V``), ``run_id`` (the search
        run), ``tracking_uri``, ``flavor`` (``pytorch``, or None for a user's trainable),
        ``source`` (what the version points at) and, for the classifier, ``input`` (the raw
        format in words) and ``classes``.

    Raises:
        SpecError: an invalid name; an experiment without MLflow or without a checkpoint
            of its best trial; an unreachable tracking store; a checkpoint that cannot be
            rebuilt into its model.
    """
    _check_name(name)
    best = outcome.best
    if best is None:
        raise SpecError("EXPERIMENT", f"has no trial with a finite {outcome.spec.metric}",
                        outcome.path)
    uri, parent = _tracking(outcome)
    if not best.checkpoint:
        raise SpecError(FIELD, "needs a checkpoint of the best trial (the search saved none: "
                               "checkpoint.every, or a trainable that reports no checkpoint)",
                        best.trial_id)
    run = _search_run(uri, parent)
    info = _describe(outcome, best)
    if outcome.spec.trainable == "classifier":
        return _register_classifier(outcome, best, name, uri, run, info)
    return _register_folder(best, name, uri, run, info)


def _check_name(name: str) -> None:
    # MLflow's own rule for registered model names (mlflow.utils.validation)
    if not name.strip() or "/" in name or ":" in name:
        raise SpecError(FIELD, "must be a registered model name: not empty, without '/' "
                               "or ':'", name)


def _tracking(outcome) -> tuple[str, str]:
    """The tracking URI and the search's run id, as the search recorded them."""
    from raytune_suite.engine.state import read_state

    uri, parent = outcome.tracking_uri, read_state(outcome.path).get("parent_run_id")
    sync = f"`raytune-suite mlflow-sync {outcome.path}` logs the search to MLflow first"
    if not uri:
        raise SpecError(FIELD, "needs the search's MLflow run, but this experiment ran without "
                               "MLflow (--no-mlflow or tracking.mlflow.enabled: false), so its "
                               f"tracking URI is unknown; {sync}", outcome.path)
    if not parent:
        raise SpecError(FIELD, "needs the search's MLflow run, and MLflow never saw this "
                               f"search (unreachable when it started); {sync}", uri)
    return uri, parent


def _search_run(uri: str, run_id: str):
    """The search's run in ``uri``; a store that is gone or does not answer is a
    SpecError naming the URI (a SQLite file that is not there would be created empty)."""
    from mlflow.exceptions import MlflowException

    field = "tracking.mlflow.tracking_uri"
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise SpecError(field, "the search's SQLite tracking store is not there (moved or "
                               "deleted?)", uri)
    configure_client()
    try:
        run = mlflow_client(uri).get_run(run_id)
    except Exception as e:  # noqa: BLE001 - MLflow wraps connection errors, not always
        if isinstance(e, MlflowException) and e.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise SpecError(field, f"the search's run {run_id} is not in this tracking "
                                   "store", uri) from None
        what = ("no MLflow tracking server answered" if uri.startswith(("http:", "https:"))
                else "MLflow cannot read this tracking store")
        raise SpecError(field, f"{what} ({short_reason(e)})", uri) from None
    if run.info.lifecycle_stage == "deleted":
        raise SpecError(field, f"the search's run {run_id} is deleted (`mlflow runs restore "
                               f"--run-id {run_id}` brings it back)", uri)
    return run


def _describe(outcome, best) -> dict[str, Any]:
    """Where the model came from: what the registry shows next to it."""
    spec = outcome.spec
    return {"experiment": spec.name, "experiment_path": outcome.path,
            "trainable": spec.trainable, "metric": spec.metric, "mode": spec.mode,
            "value": best.best, "trial_id": best.trial_id, "epochs": best.epochs,
            "checkpoint": best.checkpoint, "searched": best.config}


def _version_tags(info: dict[str, Any]) -> dict[str, str]:
    keys = ("experiment", "experiment_path", "trial_id", "metric", "value", "epochs")
    return {TAG_PREFIX + k: str(info[k]) for k in keys}


def _register_classifier(outcome, best, name: str, uri: str, run, info: dict) -> dict:
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from raytune_suite.engine.state import SPEC_FILE
    from raytune_suite.training.export import export_checkpoint

    try:
        exported = export_checkpoint(best.checkpoint)
    except (CheckpointError, ValueError) as e:
        raise SpecError(FIELD, f"cannot rebuild the best trial's model ({e})",
                        best.checkpoint) from None
    info = {**info, "config": exported.config, "dataset": exported.dataset,
            "classes": list(exported.class_names), "input": exported.raw.text,
            "output": "class probabilities (softmax), one column per class in `classes`; "
                      "the argmax is the predicted class"}
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(exported.raw.dtype), (-1, *exported.raw.shape))]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, len(exported.class_names)))]))
    mlflow.set_tracking_uri(uri)  # log_model and the registry read the global URI
    # log_model loads the model back to check its input example: no progress bar for that
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = mlflow_client(uri)
    # Created here, in the search's experiment: left to log_model, a LoggedModel goes to
    # the active experiment (MLflow's Default one), away from the run it belongs to.
    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id, name=MODEL_NAME, source_run_id=run.info.run_id,
        params={k: str(v) for k, v in flatten(exported.config).items()},
        tags={TAG_PREFIX + "trial_id": best.trial_id})
    model = mlflow.pytorch.log_model(
        exported.module, model_id=logged.model_id, run_id=run.info.run_id,
        input_example=exported.example, signature=signature,
        # given, so that MLflow neither infers them (it would load the model again) nor
        # looks anything up: the pt2 format needs torch alone (MLflow adds itself)
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        extra_files=[str(Path(outcome.path) / SPEC_FILE)],
        metadata={"raytune_suite": _plain(info)},
        registered_model_name=name, tags=_version_tags(info))
    version = str(model.registered_model_version)
    client.update_model_version(name, version,
                                description=_description(info, f"models:/{name}/{version}"))
    return {"name": name, "version": version, "model_uri": f"models:/{name}/{version}",
            "run_id": run.info.run_id, "tracking_uri": uri, "flavor": "pytorch",
            "source": f"models:/{logged.model_id}", "input": exported.raw.text,
            "classes": list(exported.class_names), "no_flavour": None}


def _register_folder(best, name: str, uri: str, run, info: dict) -> dict:
    """A user's own trainable: the checkpoint folder as files, registered as they are
    (MLflow's client registers any artifact path; ``mlflow.register_model`` refuses one
    without an MLmodel file)."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(uri)
    artifact_path = f"registered/{best.trial_id}/{Path(best.checkpoint).name}"
    client.log_artifacts(run.info.run_id, best.checkpoint, artifact_path)
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{run.info.artifact_uri}/{artifact_path}"
    version = client.create_model_version(name, source, run_id=run.info.run_id,
                                          tags=_version_tags(info)).version
    client.update_model_version(name, version,
                                description=_description(info, f"models:/{name}/{version}"))
    return {"name": name, "version": str(version), "model_uri": f"models:/{name}/{version}",
            "run_id": run.info.run_id, "tracking_uri": uri, "flavor": None,
            "source": source, "input": None, "classes": None,
            "no_flavour": _NO_FLAVOUR.format(info["trainable"])}


def _description(info: dict[str, Any], model_uri: str) -> str:
    """The model version's description (Markdown in the MLflow UI)."""
    lines = [f"Best trial `{info['trial_id']}` of the search `{info['experiment']}` "
             f"({info['metric']} = {info['value']:.6g}, {info['mode']}imised, "
             f"{info['epochs']} epochs); experiment folder `{info['experiment_path']}`."]
    if "input" in info:
        lines += ["", f"Input: {info['input']}.", "",
                  f"Output: {info['output']}: {', '.join(info['classes'])}.", "",
                  f"Load it with `mlflow.pyfunc.load_model(\"{model_uri}\")` (on a machine "
                  "with a GPU add `model_config={\"device\": \"cpu\"}`: the model was "
                  "exported on the CPU and stays there).", "",
                  "The experiment file is in the model's `extra_files/`; the search's result "
                  "and the full config in the MLmodel's `metadata`."]
    else:
        lines += ["", f"{_NO_FLAVOUR.format(info['trainable'])}; "
                      f"`mlflow.artifacts.download_artifacts(\"{model_uri}\")` fetches them."]
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """JSON's types only (the MLmodel file is YAML written by ``yaml.safe_dump``)."""
    return json.loads(json.dumps(value, default=str))
