"""MLflow outages against a real `mlflow server`: unreachable at start is one clear
error before Ray starts; a server that dies mid-run costs a warning, not the search, and
`raytune-suite mlflow-sync` backfills what it missed from Ray's results."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from helpers import CLI, cli_env, free_port, scenario
from raytune_suite.sync import sync_experiment

EPOCHS = 6
EXPERIMENT = textwrap.dedent(f"""
    name: outage
    trainable: classifier
    config: {{dataset: digits, model: cnn, width: 0.5, epochs: {EPOCHS}}}
    search_space:
      lr: {{grid: [0.002, 0.005, 0.01, 0.02]}}
    metric: val_accuracy
    mode: max
    search: {{algorithm: grid, max_concurrent: 2}}
    scheduler: {{type: fifo, max_t: {EPOCHS}}}
    checkpoint: {{every: 1, keep: 1}}
""")


def _start_server(workdir, port: int) -> subprocess.Popen:
    """`mlflow server` on loopback with a SQLite store, as a user would start it."""
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{workdir}/server.db",
         "--artifacts-destination", str(workdir / "artifacts")],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            assert server.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not answer in 120 s"
            time.sleep(0.5)


def _stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGKILL)  # a crash: no graceful shutdown
    server.wait()


def test_unreachable_server_is_an_error_before_ray_starts(tmp_path):
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    uri = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run([*CLI, "run", "exp.yaml", "--set",
                           f"tracking.mlflow.tracking_uri={uri}"],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith(
        f"error: tracking.mlflow.tracking_uri: no MLflow tracking server answered "
        f"(Connection refused); start it, fix the URI, or run with --no-mlflow, got '{uri}'")
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]  # Ray never started


@scenario("mlflow: the server dies mid-run", needed_by="server_died", seconds=56)
def _server_died(tmp_path):
    """A search logging to a real server that is SIGKILLed after 3 results; then the
    server again and `mlflow-sync`, then a second sync in this process. Returns what the
    test checks: (results folder, URI, the run's status/stdout/stderr, the first sync,
    the server's runs with each trial's val_accuracy steps, the second sync's counts)."""
    from mlflow.tracking import MlflowClient

    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(tmp_path, port)
    results = tmp_path / "ray_results" / "outage"
    driver = subprocess.Popen([*CLI, "run", "exp.yaml", "--set",
                               f"tracking.mlflow.tracking_uri={uri}"],
                              cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while sum(1 for p in results.glob("*/result.json") for _ in p.open()) < 3:
            assert driver.poll() is None, driver.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        _stop_server(server)
    out, err = driver.communicate(timeout=600)

    server = _start_server(tmp_path, port)
    try:
        sync = subprocess.run([*CLI, "mlflow-sync", "outage"], cwd=tmp_path, env=cli_env(),
                              capture_output=True, text=True, timeout=300)
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("outage")
        runs = client.search_runs([experiment.experiment_id]) if experiment else None
        steps = {r.info.run_id: sorted({m.step for m in client.get_metric_history(
            r.info.run_id, "val_accuracy")}) for r in runs or ()}
        # Syncing again writes nothing.
        again = sync_experiment(str(results))
        again = (again.runs_created, again.metrics_logged, again.runs_closed)
    finally:
        _stop_server(server)
    return results, uri, (driver.returncode, out, err), sync, runs, steps, again


@pytest.fixture
def server_died(scenario_runs):
    return scenario_runs.result("mlflow: the server dies mid-run")


def test_server_dies_mid_run_then_mlflow_sync_backfills(server_died):
    results, uri, (code, out, err), sync, runs, steps, again = server_died

    # Tuning went on without MLflow: every trial finished; the user was told once how
    # to backfill.
    assert code == 0, out[-2000:] + err[-3000:]
    assert "outage: 4 trials, 0 errored" in out
    assert f"MLflow at {uri} failed" in err
    assert err.count("tuning goes on without MLflow") == 1
    assert f"raytune-suite mlflow-sync {results}" in err

    assert sync.returncode == 0, sync.stderr[-3000:]
    assert "4 trials" in sync.stdout
    assert runs is not None, "no experiment 'outage' on the server after the sync"
    trials = [r for r in runs if r.data.tags.get("raytune_suite.role") == "trial"]
    search = [r for r in runs if r.data.tags.get("raytune_suite.role") == "search"]
    # One finished run per trial, each with the whole curve Ray recorded.
    assert len(trials) == 4 and len({r.data.tags["ray.trial_id"] for r in trials}) == 4
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["raytune_suite.outcome"] for r in trials} == {"completed"}
    for run in trials:
        assert steps[run.info.run_id] == list(range(1, EPOCHS + 1)), (
            run.info.run_name, steps[run.info.run_id])
        assert "lr" in run.data.params
    assert len(search) == 1 and "best_val_accuracy" in search[0].data.metrics

    # Syncing again writes nothing.
    assert again == (0, 0, 0)
