"""A search of two objectives with Optuna on embedded Ray: every trial logs both, the
Pareto front reaches `best --json`, the console, MLflow's tags and the report."""

import json
import textwrap

import pytest

from helpers import mlflow_runs
from raytune_suite.cli import main
from raytune_suite.engine.runner import run_experiment
from raytune_suite.experiment import validate

OBJECTIVES = textwrap.dedent('''
    from ray import tune

    def accuracy_and_size(config):
        """A user's trainable: a bigger model is more accurate, up to x = 0.7."""
        for step in range(1, 3):
            tune.report({"acc": 1 - (config["x"] - 0.7) ** 2 - 0.1 / step,
                         "size": 10 + 100 * config["x"]})

    def size_missing(config):
        tune.report({"acc": 0.5})
''')


def _raw(name: str, trainable: str) -> dict:
    return {"name": name, "trainable": f"mo_objectives:{trainable}",
            "search_space": {"x": {"uniform": [0.0, 1.0]}},
            "metric": ["acc", "size"], "mode": ["max", "min"],
            "search": {"algorithm": "optuna", "num_samples": 8, "seed": 0,
                       "n_initial_points": 4, "max_concurrent": 2}}


@pytest.fixture
def objectives(in_tmp, monkeypatch):
    (in_tmp / "mo_objectives.py").write_text(OBJECTIVES)
    monkeypatch.syspath_prepend(str(in_tmp))
    return in_tmp


def test_two_objectives_give_a_pareto_front_everywhere(ray_local, objectives, capsys):
    raw = _raw("two-goals", "accuracy_and_size")
    outcome = run_experiment(validate(raw), raw)
    assert len(outcome.trials) == 8 and outcome.errors == 0
    # every trial's objectives as its last result holds them; the front is non-dominated
    for t in outcome.trials:
        assert set(t.values) == {"acc", "size"}
    front = outcome.pareto
    assert len(front) >= 2
    for a in front:
        assert not any(b.values["acc"] >= a.values["acc"] and b.values["size"] <=
                       a.values["size"] and b.values != a.values for b in outcome.trials)

    capsys.readouterr()  # the search's own output
    assert main(["best", outcome.path, "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert [p["trial_id"] for p in best["pareto"]] == [t.trial_id for t in front]
    assert best["objectives"] == [{"metric": "acc", "mode": "max"},
                                  {"metric": "size", "mode": "min"}]
    assert set(best["pareto"][0]["objectives"]) == {"acc", "size"}
    assert best["trial_id"] == outcome.best.trial_id  # ranked by the first objective

    runs = mlflow_runs(objectives, "two-goals")
    trials = runs[runs["tags.raytune_suite.role"] == "trial"]
    assert len(trials) == 8
    assert trials["metrics.acc"].notna().all() and trials["metrics.size"].notna().all()
    tagged = set(trials[trials["tags.pareto"] == "true"]["tags.ray.trial_id"])
    assert tagged == {t.trial_id for t in front}

    from raytune_suite.report.html import write_report

    page = write_report(outcome.path).read_text()
    assert 'id="pareto-table"' in page and "chart-pareto" in page


def test_a_missing_objective_is_one_line_naming_it(ray_local, objectives, capsys):
    import yaml

    raw = _raw("half-goals", "size_missing")
    (objectives / "half.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", "half.yaml", "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "error: metric: must be reported by the trainable mo_objectives:size_missing " \
           "(it reported acc)" in err and "got 'size'" in err
    assert "Traceback" not in err


def test_the_compression_recipe_finds_a_front_of_accuracy_and_size(ray_local, in_tmp, capsys):
    """experiments/digits_compression.yaml at smoke size (8 trials of 3 epochs)."""
    from helpers import EXPERIMENTS
    from raytune_suite.experiment import load_spec

    spec, raw = load_spec(EXPERIMENTS / "digits_compression.yaml",
                          ["search.num_samples=8", "config.epochs=3"])
    outcome = run_experiment(spec, raw)
    assert len(outcome.trials) == 8 and outcome.errors == 0
    capsys.readouterr()
    assert main(["best", outcome.path, "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert len(best["pareto"]) >= 2
    # along the front, a smaller model costs accuracy
    front = sorted((p["objectives"]["val_accuracy"], p["objectives"]["model_size_kb"])
                   for p in best["pareto"])
    sizes = [size for _, size in front]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    runs = mlflow_runs(in_tmp, "digits-compression")
    trials = runs[runs["tags.raytune_suite.role"] == "trial"]
    assert len(trials) == 8
    for m in ("val_accuracy", "model_size_kb", "nonzero_params", "latency_ms"):
        assert trials[f"metrics.{m}"].notna().all(), m
