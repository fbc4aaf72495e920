"""``best --register NAME``: the best checkpoint as a registered MLflow model that loads
with ``mlflow.pyfunc`` and predicts from raw inputs."""

import shutil
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from raytune_suite import cli
from raytune_suite.engine.runner import run_experiment
from raytune_suite.engine.state import SPEC_FILE, read_state, update_state
from raytune_suite.experiment import validate
from raytune_suite.tracking import register_best_model
from raytune_suite.training import checkpoint as ckpt
from raytune_suite.training.config import ClassifierConfig
from raytune_suite.training.data import data_spec, load_dataset
from raytune_suite.training.export import raw_inputs
from raytune_suite.training.loop import Trainer


def _checkpoint_classes(path: str):
    """What ``best --evaluate`` predicts on the test split, from the checkpoint itself."""
    state = ckpt.load(path)
    cfg = ClassifierConfig.model_validate(state["config"])
    data = load_dataset(data_spec(cfg))
    trainer = Trainer(cfg, data, train=False)
    ckpt.load_into(state, trainer.model)
    return cfg, trainer.predict(data.x_test).argmax(1).numpy()


def test_registered_best_model_predicts_the_checkpoints_classes_from_raw_inputs(
        small_classifier_search, capsys):
    _, outcome = small_classifier_search
    best, uri = outcome.best, outcome.tracking_uri
    search_run = read_state(outcome.path)["parent_run_id"]
    client = MlflowClient(uri)
    assert client.get_run(search_run).info.status == "FINISHED"

    first = register_best_model(outcome, "small-digits")
    assert (first["model_uri"], first["run_id"], first["flavor"]) == (
        "models:/small-digits/1", search_run, "pytorch")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/small-digits/1")
    cfg, expected = _checkpoint_classes(best.checkpoint)
    raw, labels = raw_inputs(data_spec(cfg), "test")
    assert raw.dtype == np.float64 and raw.shape[1] == 64 and raw.max() == 16  # sklearn's
    probabilities = model.predict(raw)
    assert probabilities.shape == (len(labels), 10)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(1), expected)
    assert (expected == labels).mean() > 0.5  # a trained model, not a constant

    # where it came from: version tags, description, metadata, the experiment file
    version = client.get_model_version("small-digits", "1")
    assert version.run_id == search_run
    assert version.tags["raytune_suite.trial_id"] == best.trial_id
    assert version.tags["raytune_suite.metric"] == "val_accuracy"
    assert float(version.tags["raytune_suite.value"]) == best.best
    assert "load_digits().data" in version.description
    meta = model.metadata.metadata["raytune_suite"]
    assert (meta["trial_id"], meta["value"], meta["dataset"]) == (best.trial_id, best.best,
                                                                  "digits")
    assert meta["config"]["lr"] == best.config["lr"]
    assert meta["classes"] == [str(i) for i in range(10)]
    model_dir = Path(mlflow.artifacts.download_artifacts("models:/small-digits/1"))
    assert (model_dir / "extra_files" / SPEC_FILE).read_text() == \
        (Path(outcome.path) / SPEC_FILE).read_text()
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 64)

    # the CLI: a second registration is version 2; the search run keeps its status
    assert cli.main(["best", outcome.path, "--register", "small-digits"]) == 0
    out = capsys.readouterr().out
    assert "models:/small-digits/2" in out
    assert 'mlflow.pyfunc.load_model("models:/small-digits/2")' in out
    assert client.get_model_version("small-digits", "2").run_id == search_run
    assert client.get_run(search_run).info.status == "FINISHED"


@pytest.fixture
def copy_of_search(small_classifier_search, tmp_path):
    """The small search's folder, copied, so that its saved state can be changed."""
    _, outcome = small_classifier_search
    return Path(shutil.copytree(outcome.path, tmp_path / "copy"))


@pytest.mark.parametrize("state, message", [
    ({"tracking_uri": None}, "--register: needs the search's MLflow run, but this experiment "
                             "ran without MLflow"),
    ({"parent_run_id": None}, "MLflow never saw this search"),
    ({"tracking_uri": "sqlite:////nowhere/mlflow.db"},
     "the search's SQLite tracking store is not there"),
    ({"tracking_uri": "http://127.0.0.1:9"}, "no MLflow tracking server answered"),
])
def test_register_without_a_reachable_search_run_is_one_line(copy_of_search, capsys,
                                                             monkeypatch, state, message):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    update_state(copy_of_search, **state)
    if state.get("tracking_uri") is None and "tracking_uri" in state:
        # update_state keeps None for the URI: as a search run with --no-mlflow saves it
        assert read_state(copy_of_search)["tracking_uri"] is None
    assert cli.main(["best", str(copy_of_search), "--register", "never"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    if state.get("tracking_uri"):
        assert state["tracking_uri"] in err[0]


def test_register_rejects_a_name_mlflow_cannot_hold(copy_of_search, capsys):
    assert cli.main(["best", str(copy_of_search), "--register", "team/model"]) == 2
    assert "--register: must be a registered model name" in capsys.readouterr().err


OBJECTIVE = textwrap.dedent('''
    import os
    import tempfile

    from ray import tune

    def objective(config):
        """A user's own trainable that saves its own checkpoint format."""
        for step in range(1, 3):
            with tempfile.TemporaryDirectory() as folder:
                with open(os.path.join(folder, "weights.txt"), "w") as f:
                    f.write(f"x={config['x']} step={step}")
                tune.report({"loss": (config["x"] - 0.3) ** 2 + 1 / step},
                            checkpoint=tune.Checkpoint.from_directory(folder))
''')


def test_own_trainable_registers_its_checkpoint_folder_without_a_flavour(
        ray_local, in_tmp, monkeypatch, capsys):
    (in_tmp / "registry_objectives.py").write_text(OBJECTIVE)
    monkeypatch.syspath_prepend(str(in_tmp))
    raw = {"name": "own", "trainable": "registry_objectives:objective",
           "search_space": {"x": {"grid": [0.3, 0.9]}}, "metric": "loss", "mode": "min",
           "search": {"algorithm": "grid", "num_samples": 1, "max_concurrent": 2},
           "checkpoint": {"every": 1, "keep": 1}}
    outcome = run_experiment(validate(raw), raw)
    assert outcome.errors == 0 and outcome.best.config == {"x": 0.3}

    assert cli.main(["best", outcome.path, "--register", "own-model"]) == 0
    out = capsys.readouterr().out
    assert "models:/own-model/1" in out
    assert "no MLflow model flavour applies to a user's own trainable" in out
    mlflow.set_tracking_uri(outcome.tracking_uri)
    version = MlflowClient().get_model_version("own-model", "1")
    assert version.run_id == read_state(outcome.path)["parent_run_id"]
    assert version.tags["raytune_suite.trial_id"] == outcome.best.trial_id
    files = Path(mlflow.artifacts.download_artifacts("models:/own-model/1"))
    assert (files / "weights.txt").read_text() == "x=0.3 step=2"
