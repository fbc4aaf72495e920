"""The report's Pareto section for a search of several objectives: a chart of every trial
by its first two objectives with the front drawn through it, and the front as a table."""

from __future__ import annotations

import html
from typing import Any, Optional

from raytune_suite.engine.results import pareto_front
from raytune_suite.report.data import ReportData, param_value

FRONT = "#d62728"
OTHER = "#9a9a9a"


def pareto_figure(data: ReportData):
    """Every trial with a value of both objectives as a point (first objective on x,
    second on y); the front's trials red, joined in order of the first objective. With
    more than two objectives the chart shows the first two and says so."""
    import plotly.graph_objects as go

    (mx, dx), (my, dy) = data.spec.objectives[:2]
    front = {t.trial_id for t in pareto_front(data.trials, data.spec.objectives)}
    scored = [t for t in data.trials if mx in t.values and my in t.values]
    if not scored:
        return None
    fig = go.Figure()
    for on_front in (False, True):
        points = sorted((t for t in scored if (t.trial_id in front) == on_front),
                        key=lambda t: t.values[mx])
        if not points:
            continue
        fig.add_trace(go.Scatter(
            x=[t.values[mx] for t in points], y=[t.values[my] for t in points],
            mode="lines+markers" if on_front else "markers",
            name="Pareto front" if on_front else "other trials",
            line=dict(color=FRONT, width=2),
            marker=dict(color=FRONT if on_front else OTHER, size=10 if on_front else 8),
            text=[_hover(t) for t in points],
            hovertemplate=f"%{{text}}<br>{mx} %{{x:.4g}}<br>{my} %{{y:.4g}}<extra></extra>"))
    more = len(data.spec.objectives) > 2
    title = (f"{mx} ({dx}) against {my} ({dy}), every trial's last reported values"
             + (" (first two objectives)" if more else ""))
    fig.update_layout(template="plotly_white", margin=dict(l=70, r=30, t=50, b=60),
                      height=460, font=dict(size=13), title=title, xaxis_title=mx,
                      yaxis_title=my, hoverlabel=dict(namelength=-1))
    return fig


def _hover(t) -> str:
    config = ", ".join(f"{k}={_fmt(param_value(v))}" for k, v in t.config.items())
    return html.escape(f"{t.trial_id}: {config}")


def pareto_table(data: ReportData) -> str:
    """The front as an HTML table: trial, each objective, epochs, searched values."""
    objectives = data.spec.objectives
    names = [n for n, _ in data.params]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["trial", *(f"{m} ({d})" for m, d in objectives), "epochs", *names])
    rows = []
    for t in pareto_front(data.trials, objectives):
        cells = [t.trial_id, *(_fmt(t.values[m]) for m, _ in objectives), str(t.epochs),
                 *(_fmt(param_value(t.config.get(n))) for n in names)]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return (f'<div class="board-wrap"><table class="board" id="pareto-table"><thead><tr>'
            f'{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def section_text(data: ReportData, chart: str) -> str:
    goals = ", ".join(f"<code>{html.escape(m)}</code> ({d})" for m, d in data.spec.objectives)
    front = pareto_front(data.trials, data.spec.objectives)
    return (f"<p>The search optimised {goals}. {len(front)} of {len(data.trials)} trials are on "
            "the Pareto front: no other trial is at least as good in every objective and "
            "better in one. Each trial counts with its last reported values, which the "
            "searcher was told; MLflow tags these trial runs <code>pareto=true</code>.</p>"
            f"{chart}{pareto_table(data)}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def pareto_section(data: ReportData, chart) -> Optional[tuple[str, str, str]]:
    """(id, title, HTML) of the section, or None with one objective. ``chart`` embeds a
    plotly figure the way the rest of the report does."""
    if not data.spec.objectives:
        return None
    return ("pareto", "Pareto front", section_text(data, chart(pareto_figure(data), "pareto")))
