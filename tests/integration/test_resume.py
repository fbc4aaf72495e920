"""A run killed with SIGKILL mid-way is finished by `raytune-suite resume`."""

import json
import os
import signal
import subprocess
import textwrap
import time

from helpers import CLI, cli_env, mlflow_runs

EXPERIMENT = textwrap.dedent("""
    name: killme
    trainable: classifier
    config: {dataset: digits, model: cnn, width: 0.5, epochs: 8}
    search_space:
      lr: {grid: [0.001, 0.003, 0.01, 0.02]}
    metric: val_accuracy
    mode: max
    search: {algorithm: grid, max_concurrent: 2}
    scheduler: {type: fifo, max_t: 8}
    checkpoint: {every: 1, keep: 2}
""")


def _reported(results_dir) -> int:
    lines = 0
    for trial in results_dir.glob("*/result.json"):
        lines += sum(1 for _ in trial.open())
    return lines


def test_sigkill_then_resume_finishes_every_trial(tmp_path):
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    results = tmp_path / "ray_results" / "killme"
    driver = subprocess.Popen([*CLI, "run", "exp.yaml"], cwd=tmp_path, env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _reported(results) < 4:  # a few epochs in, well before the end (32 epochs)
        assert driver.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no progress within 240 s"
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = _reported(results)
    assert before < 32

    proc = subprocess.run([*CLI, "resume", "killme"], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "killme: 4 trials, 0 errored" in proc.stdout

    # Every trial completed all 8 epochs; at least one continued from a checkpoint.
    state = json.loads(max(results.glob("experiment_state-*.json")).read_text())
    assert len(state["trial_data"]) == 4
    finals, resumed = [], 0
    for trial_dir in results.glob("train_classifier_*"):
        rows = [json.loads(line) for line in (trial_dir / "result.json").open()]
        finals.append(rows[-1]["training_iteration"])
        for row in rows:
            if "restored_from_epoch" in row:
                # The curve continues: the first epoch after a restore is the one after
                # the checkpoint's epoch, never epoch 1 again.
                resumed += 1
                assert row["restored_from_epoch"] >= 1
                assert row["epoch"] == row["training_iteration"] == row["restored_from_epoch"] + 1
                assert row["iterations_since_restore"] < row["training_iteration"]
        # Only a restore may repeat an epoch (one run after the last checkpoint).
        for prev, row in zip(rows, rows[1:]):
            if row["epoch"] != prev["epoch"] + 1:
                assert "restored_from_epoch" in row, (prev, row)
    assert sorted(finals) == [8, 8, 8, 8]
    assert resumed >= 1

    # MLflow: still one run per trial, none left RUNNING; the search run is closed.
    runs = mlflow_runs(tmp_path, "killme")
    trials = runs[runs["tags.raytune_suite.role"] == "trial"]
    assert len(trials) == 4 and trials["tags.ray.trial_id"].nunique() == 4
    assert set(runs["status"]) == {"FINISHED"}
    assert set(trials["metrics.epoch"]) == {8.0}
