"""``raytune-suite report``: one self-contained HTML file per experiment.

The file opens offline: plotly's JavaScript is inlined once in its head, every chart
after it is a plain ``<div>`` and a call to ``Plotly.newPlot``. All text that comes from
the user (the experiment file, names, values) is escaped.
"""

from __future__ import annotations

import datetime as _dt
import html
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from raytune_suite.report import data as rd

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def write_report(experiment: str | Path, out: Optional[str | Path] = None) -> Path:
    """Write the HTML report of an experiment.

    Args:
        experiment: an experiment folder, or a name under ./ray_results.
        out: the file to write; default ``<experiment folder>/report.html``.

    Returns:
        The path written.

    Raises:
        SpecError: not an experiment, or one without results yet.
    """
    data = rd.load_report_data(experiment)
    target = Path(out) if out else data.path / REPORT_FILE
    page = render(data)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")  # never a half-written report
    partial.write_text(page, encoding="utf-8")
    partial.replace(target)
    return target.resolve()


def render(data: rd.ReportData) -> str:
    """The report page of ``data`` (the whole HTML document)."""
    from plotly.offline import get_plotlyjs

    from raytune_suite.report.pareto import pareto_section

    spec = data.spec
    sections = [_summary(data), _leaderboard(data)]
    pareto = pareto_section(data, _chart)  # several objectives only
    if pareto:
        sections.append(pareto)
    if spec.trainable == "classifier":
        sections.append(_test_evaluation(data))
        sections += _robustness_section(data)
    if data.ensembles:
        sections.append(_ensemble_section(data))
    sections += [_learning_section(data), _hyperparameter_section(data),
                 _importance_section(data)]
    rungs = rd.scheduler_rungs(spec)
    if rungs:
        sections.append(_rung_section(data, rungs))
    if spec.scheduler.type == "pbt":
        sections.append(_lineage_section(data))
    title = f"{spec.name}: raytune-suite report"
    nav = " · ".join(f'<a href="#{sid}">{html.escape(label)}</a>' for sid, label, _ in sections)
    body = "\n".join(f'<section id="{sid}"><h2>{html.escape(label)}</h2>\n{content}</section>'
                     for sid, label, content in sections)
    return _PAGE.format(title=html.escape(title), plotly=get_plotlyjs(), css=_CSS,
                        name=html.escape(spec.name), path=html.escape(str(data.path)),
                        when=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"), nav=nav,
                        body=body)


# ------------------------------------------------------------------ sections
# Each returns (anchor id, heading, HTML content).


def _summary(data: rd.ReportData):
    spec = data.spec
    outcomes = Counter(t.outcome for t in data.trials)
    trained = rd.epochs_trained(data.histories)
    planned = rd.planned_trials(spec)
    budget = planned * spec.max_t if spec.max_t else None
    samples = spec.search.num_samples
    grid = (f": num_samples {samples} × {planned // samples} grid points"
            if planned != samples else "")
    wall = rd.wall_time(data.histories)
    facts = [
        ("trainable", spec.trainable),
        ("metric", f"{spec.metric} ({spec.mode})"),
        ("searcher", _settings(spec.search.algorithm, spec.search.model_dump(
            exclude={"algorithm"}, exclude_none=True))),
        ("scheduler", _settings(spec.scheduler.type, spec.scheduler.model_dump(
            exclude={"type", "hyperparam_mutations"}, exclude_none=True))),
        ("wall time", f"{_duration(wall)} (first trial start to last result)"
         if wall is not None else "unknown"),
        ("trials", f"{len(data.trials)} of {planned}{grid}"),
        ("trials by outcome", ", ".join(f"{n} {k.replace('_', ' ')}"
                                        for k, n in sorted(outcomes.items())) or "none"),
        ("epochs trained", f"{trained} of {budget} ({planned} trials{grid} × max_t "
                           f"{spec.max_t}), {trained / budget:.0%}" if budget else
                           f"{trained} (no max_t: the trainable decides)"),
    ]
    if spec.time_attr != "training_iteration":
        facts.append(("time_attr", spec.time_attr))
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in facts)
    return ("summary", "Summary",
            f'<table class="facts">{rows}</table>\n<details open><summary>the experiment '
            f'file as run</summary><pre>{html.escape(data.spec_text)}</pre></details>')


def _settings(name: str, values: dict) -> str:
    inner = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
    return f"{name} ({inner})" if inner else name


def _leaderboard(data: rd.ReportData):
    metric = data.spec.metric
    names = [n for n, _ in data.params]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["rank", "trial", metric, "epochs", "outcome", *names])
    body = []
    for i, t in enumerate(data.trials, 1):
        cells = [str(i), t.trial_id, _fmt(t.best) if t.best is not None else "-",
                 str(t.epochs), t.outcome.replace("_", " "),
                 *(_fmt(rd.param_value(t.config.get(n))) for n in names)]
        cls = ' class="best"' if i == 1 and t.best is not None else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                    + "</tr>")
    note = (f"<p>Ranked by each trial's best {html.escape(metric)} over its epochs, as "
            "<code>raytune-suite best</code> and the console leaderboard rank them; "
            "diverged and errored trials last.</p>")
    return ("leaderboard", "Leaderboard",
            f'{note}<div class="board-wrap"><table class="board" id="leaderboard-table">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def _test_evaluation(data: rd.ReportData):
    best = data.trials[0] if data.trials and data.trials[0].best is not None else None
    title = "Best checkpoint on the test split"
    if best is None or not best.checkpoint:
        return ("test", title, "<p class='note'>No checkpoint of a best trial to evaluate.</p>")
    try:
        from raytune_suite.training.evaluate import evaluate_checkpoint

        test = evaluate_checkpoint(best.checkpoint)
    except Exception as e:  # noqa: BLE001 - the rest of the report still matters
        logger.warning("the best checkpoint could not be evaluated: %s", e)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return ("test", title, f"<p class='note'>The best checkpoint could not be evaluated "
                               f"({html.escape(type(e).__name__)}: {html.escape(reason)}).</p>")
    return ("test", title,
            f"<p>Trial <b>{html.escape(best.trial_id)}</b>, checkpoint "
            f"<code>{html.escape(str(best.checkpoint))}</code> (as <code>raytune-suite best "
            f"--evaluate</code>): test accuracy <b>{test['test_accuracy']:.4f}</b>, macro F1 "
            f"{test['test_f1_macro']:.4f}, {test['test_samples']} samples.</p>"
            f"<pre>{html.escape(test['report'])}</pre>")


def _ensemble_section(data: rd.ReportData):
    """``best --evaluate --ensemble K``'s results (ensembles.jsonl): the single best and
    each ensemble on the test split, and the largest ensemble's members one by one."""
    records = sorted(data.ensembles, key=lambda r: r["k"])
    singles = {r["single"]["trial_id"]: r["single"] for r in records}
    rows = [("single best", [tid], s, "") for tid, s in singles.items()]
    for r in records:
        gain = r["ensemble"]["test_accuracy"] - r["single"]["test_accuracy"]
        stale = "" if rd.ensemble_is_current(r, data.trials) else " (out of date)"
        rows.append((f"ensemble of {r['k']}{stale}", [m["trial_id"] for m in r["members"]],
                     r["ensemble"], f"{gain:+.4f}"))
    body = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{html.escape(', '.join(ids))}</td>"
        f"<td>{s['test_accuracy']:.4f}</td><td>{html.escape(gain)}</td>"
        f"<td>{s['test_f1_macro']:.4f}</td></tr>" for label, ids, s, gain in rows)
    table = ('<table class="board" id="ensemble-table"><thead><tr><th>model</th>'
             "<th>trials (best first)</th><th>test accuracy</th><th>vs single best</th>"
             f"<th>macro F1</th></tr></thead><tbody>{body}</tbody></table>")
    largest = records[-1]
    metric = largest.get("metric", data.spec.metric)
    members = "".join(
        f"<tr><td>{i}</td><td>{html.escape(m['trial_id'])}</td>"
        f"<td>{html.escape(_fmt(m.get('value')))}</td><td>{m['test_accuracy']:.4f}</td>"
        f"<td>{m['test_f1_macro']:.4f}</td></tr>"
        for i, m in enumerate(largest["members"], 1))
    detail = (f"<details><summary>each member of the ensemble of {largest['k']} on its own"
              '</summary><table class="board" id="ensemble-members"><thead><tr><th>rank</th>'
              f"<th>trial</th><th>{html.escape(metric)}</th><th>test accuracy</th>"
              f"<th>macro F1</th></tr></thead><tbody>{members}</tbody></table></details>")
    stale = [r["k"] for r in records if not rd.ensemble_is_current(r, data.trials)]
    note = (f"<p class='note'>Out of date: the leaderboard's top {', '.join(map(str, stale))} "
            "are no longer those trials (the search went on since); run <code>raytune-suite "
            "best --evaluate --ensemble K</code> again.</p>" if stale else "")
    return ("ensemble", "Top-K ensembles on the test split",
            f"<p>The mean of the top K trials' softmax outputs (equal weights) on the "
            f"held-out test split ({largest['test_samples']} samples), next to the single "
            "best, as <code>raytune-suite best --evaluate --ensemble K</code> computed them "
            f"(kept in <code>ensembles.jsonl</code>).</p>{table}{note}{detail}")


def _learning_section(data: rd.ReportData):
    from raytune_suite.report import figures

    return ("curves", "Learning curves",
            _chart(figures.learning_curves(data), "curves")
            + "<p class='note'>Dotted grey: stopped early (or by the time budget); thick red: "
              "the best trial. A gap in a line is a PBT exploit restarting the trial from "
              "an older checkpoint.</p>"
            + _chart(figures.best_over_time(data), "best-over-time"))


def _hyperparameter_section(data: rd.ReportData):
    from raytune_suite.report import figures

    if not data.params:
        return ("hyperparameters", "Hyperparameters",
                "<p class='note'>Nothing was searched (search_space is empty).</p>")
    if not any(t.best is not None for t in data.trials):
        return ("hyperparameters", "Hyperparameters",
                f"<p class='note'>No trial has a finite {html.escape(data.spec.metric)}.</p>")
    scales = ", ".join(f"{n}: {rd.param_scale(d)}" for n, d in data.params)
    return ("hyperparameters", "Hyperparameters",
            f"<p>Searched: {html.escape(scales)}.</p>"
            + _chart(figures.parallel_coordinates(data), "parallel")
            + _chart(figures.slice_plots(data), "slices"))


def _importance_section(data: rd.ReportData):
    from raytune_suite.report import figures
    from raytune_suite.report.importance import param_importance

    title = "Hyperparameter importance"
    if not data.params:
        return ("importance", title, "<p class='note'>Nothing was searched.</p>")
    trials = [{"config": t.config, "value": t.best} for t in data.trials]
    try:
        found = param_importance(trials, data.params, data.spec.mode)
    except Exception as e:  # noqa: BLE001 - a failed estimate must not cost the report
        logger.warning("hyperparameter importance failed: %s", e)
        return ("importance", title, f"<p class='note'>Importance could not be computed "
                                     f"({html.escape(type(e).__name__)}: "
                                     f"{html.escape(str(e))}).</p>")
    parts = [f"<p>Method: {html.escape(found.method)}.</p>"]
    if data.spec.scheduler.type == "pbt":
        parts.append("<p class='note'>PBT changes hyperparameters while trials train: these "
                     "are the trials' final values.</p>")
    if found.values:
        parts.append(_chart(figures.importance_chart(found.values), "importance"))
    if found.note:
        parts.append(f"<p class='note'>{html.escape(found.note)}.</p>")
    return ("importance", title, "".join(parts))


def _rung_section(data: rd.ReportData, rungs: list[int]):
    from raytune_suite.report import figures

    epochs = [t.epochs for t in data.trials]
    counts = rd.rung_counts(epochs, rungs)
    rows = "".join(f"<tr><td>{level}</td><td>{n}</td><td>{n / max(len(epochs), 1):.0%}</td>"
                   "</tr>" for level, n in counts)
    kind = data.spec.scheduler.type
    what = ("grace_period × reduction_factor^k" if kind == "asha" else
            "reduction_factor^k (HyperBand's most aggressive bracket)")
    return ("rungs", f"{'ASHA' if kind == 'asha' else 'HyperBand'} rungs",
            f"<p>Rungs at {html.escape(what)} up to max_t: how many of the "
            f"{len(epochs)} trials trained that far.</p>"
            f'<table class="board" id="rung-table"><thead><tr><th>rung (iteration)</th>'
            f"<th>trials reached</th><th>share</th></tr></thead><tbody>{rows}</tbody></table>"
            + _chart(figures.rung_chart(counts, len(epochs)), "rungs"))


def _lineage_section(data: rd.ReportData):
    from raytune_suite.report import figures

    rows = rd.lineage_rows(data.exploits)
    skipped = sum(r.get("event") == "skip" for r in data.exploits)
    title = "PBT lineage"
    if not rows:
        return ("lineage", title, f"<p class='note'>No exploit happened ({skipped} skipped "
                                  "for want of a recent donor checkpoint).</p>")
    body = []
    for i, r in enumerate(rows, 1):
        changes = "<br>".join(
            f"{html.escape(k)}: {html.escape(_fmt(r['before'].get(k)))} → "
            f"{html.escape(_fmt(r['after'].get(k)))}" for k in r["changed"]) or "no change"
        body.append(f"<tr><td>{i}</td><td>{html.escape(r['donor'])}</td><td>→</td>"
                    f"<td>{html.escape(r['receiver'])}</td><td>{r['iteration']}</td>"
                    f"<td>{r['checkpoint_iteration']}</td><td>{changes}</td></tr>")
    table = ('<table class="board" id="lineage-table"><thead><tr><th>#</th><th>donor</th>'
             "<th></th><th>receiver</th><th>at iteration</th><th>from checkpoint of "
             "iteration</th><th>hyperparameters before → after</th></tr></thead><tbody>"
             + "".join(body) + "</tbody></table>")
    trials = [t.trial_id for t in data.trials]
    chart = figures.lineage_chart(rows, trials, data.spec.max_t)
    return ("lineage", title,
            f"<p>{len(rows)} exploits, {skipped} skipped for want of a recent donor "
            "checkpoint (from pbt_exploits.jsonl).</p>" + _chart(chart, "lineage") + table)


_BEST_ROW = ' class="best"'


def _robustness_section(data: rd.ReportData) -> list:
    """Clean against robust accuracy when trials trained adversarially (they report
    ``val_robust_accuracy``): [] otherwise. Each trial's epoch with its best metric (the
    leaderboard's), read from its ``result.json`` rows."""
    from raytune_suite.report import figures

    points, plain = [], 0
    best_id = data.trials[0].trial_id if data.trials and data.trials[0].best is not None \
        else None
    sign = 1 if data.spec.mode == "max" else -1
    for result in sorted(Path(data.path).glob("*/result.json")):
        rows = [r for r in _json_lines(result) if _finite(r.get(data.spec.metric))]
        if not rows:
            continue
        if not any(_finite(r.get("val_robust_accuracy")) for r in rows):
            plain += 1
            continue
        row = max(rows, key=lambda r: sign * float(r[data.spec.metric]))
        config = row.get("config") or {}
        attack = (f"{config.get('adversarial_method', 'fgsm')}, eps "
                  f"{_fmt(config.get('adversarial_eps'))}")
        if _finite(row.get("val_robust_accuracy")) and _finite(row.get("val_accuracy")):
            points.append({"trial": str(row.get("trial_id")), "best": row.get("trial_id") ==
                           best_id, "clean": float(row["val_accuracy"]),
                           "robust": float(row["val_robust_accuracy"]), "attack": attack})
    if not points:
        return []
    points.sort(key=lambda p: -p["robust"])
    body = "".join(
        f"<tr{_BEST_ROW if p['best'] else ''}><td>{html.escape(p['trial'])}</td>"
        f"<td>{html.escape(p['attack'])}</td><td>{p['clean']:.4f}</td>"
        f"<td>{p['robust']:.4f}</td><td>{p['robust'] - p['clean']:+.4f}</td></tr>"
        for p in points)
    table = ('<table class="board" id="robustness-table"><thead><tr><th>trial</th>'
             "<th>attack (training and validation)</th><th>clean val_accuracy</th>"
             "<th>val_robust_accuracy</th><th>robust - clean</th></tr></thead>"
             f"<tbody>{body}</tbody></table>")
    note = (f"<p class='note'>{plain} trials trained without an attack (adversarial_eps 0) "
            "report no robust accuracy and are not shown.</p>" if plain else "")
    return [("robustness", "Clean against robust accuracy",
             "<p>Adversarially trained trials at the epoch of their best "
             f"{html.escape(data.spec.metric)}: accuracy on the clean validation split "
             "against accuracy on its adversarial versions, under the attack each trial "
             "trained with (L-infinity radius in standardised input units).</p>"
             + _chart(figures.clean_vs_robust(points), "robustness") + table + note)]


def _json_lines(path: Path) -> list[dict]:
    import json

    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash
    return [r for r in rows if isinstance(r, dict)]


def _finite(value: Any) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


# ------------------------------------------------------------------ helpers


def _chart(fig, name: str) -> str:
    if fig is None:
        return ""
    return ('<div class="chart">' + fig.to_html(full_html=False, include_plotlyjs=False,
                                                div_id=f"chart-{name}", config=_PLOT_CONFIG)
            + "</div>")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "-"
    return str(v)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s" if m else f"{s} s"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
 max-width:1200px;padding:0 24px 48px;color:#222;line-height:1.45}
header{border-bottom:2px solid #ddd;margin-bottom:8px}
h1{margin:24px 0 4px;font-size:26px} h2{margin-top:36px;border-bottom:1px solid #eee}
nav{margin:8px 0 0;font-size:14px} .meta{color:#666;font-size:13px;margin:0 0 10px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
table.facts th{background:#f6f6f6;width:170px}
table.board thead th{background:#f0f3f7;position:sticky;top:0}
table.board tr.best td{background:#fff3f0;font-weight:600}
.board-wrap{max-height:520px;overflow:auto}
pre{background:#f7f7f7;border:1px solid #e5e5e5;padding:10px;overflow:auto;font-size:12px;
 max-height:420px}
.note{color:#666;font-size:13px} .chart{margin:12px 0;border:1px solid #eee}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
<script type="text/javascript">{plotly}</script>
</head><body>
<header><h1>{name}</h1>
<p class="meta">{path} · report written {when} by raytune-suite</p>
<nav>{nav}</nav></header>
{body}
</body></html>
"""
