"""Trials that go wrong: a diverging loss stops its trial and never wins; a trainable
that does not report the experiment's metric fails the run at once, clearly."""

import json
import math
import textwrap

from helpers import mlflow_runs
from raytune_suite.cli import main
from raytune_suite.engine.runner import run_experiment
from raytune_suite.experiment import validate


def test_nan_loss_stops_the_trial_is_recorded_and_never_picked(ray_local, in_tmp):
    # lr 1e6 sends SGD's loss to inf/NaN within two epochs on iris; 0.05 trains.
    spec = validate({
        "name": "diverge", "trainable": "classifier",
        "config": {"dataset": "iris", "epochs": 6, "optimizer": "sgd"},
        "search_space": {"lr": {"grid": [0.05, 1.0e6]}},
        "metric": "val_loss", "mode": "min",
        "search": {"algorithm": "grid"}, "scheduler": {"type": "fifo", "max_t": 6},
    })
    outcome = run_experiment(spec, {"name": "diverge"})

    # The experiment went on: both trials ended, neither errored.
    assert len(outcome.trials) == 2 and outcome.errors == 0
    by_lr = {t.config["lr"]: t for t in outcome.trials}
    sane, broken = by_lr[0.05], by_lr[1.0e6]
    assert sane.status == "TERMINATED" and sane.epochs == 6
    # The diverged trial stopped at the epoch its loss stopped being finite ...
    assert broken.status == "DIVERGED" and broken.epochs < 6
    # ... and best-result selection ignores it, though its first epoch's val_loss
    # (a finite number) might otherwise compete.
    assert broken.best is None
    assert outcome.best.trial_id == sane.trial_id and math.isfinite(outcome.best.best)

    runs = mlflow_runs(in_tmp, "diverge")
    trials = runs[runs["tags.raytune_suite.role"] == "trial"].set_index("params.lr")
    bad = trials.loc["1000000.0"]
    assert bad["status"] == "FINISHED"
    assert bad["tags.raytune_suite.outcome"] == "diverged"
    assert bad["tags.raytune_suite.stop_reason"].startswith(f"diverged at epoch {broken.epochs}")
    assert "is nan" in bad["tags.raytune_suite.stop_reason"] or \
        "is inf" in bad["tags.raytune_suite.stop_reason"]
    assert trials.loc["0.05"]["tags.raytune_suite.outcome"] == "completed"
    search = runs[runs["tags.raytune_suite.role"] == "search"].iloc[0]
    assert search["tags.best.trial_id"] == sane.trial_id
    # No checkpoint of the broken weights was saved to be picked up later.
    folder = next((in_tmp / "ray_results" / "diverge").glob(f"*_{broken.trial_id}"))
    epochs = [json.loads((c / "meta.json").read_text())["epoch"]
              for c in folder.glob("checkpoint_*")]
    assert epochs and max(epochs) < broken.epochs


MUTE = textwrap.dedent('''
    from ray import tune

    def train(config):
        for step in range(3):
            tune.report({"loss": 1.0 / (step + 1), "acc": 0.5})
''')


def test_trainable_without_the_metric_fails_fast_and_names_it(ray_local, in_tmp,
                                                              monkeypatch, capsys):
    (in_tmp / "mute.py").write_text(MUTE)
    monkeypatch.syspath_prepend(str(in_tmp))
    (in_tmp / "exp.yaml").write_text(textwrap.dedent("""
        name: mute
        trainable: mute:train
        search_space: {x: {uniform: [0, 1]}}
        metric: val_accuracy
        mode: max
        search: {algorithm: random, num_samples: 4}
    """))
    assert main(["run", "exp.yaml"]) == 2
    err = capsys.readouterr().err
    assert ("error: metric: must be reported by the trainable mute:train (it reported "
            "loss, acc)") in err
    assert "got 'val_accuracy'" in err and "Traceback" not in err
    # Nothing half-written blocks the rerun once the trainable is fixed.
    assert not (in_tmp / "ray_results" / "mute").exists()
    runs = mlflow_runs(in_tmp, "mute")
    assert set(runs["status"]) <= {"FAILED"}
