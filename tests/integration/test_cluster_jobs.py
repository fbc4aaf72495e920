"""A real `ray start --head` with token authentication and logical GPUs: submit through
the Jobs API, connect with --address auto, and be refused without the token."""

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import CLI, EXPERIMENTS, cli_env, free_port, mlflow_runs


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head node in its own process group and temp dir (so it never meets the
    embedded runtimes of other tests); killed as a group at the end."""
    token = secrets.token_hex(16)
    gcs, dashboard = free_port(), free_port()
    temp = tmp_path_factory.mktemp("head")
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=2",
         "--num-gpus=2", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:
            break  # 401: up, and demanding the token
        except OSError:
            assert proc.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the head's dashboard never answered"
            time.sleep(0.5)
    yield {"url": url, "gcs": f"127.0.0.1:{gcs}", "token": token}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # raylet, GCS and workers share the group
    except ProcessLookupError:
        pass


def _token_env(head, **extra):
    return cli_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=head["token"], **extra)


SMALL = ["--set", "search.num_samples=4", "--set", "search.n_initial_points=2",
         "--set", "config.epochs=4", "--set", "scheduler.max_t=4",
         "--set", "scheduler.grace_period=1"]


def test_submit_quickstart_streams_logs_and_logs_to_mlflow(head, tmp_path):
    proc = subprocess.run([*CLI, "submit", str(EXPERIMENTS / "quickstart.yaml"), "--address",
                           head["url"], *SMALL], cwd=tmp_path, env=_token_env(head),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("submitted job raytune-quickstart-")
    assert "top 4 by val_accuracy" in proc.stdout  # the job's own output, streamed
    assert "job finished: SUCCEEDED" in proc.stdout
    runs = mlflow_runs(tmp_path, "quickstart")  # relative sqlite URI -> submitter's folder
    assert (runs["tags.raytune_suite.role"] == "trial").sum() == 4
    assert (tmp_path / "ray_results" / "quickstart" / "raytune_suite.yaml").is_file()


def test_no_wait_then_status(head, tmp_path):
    proc = subprocess.run([*CLI, "submit", str(EXPERIMENTS / "iris_grid.yaml"), "--address",
                           head["url"], "--no-wait", "--set", "config.epochs=2",
                           "--set", "scheduler.max_t=2"],
                          cwd=tmp_path, env=_token_env(head), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.split()[2]
    assert f"raytune-suite status {job_id} --address {head['url']}" in proc.stdout
    deadline = time.monotonic() + 300
    while True:
        st = subprocess.run([*CLI, "status", job_id, "--address", head["url"]], cwd=tmp_path,
                            env=_token_env(head), capture_output=True, text=True, timeout=60)
        state = st.stdout.split()[1] if st.stdout else ""
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        assert time.monotonic() < deadline, st.stdout + st.stderr
        time.sleep(2)
    assert state == "SUCCEEDED", st.stdout
    logs = subprocess.run([*CLI, "status", job_id, "--address", head["url"], "--logs"],
                          cwd=tmp_path, env=_token_env(head), capture_output=True, text=True,
                          timeout=60)
    assert "iris-grid: 9 trials, 0 errored" in logs.stdout


def test_run_with_address_auto_uses_the_cluster(head, tmp_path):
    proc = subprocess.run([*CLI, "run", str(EXPERIMENTS / "iris_grid.yaml"), "--address",
                           "auto", "--verbose",  # Ray's trial table shows the GPUs in use
                           "--set", "config.epochs=2", "--set", "scheduler.max_t=2",
                           "--set", "resources.gpu=0.5"],
                          cwd=tmp_path, env=_token_env(head, RAY_ADDRESS=head["gcs"]),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "iris-grid: 9 trials, 0 errored" in proc.stdout
    assert "Logical resource usage" in proc.stdout and "/2 GPUs" in proc.stdout


def test_submission_without_token_is_refused(head, tmp_path):
    env = {k: v for k, v in cli_env(HOME=str(tmp_path)).items()
           if not k.startswith("RAY_AUTH")}
    proc = subprocess.run([*CLI, "submit", str(EXPERIMENTS / "quickstart.yaml"), "--address",
                           head["url"]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "token authentication failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "submitted job" not in proc.stdout
