from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import SCENARIOS, ScenarioRuns, shared_ray


@pytest.fixture
def ray_local():
    """An embedded Ray runtime (2 CPUs), shared by the in-process integration tests and
    started again if a simulated-cluster test shut it down."""
    return shared_ray()


@pytest.fixture
def no_ray():
    """A test that builds its own Ray cluster: no embedded runtime before or after."""
    import ray

    ray.shutdown()
    yield
    ray.shutdown()


# The session's scenarios all run in the set-up of the first test that reads one (about
# 6 minutes on 2 cores): that test gets this much longer than pyproject's per-test 600 s.
# Each scenario keeps its own, shorter timeouts on the processes it runs.
SCENARIO_TIMEOUT_S = 1500


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.integration)
        if "scenario_runs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(SCENARIO_TIMEOUT_S))
    # The simulated-cluster tests and those that want no embedded runtime (`no_ray`) shut
    # the shared one down: run them after every other integration test, so that
    # `ray_local` starts it once (~5 s), not again after each of them.
    def shuts_ray_down(item) -> bool:
        return (item.path.name == "test_multinode.py"
                or "no_ray" in getattr(item, "fixturenames", ()))

    last = [i for i in items if shuts_ray_down(i)]
    rest = [i for i in items if not shuts_ray_down(i)]
    integration = [k for k, i in enumerate(rest) if "integration" in i.path.parts]
    if last and integration:
        items[:] = rest[:integration[-1] + 1] + last + rest[integration[-1] + 1:]


@pytest.fixture(scope="session")
def scenario_runs(request, tmp_path_factory):
    """Every scenario (``helpers.scenario``) that a selected test needs, three at a time,
    longest first, each in a fresh folder; all have ended when this returns. They
    overlap well on 2 cores: each waits on its processes' start-up much of the time."""
    needed = {name for item in request.session.items
              for name in getattr(item, "fixturenames", ())}
    chosen = sorted((name for name, (_, fixture, _) in SCENARIOS.items() if fixture in needed),
                    key=lambda name: -SCENARIOS[name][2])
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(SCENARIOS[name][0], tmp_path_factory.mktemp(
            "".join(c if c.isalnum() else "-" for c in name)[:40])) for name in chosen}
    return ScenarioRuns(futures)


@pytest.fixture(scope="session")
def small_classifier_search(tmp_path_factory):
    """A finished classifier search with MLflow (SQLite) and a checkpoint per trial, run
    once for the tests that read a finished search (Model Registry, ensembles): 4 trials
    of the quickstart's CNN on digits, a grid over lr, 3 epochs each, FIFO.
    Returns (working directory, Outcome); tests must not change its trials."""
    from raytune_suite.engine.runner import run_experiment
    from raytune_suite.experiment import validate

    shared_ray()
    cwd = tmp_path_factory.mktemp("small-search")
    raw = {
        "name": "small", "trainable": "classifier",
        "config": {"dataset": "digits", "model": "cnn", "width": 0.25, "epochs": 3,
                   "batch_size": 64, "optimizer": "adam"},
        "search_space": {"lr": {"grid": [1.0e-4, 1.0e-3, 3.0e-3, 1.0e-2]}},
        "metric": "val_accuracy", "mode": "max",
        "search": {"algorithm": "grid", "num_samples": 1, "max_concurrent": 2, "seed": 0},
        "scheduler": {"type": "fifo"},
        "checkpoint": {"every": 1, "keep": 1},
        "storage": str(cwd / "ray_results"),
        "tracking": {"mlflow": {"tracking_uri": f"sqlite:///{cwd}/mlflow.db"}},
    }
    outcome = run_experiment(validate(raw), raw)
    assert outcome.errors == 0 and len(outcome.trials) == 4
    return cwd, outcome
