"""The HTML report's pure parts on synthetic records: ASHA rungs, the PBT lineage,
log-axis detection, importance (Optuna's fANOVA), learning-curve gaps, best so far, and a
whole page rendered without Ray (self-contained, escaped)."""

import math
import random
import re
from pathlib import Path

import pytest

from raytune_suite.engine.results import TrialSummary
from raytune_suite.experiment import validate
from raytune_suite.experiment.space import parse
from raytune_suite.report import data as rd
from raytune_suite.report.importance import param_importance


# ------------------------------------------------------------------ rungs


@pytest.mark.parametrize("grace, rf, max_t, expected", [
    (1, 3, 15, [1, 3, 9, 15]),
    (2, 3, 15, [2, 6, 15]),
    (1, 2, 4, [1, 2, 4]),
    (1, 2, 8, [1, 2, 4, 8]),
    (3, 3, 3, [3]),
    (1, 1.5, 4, [1, 2, 3, 4]),  # rounded rungs never repeat
])
def test_rung_levels_follow_grace_period_times_reduction_factor(grace, rf, max_t, expected):
    assert rd.rung_levels(grace, rf, max_t) == expected


def test_rung_counts_count_trials_that_trained_that_far():
    epochs = [1, 1, 2, 3, 9, 15, 15, 4]
    assert rd.rung_counts(epochs, [1, 3, 9, 15]) == [(1, 8), (3, 5), (9, 3), (15, 2)]


def test_rung_levels_say_what_must_hold():
    with pytest.raises(ValueError, match="reduction_factor > 1"):
        rd.rung_levels(1, 1, 10)


def test_scheduler_rungs_only_for_asha_and_hyperband():
    base = {"name": "t", "trainable": "classifier", "metric": "val_accuracy", "mode": "max",
            "config": {"epochs": 9}}
    asha = validate({**base, "scheduler": {"type": "asha", "max_t": 9, "grace_period": 1,
                                           "reduction_factor": 3}})
    hb = validate({**base, "scheduler": {"type": "hyperband", "max_t": 9,
                                         "reduction_factor": 3}})
    fifo = validate(base)
    assert rd.scheduler_rungs(asha) == [1, 3, 9]
    assert rd.scheduler_rungs(hb) == [1, 3, 9]
    assert rd.scheduler_rungs(fifo) is None


# ------------------------------------------------------------------ PBT lineage


EXPLOITS = [
    {"time": 20.0, "event": "exploit", "receiver": "b_00001", "donor": "a_00000",
     "iteration": 4, "checkpoint_iteration": 4, "retrained": 0,
     "before": {"lr": 0.1, "batch_size": 32}, "after": {"lr": 0.012, "batch_size": 32}},
    {"time": 10.0, "event": "exploit", "receiver": "c_00002", "donor": "a_00000",
     "iteration": 2, "checkpoint_iteration": 1, "retrained": 1,
     "before": {"lr": 0.3, "opt": {"momentum": 0.9}},
     "after": {"lr": 0.3, "opt": {"momentum": 0.72}}},
    {"time": 15.0, "event": "skip", "receiver": "d_00003", "donor": "a_00000",
     "iteration": 3, "reason": "the donor has no checkpoint"},
]


def test_lineage_rows_list_every_exploit_in_order_with_what_changed():
    rows = rd.lineage_rows(EXPLOITS)
    assert [(r["donor"], r["receiver"], r["iteration"], r["checkpoint_iteration"])
            for r in rows] == [("a_00000", "c_00002", 2, 1), ("a_00000", "b_00001", 4, 4)]
    assert rows[0]["changed"] == ["opt.momentum"]
    assert rows[0]["before"]["opt.momentum"] == 0.9 and rows[0]["after"]["opt.momentum"] == 0.72
    assert rows[1]["changed"] == ["lr"]
    assert rows[1]["before"]["batch_size"] == rows[1]["after"]["batch_size"] == 32


def test_exploit_records_read_from_the_experiment_folder(tmp_path):
    import json

    assert rd.read_exploit_records(tmp_path) == []
    (tmp_path / "pbt_exploits.jsonl").write_text(
        "\n".join(json.dumps(r) for r in EXPLOITS) + "\n")
    assert rd.read_exploit_records(tmp_path) == EXPLOITS


# ------------------------------------------------------------------ scales


def test_log_domains_get_log_axes_and_choices_categories():
    space = parse({"lr": {"loguniform": [1e-4, 1e-1]}, "q": {"qloguniform": [1, 100, 1]},
                   "n": {"lograndint": [1, 64]}, "d": {"uniform": [0, 0.5]},
                   "k": {"randint": [1, 5]}, "bs": {"choice": [32, 64]},
                   "g": {"grid": [1, 2]}, "x": {"normal": [0, 1]}})
    scales = {name: rd.param_scale(d) for name, d in space.leaves()}
    assert scales == {"lr": "log", "q": "log", "n": "log", "d": "linear", "k": "linear",
                      "bs": "categorical", "g": "categorical", "x": "linear"}


def test_conditional_options_are_named_by_their_name_key():
    assert rd.param_value({"name": "sgd", "momentum": 0.9}) == "sgd"
    assert rd.param_value(True) == "True"
    assert rd.param_value(0.5) == 0.5
    assert rd.param_value([64, 64]) == "[64, 64]"


# ------------------------------------------------------------------ importance


def _synthetic_trials(n=30, seed=0):
    rng = random.Random(seed)
    trials = []
    for _ in range(n):
        lr = 10 ** rng.uniform(-4, -1)
        noise = rng.uniform(0, 0.5)
        opt = rng.choice(["adam", "sgd"])
        # Only lr matters: accuracy peaks at lr = 1e-2.
        value = 1.0 - abs(math.log10(lr) + 2) / 3 + rng.uniform(-0.005, 0.005)
        trials.append({"config": {"lr": lr, "dropout": noise, "opt": opt}, "value": value})
    return trials


SPACE = list(parse({"lr": {"loguniform": [1e-4, 1e-1]}, "dropout": {"uniform": [0, 0.5]},
                    "opt": {"choice": ["adam", "sgd"]}}).leaves())


def test_importance_finds_the_parameter_that_matters():
    found = param_importance(_synthetic_trials(), SPACE, "max")
    assert "fANOVA" in found.method
    assert set(found.values) == {"lr", "dropout", "opt"}
    assert max(found.values, key=found.values.get) == "lr"
    assert found.values["lr"] > 0.8
    assert sum(found.values.values()) == pytest.approx(1.0)
    assert found.note is None


def test_importance_with_too_few_trials_or_constant_params_says_why():
    one = param_importance(_synthetic_trials(1), SPACE, "max")
    assert one.values == {} and "at least 2 finished trials" in one.note
    trials = [{"config": {**t["config"], "opt": "adam"}, "value": t["value"]}
              for t in _synthetic_trials(10)]
    trials.append({"config": {"lr": 0.01, "dropout": 0.1, "opt": "adam"}, "value": None})
    found = param_importance(trials, SPACE, "min")
    assert set(found.values) == {"lr", "dropout"}
    assert "opt" in found.note
    single = param_importance([{"config": {"lr": 0.1}, "value": 1.0},
                               {"config": {"lr": 0.2}, "value": 2.0}], SPACE[:1], "min")
    assert single.values == {"lr": 1.0}


def test_importance_of_trials_that_all_scored_the_same_says_so():
    # PBT's exploit often leaves two trials with the same final accuracy: fANOVA then
    # raises "zero total variance"; the report says why there is no chart instead
    trials = [{"config": {"lr": lr, "dropout": d, "opt": "adam"}, "value": 0.96}
              for lr, d in [(0.001, 0.1), (0.03, 0.4)]]
    found = param_importance(trials, SPACE, "max")
    assert found.values == {} and "fANOVA" in found.method
    assert "same best metric (0.96)" in found.note


def test_importance_accepts_values_pbt_moved_and_conditional_options():
    space = list(parse({"bs": {"qrandint": [16, 128, 16]},
                        "opt": {"choice": [{"name": "adam"},
                                           {"name": "sgd",
                                            "momentum": {"uniform": [0.8, 0.99]}}]}}).leaves())
    trials = [{"config": {"bs": bs, "opt": {"name": o, "momentum": 0.9}}, "value": v}
              for bs, o, v in [(16, "adam", 0.9), (40, "sgd", 0.8), (128, "adam", 0.95),
                               (64, "sgd", 0.7)]]
    found = param_importance(trials, space, "max")
    assert set(found.values) == {"bs", "opt"}


# ------------------------------------------------------------------ curves and time


def test_curve_points_break_where_pbt_restarts_a_trial():
    rows = [{"training_iteration": i, "acc": a} for i, a in
            [(1, .5), (2, .6), (3, .62), (2, .7), (3, .75), (4, .8), (6, .9)]]
    rows.append({"training_iteration": 7, "acc": None})  # a diverged epoch: left out
    xs, ys = rd.curve_points(rows, "acc")
    assert xs == [1, 2, 3, None, 2, 3, 4, None, 6]  # back to 2; forward to a newer one
    assert ys == [.5, .6, .62, None, .7, .75, .8, None, .9]


def test_best_so_far_steps_down_for_a_loss_and_wall_time():
    histories = {
        "a": [{"timestamp": 101.0, "time_this_iter_s": 1.0, "loss": 3.0},
              {"timestamp": 103.0, "loss": 2.0}],
        "b": [{"timestamp": 102.0, "time_this_iter_s": 0.5, "loss": 2.5},
              {"timestamp": 105.0, "loss": 2.2}, {"timestamp": 106.0, "loss": 1.0}],
    }
    assert rd.best_so_far(histories, "loss", "min") == [
        (1.0, 3.0, "a"), (2.0, 2.5, "b"), (3.0, 2.0, "a"), (6.0, 1.0, "b")]
    assert rd.best_so_far(histories, "loss", "max") == [(1.0, 3.0, "a")]
    assert rd.wall_time(histories) == 6.0
    assert rd.epochs_trained(histories) == 5
    assert rd.wall_time({}) is None


def test_result_times_refine_whole_second_timestamps_per_run():
    rows = [{"training_iteration": 1, "timestamp": 1757, "time_total_s": 12.49},
            {"training_iteration": 2, "timestamp": 1758, "time_total_s": 12.63},
            {"training_iteration": 3, "timestamp": 1758, "time_total_s": 12.70},
            # a PBT exploit: the donor's clock, restored from its checkpoint
            {"training_iteration": 2, "timestamp": 1760, "time_total_s": 3.25},
            {"training_iteration": 3, "timestamp": 1761, "time_total_s": 3.5}]
    times = rd.result_times(rows)
    assert times[:3] == pytest.approx([1757.86, 1758.0, 1758.07])
    assert times[3:] == pytest.approx([1760.75, 1761.0])


# ------------------------------------------------------------------ the page


@pytest.fixture
def user_trainable(tmp_path, monkeypatch):
    """A user's own trainable module, importable (the spec checks that it is)."""
    (tmp_path / "my_objective.py").write_text("def objective(config):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_objective:objective"


def _report_data(tmp_path, scheduler, exploits=()):
    spec = validate({
        "name": "synthetic", "trainable": "my_objective:objective",
        "config": {"note": "<b>not bold</b>"},
        "search_space": {"lr": {"loguniform": [1e-4, 1e-1]}, "layers": {"randint": [1, 5]},
                         "act": {"choice": ["relu", "tanh"]}},
        "metric": "loss", "mode": "min", "search": {"num_samples": 4},
        "scheduler": scheduler})
    trials, histories = [], {}
    for i, (lr, layers, act, epochs) in enumerate(
            [(1e-3, 2, "relu", 4), (1e-2, 3, "tanh", 4), (5e-2, 1, "relu", 1),
             (3e-4, 4, "tanh", 2)]):
        tid = f"t_{i:05d}"
        rows = [{"training_iteration": e, "timestamp": 1000.0 + 2 * e + i,
                 "time_this_iter_s": 1.0, "loss": 1.0 / (e + i * lr * 10)}
                for e in range(1, epochs + 1)]
        histories[tid] = rows
        trials.append(TrialSummary(tid, {"lr": lr, "layers": layers, "act": act},
                                   min(r["loss"] for r in rows), epochs, "TERMINATED", None,
                                   "completed" if epochs == 4 else "stopped_early"))
    trials.sort(key=lambda t: t.best)
    return rd.ReportData(path=Path(tmp_path), spec=spec, spec_text="name: synthetic # <x>\n",
                         trials=trials, histories=histories,
                         params=list(spec.search_space.leaves()), exploits=list(exploits))


def test_page_is_self_contained_escaped_and_has_every_section(tmp_path, user_trainable):
    from plotly.offline import get_plotlyjs

    from raytune_suite.report.html import render

    data = _report_data(tmp_path, {"type": "asha", "max_t": 4, "grace_period": 1,
                                   "reduction_factor": 2})
    page = render(data)
    assert page.count("Plotly.newPlot") == 6  # curves, best, parallel, slices, importance, rungs
    bundle = get_plotlyjs()
    assert page.count(bundle) == 1  # plotly.js inlined once
    rest = page.replace(bundle, "")
    assert "<script src" not in rest and "://" not in rest  # nothing fetched: opens offline
    assert "name: synthetic # &lt;x&gt;" in page and "<x>" not in page
    for section in ("Summary", "Leaderboard", "Learning curves", "Hyperparameters",
                    "Hyperparameter importance", "ASHA rungs"):
        assert f"<h2>{section}</h2>" in page
    assert "fANOVA" in page
    assert "11 of 16 (4 trials × max_t 4)" in page
    assert "2 completed, 2 stopped early" in page
    assert "lr (log)" in page  # the parallel-coordinates axis
    board = page[page.index('id="leaderboard-table"'):]
    assert board.index(data.trials[0].trial_id) < board.index(data.trials[1].trial_id)
    rungs = page[page.index('id="rung-table"'):]
    assert re.search(r"<td>1</td><td>4</td>.*<td>2</td><td>3</td>.*<td>4</td><td>2</td>",
                     rungs[:rungs.index("</table>")])


def test_pbt_page_lists_the_lineage(tmp_path, user_trainable):
    from raytune_suite.report.html import render

    data = _report_data(tmp_path, {"type": "pbt", "max_t": 4, "perturbation_interval": 1},
                        exploits=[{**e, "receiver": "t_00001", "donor": "t_00000"}
                                  for e in EXPLOITS])
    page = render(data)
    table = page[page.index('id="lineage-table"'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr>") == 3  # header + 2 exploits; the skip is counted, not listed
    assert "lr: 0.1 → 0.012" in table and "opt.momentum: 0.9 → 0.72" in table
    assert "2 exploits, 1 skipped" in page
    assert "ASHA rungs" not in page


def test_log_ticks_are_readable_real_values():
    from raytune_suite.report.figures import log_ticks

    assert log_ticks(1.4e-5, 1.3e-4) == pytest.approx([2e-5, 5e-5, 1e-4])
    assert log_ticks(1e-4, 1e-1) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])  # 1-2-5 crowds
    assert log_ticks(1e-6, 1e-1) == pytest.approx([1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    assert log_ticks(0.0045, 0.0046) == pytest.approx([0.0045, 0.0046])


def test_report_of_an_unknown_experiment_is_one_line(in_tmp, capsys):
    from raytune_suite.cli import main

    assert main(["report", "no-such-experiment"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: EXPERIMENT:") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("algorithm, space, samples, planned", [
    ("random", {"lr": {"loguniform": [1e-4, 1e-1]}}, 5, 5),
    ("random", {"lr": {"grid": [0.1, 0.01]}, "batch_size": {"choice": [32, 64]}}, 3, 6),
    ("grid", {"lr": {"grid": [0.1, 0.01, 0.001]}, "batch_size": {"choice": [32, 64]}}, 1, 6),
    ("grid", {"optimizer": {"choice": ["adam", "sgd"]}, "dropout": {"grid": [0.1, 0.2]}},
     2, 8),
])
def test_planned_trials_counts_grid_points(algorithm, space, samples, planned):
    spec = validate({"name": "p", "trainable": "classifier", "search_space": space,
                     "metric": "val_accuracy", "mode": "max",
                     "search": {"algorithm": algorithm, "num_samples": samples}})
    assert rd.planned_trials(spec) == planned
