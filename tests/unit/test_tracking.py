"""MLflow runs a user can read, against a real SQLite store (no Ray): names, the
leaderboard's order on the trial runs, the search run's settings and description, and
the command and link that open them."""

import json
import shlex
import sys
from pathlib import Path

import pytest

from raytune_suite import tracking
from raytune_suite.engine.results import TrialSummary


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating one takes seconds); each test its own
    MLflow experiment."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    return uri, tracking.mlflow_client(uri)


@pytest.mark.parametrize("trial_id, tag, config, searched, name", [
    ("3982a165", "7_lr=0.0073", {"optimizer": "adam", "lr": 0.0073, "batch_size": 64,
                                 "epochs": 20}, ("optimizer", "lr", "batch_size"),
     "07 3982a165 adam lr=7.3e-3 bs=64"),
    # grid/random search count from 0 (the trial id ends with the count): ordinals from 1
    ("ab12c_00000", "0_lr=0.1", {"lr": 0.1, "dropout": 0.25}, ("lr", "dropout"),
     "01 ab12c_00000 lr=0.1 drop=0.25"),
    ("f00dcafe", "12_x", {"optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True},
                          "weight_decay": 2.1e-5}, ("weight_decay", "optimizer"),
     "12 f00dcafe sgd wd=2.1e-5 mom=0.9 nesterov=yes"),
    ("f00dcafe", "", {"lr": 1e-3}, (), "f00dcafe lr=1e-3"),
])
def test_run_name_puts_what_differs_first(trial_id, tag, config, searched, name):
    assert tracking.run_name(trial_id, tag, config, searched) == name


def test_result_metrics_skip_ray_bookkeeping_and_step_copies():
    result = {"val_accuracy": 0.9, "loss": 0.3, "epoch": 3, "training_iteration": 3,
              "time_this_iter_s": 1.2, "time_total_s": 4.0, "timestamp": 1, "pid": 7,
              "done": False, "iterations_since_restore": 3, "restored_from_epoch": 2,
              "config": {"lr": 0.1, "batch_size": 32, "optimizer": "adam"}}
    keys = {m.key for m in tracking.result_metrics(result, 3)}
    assert keys == {"val_accuracy", "loss"}
    # an epoch that is not the step is information (a trainable counting its own way)
    assert "epoch" in {m.key for m in tracking.result_metrics({**result, "epoch": 9}, 3)}
    # PBT: the mutated hyperparameters at every step, numeric ones only
    pbt = tracking.result_metrics(result, 3, mutated=("lr", "optimizer"))
    assert {m.key: m.value for m in pbt if m.key.startswith("config/")} == {"config/lr": 0.1}
    assert all(m.step == 3 for m in pbt)


def _summaries():
    return [TrialSummary("t2", {"lr": 0.01}, 0.98, 10, "TERMINATED", None, "completed"),
            TrialSummary("t1", {"lr": 0.1}, 0.95, 4, "TERMINATED", None, "stopped_early"),
            TrialSummary("t3", {"lr": 1.0}, None, 2, "DIVERGED", None, "diverged")]


def _search(store, tmp_path, names=("t1", "t2", "t3")):
    uri, client = store
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("name: demo\n")
    source = tmp_path / "demo.yaml"
    source.write_text("# my comment\nname: demo\n")
    parent = tracking.start_search_run(
        uri, tmp_path.name, "demo-search", str(tmp_path), spec_file,
        {"searcher": "hyperopt", "search": {"seed": 0, "max_concurrent": None},
         "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 3.0}},
        source=source, metric_name="val_accuracy", mode="max", searched=("lr",))
    experiment_id = client.get_run(parent).info.experiment_id
    runs = {}
    for trial_id in names:
        runs[trial_id] = client.create_run(experiment_id, run_name=trial_id, tags={
            "mlflow.parentRunId": parent, tracking.TRIAL_ID_TAG: trial_id}).info.run_id
    return parent, runs


def test_search_run_holds_settings_and_the_file_with_its_comments(store, tmp_path):
    uri, client = store
    parent, _ = _search(store, tmp_path)
    run = client.get_run(parent)
    assert run.data.params["scheduler.grace_period"] == "2"
    assert run.data.params["search.seed"] == "0"
    assert "search.max_concurrent" not in run.data.params  # unset: no "None" params
    files = {a.path for a in client.list_artifacts(parent)}
    assert files == {"spec.yaml", "demo.yaml"}
    text = Path(client.download_artifacts(parent, "demo.yaml", str(tmp_path / "dl")))
    assert text.read_text().startswith("# my comment")


def test_trial_runs_sort_as_the_leaderboard(store, tmp_path):
    uri, client = store
    parent, runs = _search(store, tmp_path)
    tracking.record_leaderboard(client, parent, _summaries(), "val_accuracy", "max")
    data = {t: client.get_run(r).data for t, r in runs.items()}
    assert data["t2"].metrics["best_val_accuracy"] == 0.98
    assert data["t1"].metrics["best_val_accuracy"] == 0.95
    assert "best_val_accuracy" not in data["t3"].metrics  # diverged: ranked last, no best
    assert {t: d.metrics["epochs_trained"] for t, d in data.items()} == \
        {"t2": 10, "t1": 4, "t3": 2}
    assert {t: d.tags["rank"] for t, d in data.items()} == {"t2": "1", "t1": "2", "t3": "3"}
    # MLflow's own sort gives the leaderboard's order
    experiment_id = client.get_run(parent).info.experiment_id
    ordered = client.search_runs([experiment_id], "tags.`mlflow.parentRunId` != ''",
                                 order_by=["metrics.`best_val_accuracy` DESC"])
    assert [r.data.tags["ray.trial_id"] for r in ordered] == ["t2", "t1", "t3"]


def test_search_run_describes_the_leaderboard(store, tmp_path):
    uri, client = store
    parent, runs = _search(store, tmp_path)
    tracking.record_leaderboard(client, parent, _summaries(), "val_accuracy", "max")
    note = client.get_run(parent).data.tags["mlflow.note.content"]
    table = [line for line in note.splitlines() if line.startswith("| ")]
    assert table[0] == "| rank | run | best val_accuracy | epochs | outcome |"
    assert table[1:] == ["| 1 | t2 | 0.9800 | 10 | completed |",
                         "| 2 | t1 | 0.9500 | 4 | stopped early |",
                         "| 3 | t3 | - | 2 | diverged |"]
    csv = Path(client.download_artifacts(parent, "leaderboard.csv", str(tmp_path / "dl")))
    lines = csv.read_text().splitlines()
    assert lines[0] == "rank,trial_id,run_name,best_val_accuracy,epochs,outcome,status,lr," \
                       "checkpoint"
    assert lines[1].startswith("1,t2,t2,0.98,10,completed,TERMINATED,0.01")
    assert lines[3].startswith("3,t3,t3,,2,diverged,DIVERGED,1.0")


def test_pbt_exploits_are_tags_of_the_receiver(store, tmp_path):
    uri, client = store
    parent, runs = _search(store, tmp_path)
    (tmp_path / "pbt_exploits.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"event": "exploit", "receiver": "t1", "donor": "t2", "iteration": 4,
         "checkpoint_iteration": 4, "before": {"lr": 0.1}, "after": {"lr": 0.012}},
        {"event": "skip", "receiver": "t3", "donor": "t2", "iteration": 2, "reason": "x"},
        {"event": "exploit", "receiver": "t1", "donor": "t2", "iteration": 8,
         "checkpoint_iteration": 6, "before": {"lr": 0.012}, "after": {"lr": 0.0096}}]))
    tracking.record_leaderboard(client, parent, _summaries(), "val_accuracy", "max",
                                str(tmp_path))
    tags = client.get_run(runs["t1"]).data.tags
    assert tags["pbt.exploit.01"] == ("at iteration 4 from trial t2 (its checkpoint of "
                                      "iteration 4): lr=0.1 -> lr=0.012")
    assert tags["pbt.exploit.02"].startswith("at iteration 8 from trial t2 (its checkpoint "
                                             "of iteration 6)")
    assert not any(k.startswith("pbt.") for k in client.get_run(runs["t3"]).data.tags)


def test_log_report_adds_the_html_to_the_search_run(store, tmp_path):
    uri, client = store
    parent, _ = _search(store, tmp_path)
    report = tmp_path / "report.html"
    report.write_text("<html></html>")
    tracking.log_report(uri, parent, report)
    assert "report.html" in {a.path for a in client.list_artifacts(parent)}


def test_ui_command_runs_from_any_folder_and_link_opens_the_runs_table(store, tmp_path):
    uri, client = store
    parent, _ = _search(store, tmp_path)
    words = shlex.split(tracking.ui_command(uri))
    assert Path(words[0]).is_absolute() and Path(words[0]).parent == \
        Path(sys.executable).parent
    assert words[1:] == ["ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                         "--port", "5000", "--workers", "1"]
    experiment_id = client.get_run(parent).info.experiment_id
    assert tracking.ui_link(uri, experiment_id, parent) == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={parent}")
    view = json.loads(client.get_experiment(experiment_id).tags[
        f"mlflow.sharedViewState.{parent}"])
    assert view["searchFilter"] == f"tags.`mlflow.parentRunId` = '{parent}'"
    assert view["orderByKey"] == "metrics.`best_val_accuracy`" and not view["orderByAsc"]
    assert "params.`lr`" in view["selectedColumns"] and view["runsHiddenMode"] == "SHOW_ALL"
    hint = tracking.ui_hint(uri, parent)
    assert hint.splitlines()[0] == tracking.ui_command(uri)
    assert hint.splitlines()[1].split()[-1] == tracking.ui_link(uri, experiment_id, parent)
    assert tracking.ui_hint("http://mlflow:5000", None) == "http://mlflow:5000/#/experiments"


def test_warm_up_opens_a_new_store_on_a_thread_and_the_first_client_waits(tmp_path):
    """The driver opens MLflow's store (imports, a new mlflow.db's tables) on a thread while
    Ray starts; the first real use waits for it and finds the store ready."""
    from raytune_suite.tracking import _mlflow

    uri = f"sqlite:///{tmp_path}/new.db"
    tracking.warm_up(uri)
    thread = _mlflow._warming[uri]
    assert thread.name == "mlflow-warm-up"
    client = tracking.mlflow_client(uri)  # waits for the warm-up
    assert not thread.is_alive()
    assert (tmp_path / "new.db").is_file()
    assert [e.name for e in client.search_experiments()] == ["Default"]
