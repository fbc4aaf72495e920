"""The fixed cost before the first result: embedded workers start with the built-in
trainable already imported, and `run --verbose` says where the start-up time went."""

import re
import subprocess
import textwrap

import pytest

from helpers import CLI, cli_env, scenario


def test_embedded_workers_start_with_the_builtin_trainable_imported(no_ray):
    """Ray prestarts a worker per CPU when the driver connects; with the suite's runtime
    they import `engine.worker` and the classifier's module (torch) before any work, so
    a trial's actor does not pay for it. A task that imports nothing itself sees both."""
    import ray

    from raytune_suite.engine.tuner import init_ray
    from raytune_suite.experiment import validate

    spec = validate({"name": "warm", "trainable": "classifier",
                     "config": {"dataset": "digits", "model": "mlp", "epochs": 1},
                     "search_space": {"lr": {"loguniform": [1e-3, 1e-2]}},
                     "metric": "val_accuracy", "mode": "max"})
    init_ray(None, spec=spec)

    @ray.remote(num_cpus=1)
    def modules():
        import logging
        import sys

        return ("torch" in sys.modules, "raytune_suite.training.trainable" in sys.modules,
                logging.getLogger("ray.train._internal.storage").level)

    import logging

    assert ray.get(modules.remote()) == (True, True, logging.WARNING)


def test_a_users_trainable_keeps_its_workers_free_of_torch(no_ray, in_tmp):
    """Only a built-in trainable's module is preloaded: a user's workers import what the
    user's module imports, when its trials start."""
    import ray

    from raytune_suite.engine.tuner import init_ray, worker_preloads
    from raytune_suite.experiment import validate

    (in_tmp / "own.py").write_text("from ray import tune\n\n\ndef train(config):\n"
                                   "    tune.report({'score': config['x']})\n")
    spec = validate({"name": "own", "trainable": "own:train", "metric": "score",
                     "search_space": {"x": {"uniform": [0, 1]}}, "mode": "max"})
    assert worker_preloads(spec) == ["raytune_suite.engine.worker"]
    init_ray(None, spec=spec)

    @ray.remote(num_cpus=1)
    def has_torch():
        import sys

        return "torch" in sys.modules

    assert ray.get(has_torch.remote()) is False


EXPERIMENT = textwrap.dedent("""
    name: phases
    trainable: classifier
    config: {dataset: digits, model: mlp, epochs: 2}
    search_space:
      lr: {loguniform: [1.0e-3, 1.0e-2]}
    metric: val_accuracy
    mode: max
    search: {algorithm: random, num_samples: 2, seed: 0}
""")


@scenario("startup: run --verbose", needed_by="verbose_run", seconds=18)
def _verbose_run(folder):
    (folder / "exp.yaml").write_text(EXPERIMENT)
    return subprocess.run([*CLI, "run", "exp.yaml", "--no-mlflow", "--verbose"], cwd=folder,
                          env=cli_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture
def verbose_run(scenario_runs):
    return scenario_runs.result("startup: run --verbose")


def test_run_verbose_says_where_the_start_up_time_went(verbose_run):
    proc = verbose_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = re.search(r"^phases \(s from process start\): (.*)$", proc.stdout, re.M)
    assert found, proc.stdout[-2000:]
    marks = [re.fullmatch(r"(.+) (\d+\.\d)", part.strip()).groups()
             for part in found.group(1).split("·")]
    names = [name for name, _ in marks]
    assert names == ["imports", "file checked", "data loaded", "Ray started", "search built",
                     "first trial started", "first result", "search done", "end"]
    seconds = [float(s) for _, s in marks]
    assert seconds == sorted(seconds) and 0 < seconds[0] and seconds[-1] < 300
