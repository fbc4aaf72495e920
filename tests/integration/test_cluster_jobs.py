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
    gcs, dashboard, agent, client = free_port(), free_port(), free_port(), free_port()
    temp = tmp_path_factory.mktemp("head")
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={agent}",
         # not Ray Client's default 10001: `--block` exits if anything else holds it
         f"--ray-client-server-port={client}", "--num-cpus=2",
         "--num-gpus=2", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    # The dashboard answers first; jobs are submitted through the head's dashboard
    # agent, which the dashboard waits for only 10 s ("No available agent to submit
    # job" on a loaded machine), so wait for both.
    for endpoint, what in ((f"{url}/api/version", "dashboard"),
                           (f"http://127.0.0.1:{agent}/api/local_raylet_healthz",
                            "dashboard agent")):
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2)
                break
            except urllib.error.HTTPError:
                break  # 401 (or any HTTP status): up, and demanding the token
            except OSError:
                assert proc.poll() is None, "ray start --head exited"
                assert time.monotonic() < deadline, f"the head's {what} never answered"
                time.sleep(0.2)
    yield {"url": url, "gcs": f"127.0.0.1:{gcs}", "token": token}
    # `ray start --block` ignores SIGTERM (it would wait out any timeout): kill the
    # group at once; raylet, GCS and workers share it.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _token_env(head, **extra):
    return cli_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=head["token"], **extra)


def _wait_for_job_end(head, job_id: str, timeout: float) -> None:
    """Poll the Jobs REST API (with the token) until the job has ended."""
    import json

    request = urllib.request.Request(f"{head['url']}/api/jobs/{job_id}",
                                     headers={"Authorization": f"Bearer {head['token']}"})
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                job = json.loads(response.read())
        except OSError as e:  # a busy dashboard: look again
            job = {"status": None, "error": repr(e)}
        if job["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return
        assert time.monotonic() < deadline, job
        time.sleep(0.5)


SMALL = ["--set", "search.num_samples=4", "--set", "search.n_initial_points=2",
         "--set", "config.epochs=4", "--set", "scheduler.max_t=4",
         "--set", "scheduler.grace_period=1"]


def _submit_quickstart(head, folder):
    return subprocess.run([*CLI, "submit", str(EXPERIMENTS / "quickstart.yaml"), "--address",
                           head["url"], *SMALL], cwd=folder, env=_token_env(head),
                          capture_output=True, text=True, timeout=600)


def _no_wait_then_status(head, folder):
    """``submit --no-wait``, the job's end (polled over REST), ``status``, ``status --logs``."""
    proc = subprocess.run([*CLI, "submit", str(EXPERIMENTS / "iris_grid.yaml"), "--address",
                           head["url"], "--no-wait", "--set", "config.epochs=2",
                           "--set", "scheduler.max_t=2"],
                          cwd=folder, env=_token_env(head), capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        return proc, None, None, None
    job_id = proc.stdout.split()[2]
    _wait_for_job_end(head, job_id, timeout=300)  # cheaply: no CLI process per look
    st = subprocess.run([*CLI, "status", job_id, "--address", head["url"]], cwd=folder,
                        env=_token_env(head), capture_output=True, text=True, timeout=60)
    logs = subprocess.run([*CLI, "status", job_id, "--address", head["url"], "--logs"],
                          cwd=folder, env=_token_env(head), capture_output=True, text=True,
                          timeout=60)
    return proc, job_id, st, logs


def _run_with_address_auto(head, folder):
    return subprocess.run([*CLI, "run", str(EXPERIMENTS / "iris_grid.yaml"), "--address",
                           "auto", "--verbose",  # Ray's trial table shows the GPUs in use
                           "--set", "config.epochs=2", "--set", "scheduler.max_t=2",
                           "--set", "resources.gpu=0.5"],
                          cwd=folder, env=_token_env(head, RAY_ADDRESS=head["gcs"]),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def on_the_head(head, tmp_path_factory):
    """The three searches below, submitted to the one head at once (several users share a
    cluster; each mostly waits on its processes' start-up), each from its own folder:
    name -> (folder, what it returned)."""
    from concurrent.futures import ThreadPoolExecutor

    steps = {"submit": _submit_quickstart, "no-wait": _no_wait_then_status,
             "address auto": _run_with_address_auto}
    folders = {name: tmp_path_factory.mktemp(name.replace(" ", "-")) for name in steps}
    with ThreadPoolExecutor(max_workers=len(steps)) as pool:
        futures = {name: pool.submit(step, head, folders[name]) for name, step in steps.items()}
    return {name: (folders[name], future.result()) for name, future in futures.items()}


def test_submit_quickstart_streams_logs_and_logs_to_mlflow(on_the_head):
    tmp_path, proc = on_the_head["submit"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("submitted job raytune-quickstart-")
    assert "top 4 by val_accuracy" in proc.stdout  # the job's own output, streamed
    assert "job finished: SUCCEEDED" in proc.stdout
    runs = mlflow_runs(tmp_path, "quickstart")  # relative sqlite URI -> submitter's folder
    assert (runs["tags.raytune_suite.role"] == "trial").sum() == 4
    assert (tmp_path / "ray_results" / "quickstart" / "raytune_suite.yaml").is_file()


def test_no_wait_then_status(on_the_head, head):
    _, (proc, job_id, st, logs) = on_the_head["no-wait"]
    assert proc.returncode == 0, proc.stderr
    assert f"raytune-suite status {job_id} --address {head['url']}" in proc.stdout
    state = st.stdout.split()[1] if st.stdout else ""
    assert state == "SUCCEEDED", st.stdout + st.stderr
    assert "iris-grid: 9 trials, 0 errored" in logs.stdout


def test_run_with_address_auto_uses_the_cluster(on_the_head):
    _, proc = on_the_head["address auto"]
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
