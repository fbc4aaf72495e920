"""Searchers x schedulers on embedded Ray, in-process (one shared Ray runtime)."""

import textwrap
from pathlib import Path

from helpers import EXPERIMENTS, mlflow_runs
from raytune_suite.engine.runner import run_experiment
from raytune_suite.experiment import load_spec, validate

OBJECTIVE = textwrap.dedent('''
    import os
    from ray import tune

    def objective(config):
        """A user's own function trainable: no raytune_suite import at all."""
        for step in range(1, 7):
            loss = (config["x"] - 0.3) ** 2 + (0.5 if config["kind"] == "b" else 0) + 1 / step
            tune.report({"loss": loss, "pid": os.getpid()})
''')


def test_custom_trainable_by_import_path_under_hyperopt_and_asha(ray_local, in_tmp,
                                                                 monkeypatch):
    (in_tmp / "my_objectives.py").write_text(OBJECTIVE)
    monkeypatch.syspath_prepend(str(in_tmp))
    spec = validate({
        "name": "custom", "trainable": "my_objectives:objective",
        "search_space": {"x": {"uniform": [0.0, 1.0]}, "kind": {"choice": ["a", "b"]}},
        "metric": "loss", "mode": "min",
        "search": {"algorithm": "hyperopt", "num_samples": 10, "seed": 1,
                   "n_initial_points": 4, "max_concurrent": 2},
        "scheduler": {"type": "asha", "max_t": 6, "grace_period": 1, "reduction_factor": 2},
    })
    outcome = run_experiment(spec, {"name": "custom"})
    assert len(outcome.trials) == 10 and outcome.errors == 0
    assert any(t.epochs < 6 for t in outcome.trials)  # ASHA stopped some
    assert outcome.best.config["kind"] == "a"
    runs = mlflow_runs(in_tmp, "custom")
    assert (runs["tags.raytune_suite.role"] == "trial").sum() == 10
    # Ray's own loggers are replaced: its JSON and CSV files, no TensorBoard ones
    trial_dirs = [p for p in Path(outcome.path).iterdir() if p.is_dir()]
    assert len(trial_dirs) == 10
    assert all((p / "result.json").exists() and (p / "progress.csv").exists()
               for p in trial_dirs)
    assert not list(Path(outcome.path).rglob("events.out.tfevents.*"))


def test_tensorboard_files_on_request(ray_local, in_tmp, monkeypatch):
    (in_tmp / "my_objectives.py").write_text(OBJECTIVE)
    monkeypatch.syspath_prepend(str(in_tmp))
    spec = validate({
        "name": "with-tensorboard", "trainable": "my_objectives:objective",
        "search_space": {"x": {"uniform": [0.0, 1.0]}, "kind": {"choice": ["a", "b"]}},
        "metric": "loss", "mode": "min", "search": {"num_samples": 2, "seed": 0},
        "tracking": {"mlflow": {"enabled": False}, "tensorboard": True},
    })
    outcome = run_experiment(spec, {"name": "with-tensorboard"}, use_mlflow=False)
    assert outcome.errors == 0
    assert len(list(Path(outcome.path).glob("*/events.out.tfevents.*"))) == 2


def test_iris_grid_runs_every_combination(ray_local, in_tmp):
    spec, raw = load_spec(EXPERIMENTS / "iris_grid.yaml", ["config.epochs=8",
                                                           "scheduler.max_t=8"])
    outcome = run_experiment(spec, raw)
    combos = sorted((t.config["lr"], t.config["batch_size"]) for t in outcome.trials)
    assert combos == sorted((lr, bs) for lr in (1e-4, 1e-3, 1e-2) for bs in (32, 64, 128))
    assert all(t.epochs == 8 for t in outcome.trials)
    assert outcome.best.config["lr"] == 1e-2  # 8 epochs: only the largest lr gets there


def test_grid_runs_the_loops_in_the_order_the_file_writes_them(ray_local, in_tmp):
    """batch_size written first: the outer loop, lr the inner one (Ray Tune's own
    grid_search nests by name and would vary batch_size fastest)."""
    spec = validate({
        "name": "grid-order", "trainable": "classifier",
        "config": {"dataset": "iris", "model": "mlp", "hidden": 8, "epochs": 1},
        "search_space": {"batch_size": {"grid": [64, 32]}, "lr": {"grid": [1e-2, 1e-3, 1e-4]}},
        "metric": "val_accuracy", "mode": "max",
        "search": {"algorithm": "grid", "max_concurrent": 1},
        "tracking": {"mlflow": {"enabled": False}},
    })
    from ray.tune import ExperimentAnalysis

    outcome = run_experiment(spec, {"name": "grid-order"})
    assert outcome.errors == 0 and len(outcome.trials) == 6
    created = sorted(ExperimentAnalysis(outcome.path).trials,
                     key=lambda t: int(t.experiment_tag.split("_")[0]))  # Ray's trial counter
    assert [(t.config["batch_size"], t.config["lr"]) for t in created] == [
        (bs, lr) for bs in (64, 32) for lr in (1e-2, 1e-3, 1e-4)]


def test_reused_actor_leaks_nothing_between_trials(ray_local, in_tmp):
    """Three trials run one after another on one reused actor: seeds 0, 1, 0.

    The two seed-0 trials must produce identical curves, so neither model, optimizer,
    RNG nor metric state survived from the trial in between.
    """
    spec = validate({
        "name": "reuse", "trainable": "classifier",
        "config": {"dataset": "digits", "model": "cnn", "epochs": 3, "lr": 3e-3,
                   "dropout": 0.3},
        "search_space": {"seed": {"grid": [0, 1, 0]}},
        "metric": "val_loss", "mode": "min",
        "search": {"algorithm": "grid", "max_concurrent": 1},
        "tracking": {"mlflow": {"enabled": False}},
    })
    from ray.tune import ExperimentAnalysis

    outcome = run_experiment(spec, {"name": "reuse"})
    analysis = ExperimentAnalysis(outcome.path)
    frames = analysis.trial_dataframes
    assert len(frames) == 3
    pids = {int(df["pid"].iloc[0]) for df in frames.values()}
    assert len(pids) == 1, f"trials did not share one actor: {pids}"
    by_seed = {}
    for trial in analysis.trials:
        curve = list(frames[trial.trial_id]["val_loss"])
        by_seed.setdefault(trial.config["seed"], []).append(curve)
    zero_a, zero_b = by_seed[0]
    assert zero_a == zero_b
    assert by_seed[1][0] != zero_a


def test_pbt_runs_and_mutates(ray_local, in_tmp):
    spec = validate({
        "name": "pbt", "trainable": "classifier",
        "config": {"dataset": "digits", "model": "mlp", "epochs": 6},
        "search_space": {"lr": {"loguniform": [1e-4, 1e-1]},
                         "batch_size": {"choice": [32, 64, 128]}},
        "metric": "val_accuracy", "mode": "max",
        "search": {"num_samples": 4, "seed": 0},
        "scheduler": {"type": "pbt", "max_t": 6, "perturbation_interval": 2,
                      "quantile_fraction": 0.5},
        "checkpoint": {"every": 2, "keep": 3},
    })
    outcome = run_experiment(spec, {"name": "pbt"})
    assert outcome.errors == 0
    assert all(t.epochs == 6 for t in outcome.trials)
    runs = mlflow_runs(in_tmp, "pbt")
    assert (runs["tags.raytune_suite.role"] == "trial").sum() == 4
