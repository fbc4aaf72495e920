"""What `raytune-suite run` prints when its output is not a terminal (CI, `ray job logs`):
a few status lines, one line per finished trial, an errored trial's error in one line
with its error.txt, the leaderboard; no Ray tables, no snapshot warnings, no traceback.
And `checkpoint.keep` holds at the end without Ray's forced snapshots."""

import re
import subprocess
import textwrap

import pytest

from helpers import CLI, ROOT, cli_env

TRAINABLE = textwrap.dedent('''
    import json
    import os
    import tempfile

    from ray import tune

    def train(config):
        for epoch in range(1, 3):
            if config["x"] == 3 and epoch == 2:
                raise ValueError("x=3 is cursed")
            with tempfile.TemporaryDirectory() as folder:
                with open(os.path.join(folder, "state.json"), "w") as f:
                    json.dump({"epoch": epoch}, f)
                tune.report({"score": config["x"] * epoch},
                            checkpoint=tune.Checkpoint.from_directory(folder))
''')

EXPERIMENT = textwrap.dedent("""
    name: noisy
    trainable: cursed:train
    search_space:
      x: {grid: [0, 1, 2, 3]}
    metric: score
    mode: max
    search: {algorithm: grid, max_concurrent: 2}
    scheduler: {type: fifo, max_t: 2}
    resources: {cpu: 1}
    checkpoint: {every: 1, keep: 1}
    failure: {max_failures: 0}
""")


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("console")
    (cwd / "cursed.py").write_text(TRAINABLE)
    (cwd / "exp.yaml").write_text(EXPERIMENT)
    env = cli_env()
    env["PYTHONPATH"] = f"{cwd}:{ROOT}"  # the trainable's module, for the driver and workers
    proc = subprocess.run([*CLI, "run", "exp.yaml"], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)
    return cwd, proc


def test_output_is_short_with_no_ray_tables_or_snapshot_warnings(noisy):
    cwd, proc = noisy
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-4000:]  # the search ended; one trial errored
    assert len(out.splitlines()) <= 40, out
    for noise in ("Trial status", "View detailed results", "TensorBoard", "╭", "│",
                  "snapshotting", "Traceback", "Trials did not complete"):
        assert noise not in out, (noise, out)
    assert "noisy: 4 trials, 1 errored" in proc.stdout


def test_one_line_per_finished_trial_and_the_error_names_error_txt(noisy):
    cwd, proc = noisy
    results = cwd / "ray_results" / "noisy"
    ids = {p.name[len("train_"):] for p in results.glob("train_*")}
    assert len(ids) == 4
    trial_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("trial ")]
    assert sorted(ln.split()[1] for ln in trial_lines) == sorted(ids), proc.stdout
    errored = [ln for ln in trial_lines if ln.split()[2] == "errored"]
    assert len(errored) == 1 and "ValueError: x=3 is cursed" in errored[0], proc.stdout
    path = re.search(r"\(see (\S+error\.txt)\)", errored[0]).group(1)
    assert path.startswith(str(results)) and "x=3 is cursed" in open(path).read()
    others = [ln for ln in trial_lines if ln not in errored]
    assert all(ln.split()[2:4] == ["completed", "score"] and ln.endswith("2 epochs")
               for ln in others), others
    assert any(ln.startswith("[") and "4/4 trials done" in ln for ln in proc.stdout.splitlines())


def test_checkpoint_keep_holds_at_the_end(noisy):
    cwd, _ = noisy
    for folder in (cwd / "ray_results" / "noisy").glob("train_*"):
        assert len(list(folder.glob("checkpoint_*"))) == 1, folder
