"""A driver SIGKILLed three times at random points is finished by `raytune-suite resume`:
no trial lost or duplicated, progress never goes back, MLflow holds exactly one finished
run per trial, and HyperOpt keeps its history across the restarts."""

import json
import random
import subprocess
import textwrap
import time
from pathlib import Path

import cloudpickle
import pytest

from helpers import CLI, cli_env, kill_when, mlflow_runs, result_rows, scenario

SAMPLES, EPOCHS = 5, 5
EXPERIMENT = textwrap.dedent(f"""
    name: crashy
    trainable: classifier
    config: {{dataset: digits, model: cnn, width: 0.5, epochs: {EPOCHS}}}
    search_space:
      lr: {{loguniform: [0.001, 0.05]}}
      batch_size: {{choice: [32, 64]}}
    metric: val_accuracy
    mode: max
    search: {{algorithm: hyperopt, num_samples: {SAMPLES}, max_concurrent: 2, seed: 7,
              n_initial_points: 2}}
    scheduler: {{type: fifo, max_t: {EPOCHS}}}
    checkpoint: {{every: 1, keep: 2}}
""")


def _saved_state(results_dir) -> dict[str, tuple[str, int]]:
    """Ray's saved experiment state: trial id -> (status, epoch of the latest checkpoint
    Ray registered for it; 0 if none), read from the newest experiment_state file."""
    newest = max(results_dir.glob("experiment_state-*.json"))  # by the session time in the name
    trials = {}
    for trial_json, runtime_json in json.loads(newest.read_text())["trial_data"]:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        manager = cloudpickle.loads(bytes.fromhex(runtime["checkpoint_manager"]["value"]))
        latest = manager.latest_checkpoint_result
        epoch = 0
        if latest is not None:
            epoch = json.loads((Path(latest.checkpoint.path) / "meta.json").read_text())["epoch"]
        trials[trial["trial_id"]] = (trial["status"], epoch)
    return trials


def _run_until_killed(cmd, cwd, results, extra_rows: int) -> None:
    """Start ``cmd`` and SIGKILL it once ``extra_rows`` more results have been written."""
    start = sum(map(len, result_rows(results).values())) if results.exists() else 0
    kill_when(cmd, cwd, lambda: sum(map(len, result_rows(results).values())) >= start + extra_rows)
    time.sleep(1.0)


@scenario("resume: three SIGKILLs", needed_by="three_sigkills", seconds=72)
def _three_sigkills(tmp_path):
    """`run`, SIGKILLed, then `resume` SIGKILLed twice, each after 2-6 more results, then
    `resume` to the end: (folder, seed, Ray's saved state and the rows after each kill,
    the last resume)."""
    seed = int(time.time())
    rng = random.Random(seed)
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    results = tmp_path / "ray_results" / "crashy"

    snapshots = []  # Ray's saved state after each kill
    rows_at_kill = []
    _run_until_killed([*CLI, "run", "exp.yaml"], tmp_path, results, rng.randint(2, 6))
    for kill in range(3):
        snapshots.append(_saved_state(results))
        rows_at_kill.append({k: len(v) for k, v in result_rows(results).items()})
        if kill < 2:
            _run_until_killed([*CLI, "resume", "crashy"], tmp_path, results, rng.randint(2, 6))

    proc = subprocess.run([*CLI, "resume", "crashy"], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    return tmp_path, seed, snapshots, rows_at_kill, proc


@pytest.fixture
def three_sigkills(scenario_runs):
    return scenario_runs.result("resume: three SIGKILLs")


def test_three_sigkills_then_resume_lose_nothing(three_sigkills):
    tmp_path, seed, snapshots, rows_at_kill, proc = three_sigkills
    why = f"(kill points drawn with seed {seed})"
    results = tmp_path / "ray_results" / "crashy"
    assert proc.returncode == 0, why + proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"crashy: {SAMPLES} trials, 0 errored" in proc.stdout, why

    # Exactly num_samples trials, each finished all its epochs.
    final = _saved_state(results)
    assert len(final) == SAMPLES, why
    assert set(final.values()) == {("TERMINATED", EPOCHS)}, (why, final)

    # Progress never went back: the checkpoint Ray had registered for a trial at one kill
    # is never older than at the kill before ...
    for before, after in zip(snapshots, snapshots[1:] + [final]):
        for trial_id, (status, iteration) in before.items():
            assert after[trial_id][1] >= iteration, (why, trial_id, before, after)
            if status == "TERMINATED":
                assert after[trial_id] == (status, iteration), (why, trial_id)
    # ... and every resumed trial continued from that checkpoint, never from epoch 1.
    rows = result_rows(results)
    for kill, (saved, counts) in enumerate(zip(snapshots, rows_at_kill)):
        for name, trial_rows in rows.items():
            trial_id = trial_rows[0]["trial_id"]
            done = saved.get(trial_id, ("PENDING", 0))[1]
            following = trial_rows[counts.get(name, 0):]
            if done and following and saved[trial_id][0] != "TERMINATED":
                first = following[0]
                assert first.get("restored_from_epoch", 0) >= done, (why, kill, name, first)
                assert first["epoch"] == first["restored_from_epoch"] + 1, (why, first)
    assert any("restored_from_epoch" in r for t in rows.values() for r in t), why

    # MLflow: one run per trial, all finished; none left RUNNING; the search run closed.
    runs = mlflow_runs(tmp_path, "crashy")
    trials = runs[runs["tags.raytune_suite.role"] == "trial"]
    assert len(trials) == SAMPLES and trials["tags.ray.trial_id"].nunique() == SAMPLES, why
    assert set(trials["tags.ray.trial_id"]) == set(final), why
    assert set(runs["status"]) == {"FINISHED"}, (why, runs[["status", "tags.ray.trial_id"]])
    assert set(trials["metrics.epochs_trained"]) == {float(EPOCHS)}, why
    # A restored trial repeats the epochs after its checkpoint; MLflow holds each
    # (metric, step) once all the same.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for run_id in trials["run_id"]:
        steps = [m.step for m in client.get_metric_history(run_id, "val_accuracy")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (why, run_id, steps)

    # HyperOpt's history survived every restart: its saved Trials hold all the
    # suggestions with their results (a searcher restarted from scratch would hold only
    # the ones it made after the last restart, and sample at random again).
    state_file = max(results.glob("searcher-state-*.pkl"))  # the last session
    with open(state_file, "rb") as f:
        searcher = cloudpickle.load(f)
    hyperopt_trials = searcher["_hpopt_trials"].trials
    assert len(hyperopt_trials) == SAMPLES, why
    assert all(t["result"].get("status") == "ok" for t in hyperopt_trials), why
    suggested = sorted(round(t["misc"]["vals"]["lr"][0], 12) for t in hyperopt_trials)
    ran = sorted(round(t[0]["config"]["lr"], 12) for t in
                 (rows[name] for name in rows))
    assert suggested == ran, why


USER_TRAINABLE = textwrap.dedent("""
    import time
    from ray import tune

    def train(config):
        x = config["x"]  # a user's trainable reads its hyperparameters directly
        for step in range(1, 5):
            time.sleep(0.25)
            tune.report({"score": x * step})
""")
RANDOM_SEARCH = textwrap.dedent("""
    name: anytime
    trainable: user_train:train
    search_space:
      x: {uniform: [0.0, 1.0]}
    metric: score
    mode: max
    search: {algorithm: random, num_samples: 6, max_concurrent: 2, seed: 5}
    scheduler: {type: fifo, max_t: 4}
""")


@scenario("resume: a kill at any moment", needed_by="killed_at_any_moment", seconds=52)
def _killed_at_any_moment(tmp_path):
    """Killed just after Ray wrote tuner.pkl (before its first experiment state), twice,
    then at its first result, then once three trials finished; each time followed by
    the command a user would type next (`run` if nothing is left, else `resume`), the
    last one to the end: (folder, that last command's process)."""
    (tmp_path / "user_train.py").write_text(USER_TRAINABLE)
    (tmp_path / "exp.yaml").write_text(RANDOM_SEARCH)
    results = tmp_path / "ray_results" / "anytime"

    def started() -> bool:
        return results.joinpath("tuner.pkl").exists()

    def finished(n: int):
        return lambda: sum(1 for rows in result_rows(results).values()
                           if rows and rows[-1].get("training_iteration") == 4) >= n

    def again():
        from raytune_suite.engine.state import has_ray_state

        return [*CLI, "resume", "anytime"] if has_ray_state(results) else [*CLI, "run", "exp.yaml"]

    # 1. 0.2 s after tuner.pkl: the window before Ray's first experiment state.
    kill_when([*CLI, "run", "exp.yaml"], tmp_path,
              lambda: started() and time.sleep(0.2) is None, may_end=True)
    # 2. Whatever was left: the same command a user would type next, killed in that
    # same early window of its own ...
    kill_when(again(), tmp_path, lambda: started() and time.sleep(0.2) is None, may_end=True)
    # 3. ... then at the first result, 4. then with three trials finished.
    kill_when(again(), tmp_path, lambda: any(result_rows(results).values()), may_end=True)
    kill_when(again(), tmp_path, finished(3), may_end=True)

    proc = subprocess.run(again(), cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=600)
    return tmp_path, proc


@pytest.fixture
def killed_at_any_moment(scenario_runs):
    return scenario_runs.result("resume: a kill at any moment")


def test_a_kill_at_any_moment_leaves_nothing_or_a_resumable_search(killed_at_any_moment):
    """Killed just after Ray wrote tuner.pkl (before its first experiment state), then at
    its first result, then once three trials finished: each time either nothing is
    left (`run` starts again) or `resume` goes on, and the search ends with exactly
    num_samples trials, each with its own searched x, and one MLflow run per trial."""
    tmp_path, proc = killed_at_any_moment
    results = tmp_path / "ray_results" / "anytime"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "anytime: 6 trials, 0 errored" in proc.stdout, proc.stdout[-2000:]
    assert "Failed to fetch metrics" not in proc.stderr
    state = _saved_state_any(results)
    assert len(state) == 6 and set(state.values()) == {"TERMINATED"}, state
    xs = []
    for trial_dir in results.glob("train_*"):
        params = json.loads((trial_dir / "params.json").read_text())
        assert set(params) == {"x"} and 0.0 <= params["x"] <= 1.0, params
        xs.append(params["x"])
        rows = [json.loads(line) for line in (trial_dir / "result.json").open()]
        assert rows[-1]["training_iteration"] == 4
        assert all(r["score"] == pytest.approx(params["x"] * r["training_iteration"])
                   for r in rows)
    assert len(xs) == 6 and len(set(xs)) == 6
    runs = mlflow_runs(tmp_path, "anytime")
    trials = runs[runs["tags.raytune_suite.role"] == "trial"]
    assert len(trials) == 6 and set(trials["status"]) == {"FINISHED"}
    assert set(trials["tags.ray.trial_id"]) == set(state)


def _saved_state_any(results_dir) -> dict[str, str]:
    newest = max(results_dir.glob("experiment_state-*.json"))
    return {json.loads(t)["trial_id"]: json.loads(t)["status"]
            for t, _ in json.loads(newest.read_text())["trial_data"]}
