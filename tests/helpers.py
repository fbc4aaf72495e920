"""Paths and commands shared by the tests."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
CLI = [sys.executable, "-m", "raytune_suite.cli"]


def cli_env(**extra) -> dict:
    """Environment for running the CLI as a subprocess, from this checkout."""
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **extra)


# log_to_driver=False as `raytune-suite run` without --verbose: the trials' own output (a
# worker killed at the end of a search may print a traceback) stays in Ray's log files.
_RAY_INIT = dict(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False,
                 # as the suite's own runtime: the workers Ray would start for any job
                 # never serve one with a runtime_env, and cost a core while they start
                 _system_config={"prestart_worker_first_driver": False},
                 runtime_env={"worker_process_setup_hook":
                              "raytune_suite.engine.tuner.quiet_worker_logs"})


def shared_ray():
    """The embedded Ray runtime (2 CPUs) that in-process tests share: started by the first
    test that needs it (again if a simulated-cluster test shut it down), shut down at the
    end of the session (tests/conftest.py)."""
    import ray

    if not ray.is_initialized():
        ray.init(**_RAY_INIT)
    return ray


def mlflow_runs(workdir, experiment: str):
    """All MLflow runs of ``experiment`` in ``workdir``/mlflow.db, as a DataFrame."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    return mlflow.search_runs(experiment_names=[experiment])


def result_rows(results_dir) -> dict[str, list[dict]]:
    """Each trial folder's result rows (result.json, one row per reported result)."""
    import json

    return {p.parent.name: [json.loads(line) for line in p.open() if line.strip()]
            for p in Path(results_dir).glob("*/result.json")}


def kill_when(cmd, cwd, ready, may_end: bool = False, timeout: float = 240):
    """Start a CLI command in its own session; SIGKILL its whole process group (the driver
    and the embedded Ray it started, like a crash of the machine) once ``ready()`` holds.

    Returns the exit status. A command that ends by itself first fails the test, unless
    ``may_end``.
    """
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, cwd=cwd, env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                assert may_end, f"{cmd} ended (status {proc.returncode}) before the kill"
                return proc.returncode
            assert time.monotonic() < deadline, f"the moment to kill {cmd} never came"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode


def js_errors(driver) -> list[str]:
    """A page's JavaScript errors (SEVERE console entries) since the last call, from a
    selenium driver started with ``goog:loggingPrefs`` (tests/browser/conftest.py)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Scenarios: long test bodies that run the CLI (or a benchmark script) as subprocesses in
# a folder of their own, with their own Ray runtimes, servers and ports, and share
# nothing with the test process. Most of their time is spent waiting on process and Ray
# start-up (30-50% of a core idle), so the session runs them side by side, once, before
# the first test that needs one (``scenario_runs`` in tests/integration/conftest.py);
# each test then makes every assertion it made before on its own scenario's outcome.
SCENARIOS: dict = {}  # name -> (function of a fresh folder, the fixture that needs it, s)


def scenario(name: str, needed_by: str, seconds: float):
    """Register ``fn(folder) -> outcome`` as scenario ``name``, run when a selected test
    uses fixture ``needed_by``; ``seconds``: about how long it takes alone (the longest
    start first)."""
    def register(fn):
        assert name not in SCENARIOS, name
        SCENARIOS[name] = (fn, needed_by, seconds)
        return fn
    return register


class ScenarioRuns:
    """The scenarios' outcomes; ``result(name)`` re-raises what a scenario raised (an
    assertion about a process it ran, a timeout) in the test that reads it."""

    def __init__(self, futures: dict):
        self._futures = futures

    def result(self, name: str):
        assert name in self._futures, f"scenario {name!r} was not run in this session"
        return self._futures[name].result()
