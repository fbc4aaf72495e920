"""ASHA's rungs after a restore (Ray saves no scheduler state): refilled from the trials'
own result rows. Ray's real scheduler, fed synthetic results; no Ray runtime."""

import json
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from raytune_suite.engine.extend import check_extendable, seed_asha_rungs
from raytune_suite.errors import SpecError
from raytune_suite.experiment import validate

SPEC = validate({"name": "rungs",
                 "trainable": "ray.tune.examples.async_hyperband_example:easy_objective",
                 "search_space": {"x": {"uniform": [0, 1]}},
                 "metric": "loss", "mode": "min",
                 "search": {"algorithm": "hyperopt", "num_samples": 3},
                 "scheduler": {"type": "asha", "max_t": 4, "grace_period": 1,
                               "reduction_factor": 2}})


def _experiment(tmp_path, losses: dict[str, list[float]]):
    for trial_id, curve in losses.items():
        folder = tmp_path / f"objective_{trial_id}"
        folder.mkdir()
        rows = [{"trial_id": trial_id, "training_iteration": i, "loss": v}
                for i, v in enumerate(curve, 1)]
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def _restored(brackets: int = 1):
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=4, grace_period=1,
                              reduction_factor=2, brackets=brackets)
    return scheduler, SimpleNamespace(_local_tuner=SimpleNamespace(
        _tune_config=SimpleNamespace(scheduler=scheduler)))


def _decide(scheduler, loss: float, iteration: int = 1) -> str:
    scheduler.set_search_properties("loss", "min")
    trial = SimpleNamespace(trial_id="new")
    scheduler.on_trial_add(None, trial)
    return scheduler.on_trial_result(None, trial, {"training_iteration": iteration,
                                                   "loss": loss})


def test_restored_rungs_judge_a_new_trial_against_the_earlier_ones(tmp_path):
    path = _experiment(tmp_path, {"a": [0.2, 0.1, 0.05, 0.04], "b": [0.3, 0.2],
                                  "c": [0.4]})
    scheduler, tuner = _restored()
    # rungs at 1, 2 (and 4 = max_t): a, b and c at 1; a and b at 2; a at 4
    assert seed_asha_rungs(tuner, path, SPEC) == 6
    rungs = dict(scheduler._brackets[0]._rungs)
    assert rungs[1] == {"a": -0.2, "b": -0.3, "c": -0.4}  # ASHA's sign for mode: min
    assert rungs[2] == {"a": -0.1, "b": -0.2}
    assert _decide(scheduler, loss=0.9) == TrialScheduler.STOP


def test_without_the_refill_a_bad_trial_passes_for_lack_of_rivals(tmp_path):
    scheduler, _ = _restored()
    assert _decide(scheduler, loss=0.9) == TrialScheduler.CONTINUE


def test_several_brackets_stay_empty_and_say_why(tmp_path, caplog):
    path = _experiment(tmp_path, {"a": [0.2]})
    scheduler, tuner = _restored(brackets=2)
    assert seed_asha_rungs(tuner, path, SPEC) == 0
    assert "did not save which bracket" in caplog.text
    assert all(not recorded for b in scheduler._brackets for _, recorded in b._rungs)


@pytest.mark.parametrize("n", [0, -3])
def test_extend_needs_at_least_one_trial(n):
    with pytest.raises(SpecError, match="--num-samples: must be a whole number >= 1"):
        check_extendable(SPEC, n)


def test_a_result_line_cut_short_by_a_kill_is_skipped(tmp_path):
    path = _experiment(tmp_path, {"a": [0.2], "b": [0.3]})
    with open(path / "objective_b" / "result.json", "a") as f:
        f.write('{"trial_id": "b", "training_iter')  # the driver died mid-line
    scheduler, tuner = _restored()
    assert seed_asha_rungs(tuner, path, SPEC) == 2
