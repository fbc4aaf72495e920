"""``raytune-suite plan``: the schedulers' arithmetic against numbers worked out by hand,
Ray's own ASHA rung against the rule the plan replays, and what the plan says for every
kind of file. No Ray runtime, no training (except the one probe test)."""

import json
import math
import random
from types import SimpleNamespace

import pytest

from helpers import EXPERIMENTS
from raytune_suite.cli import main
from raytune_suite.engine import _rungs
from raytune_suite.engine._machine import centre
from raytune_suite.engine.plan import (comparison, concurrency, count_trials, epochs_trained,
                                       local_capacity, make_plan)
from raytune_suite.experiment import load_spec, validate

HERE = (2.0, 0.0, "this machine")  # 2 CPUs, no GPU: the CI machine


def spec(**fields):
    raw = {"name": "p", "trainable": "classifier",
           "config": {"dataset": "digits", "model": "cnn", "epochs": 9},
           "search_space": {"lr": {"loguniform": [1e-4, 1e-1]}},
           "metric": "val_accuracy", "mode": "max",
           "search": {"algorithm": "random", "num_samples": 27}}
    raw.update(fields)
    return validate(raw)


# ------------------------------------------------------------------ ASHA


def test_asha_27_trials_rungs_at_1_and_3_of_9_against_the_hand_count():
    est = _rungs.asha_epochs(27, 1, 3, 9)
    assert [m for m, _ in est.rungs] == [1, 3]  # 9 = max_t stops a trial before a rung
    # synchronous halving: 27 -> 9 -> 3; (27-9)*1 + (9-3)*3 + 3*9
    assert est.halving == pytest.approx(63)
    # all 27 reach rung 1; the (m+1)-th passes with 1, 1/2, then (m/3 + 2/3)/(m+1):
    # 1 + 26/3 + (H_27 - 1)/3 = 10.63 reach rung 3
    harmonic = sum(1 / k for k in range(1, 28))
    assert est.rungs[0][1] == 27
    assert est.rungs[1][1] == pytest.approx(1 + 26 / 3 + (harmonic - 1) / 3, abs=0.15)
    assert sum(_rungs.pass_probability(m, 3) for m in range(27)) == pytest.approx(10.630,
                                                                                  abs=1e-3)
    # early trials pass for lack of rivals: more than halving, less than 27 x 9
    assert est.low < est.halving < est.expected < est.high < 27 * 9


def test_asha_3_trials_every_order_replayed_exactly():
    """Orders of qualities 0 < 1 < 2 (worked by hand): (0,1,2) all reach 9 epochs = 27;
    (0,2,1), (1,0,2), (1,2,0) two do = 19; (2,0,1), (2,1,0) one does = 11."""
    est = _rungs.asha_epochs(3, 1, 3, 9)
    assert est.expected == pytest.approx((27 + 3 * 19 + 2 * 11) / 6)
    assert (est.low, est.high) == (11, 27)


def test_a_searcher_that_learns_moves_expected_and_high_up():
    """3 trials, the last 2 better than the first (TPE after 1 random trial): (0,1,2)
    trains 27, (0,2,1) 19, a mean of 23; in random order the mean is 106/6. Expected is
    midway; low stays that of random order; high the higher 99th percentile."""
    est = _rungs.asha_epochs(3, 1, 3, 9, improving_after=1)
    assert est.expected == pytest.approx((106 / 6 + 23) / 2)
    assert (est.low, est.high) == (11, 27)
    random_order = _rungs.asha_epochs(20, 2, 3, 15)
    learning = _rungs.asha_epochs(20, 2, 3, 15, improving_after=8)
    assert learning.low == random_order.low
    assert random_order.expected < learning.expected < learning.high <= 20 * 15
    assert random_order.high < learning.high


def test_pass_probability_falls_from_a_half_to_one_over_eta():
    assert _rungs.pass_probability(0, 3) == 1  # no rival recorded: Ray's cutoff is None
    assert _rungs.pass_probability(1, 3) == pytest.approx(1 / 2)
    assert _rungs.pass_probability(2, 3) == pytest.approx(4 / 9)
    assert _rungs.pass_probability(10_000, 3) == pytest.approx(1 / 3, abs=1e-4)


def test_the_replayed_rule_decides_as_rays_own_asha_rung():
    from ray.tune.schedulers.async_hyperband import _Bracket

    rng = random.Random(7)
    for eta in (2, 3, 4.5):
        bracket, recorded = _Bracket(1, 100, eta, 0), []
        for i in range(60):
            value = rng.choice([rng.random(), round(rng.random(), 1)])  # ties too
            ray_says = bracket.on_result(SimpleNamespace(trial_id=str(i)), 1, value)
            ours = not recorded or value >= _rungs.asha_cutoff(recorded, eta)
            assert (ray_says == "CONTINUE") == ours, (eta, i)
            recorded = sorted(recorded + [value])


def test_asha_rungs_as_ray_counts_them():
    from ray.tune.schedulers.async_hyperband import _Bracket

    for grace, eta, max_t, s in [(2, 3, 15, 0), (1, 3, 9, 0), (3, 3, 30, 1), (1, 2.5, 40, 0)]:
        ray_rungs = sorted(m for m, _ in _Bracket(grace, max_t, eta, s)._rungs if m < max_t)
        assert _rungs.asha_rungs(grace, eta, max_t, s) == pytest.approx(ray_rungs)


def test_quickstart_plan_from_its_file():
    quick, _ = load_spec(EXPERIMENTS / "quickstart.yaml")
    plan = make_plan(quick, HERE)
    assert (plan.trials, plan.concurrency, plan.unit) == (20, 2, "epochs")
    assert [m for m, _ in plan.rungs] == [2, 6]
    # halving: (20 - 20/3) * 2 + (20/3 - 20/9) * 6 + 20/9 * 15
    assert plan.halving == pytest.approx(86.67, abs=0.01)
    assert plan.low < plan.halving < plan.expected < plan.high < 20 * 15
    assert plan.summary() == (f"plan: 20 trials, epochs {plan.low:.0f}..{plan.high:.0f} "
                              f"(expected {plan.expected:.0f}), 2 at a time")
    assert make_plan(quick, HERE).to_dict() == plan.to_dict()  # the same every time


# ------------------------------------------------------------------ FIFO, grid


def test_fifo_grid_trains_every_trial_its_full_budget():
    plan = make_plan(load_spec(EXPERIMENTS / "iris_grid.yaml")[0], HERE)
    assert plan.trials == 9  # 3 lr x 3 batch sizes
    assert (plan.low, plan.expected, plan.high) == (360, 360, 360)


def test_grid_size_times_num_samples():
    space = {"lr": {"grid": [1e-3, 1e-2, 1e-1]}, "batch_size": {"choice": [32, 64]}}
    assert count_trials(spec(search_space=space, search={"algorithm": "grid",
                                                         "num_samples": 2})) == 12
    # the random searcher samples choices, but still runs every grid value
    assert count_trials(spec(search_space=space, search={"algorithm": "random",
                                                         "num_samples": 2})) == 6


def test_fifo_without_max_t_trains_the_classifier_config_epochs():
    plan = make_plan(spec(config={"dataset": "digits", "model": "cnn", "epochs": 7}), HERE)
    assert plan.expected == 27 * 7
    plan = make_plan(spec(config={"dataset": "digits", "model": "cnn"}), HERE)
    assert plan.expected == 27 * 10  # ClassifierConfig's default


def test_searched_epochs_and_early_stopping_widen_the_range():
    s = spec(config={"dataset": "digits", "model": "cnn", "early_stopping_patience": 3},
             search_space={"epochs": {"choice": [4, 8, 12]}}, scheduler={"type": "fifo",
                                                                          "max_t": 10})
    plan = make_plan(s, HERE)
    assert plan.high == 27 * 10 and plan.expected == pytest.approx(27 * (4 + 8 + 10) / 3)
    assert plan.low == 27 * 4  # patience 3 ends a trial after 4 epochs at the earliest
    assert any("epochs is searched" in n for n in plan.notes)


# ------------------------------------------------------------------ HyperBand, PBT


def test_hyperband_17_trials_of_9_epochs_against_the_hand_count():
    """s_max = 3 brackets: 3 trials x 9; 5 x 3 then 2 x 6 more; 9 x 1, 3 x 2, 1 x 6."""
    est = _rungs.hyperband_epochs(17, 9, 3)
    assert est.low == est.expected == est.high == 27 + 27 + 21
    # checkpoints every 2 epochs: resumed at 3 (2 trials) and at 1, 3 (3 and 1) train
    # 1 epoch again each
    assert _rungs.hyperband_epochs(17, 9, 3, every=2).expected == 75 + 6
    # 2 at a time cannot fill the bracket of 9: up to every trial trained to max_t
    assert _rungs.hyperband_epochs(17, 9, 3, every=2, at_once=2).high == 17 * 9 + 6
    plan = make_plan(spec(scheduler={"type": "hyperband", "max_t": 9}, search={
        "algorithm": "random", "num_samples": 17, "max_concurrent": 9}), (16.0, 0.0, "x"))
    assert (plan.low, plan.expected, plan.high) == (75, 75, 75)


def test_pbt_digits_recipe_rounds_quantile_and_exploits():
    plan = make_plan(load_spec(EXPERIMENTS / "digits_pbt.yaml")[0], HERE)
    # 6 trials x 16; perturbations at 2, 4, ..., 14 (7 rounds); the lower quantile
    # min(ceil(6 x 0.34), 6 // 2) = 3 exploits a round, half an interval back on average
    assert _rungs.pbt_rounds(16, 2) == 7 and _rungs.pbt_quantile_size(6, 0.34) == 3
    assert plan.expected == 96 + 7 * 3 * 2 / 2
    assert plan.high == 96 + 6 * 7 * 2  # every trial, every round, a full interval back
    assert plan.low == 96  # 2 at a time: trials move in waves, no donor is ahead
    synch = _rungs.pbt_epochs(6, 16, 2, 0, 0.34, synch=True, waves=True)[0]
    assert synch.expected == 96 and synch.high == 96 + 7 * 3 * 2


# ------------------------------------------------------------------ user trainables


def test_a_users_trainable_has_epochs_only_where_the_file_fixes_them():
    user = dict(trainable="ray.tune.examples.async_hyperband_example:easy_objective",
                config={}, search_space={"width": {"uniform": [0, 20]}}, metric="mean_loss",
                mode="min")
    plan = make_plan(spec(**user), HERE)
    assert plan.expected is None and plan.trials == 27
    assert any("epochs unknown" in n for n in plan.notes)
    assert plan.to_dict()["epochs"] == {"low": None, "expected": None, "high": None}
    plan = make_plan(spec(**user, stop={"training_iteration": 5}), HERE)
    assert plan.expected == 27 * 5 and any("may end sooner" in n for n in plan.notes)
    plan = make_plan(spec(**user, scheduler={"type": "asha", "max_t": 9}), HERE)
    assert plan.halving == pytest.approx(63 + 0)  # r = 1, eta = 3: the 27-trial count


def test_probe_of_a_users_trainable_says_so_and_exits_0(tmp_path, capsys, monkeypatch):
    file = tmp_path / "user.yaml"
    file.write_text(json.dumps({
        "name": "u", "trainable": "ray.tune.examples.async_hyperband_example:easy_objective",
        "search_space": {"width": {"uniform": [0, 20]}}, "metric": "mean_loss",
        "mode": "min", "stop": {"training_iteration": 4}}))
    monkeypatch.chdir(tmp_path)
    assert main(["plan", str(file), "--probe", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seconds"] is None and out["probe"] is None and out["epochs"]["expected"] == 4
    assert any("--probe measures only the built-in classifier" in n for n in out["notes"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user.yaml"]  # wrote nothing


# ------------------------------------------------------------------ concurrency


def test_concurrency_from_resources_max_concurrent_cpus_and_gpus():
    s = spec(resources={"cpu": 2, "gpu": 0.25}, search={"algorithm": "random",
                                                       "num_samples": 48, "max_concurrent": 8})
    assert concurrency(s, 48, 16, 1) == 4  # 4 trials share the one GPU
    assert concurrency(s, 48, 16, 4) == 8  # max_concurrent
    assert concurrency(s, 48, 6, 4) == 3  # 2 CPUs each
    assert concurrency(s, 2, 16, 4) == 2  # no more than there are trials
    plan = make_plan(s, (2.0, 0.0, "this machine"))
    assert plan.concurrency == 0 and any("no trial fits" in n for n in plan.notes)
    assert concurrency(spec(resources={"cpu": 0.5}), 27, 2, 0) == 4


def test_local_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,3")
    assert local_capacity(spec(resources={"gpu": 1}))[1] == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_capacity(spec(resources={"gpu": 1}))[1] == 0


# ------------------------------------------------------------------ probe, notes, after


def test_the_probed_configuration_is_the_centre_of_the_space():
    quick, _ = load_spec(EXPERIMENTS / "quickstart.yaml")
    c = centre(quick.search_space)
    assert c["lr"] == pytest.approx(math.sqrt(1e-4 * 3e-2))
    assert c["batch_size"] == 64 and c["dropout"] == 0.25
    assert c["optimizer"] == {"name": "sgd", "momentum": pytest.approx(0.895),
                              "nesterov": False}


def test_probe_times_one_epoch_of_the_built_in_classifier():
    s = spec(config={"dataset": "iris", "model": "mlp", "epochs": 5}, search={
        "algorithm": "random", "num_samples": 4})
    plan = make_plan(s, HERE)
    from raytune_suite.engine.plan import add_probe

    add_probe(plan, s)
    assert plan.probe["device"] == "cpu" and plan.probe["threads"] == 1
    assert 0 < plan.probe["epoch_s"] < 5
    wall = plan.seconds["wall"]
    assert wall["low"] <= wall["expected"] <= wall["high"]
    assert wall["expected"] > plan.seconds["startup"]
    assert plan.cpu_hours > 0 and plan.gpu_hours == 0


def test_a_time_attr_other_than_iterations_is_the_unit():
    s = spec(scheduler={"type": "asha", "max_t": 60, "grace_period": 5,
                        "time_attr": "time_total_s"})
    plan = make_plan(s, HERE)
    assert plan.unit == "time_total_s" and [m for m, _ in plan.rungs] == [5, 15, 45]
    assert plan.summary().startswith("plan: 27 trials, time_total_s ")
    assert any("counted in time_total_s" in n for n in plan.notes)
    assert comparison(plan, 100).endswith("(the plan has no epochs to compare)")
    # FIFO without max_t: time_attr counts nothing, the classifier's epochs do
    fifo = make_plan(spec(scheduler={"type": "fifo", "time_attr": "time_total_s"}), HERE)
    assert fifo.unit == "epochs" and fifo.expected == 27 * 9


def test_probe_without_the_data_is_a_user_error(in_tmp, capsys):
    assert main(["plan", str(EXPERIMENTS / "cifar10_asha.yaml"), "--probe"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config.data_root: data could not be loaded for --probe")
    assert list(in_tmp.iterdir()) == []


def test_stop_rules_are_noted():
    plan = make_plan(spec(stop={"time_budget_s": 60, "val_accuracy": 0.9}), HERE)
    assert any("time_budget_s" in n for n in plan.notes)
    assert any("stop val_accuracy" in n for n in plan.notes)


def test_epochs_trained_counts_result_rows(tmp_path):
    for name, rows in (("t1", 3), ("t2", 5), (".lost_trials", 2)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text("{}\n" * rows)
    assert epochs_trained(str(tmp_path)) == 8


def test_comparison_line_says_where_the_search_landed():
    plan = make_plan(load_spec(EXPERIMENTS / "iris_grid.yaml")[0], HERE)
    assert comparison(plan, 360) == ("epochs:  360 trained, plan 360..360 for 9 trials "
                                     "(expected 360: +0%, in range)")
    assert "outside the range" in comparison(plan, 300)
    resumed = comparison(plan, 380, resumed=True)
    assert "over all its sessions" in resumed and "without the interruption" in resumed
