"""A driver SIGKILLed while its MLflow writer is behind loses nothing: against a real
`mlflow server` reached through a proxy that delays every request, the driver is killed
when Ray holds results MLflow does not; `raytune-suite resume` then leaves exactly one
run per trial, holding every (metric, step) Ray recorded."""

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import CLI, cli_env, free_port, kill_when, result_rows, scenario
from test_mlflow_outage import EPOCHS, _start_server, _stop_server
from test_mlflow_outage import EXPERIMENT as OUTAGE_EXPERIMENT

from raytune_suite import tracking

# The outage test's search (4 grid trials of the digits CNN, 2 at a time), named apart.
EXPERIMENT = OUTAGE_EXPERIMENT.replace("name: outage", "name: behind")


class _Forward(BaseHTTPRequestHandler):
    """Forward one request to the MLflow server, ``server.delay`` seconds late."""

    def _forward(self):
        time.sleep(self.server.delay)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "connection", "content-length")}
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.target, timeout=120)
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        upstream.close()
        self.send_response(response.status)
        for k, v in response.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

    def log_message(self, *args):
        pass


def _proxy(target: int) -> ThreadingHTTPServer:
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Forward)
    proxy.daemon_threads = True
    proxy.target, proxy.delay = target, 0.0
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return proxy


def _expected(rows: list[dict]) -> set[tuple[str, int]]:
    """Every (metric, step) the live callback logs for these result rows."""
    return {(m.key, m.step) for row in rows
            for m in tracking.result_metrics(row, int(row["training_iteration"]))}


def _held(client, run) -> set[tuple[str, int]]:
    return {(key, m.step) for key in run.data.metrics
            for m in client.get_metric_history(run.info.run_id, key) if m.step > 0}


@scenario("mlflow: SIGKILL with the writer behind", needed_by="killed_behind", seconds=56)
def _killed_behind(tmp_path):
    """The search against the server through the proxy, SIGKILLed once MLflow is behind,
    then `resume`. Returns what the test checks: ((metric, step) pairs the server held
    at the kill, those Ray had recorded), the resume, Ray's rows by trial id at the end,
    and the server's trial runs then, each with the (metric, step) pairs it holds."""
    from mlflow.tracking import MlflowClient

    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    port = free_port()
    server = _start_server(tmp_path, port)
    proxy = _proxy(port)
    client = MlflowClient(f"http://127.0.0.1:{port}")  # straight to the server
    uri = f"http://127.0.0.1:{proxy.server_address[1]}"
    results = tmp_path / "ray_results" / "behind"
    try:
        def behind() -> bool:
            """Slow MLflow down once the search runs; ready when one trial has
            finished in Ray and Ray holds at least 8 results."""
            if results.is_dir() and proxy.delay == 0:
                proxy.delay = 1.0
            rows = result_rows(results) if results.is_dir() else {}
            return (any(len(r) == EPOCHS for r in rows.values())
                    and sum(map(len, rows.values())) >= 8)

        kill_when([*CLI, "run", "exp.yaml", "--set", f"tracking.mlflow.tracking_uri={uri}"],
                  tmp_path, behind, timeout=300)
        rows = result_rows(results)
        experiment = client.get_experiment_by_name("behind").experiment_id
        before = [r for r in client.search_runs([experiment])
                  if r.data.tags.get("raytune_suite.role") == "trial"]
        held = set().union(*(_held(client, r) for r in before)) if before else set()
        recorded = set().union(*(_expected(r) for r in rows.values()))
        at_kill = (held, recorded)

        proxy.delay = 0.05
        import subprocess

        resume = subprocess.run([*CLI, "resume", "behind"], cwd=tmp_path, env=cli_env(),
                                capture_output=True, text=True, timeout=600)

        rows = {}
        for trial_rows in result_rows(results).values():
            rows[str(trial_rows[0]["trial_id"])] = trial_rows
        runs = [(r, _held(client, r)) for r in client.search_runs([experiment])
                if r.data.tags.get("raytune_suite.role") == "trial"]
    finally:
        proxy.shutdown()
        _stop_server(server)
    return at_kill, resume, rows, runs


@pytest.fixture
def killed_behind(scenario_runs):
    return scenario_runs.result("mlflow: SIGKILL with the writer behind")


def test_sigkill_with_the_writer_behind_then_resume_loses_nothing(killed_behind):
    (held, recorded), resume, rows, runs = killed_behind
    # The kill really lost queued writes: Ray held results MLflow did not.
    assert len(held) < len(recorded), (len(held), len(recorded))

    assert resume.returncode == 0, resume.stdout[-2000:] + resume.stderr[-3000:]
    by_trial = {}
    for run, run_held in runs:
        by_trial.setdefault(run.data.tags["ray.trial_id"], []).append((run, run_held))
    # Exactly one run per trial, each finished, with every (metric, step) Ray has.
    assert set(by_trial) == set(rows) and len(rows) == 4
    assert all(len(v) == 1 for v in by_trial.values()), \
        {k: len(v) for k, v in by_trial.items()}
    for trial_id, ((run, run_held),) in by_trial.items():
        assert run.info.status == "FINISHED", (trial_id, run.info.status)
        assert run.data.tags["raytune_suite.outcome"] == "completed"
        assert run_held == _expected(rows[trial_id]), trial_id
        assert run.data.metrics["epochs_trained"] == EPOCHS
        assert run.data.params["lr"]
