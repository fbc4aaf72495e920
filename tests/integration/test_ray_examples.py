"""Ray Tune's own example trainables, imported from the installed `ray` package (not
copied), run unchanged through `raytune-suite run` at smoke size: ASHA, HyperBand with
checkpoint/restore, and a HyperOpt conditional space. (The PBT example, killed and
resumed, is in test_pbt.py.)"""

import textwrap

from helpers import mlflow_runs
from raytune_suite.cli import main


def _run(in_tmp, capsys, name: str, samples: int, text: str):
    """Run experiment ``name`` (the file's text) through the CLI; it must end with all
    ``samples`` trials finished. Returns its MLflow trial runs."""
    (in_tmp / "exp.yaml").write_text(f"name: {name}\n" + textwrap.dedent(text))
    assert main(["run", "exp.yaml"]) == 0
    assert f"{name}: {samples} trials, 0 errored" in capsys.readouterr().out
    runs = mlflow_runs(in_tmp, name)
    trials = runs[runs["tags.raytune_suite.role"] == "trial"]
    assert len(trials) == samples and set(trials["status"]) == {"FINISHED"}
    return trials


def test_async_hyperband_example_under_asha(ray_local, in_tmp, capsys):
    trials = _run(in_tmp, capsys, "ray-asha", 6, """
        trainable: ray.tune.examples.async_hyperband_example:easy_objective
        config: {steps: 6}
        search_space:
          width: {uniform: [0, 20]}
          height: {uniform: [-100, 100]}
        metric: mean_loss
        mode: min
        search: {algorithm: hyperopt, num_samples: 6, max_concurrent: 2, seed: 1,
                 n_initial_points: 3}
        scheduler: {type: asha, max_t: 6, grace_period: 1, reduction_factor: 2}
    """)
    outcomes = dict(zip(trials["tags.ray.trial_id"], trials["tags.raytune_suite.outcome"]))
    assert set(outcomes.values()) <= {"completed", "stopped_early"}
    assert "stopped_early" in outcomes.values(), outcomes  # ASHA at reduction factor 2
    assert "completed" in outcomes.values(), outcomes


def test_checkpointing_example_under_hyperband(ray_local, in_tmp, capsys):
    """HyperBand pauses trials at its rungs; Ray's custom_func_checkpointing example
    restores from its own checkpoint each time and every trial ends cleanly."""
    trials = _run(in_tmp, capsys, "ray-hyperband", 4, """
        trainable: ray.tune.examples.custom_func_checkpointing:train_func
        search_space:
          width: {qrandint: [0, 20, 5]}
          height: {randn: [0, 50]}
        metric: mean_loss
        mode: min
        search: {algorithm: random, num_samples: 4, seed: 2}
        scheduler: {type: hyperband, max_t: 4, reduction_factor: 2}
        checkpoint: {keep: 2}
    """)
    assert set(trials["tags.raytune_suite.outcome"]) <= {"completed", "stopped_early"}
    assert all(w % 5 == 0 for w in trials["params.width"].astype(int))


def test_hyperopt_conditional_example(ray_local, in_tmp, capsys):
    trials = _run(in_tmp, capsys, "ray-conditional", 6, """
        trainable: ray.tune.examples.hyperopt_conditional_search_space_example:easy_objective
        config: {steps: 3}
        search_space:
          activation:
            choice:
              - {activation: relu, mult: {uniform: [1, 2]}}
              - {activation: tanh}
          width: {uniform: [0, 20]}
          height: {uniform: [-100, 100]}
        metric: mean_loss
        mode: min
        search: {algorithm: hyperopt, num_samples: 6, max_concurrent: 2, seed: 4,
                 n_initial_points: 6}
        scheduler: {type: fifo, max_t: 3}
    """)
    for _, t in trials.iterrows():
        has_mult = isinstance(t.get("params.activation/mult"), str)
        assert has_mult == (t["params.activation/activation"] == "relu")
    assert set(trials["tags.raytune_suite.outcome"]) == {"completed"}


def test_class_trainable_under_pbt_checkpoints_every_n(ray_local, in_tmp, capsys):
    """Ray's PBTBenchmarkExample, a `tune.Trainable` class: Ray checkpoints it every
    `checkpoint.every` iterations (checkpoint_frequency), and PBT exploits its donors."""
    import json

    trials = _run(in_tmp, capsys, "ray-pbt-class", 4, """
        trainable: ray.tune.examples.pbt_example:PBTBenchmarkExample
        search_space:
          lr: {loguniform: [0.0001, 0.02]}
        metric: mean_accuracy
        mode: max
        search: {algorithm: random, num_samples: 4, seed: 0}
        scheduler: {type: pbt, max_t: 24, perturbation_interval: 4, quantile_fraction: 0.5}
        checkpoint: {every: 2, keep: 2}
    """)
    folder = in_tmp / "ray_results" / "ray-pbt-class"
    records = [json.loads(line) for line in (folder / "pbt_exploits.jsonl").open()]
    made = [r for r in records if r["event"] == "exploit"]
    assert made, "PBT never exploited"
    assert all(r["iteration"] - r["checkpoint_iteration"] <= 4 for r in made)
    for trial_dir in folder.glob("PBTBenchmarkExample_*"):
        kept = list(trial_dir.glob("checkpoint_*"))
        assert 1 <= len(kept) <= 2, kept
    assert set(trials["tags.raytune_suite.outcome"]) == {"completed"}
