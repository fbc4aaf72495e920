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

from helpers import CLI, cli_env, free_port
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


def test_server_dies_mid_run_then_mlflow_sync_backfills(tmp_path):
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

    # Tuning went on without MLflow: every trial finished; the user was told once how
    # to backfill.
    assert driver.returncode == 0, out[-2000:] + err[-3000:]
    assert "outage: 4 trials, 0 errored" in out
    assert f"MLflow at {uri} failed" in err
    assert err.count("tuning goes on without MLflow") == 1
    assert f"raytune-suite mlflow-sync {results}" in err

    server = _start_server(tmp_path, port)
    try:
        sync = subprocess.run([*CLI, "mlflow-sync", "outage"], cwd=tmp_path, env=cli_env(),
                              capture_output=True, text=True, timeout=300)
        assert sync.returncode == 0, sync.stderr[-3000:]
        assert "4 trials" in sync.stdout
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("outage")
        runs = client.search_runs([experiment.experiment_id])
        trials = [r for r in runs if r.data.tags.get("raytune_suite.role") == "trial"]
        search = [r for r in runs if r.data.tags.get("raytune_suite.role") == "search"]
        # One finished run per trial, each with the whole curve Ray recorded.
        assert len(trials) == 4 and len({r.data.tags["ray.trial_id"] for r in trials}) == 4
        assert {r.info.status for r in runs} == {"FINISHED"}
        assert {r.data.tags["raytune_suite.outcome"] for r in trials} == {"completed"}
        for run in trials:
            steps = sorted({m.step for m in client.get_metric_history(run.info.run_id,
                                                                       "val_accuracy")})
            assert steps == list(range(1, EPOCHS + 1)), (run.info.run_name, steps)
            assert "lr" in run.data.params
        assert len(search) == 1 and "best_val_accuracy" in search[0].data.metrics

        # Syncing again writes nothing.
        again = sync_experiment(str(results))
        assert (again.runs_created, again.metrics_logged, again.runs_closed) == (0, 0, 0)
    finally:
        _stop_server(server)
