"""`resources.gpu: auto` through the runner on a machine (a Ray runtime) without a GPU."""

from helpers import shared_ray


def test_gpu_auto_without_a_gpu_runs_cpu_trials_and_says_so_once(tmp_path, capsys):
    import mlflow

    from raytune_suite.engine.runner import run_experiment
    from raytune_suite.engine.state import read_state
    from raytune_suite.experiment import validate

    shared_ray()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    raw = {"name": "auto", "trainable": "classifier",
           "config": {"dataset": "iris", "epochs": 2},
           "search_space": {"lr": {"grid": [0.01, 0.05]}},
           "metric": "val_accuracy", "mode": "max",
           "search": {"algorithm": "grid"}, "scheduler": {"type": "fifo"},
           "resources": {"cpu": 1, "gpu": "auto"},
           "storage": str(tmp_path / "results"),
           "tracking": {"mlflow": {"tracking_uri": uri}}}
    outcome = run_experiment(validate(raw), raw)
    out = capsys.readouterr().out
    line = "gpu: auto -> no GPU in the Ray cluster: trials run on CPU"
    assert out.count(line) == 1
    # Finished trials on a Ray runtime without GPUs: they asked for none (a trial that
    # asks for a GPU there waits for ever).
    assert outcome.errors == 0 and len(outcome.trials) == 2
    assert outcome.spec.resources.gpu == 0.0
    state = read_state(outcome.path)
    assert state["gpu_auto"] == {"gpu": 0.0, "k": 0, "line": line}
    client = mlflow.MlflowClient(uri)
    search = client.get_run(state["parent_run_id"])
    assert search.data.params["gpu_auto.decision"] == line
    assert search.data.params["resources.gpu"] == "0.0"
