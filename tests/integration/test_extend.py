"""`raytune-suite extend`: more trials for a finished search, on the shared embedded Ray."""

import glob
import textwrap

import pytest

from helpers import mlflow_runs
from raytune_suite.cli import main
from raytune_suite.engine.runner import resume_experiment, run_experiment
from raytune_suite.experiment import validate

OBJECTIVE = textwrap.dedent('''
    from ray import tune

    def objective(config):
        """A user's own function trainable: no raytune_suite import at all."""
        for step in range(1, 5):
            tune.report({"loss": (config["x"] - 0.3) ** 2 + 1 / step})
''')


def _spec(algorithm: str, num_samples: int, scheduler: dict) -> dict:
    return {"name": f"grow-{algorithm}", "trainable": "grow_objectives:objective",
            "search_space": {"x": {"uniform": [0.0, 1.0]}}, "metric": "loss", "mode": "min",
            "search": {"algorithm": algorithm, "num_samples": num_samples, "seed": 1,
                       "n_initial_points": 3, "max_concurrent": 2},
            "scheduler": scheduler}


def _hyperopt_history(path) -> list[tuple]:
    """(suggested x, reported loss) of every trial in the newest saved HyperOpt state."""
    from ray.tune.search.hyperopt import HyperOptSearch

    searcher = HyperOptSearch()
    searcher.restore(max(glob.glob(f"{path}/searcher-state-*.pkl")))
    return [(float(t["misc"]["vals"]["x"][0]), t["result"].get("loss"))
            for t in searcher._hpopt_trials.trials]


@pytest.fixture
def objectives(in_tmp, monkeypatch):
    (in_tmp / "grow_objectives.py").write_text(OBJECTIVE)
    monkeypatch.syspath_prepend(str(in_tmp))
    return in_tmp


def test_a_hyperopt_search_extended_by_4_keeps_its_history(ray_local, objectives):
    raw = _spec("hyperopt", 6, {"type": "asha", "max_t": 4, "grace_period": 1,
                                "reduction_factor": 2})
    first = run_experiment(validate(raw), raw)
    assert len(first.trials) == 6 and first.errors == 0
    before = _hyperopt_history(first.path)
    assert len(before) == 6 and all(loss is not None for _, loss in before)

    extended = resume_experiment(first.path, more_samples=4)

    assert len(extended.trials) == 10 and extended.errors == 0
    assert {t.trial_id for t in first.trials} < {t.trial_id for t in extended.trials}
    after = _hyperopt_history(first.path)
    assert len(after) == 10 and after[:6] == before  # TPE went on from the same history
    assert all(loss is not None for _, loss in after)
    runs = mlflow_runs(objectives, "grow-hyperopt")
    search = runs[runs["tags.raytune_suite.role"] == "search"]
    trials = runs[runs["tags.raytune_suite.role"] == "trial"]
    assert len(search) == 1 and search.iloc[0]["status"] == "FINISHED"
    # the param keeps the count the search started with (MLflow params never change)
    assert search.iloc[0]["params.search.num_samples"] == "6"
    assert search.iloc[0]["tags.raytune_suite.num_samples"] == "10"
    assert len(trials) == 10 and set(trials["status"]) == {"FINISHED"}
    assert (trials["tags.mlflow.parentRunId"] == search.iloc[0]["run_id"]).all()
    assert trials["tags.ray.trial_id"].nunique() == 10
    # the new runs continue the ordinals: 01..10
    assert sorted(n.split()[0] for n in trials["tags.mlflow.runName"]) == \
        [f"{i:02d}" for i in range(1, 11)]
    assert validate_saved(first.path)["search"]["num_samples"] == 10


def validate_saved(path) -> dict:
    import yaml

    return yaml.safe_load(open(f"{path}/raytune_suite.yaml"))


def test_a_random_search_extends_without_mlflow(ray_local, objectives):
    raw = {**_spec("random", 2, {"type": "fifo"}),
           "tracking": {"mlflow": {"enabled": False}}}
    first = run_experiment(validate(raw), raw, use_mlflow=False)
    assert len(first.trials) == 2
    extended = resume_experiment(first.path, more_samples=3)
    assert len(extended.trials) == 5 and all(t.epochs == 4 for t in extended.trials)
    assert len({t.config["x"] for t in extended.trials}) == 5  # new samples, not repeats


@pytest.mark.parametrize("change, message", [
    ({"search": {"algorithm": "grid", "num_samples": 1}, "search_space":
      {"x": {"grid": [0.1, 0.2]}}}, "search.algorithm: a grid search has run every"),
    ({"scheduler": {"type": "pbt", "perturbation_interval": 2, "max_t": 4},
      "search": {"algorithm": "random", "num_samples": 2}}, "scheduler.type: extend adds"),
])
def test_what_cannot_grow_is_refused_before_ray_starts(change, message, objectives, capsys):
    import yaml

    raw = {**_spec("random", 2, {"type": "fifo"}), **change}
    folder = objectives / "ray_results" / "grow"
    folder.mkdir(parents=True)
    (folder / "raytune_suite.yaml").write_text(yaml.safe_dump(raw))
    assert main(["extend", str(folder), "--num-samples", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert main(["extend", str(folder), "--num-samples", "0"]) == 2
    assert "--num-samples: must be a whole number >= 1, got 0" in capsys.readouterr().err
