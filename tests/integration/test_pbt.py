"""Population Based Training as the experiment file says: no exploit loops, every
exploit finds its donor's checkpoint (whatever checkpoint.keep), and a search killed
with SIGKILL and resumed goes on exploiting until every trial has finished."""

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from helpers import CLI, EXPERIMENTS, cli_env, kill_when, mlflow_runs, result_rows, scenario
from raytune_suite.engine.runner import run_experiment
from raytune_suite.experiment import load_spec
from raytune_suite.training import checkpoint as ckpt


def exploits(folder) -> list[dict]:
    path = Path(folder) / "pbt_exploits.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] \
        if path.exists() else []
    return [r for r in records if r["event"] == "exploit"]


def rows_by_trial(folder) -> dict[str, list[dict]]:
    return {rows[0]["trial_id"]: rows for rows in result_rows(folder).values()}


@pytest.mark.parametrize("interval, every, epochs", [(2, 2, 8), (1, 1, 6)],
                         ids=["interval2-every2", "interval1-every1"])
def test_pbt_exploits_without_loops_from_fresh_donor_checkpoints(interval, every, epochs,
                                                                  ray_local, in_tmp):
    """The loop case of the digits recipe: every exploit starts from a checkpoint at most
    one interval old, takes effect (the trial restarts from the donor's exact weights
    with its new lr), never repeats an iteration without training in between, and the
    epochs trained stay within 1.25 x num_samples x max_t plus those retrained."""
    samples, keep = 4, 2
    spec, raw = load_spec(EXPERIMENTS / "digits_pbt.yaml", [
        f"name=pbt-{interval}", "config.model=mlp", f"config.epochs={epochs}",
        f"scheduler.max_t={epochs}", f"scheduler.perturbation_interval={interval}",
        "scheduler.quantile_fraction=0.5", f"search.num_samples={samples}",
        f"checkpoint.every={every}", f"checkpoint.keep={keep}", "resources.cpu=1",
        "search_space.lr={loguniform: [1.0e-4, 3.0e-1]}"])
    outcome = run_experiment(spec, raw)
    folder = Path(outcome.path)

    assert outcome.errors == 0
    assert [t.epochs for t in outcome.trials] == [epochs] * samples
    assert outcome.outcomes == {"completed": samples}
    made = exploits(folder)
    assert made, "PBT never exploited: the test proved nothing"
    assert outcome.pbt["exploits"] == len(made)
    rows = rows_by_trial(folder)
    for receiver in {e["receiver"] for e in made}:
        mine = [e for e in made if e["receiver"] == receiver]
        # Never twice at one iteration: each exploit is a full interval past the last.
        points = [e["iteration"] for e in mine]
        assert points == sorted(set(points)), mine
        for earlier, later in zip(mine, mine[1:]):
            assert later["iteration"] - max(earlier["iteration"],
                                            earlier["checkpoint_iteration"]) >= interval
    for e in made:
        assert e["iteration"] - e["checkpoint_iteration"] <= interval, e
        # It took effect: the receiver's next result continues from that checkpoint,
        # with its new lr.
        restarted = [r for r in rows[e["receiver"]] if r.get("restored_from") == e["checkpoint"]]
        assert len(restarted) == 1, e
        assert restarted[0]["training_iteration"] == e["checkpoint_iteration"] + 1
        assert restarted[0]["lr"] == pytest.approx(e["after"]["lr"], rel=1e-12)
        assert restarted[0]["config"]["lr"] == e["after"]["lr"]
    # Ray's own log of the exploits says the same: one line per exploit, and never two
    # for one trial at one iteration.
    policy = [json.loads(line) for line in (folder / "pbt_global.txt").read_text().splitlines()]
    assert len(policy) == len(made)
    assert len({(p[0], p[2]) for p in policy}) == len(policy), policy
    trained = sum(len(r) for r in rows.values())
    retrained = sum(e["retrained"] for e in made)
    assert retrained == outcome.pbt["retrained"]
    assert trained <= 1.25 * samples * epochs + retrained, (trained, retrained)
    # The pinned donor checkpoints and the exploits' copies are gone; each trial keeps
    # its own `keep` newest checkpoints.
    assert not (folder / ".pbt_donors").exists()
    for trial_dir in folder.glob("train_classifier_*"):
        assert not list(trial_dir.glob("pbt_exploit_*")), list(trial_dir.iterdir())
        assert len(list(trial_dir.glob("checkpoint_*"))) <= keep


def test_every_exploit_takes_the_donors_weights_and_its_own_hyperparameters(ray_local,
                                                                            in_tmp):
    """Synchronous PBT (the bottom half exploits at every perturbation): the weights a
    trial starts from are the donor's, bit for bit, at the step of the exploit, and its
    optimizer then runs at its *new* lr.

    Two trials: the worse one exploits the better at the perturbation, always. (Each
    trial costs two worker processes here: synchronous PBT restarts every trial after a
    perturbation, in a fresh process, since it cannot reuse actors.)"""
    spec, raw = load_spec(EXPERIMENTS / "digits_pbt.yaml", [
        "name=pbt-exploit", "config.model=mlp", "config.epochs=4", "scheduler.max_t=4",
        "search.num_samples=2", "resources.cpu=0.5", "scheduler.quantile_fraction=0.5",
        "checkpoint.keep=20", "search_space.lr={loguniform: [1.0e-4, 3.0e-1]}",
        "scheduler.synch=true"])
    outcome = run_experiment(spec, raw)
    assert outcome.errors == 0
    folder = Path(outcome.path)
    rows = rows_by_trial(folder)
    made = exploits(folder)
    assert made, "PBT never exploited: the test proved nothing"
    for e in made:
        donor_dir = next(folder.glob(f"*_{e['donor']}"))
        donor_ckpt = next(c for c in donor_dir.glob("checkpoint_*")
                          if json.loads((c / "meta.json").read_text())["epoch"]
                          == e["checkpoint_iteration"])
        donor_state = ckpt.load(donor_ckpt)
        row = next(r for r in rows[e["receiver"]] if r.get("restored_from") == e["checkpoint"])
        assert row["restored_model_digest"] == ckpt.model_digest(donor_state["model"])
        assert row["restored_from_epoch"] == e["checkpoint_iteration"] == \
            row["training_iteration"] - 1
        # (Equal only where the donor's lr sat at a bound and the perturbation was clipped.)
        assert row["config"]["lr"] != donor_state["config"]["lr"] or \
            donor_state["config"]["lr"] in (1.0e-4, 3.0e-1)
        assert row["lr"] == pytest.approx(row["config"]["lr"], rel=1e-12)


# Half the example's 60 steps: the kill comes after two exploits (step ~10), which leaves
# five perturbation rounds (every 4 steps) for PBT to go on exploiting after the resume.
PBT_MAX_T = 32
PBT_FUNCTION = textwrap.dedent("""
    # Ray's own PBT example trainable, unchanged, with the mutations its example uses.
    # It checkpoints every step and the suite keeps only 3 checkpoints per trial while
    # PBT perturbs every 4: a donor's checkpoint is rotated away long before the end.
    name: pbtf
    trainable: ray.tune.examples.pbt_function:pbt_function
    config: {lr: 0.0001, some_other_factor: 1, checkpoint_interval: 1}
    metric: mean_accuracy
    mode: max
    search: {algorithm: random, num_samples: 4, seed: 3}
    scheduler:
      type: pbt
      max_t: PBT_MAX_T
      perturbation_interval: 4
      hyperparam_mutations:
        lr: {uniform: [0.0001, 0.02]}
        some_other_factor: [1, 2]
    checkpoint: {every: 1, keep: 3}
    stop: {done: true}
""").replace("PBT_MAX_T", str(PBT_MAX_T))


@scenario("pbt: Ray's example killed and resumed", needed_by="pbt_killed", seconds=28)
def _pbt_killed(tmp_path):
    """`run` SIGKILLed after two exploits, then `resume`: (folder, exploits at the kill,
    the resume)."""
    (tmp_path / "pbtf.yaml").write_text(PBT_FUNCTION)
    results = tmp_path / "ray_results" / "pbtf"
    kill_when([*CLI, "run", "pbtf.yaml"], tmp_path, lambda: len(exploits(results)) >= 2)
    before = len(exploits(results))

    proc = subprocess.run([*CLI, "resume", "pbtf"], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    return tmp_path, before, proc


@pytest.fixture
def pbt_killed(scenario_runs):
    return scenario_runs.result("pbt: Ray's example killed and resumed")


def test_ray_pbt_example_killed_and_resumed_keeps_exploiting(pbt_killed):
    """`ray.tune.examples.pbt_function` through `raytune-suite run`, SIGKILLed after two
    exploits, then `raytune-suite resume`: PBT goes on exploiting, every exploit finds
    its checkpoint (keep 3 < interval 4 + 1), every trial finishes, and resume prints no
    Ray error about checkpoints that keep deleted on purpose."""
    tmp_path, before, proc = pbt_killed
    results = tmp_path / "ray_results" / "pbtf"
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "pbtf: 4 trials, 0 errored" in proc.stdout
    assert "Error handling checkpoint" not in out and "does not exist on storage" not in out
    assert "Could not fetch metrics" not in out
    after = exploits(results)
    assert len(after) > before, f"no exploit after the resume ({before} before)"
    rows = rows_by_trial(results)
    assert len(rows) == 4
    for trial_rows in rows.values():
        last = trial_rows[-1]
        assert last["training_iteration"] == PBT_MAX_T or last["done"], last
    # Resumed exploits restarted their trial from the copy they made.
    for e in after[before:]:
        assert any(r.get("training_iteration") == e["checkpoint_iteration"] + 1
                   for r in rows[e["receiver"]]), e
    runs = mlflow_runs(tmp_path, "pbtf")
    trials = runs[runs["tags.raytune_suite.role"] == "trial"]
    assert len(trials) == 4 and set(trials["status"]) == {"FINISHED"}
    assert set(trials["tags.raytune_suite.outcome"]) == {"completed"}
