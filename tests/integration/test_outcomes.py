"""How each trial ended, from what really happened: the scheduler stopped it, it ended
by itself, it reached max_t, or the search's time budget ran out."""

import textwrap

from helpers import mlflow_runs
from raytune_suite.engine.runner import run_experiment
from raytune_suite.experiment import validate

TRAINABLES = textwrap.dedent('''
    import time
    from ray import tune

    def climb(config):
        """Ends by itself (done=True) at its first step when x is small."""
        for step in range(1, 9):
            time.sleep(0.05)
            tune.report({"score": config["x"] * step, "done": config["x"] < 0.2})

    def slow(config):
        for step in range(1, 100):
            time.sleep(0.5)
            tune.report({"score": config["x"] * step})
''')


def _tags(in_tmp, name) -> dict:
    runs = mlflow_runs(in_tmp, name)
    trials = runs[runs["tags.raytune_suite.role"] == "trial"]
    return dict(zip(trials["tags.ray.trial_id"], trials["tags.raytune_suite.outcome"]))


def test_scheduler_stops_own_ends_and_max_t_are_told_apart(ray_local, in_tmp, monkeypatch):
    (in_tmp / "outcome_trainables.py").write_text(TRAINABLES)
    monkeypatch.syspath_prepend(str(in_tmp))
    spec = validate({
        "name": "ends", "trainable": "outcome_trainables:climb",
        "search_space": {"x": {"grid": [0.9, 0.7, 0.5, 0.3, 0.1]}},  # worse ones later
        "metric": "score", "mode": "max", "search": {"algorithm": "grid"},
        "scheduler": {"type": "asha", "max_t": 8, "grace_period": 2, "reduction_factor": 2},
    })
    outcome = run_experiment(spec, {"name": "ends"})
    assert outcome.errors == 0
    by_x = {t.config["x"]: t for t in outcome.trials}
    assert by_x[0.1].outcome == "completed" and by_x[0.1].epochs == 1  # its own end
    for t in outcome.trials:
        if t.config["x"] != 0.1:
            # ASHA at rf 2 stops what it stops before max_t; what reaches max_t completed.
            assert t.outcome == ("completed" if t.epochs == 8 else "stopped_early"), t
    assert {t.outcome for t in outcome.trials} == {"completed", "stopped_early"}
    assert _tags(in_tmp, "ends") == {t.trial_id: t.outcome for t in outcome.trials}


def test_time_budget_is_its_own_outcome(ray_local, in_tmp, monkeypatch):
    (in_tmp / "outcome_trainables.py").write_text(TRAINABLES)
    monkeypatch.syspath_prepend(str(in_tmp))
    spec = validate({
        "name": "budget", "trainable": "outcome_trainables:slow",
        "search_space": {"x": {"uniform": [0, 1]}}, "metric": "score", "mode": "max",
        "search": {"algorithm": "random", "num_samples": 3, "max_concurrent": 2},
        "scheduler": {"type": "fifo", "max_t": 99}, "stop": {"time_budget_s": 6},
    })
    outcome = run_experiment(spec, {"name": "budget"})
    assert outcome.errors == 0
    assert {t.outcome for t in outcome.trials} == {"stopped_by_budget"}
    assert set(_tags(in_tmp, "budget").values()) == {"stopped_by_budget"}
