"""Ctrl-C stops a run cleanly and leaves it resumable; a corrupt checkpoint found on
resume is an explicit error naming it, never a silent restart from epoch 1."""

import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers import CLI, cli_env, mlflow_runs, result_rows, scenario
from raytune_suite.training import checkpoint as ckpt

EPOCHS = 15
EXPERIMENT = textwrap.dedent(f"""
    name: ctrlc
    trainable: classifier
    config: {{dataset: digits, model: cnn, width: 0.5, epochs: {EPOCHS}}}
    search_space:
      lr: {{grid: [0.002, 0.005, 0.01, 0.02]}}
    metric: val_accuracy
    mode: max
    search: {{algorithm: grid, max_concurrent: 4}}
    resources: {{cpu: 0.5}}
    scheduler: {{type: fifo, max_t: {EPOCHS}}}
    checkpoint: {{every: 1, keep: 2}}
    failure: {{max_failures: 1}}
""")


@scenario("interrupt: Ctrl-C, then resume", needed_by="interrupted", seconds=53)
def _interrupted(workdir):
    """A run of 4 concurrent trials interrupted with Ctrl-C (SIGINT to the terminal's
    process group) once every trial has two epochs or more, each checkpointed; a copy of
    the folder as the Ctrl-C left it (for the first test); then the checkpoints of two
    unfinished trials corrupted and `resume` (for the second)."""
    (workdir / "exp.yaml").write_text(EXPERIMENT)
    results = workdir / "ray_results" / "ctrlc"
    driver = subprocess.Popen([*CLI, "run", "exp.yaml"], cwd=workdir, env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    deadline = time.monotonic() + 300
    while True:
        rows = result_rows(results)
        if len(rows) == 4 and all(len(r) >= 2 for r in rows.values()):
            break
        assert driver.poll() is None, driver.communicate()
        assert time.monotonic() < deadline, "no progress within 300 s"
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGINT)
    out, err = driver.communicate(timeout=180)
    left = workdir.with_name(workdir.name + "-as-left")
    shutil.copytree(workdir, left, symlinks=True)
    ctrl_c = (workdir, results, driver.returncode, out, err, left)

    # Corrupt the checkpoints of two unfinished trials (all they keep, so whichever one
    # Ray registered last is bad): one trial's truncated, the other's holding weights of
    # another model (with a valid digest).
    unfinished = sorted(name for name, rows in result_rows(results).items() if len(rows) < EPOCHS)
    if len(unfinished) < 3:  # the second test fails on it
        return ctrl_c, (unfinished, None, None)
    truncated, wrong_shape = unfinished[0], unfinished[1]
    for folder in (results / truncated).glob("checkpoint_*"):
        pt = folder / ckpt.STATE_FILE
        pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    for folder in (results / wrong_shape).glob("checkpoint_*"):
        state = ckpt.load(folder)
        state.pop("_path")
        state["model"] = {k: torch.zeros(3, 3) for k in state["model"]}
        ckpt.save(folder, state)
    before = {name: len(rows) for name, rows in result_rows(results).items()}

    proc = subprocess.run([*CLI, "resume", "ctrlc"], cwd=workdir, env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    return ctrl_c, (unfinished, before, proc)


@pytest.fixture(scope="module")
def interrupted(scenario_runs):
    return scenario_runs.result("interrupt: Ctrl-C, then resume")


def test_ctrl_c_stops_cleanly_and_prints_the_resume_command(interrupted):
    (workdir, results, code, out, err, left), _ = interrupted
    assert code == 130, out[-2000:] + err[-3000:]
    assert f"resume it with: raytune-suite resume {results}" in err
    assert "Traceback" not in err, err[-3000:]
    # As the Ctrl-C left them (the copy; the second test resumed the search since).
    left_results = left / results.relative_to(workdir)
    assert any(len(r) < EPOCHS for r in result_rows(left_results).values())
    # MLflow is left consistent: nothing RUNNING, the unfinished trials are KILLED.
    runs = mlflow_runs(left, "ctrlc")
    assert "RUNNING" not in set(runs["status"])
    assert (runs[runs["tags.raytune_suite.role"] == "search"]["status"] == "KILLED").all()


def test_resume_after_ctrl_c_finishes_and_corrupt_checkpoints_are_explicit(interrupted):
    (workdir, results, *_), (unfinished, before, proc) = interrupted
    # The checkpoints of two unfinished trials were corrupted before the resume.
    assert len(unfinished) >= 3  # a fast trial may have finished before the Ctrl-C
    truncated, wrong_shape, clean = unfinished[0], unfinished[1], unfinished[2:]

    # The search finished, but two trials errored: exit status 3 says so to scripts.
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ctrlc: 4 trials, 2 errored" in proc.stdout
    assert "error: 2 of 4 trials errored" in proc.stderr

    rows = result_rows(results)
    # The Ctrl-C'd experiment resumed: the untouched trials finished every epoch,
    # continuing from their checkpoints.
    for name in clean:
        assert rows[name][-1]["training_iteration"] == EPOCHS
        assert rows[name][before[name]]["restored_from_epoch"] >= 1
    # The corrupt ones errored, naming the checkpoint and what is wrong with it, and
    # never trained again from epoch 1.
    for name, why in ((truncated, "does not match its digest"),
                      (wrong_shape, "does not fit this model")):
        error = (results / name / "error.txt").read_text()
        assert f"checkpoint {results / name}/checkpoint_" in error, error[-2000:]
        assert why in error, error[-2000:]
        assert len(rows[name]) == before[name], rows[name][before[name]:]

    # MLflow: one run per trial; the two errored ones FAILED with the reason attached.
    runs = mlflow_runs(workdir, "ctrlc")
    trials = runs[runs["tags.raytune_suite.role"] == "trial"]
    assert len(trials) == 4 and trials["tags.ray.trial_id"].nunique() == 4
    assert sorted(trials["status"]) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    failed = trials[trials["status"] == "FAILED"]
    assert set(failed["tags.raytune_suite.outcome"]) == {"errored"}
    assert all("checkpoint" in e for e in failed["tags.error"])
    assert "RUNNING" not in set(runs["status"])
    assert os.path.isdir(Path(results))
