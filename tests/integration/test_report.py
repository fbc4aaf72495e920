"""`raytune-suite report` on real experiments, each a tiny search run through the CLI:
the built-in classifier under ASHA (with the quickstart's conditional space), PBT, and a
user's own trainable (Ray's easy_objective: `mean_loss`, no epoch key)."""

import json
import re
import textwrap
from pathlib import Path

from helpers import EXPERIMENTS, result_rows
from raytune_suite.cli import main
from raytune_suite.engine.runner import load_outcome


def _run_and_report(in_tmp, capsys, args: list[str], name: str) -> tuple[Path, str]:
    assert main(["run", *args, "--no-mlflow", "--set", f"name={name}"]) == 0
    capsys.readouterr()
    assert main(["report", name]) == 0
    written = Path(capsys.readouterr().out.strip().splitlines()[-1])
    folder = in_tmp / "ray_results" / name
    assert written == (folder / "report.html").resolve()
    return folder, written.read_text()


def _table(page: str, table_id: str) -> list[list[str]]:
    """The body rows of a table of the page, as cell texts."""
    table = page[page.index(f'id="{table_id}"'):]
    body = table[table.index("<tbody>"):table.index("</tbody>")]
    return [re.findall(r"<td>(.*?)</td>", row) for row in body.split("</tr>") if "<td>" in row]


def _assert_common(folder: Path, page: str, params: list[str]):
    outcome = load_outcome(str(folder))
    board = _table(page, "leaderboard-table")
    assert [row[1] for row in board] == [t.trial_id for t in outcome.trials]  # CLI ranking
    for name in params:
        assert f"<th>{name}</th>" in page
    assert page.count("Plotly.newPlot") >= 5
    assert "fANOVA" in page
    return outcome


def _assert_rungs(folder: Path, page: str, levels: list[int]):
    epochs = [max(r["training_iteration"] for r in rows)
              for rows in result_rows(folder).values()]
    expected = [[str(level), str(sum(e >= level for e in epochs))] for level in levels]
    assert [row[:2] for row in _table(page, "rung-table")] == expected


def test_report_of_a_classifier_asha_search(ray_local, in_tmp, capsys):
    folder, page = _run_and_report(in_tmp, capsys, [
        str(EXPERIMENTS / "quickstart.yaml"), "--set", "search.num_samples=4",
        "--set", "search.n_initial_points=4", "--set", "config.epochs=3",
        "--set", "scheduler.max_t=3", "--set", "scheduler.grace_period=1",
        "--set", "scheduler.reduction_factor=2"], "rep-asha")
    params = ["lr", "batch_size", "dropout", "weight_decay", "optimizer"]
    outcome = _assert_common(folder, page, params)
    _assert_rungs(folder, page, [1, 2, 3])
    assert "lr (log)" in page and "weight_decay (log)" in page  # log axes
    assert "test accuracy <b>" in page and "macro avg" in page  # as best --evaluate
    assert f"Trial <b>{outcome.best.trial_id}</b>" in page
    assert "of 12 (4 trials × max_t 3)" in page


def test_report_of_a_pbt_search_lists_every_exploit(ray_local, in_tmp, capsys):
    folder, page = _run_and_report(in_tmp, capsys, [
        str(EXPERIMENTS / "digits_pbt.yaml"), "--set", "config.model=mlp",
        "--set", "config.epochs=2", "--set", "scheduler.max_t=2",
        "--set", "scheduler.perturbation_interval=1", "--set", "scheduler.synch=true",
        # two trials: at the perturbation the worse one always exploits the better (one
        # lineage row at least); synchronous PBT restarts every trial after it in a fresh
        # worker process, so each trial more costs two process starts
        "--set", "scheduler.quantile_fraction=0.5", "--set", "search.num_samples=2",
        "--set", "checkpoint.every=1", "--set", "checkpoint.keep=4",
        # both at once: synchronous PBT then never swaps trials in and out (each swap
        # starts a fresh worker process) before its one perturbation
        "--set", "resources.cpu=0.5"], "rep-pbt")
    _assert_common(folder, page, ["lr", "momentum", "batch_size"])
    records = [json.loads(line) for line in (folder / "pbt_exploits.jsonl").open()]
    made = [r for r in records if r["event"] == "exploit"]
    assert made, "PBT never exploited: the lineage proves nothing"
    lineage = _table(page, "lineage-table")
    assert [(row[1], row[3], int(row[4]), int(row[5])) for row in lineage] == \
        [(r["donor"], r["receiver"], r["iteration"], r["checkpoint_iteration"]) for r in made]
    for row, r in zip(lineage, made):
        for key in r["after"]:
            if r["before"][key] != r["after"][key]:
                assert row[6].count(f"{key}: ") == 1, (row, r)
    assert "ASHA rungs" not in page


def test_report_of_a_users_own_trainable(ray_local, in_tmp, capsys):
    (in_tmp / "exp.yaml").write_text(textwrap.dedent("""
        trainable: ray.tune.examples.async_hyperband_example:easy_objective
        config: {steps: 4}
        search_space:
          width: {uniform: [0, 20]}
          height: {uniform: [-100, 100]}
        metric: mean_loss
        mode: min
        search: {algorithm: random, num_samples: 4, seed: 1}
        scheduler: {type: asha, max_t: 4, grace_period: 1, reduction_factor: 2}
    """))
    folder, page = _run_and_report(in_tmp, capsys, ["exp.yaml"], "rep-user")
    _assert_common(folder, page, ["width", "height"])
    _assert_rungs(folder, page, [1, 2, 4])
    assert "Best checkpoint on the test split" not in page  # only for the classifier
    assert "mean_loss per training iteration" in page

    out = in_tmp / "elsewhere" / "user.html"
    assert main(["report", str(folder), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    assert out.read_text().count("Plotly.newPlot") == page.count("Plotly.newPlot")
