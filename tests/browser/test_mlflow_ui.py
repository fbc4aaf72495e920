"""The MLflow UI followed from what a run prints: the command, started in a folder
outside the repository, serves the runs; the link opens the search's trial runs in the
"Model training" runs table (not MLflow 3's GenAI overview), by their new names."""

import contextlib
import io
import os
import re
import signal
import subprocess
import textwrap
import time
import urllib.request

import pytest

from helpers import free_port, js_errors, mlflow_runs, shared_ray
from raytune_suite.cli import main

EXPERIMENT = textwrap.dedent("""
    # a tiny search: 3 trials, 2 epochs
    name: uicheck
    trainable: classifier
    config: {dataset: iris, model: mlp, epochs: 2}
    search_space:
      lr: {grid: [0.003, 0.01, 0.03]}
      optimizer: {choice: [adam]}
    metric: val_accuracy
    mode: max
    search: {algorithm: grid, max_concurrent: 3}
    scheduler: {type: fifo, max_t: 2}
    checkpoint: {every: 1, keep: 1}
""")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """`raytune-suite run uicheck.yaml` in a fresh folder: the CLI's entry point in this
    process, on the shared embedded Ray (the test is about what the run prints and the UI
    it points to, not about starting a process)."""
    cwd = tmp_path_factory.mktemp("uicheck")
    (cwd / "uicheck.yaml").write_text(EXPERIMENT)
    shared_ray()
    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["run", "uicheck.yaml"])
    finally:
        os.chdir(before)
    assert code == 0, out.getvalue()[-3000:] + err.getvalue()[-3000:]
    return cwd, out.getvalue()


def test_printed_command_and_link_show_the_trial_runs(finished_run, browser, tmp_path):
    cwd, out = finished_run
    lines = out.splitlines()
    command = next(ln for ln in lines if ln.startswith("mlflow:")).split(None, 1)[1]
    link = next(ln for ln in lines if "then open " in ln).split()[-1]
    port = free_port()
    command = command.replace("--port 5000", f"--port {port}")
    link = link.replace(":5000/", f":{port}/")
    names = set(mlflow_runs(cwd, "uicheck").query("`tags.raytune_suite.role` == 'trial'")
                ["tags.mlflow.runName"])
    assert len(names) == 3 and all(re.match(r"\d\d \S+ adam lr=", n) for n in names), names

    elsewhere = tmp_path / "elsewhere"  # not the repository, not the run's folder
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    server = subprocess.Popen(command, shell=True, cwd=elsewhere, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, f"{command} exited ({server.returncode})"
                assert time.monotonic() < deadline, "the MLflow UI did not answer in 180 s"
                time.sleep(0.2)
        js_errors(browser)  # forget earlier pages
        browser.get(link)
        deadline = time.monotonic() + 60
        text = ""
        while not all(n in text for n in names) and time.monotonic() < deadline:
            time.sleep(0.5)
            text = browser.find_element("tag name", "body").text
        browser.save_screenshot(str(tmp_path / "mlflow_runs.png"))
        print("screenshot:", tmp_path / "mlflow_runs.png")
        assert all(n in text for n in names), text[:2000]
        assert "/runs" in browser.current_url and "workflowType=machine_learning" in \
            browser.current_url
        assert "Token Usage" not in text and "Overview" not in text  # not the GenAI page
        # the leaderboard's columns (the table cuts long headers, draws only visible ones)
        assert "best_val_accur" in text and "epochs_trained" in text
        assert "3 matching runs" in text  # the trial runs, not the search run
        # The UI asks for a user endpoint that a local server does not have (404).
        errors = [e for e in js_errors(browser) if "users/current" not in e]
        assert errors == []
    finally:
        # A read-only UI over a SQLite file: nothing to shut down gracefully (SIGTERM
        # costs its workers' ~3 s graceful stop).
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
