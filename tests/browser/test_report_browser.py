"""The HTML report rendered in headless Chromium, opened from disk (file://, offline):
every chart draws, the searched parameters are on the page, no JavaScript error. The
pages are built from synthetic trials shaped like Ray's (no Ray needed); the integration
tests check the same pages' content on real searches. Screenshots are saved in the
test's tmp folder."""

import math
import random
from pathlib import Path

import pytest

from helpers import js_errors
from raytune_suite.engine.results import TrialSummary
from raytune_suite.experiment import validate
from raytune_suite.report import data as rd
from raytune_suite.report.html import render

SPACE = {"lr": {"loguniform": [1.0e-4, 1.0e-1]}, "batch_size": {"choice": [32, 64, 128]},
         "dropout": {"uniform": [0.0, 0.5]},
         "optimizer": {"choice": [{"name": "adam"},
                                  {"name": "sgd", "momentum": {"uniform": [0.8, 0.99]}}]}}
SCHEDULERS = {
    "asha": {"type": "asha", "max_t": 9, "grace_period": 1, "reduction_factor": 3},
    "pbt": {"type": "pbt", "max_t": 9, "perturbation_interval": 3,
            "quantile_fraction": 0.5},
}


def _data(tmp_path: Path, scheduler: str, monkeypatch) -> rd.ReportData:
    (tmp_path / "user_objective.py").write_text("def objective(config):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = validate({"name": f"browser-{scheduler}", "trainable": "user_objective:objective",
                     "search_space": SPACE, "metric": "val_accuracy", "mode": "max",
                     "search": {"num_samples": 8}, "scheduler": SCHEDULERS[scheduler]})
    rng = random.Random(0)
    trials, histories, exploits = [], {}, []
    for i in range(8):
        tid = f"c0ffee_{i:05d}"
        config = {"lr": 10 ** rng.uniform(-4, -1), "batch_size": rng.choice([32, 64, 128]),
                  "dropout": rng.uniform(0, 0.5),
                  "optimizer": rng.choice([{"name": "adam"},
                                           {"name": "sgd", "momentum": 0.9}])}
        epochs = 9 if scheduler == "pbt" else [9, 9, 3, 3, 1, 1, 1, 3][i]
        quality = 1 - abs(math.log10(config["lr"]) + 2) / 4
        rows = [{"training_iteration": e, "timestamp": 1000.0 + 3 * e + i,
                 "time_total_s": 3.0 * e, "time_this_iter_s": 3.0,
                 "val_accuracy": quality * (1 - 0.5 ** e)}
                for e in range(1, epochs + 1)]
        histories[tid] = rows
        trials.append(TrialSummary(tid, config, max(r["val_accuracy"] for r in rows), epochs,
                                   "TERMINATED", None,
                                   "completed" if epochs == 9 else "stopped_early"))
    trials.sort(key=lambda t: -t.best)
    if scheduler == "pbt":
        for n, at in enumerate((3, 6)):
            for k in range(2):
                donor, receiver = trials[k], trials[-1 - k - 2 * n]
                exploits.append({"time": 1000.0 + at + k, "event": "exploit",
                                 "receiver": receiver.trial_id, "donor": donor.trial_id,
                                 "iteration": at, "checkpoint_iteration": at, "retrained": 0,
                                 "before": {"lr": receiver.config["lr"]},
                                 "after": {"lr": donor.config["lr"] * 1.2}})
    return rd.ReportData(path=tmp_path, spec=spec, spec_text=f"name: {spec.name}\n",
                         trials=trials, histories=histories,
                         params=list(spec.search_space.leaves()), exploits=exploits)


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_report_draws_every_chart_in_chromium(browser, tmp_path, monkeypatch, scheduler):
    page = tmp_path / "report.html"
    page.write_text(render(_data(tmp_path, scheduler, monkeypatch)), encoding="utf-8")
    js_errors(browser)  # forget the previous page's messages
    browser.set_window_size(1600, 1200)
    browser.get(page.as_uri())
    charts = browser.execute_script("return document.querySelectorAll('.plotly-graph-div')"
                                    ".length")
    # curves, best so far, parallel coordinates, slices, importance, and rungs or lineage
    assert charts == 6
    drawn = browser.execute_script("""
        return Array.from(document.querySelectorAll('.plotly-graph-div')).map(div =>
            div.id + ':' + (div.querySelectorAll('.main-svg').length
                            + div.querySelectorAll('canvas').length));""")
    assert all(int(d.rsplit(":", 1)[1]) > 0 for d in drawn), drawn
    # Plotly drew data, not empty axes: lines and markers, parallel axes, bars.
    counts = browser.execute_script("""
        const n = sel => document.querySelectorAll(sel).length;
        return {lines: n('#chart-curves .scatterlayer .trace'),
                axes: n('#chart-parallel .y-axis'), bars: n('#chart-importance .point')};""")
    assert counts["lines"] == 8 and counts["axes"] == len(SPACE) + 1, counts
    assert counts["bars"] >= 1, counts
    text = browser.find_element("tag name", "body").text
    for name in SPACE:
        assert name in text
    assert ("PBT lineage" in text) == (scheduler == "pbt")
    assert ("ASHA rungs" in text) == (scheduler == "asha")
    assert js_errors(browser) == []
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1600, height + 100)
    shot = tmp_path / f"report-{scheduler}.png"
    assert browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")


def test_report_shows_the_ensembles_in_chromium(browser, tmp_path, monkeypatch):
    """`best --evaluate --ensemble K`'s records (ensembles.jsonl) as the reader sees them:
    the single best and each ensemble, and the members one by one when unfolded."""
    from dataclasses import replace

    data = _data(tmp_path, "asha", monkeypatch)
    data.trials = [replace(t, checkpoint=f"{tmp_path}/{t.trial_id}/checkpoint_000009")
                   for t in data.trials]

    def record(k, accuracy):
        members = [{"trial_id": t.trial_id, "checkpoint": t.checkpoint, "value": t.best,
                    "test_accuracy": 0.95 - i / 50, "test_f1_macro": 0.94 - i / 50}
                   for i, t in enumerate(data.trials[:k])]
        return {"k": k, "test_samples": 360, "metric": "val_accuracy", "members": members,
                "single": {k: members[0][k] for k in ("trial_id", "test_accuracy",
                                                      "test_f1_macro")},
                "ensemble": {"test_accuracy": accuracy, "test_f1_macro": accuracy - 0.01}}

    data.ensembles = [record(3, 0.9667), record(5, 0.9611)]
    page = tmp_path / "report.html"
    page.write_text(render(data), encoding="utf-8")
    js_errors(browser)
    browser.set_window_size(1400, 900)
    browser.get(page.as_uri() + "#ensemble")
    rows = browser.execute_script("""
        return Array.from(document.querySelectorAll('#ensemble-table tbody tr'))
            .map(tr => Array.from(tr.cells).map(td => td.innerText));""")
    ids = [t.trial_id for t in data.trials]
    assert rows == [["single best", ids[0], "0.9500", "", "0.9400"],
                    ["ensemble of 3", ", ".join(ids[:3]), "0.9667", "+0.0167", "0.9567"],
                    ["ensemble of 5", ", ".join(ids[:5]), "0.9611", "+0.0111", "0.9511"]]
    members = browser.find_element("id", "ensemble-members")
    assert not members.is_displayed()  # folded until the reader asks
    browser.find_element("css selector", "#ensemble summary").click()
    assert members.is_displayed() and len(members.find_elements("css selector",
                                                                "tbody tr")) == 5
    assert "Top-K ensembles" in browser.find_element("tag name", "nav").text
    assert js_errors(browser) == []
    shot = tmp_path / "report-ensemble.png"
    assert browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
