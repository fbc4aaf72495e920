"""The report's charts as plotly figures (pure functions of :mod:`report.data` records)."""

from __future__ import annotations

import math
from typing import Any, Optional

from raytune_suite.report.data import (ReportData, best_so_far, curve_points, param_scale,
                                       param_value)

BEST = "#d62728"
EARLY = "#9a9a9a"
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#ff7f0e", "#7f7f7f", "#393b79")
_LAYOUT = dict(template="plotly_white", margin=dict(l=70, r=30, t=50, b=60), height=460,
               font=dict(size=13), hoverlabel=dict(namelength=-1))


def _go():
    import plotly.graph_objects as go

    return go


def learning_curves(data: ReportData):
    """Every trial's metric against training iteration on one chart: stopped-early trials
    dotted grey, the best trial thick red, a PBT exploit's restart as a gap."""
    go = _go()
    metric = data.spec.metric
    best = data.trials[0].trial_id if data.trials and data.trials[0].best is not None else None
    outcome = {t.trial_id: t.outcome for t in data.trials}
    fig = go.Figure()
    order = sorted(data.histories, key=lambda t: t == best)  # the best drawn last, on top
    for i, trial in enumerate(order):
        xs, ys = curve_points(data.histories[trial], metric)
        if not xs:
            continue
        early = outcome.get(trial) not in ("completed", None)
        if trial == best:
            line, name = dict(color=BEST, width=4), f"{trial} (best)"
        elif early:
            line, name = dict(color=EARLY, width=1.5, dash="dot"), \
                f"{trial} ({outcome[trial].replace('_', ' ')})"
        else:
            line, name = dict(color=PALETTE[i % len(PALETTE)], width=1.8), trial
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, line=line,
                                 marker=dict(size=5), connectgaps=False,
                                 hovertemplate=f"{trial}<br>iteration %{{x}}<br>{metric} "
                                               "%{y:.4g}<extra></extra>"))
    longest = max((len(rows) for rows in data.histories.values()), default=1)
    fig.update_layout(**_LAYOUT, title=f"{metric} per training iteration, every trial",
                      xaxis_title="training iteration", yaxis_title=metric,
                      legend=dict(font=dict(size=11)))
    fig.update_xaxes(tickformat="d", dtick=max(1, math.ceil(longest / 12)))
    return fig


def best_over_time(data: ReportData):
    """The best metric so far against seconds since the search started."""
    go = _go()
    points = best_so_far(data.histories, data.spec.metric, data.spec.mode)
    fig = go.Figure(go.Scatter(
        x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers",
        line=dict(shape="hv", color=BEST, width=2.5), customdata=[p[2] for p in points],
        hovertemplate="%{x:.0f} s: %{y:.4g} (trial %{customdata})<extra></extra>"))
    fig.update_layout(**_LAYOUT, title=f"best {data.spec.metric} so far ({data.spec.mode})",
                      xaxis_title="seconds since the search started",
                      yaxis_title=f"best {data.spec.metric}", showlegend=False,
                      xaxis_rangemode="tozero")
    return fig


def _ranked(data: ReportData) -> list:
    return [t for t in data.trials if t.best is not None]


def _categorical_codes(values: list) -> tuple[list[int], list[str]]:
    labels = sorted({str(v) for v in values}, key=_natural)
    return [labels.index(str(v)) for v in values], labels


def _natural(label: str):
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def parallel_coordinates(data: ReportData):
    """Searched hyperparameters against the metric, one line per finished trial. Log
    domains are drawn on log10 axes labelled in real values; choices as categories."""
    go = _go()
    trials = _ranked(data)
    if not trials or not data.params:
        return None
    dims = []
    for name, domain in data.params:
        values = [param_value(t.config.get(name)) for t in trials]
        dims.append(_dimension(name, param_scale(domain), values))
    metric_values = [t.best for t in trials]
    dims.append(dict(label=data.spec.metric, values=metric_values))
    fig = go.Figure(go.Parcoords(
        dimensions=dims, labelangle=0, labelside="bottom",
        line=dict(color=metric_values, colorscale="Viridis", showscale=True,
                  reversescale=data.spec.mode == "min",
                  colorbar=dict(title=dict(text=data.spec.metric, side="right")))))
    fig.update_layout(**{**_LAYOUT, "margin": dict(l=80, r=80, t=60, b=70)},
                      title="searched hyperparameters against "
                            f"{data.spec.metric} (one line per trial)")
    return fig


def _dimension(name: str, scale: str, values: list) -> dict[str, Any]:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if scale == "categorical" or not numeric:
        codes, labels = _categorical_codes(values)
        return dict(label=name, values=codes, tickvals=list(range(len(labels))),
                    ticktext=labels, range=[-0.25, max(len(labels) - 1, 0) + 0.25])
    if scale == "log" and min(values) > 0:
        logs = [math.log10(v) for v in values]
        low, high = min(logs), max(logs)
        # Plotly draws a parcoords axis only as far as its ticks reach: both ends are
        # ticks too (labelled like a linear axis's ends), inner ones not crowding them.
        gap = (high - low) * 0.06
        inner = [math.log10(t) for t in log_ticks(min(values), max(values))]
        ticks = [low, *(t for t in inner if low + gap < t < high - gap), high]
        return dict(label=f"{name} (log)", values=logs, range=[low, high],
                    tickvals=ticks, ticktext=[f"{10 ** t:.3g}" for t in ticks])
    return dict(label=name, values=values)


def log_ticks(low: float, high: float, most: int = 7) -> list[float]:
    """Tick values for a log axis from ``low`` to ``high`` (both > 0): 1-2-5 steps, or
    decades only where those would crowd; both ends where nothing falls inside."""
    if low <= 0 or high <= 0:
        raise ValueError(f"`low > 0` and `high > 0` must hold, but got ({low=}, {high=}).")
    for steps in ((1, 2, 5), (1,)):
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(low)),
                                              math.ceil(math.log10(high)) + 1)
                 for m in steps if low * (1 - 1e-9) <= m * 10.0 ** e <= high * (1 + 1e-9)]
        if len(ticks) <= most:
            break
    if len(ticks) < 2:
        ticks = sorted({float(f"{low:.2g}"), *ticks, float(f"{high:.2g}")})
    return ticks


def slice_plots(data: ReportData):
    """One panel per searched hyperparameter: each trial's best metric against its value."""
    from plotly.subplots import make_subplots

    trials = _ranked(data)
    if not trials or not data.params:
        return None
    cols = min(3, len(data.params))
    rows = math.ceil(len(data.params) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[n for n, _ in data.params],
                        horizontal_spacing=0.08, vertical_spacing=0.16 if rows > 1 else 0.1)
    go = _go()
    for i, (name, domain) in enumerate(data.params):
        r, c = i // cols + 1, i % cols + 1
        scale = param_scale(domain)
        xs = [param_value(t.config.get(name)) for t in trials]
        categorical = scale == "categorical" or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        if categorical:
            xs = [str(x) for x in xs]
        fig.add_trace(go.Scatter(
            x=xs, y=[t.best for t in trials], mode="markers", showlegend=False,
            marker=dict(size=9, color=[t.best for t in trials], colorscale="Viridis",
                        reversescale=data.spec.mode == "min",
                        line=dict(width=1, color="#333")),
            customdata=[t.trial_id for t in trials],
            hovertemplate=f"{name}=%{{x}}<br>{data.spec.metric} %{{y:.4g}}"
                          "<br>trial %{customdata}<extra></extra>"), row=r, col=c)
        axis = "log" if scale == "log" and not categorical and min(xs) > 0 else (
            "category" if categorical else "linear")
        fig.update_xaxes(type=axis, row=r, col=c)
        if axis == "log":
            ticks = log_ticks(min(xs), max(xs), most=5)
            fig.update_xaxes(tickvals=ticks, ticktext=[f"{t:.3g}" for t in ticks], row=r, col=c)
        if categorical:
            _, labels = _categorical_codes(xs)
            fig.update_xaxes(categoryorder="array", categoryarray=labels, row=r, col=c)
        if c == 1:
            fig.update_yaxes(title_text=data.spec.metric, row=r, col=c)
    fig.update_layout(**{**_LAYOUT, "height": 340 * rows + 60},
                      title=f"best {data.spec.metric} of each trial against each "
                            "hyperparameter")
    return fig


def importance_chart(values: dict[str, float]):
    go = _go()
    names = list(values)[::-1]  # largest on top
    fig = go.Figure(go.Bar(x=[values[n] for n in names], y=names, orientation="h",
                           marker_color="#1f77b4", texttemplate="%{x:.2f}",
                           textposition="outside", cliponaxis=False))
    fig.update_layout(**{**_LAYOUT, "height": 120 + 40 * len(names),
                         "margin": dict(l=160, r=60, t=50, b=50)},
                      title="hyperparameter importance", xaxis_title="importance",
                      xaxis_range=[0, max(1.0, max(values.values()) * 1.15)])
    return fig


def rung_chart(counts: list[tuple[int, int]], total: int):
    go = _go()
    fig = go.Figure(go.Bar(x=[str(level) for level, _ in counts], y=[n for _, n in counts],
                           text=[f"{n} of {total}" for _, n in counts], textposition="auto",
                           marker_color="#2ca02c"))
    fig.update_layout(**{**_LAYOUT, "height": 380}, title="trials that reached each rung",
                      xaxis_title="rung (training iteration)", yaxis_title="trials",
                      xaxis_type="category")
    return fig


def lineage_chart(rows: list[dict], trials: list[str], max_iteration: Optional[int]):
    """One lane per trial; each exploit an arrow from the donor's checkpoint to the
    receiver at the iteration it exploited."""
    go = _go()
    lanes = {t: i for i, t in enumerate(trials)}
    for r in rows:
        for t in (r["donor"], r["receiver"]):
            lanes.setdefault(t, len(lanes))
    end = max([max_iteration or 0, *(r["iteration"] for r in rows)])
    fig = go.Figure()
    for trial, y in lanes.items():
        fig.add_trace(go.Scatter(x=[0, end], y=[y, y], mode="lines", showlegend=False,
                                 line=dict(color="#cccccc", width=6), hoverinfo="skip"))
    # Exploits at one iteration side by side, each in its own colour, so that every
    # arrow can be followed from its donor to its receiver.
    shift, seen = {}, {}
    for j, r in enumerate(rows):
        seen.setdefault(r["iteration"], []).append(j)
    for group in seen.values():
        for k, j in enumerate(group):
            shift[j] = (k - (len(group) - 1) / 2) * max(end, 1) * 0.012
    for j, r in enumerate(rows):
        colour = PALETTE[j % len(PALETTE)]
        x0, x1 = r["checkpoint_iteration"] + shift[j], r["iteration"] + shift[j]
        y0, y1 = lanes[r["donor"]], lanes[r["receiver"]]
        fig.add_trace(go.Scatter(
            x=[x0, x1], y=[y0, y1], mode="markers", showlegend=False,
            marker=dict(size=[8, 11], color=colour, symbol=["circle", "diamond"]),
            hovertemplate=_change_text(r) + "<extra></extra>"))
        fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x",
                           ayref="y", showarrow=True, arrowhead=2, arrowsize=1.2,
                           arrowwidth=2, arrowcolor=colour, standoff=5)
    fig.update_layout(**{**_LAYOUT, "height": 140 + 55 * len(lanes),
                         "margin": dict(l=150, r=30, t=50, b=60)},
                      title="PBT lineage: each arrow runs from the donor's checkpoint to "
                            "the trial that took it",
                      xaxis=dict(title="training iteration", dtick=max(1, math.ceil(end / 12))),
                      yaxis=dict(tickvals=list(lanes.values()), ticktext=list(lanes),
                                 range=[-0.6, len(lanes) - 0.4], autorange="reversed"))
    return fig


def _change_text(row: dict) -> str:
    changes = ", ".join(f"{k}: {_short(row['before'].get(k))} → {_short(row['after'].get(k))}"
                        for k in row["changed"]) or "no change"
    return (f"{row['receiver']} took {row['donor']}'s checkpoint of iteration "
            f"{row['checkpoint_iteration']} at iteration {row['iteration']}<br>{changes}")


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def clean_vs_robust(points: list[dict]):
    """Each adversarially trained trial as a point: clean against robust validation
    accuracy (``val_accuracy``, ``val_robust_accuracy``) of its best epoch; the best trial
    red. Points on the diagonal lose nothing to the attack.

    Args:
        points: ``{"trial", "clean", "robust", "attack", "best"}`` per trial.
    """
    go = _go()
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", showlegend=False,
                               line=dict(color="#cccccc", dash="dash"), hoverinfo="skip"))
    for best in (False, True):
        group = [p for p in points if p["best"] == best]
        if not group:
            continue
        fig.add_trace(go.Scatter(
            x=[p["clean"] for p in group], y=[p["robust"] for p in group],
            mode="markers", name="best trial" if best else "other trials",
            marker=dict(size=13 if best else 9, color=BEST if best else PALETTE[0]),
            customdata=[[p["trial"], p["attack"]] for p in group],
            hovertemplate="%{customdata[0]} (%{customdata[1]})<br>clean %{x:.4f}<br>"
                          "robust %{y:.4f}<extra></extra>"))
    low = min([p["robust"] for p in points] + [p["clean"] for p in points] + [1.0])
    span = [max(0.0, low - 0.05), 1.0]
    fig.update_layout(**_LAYOUT, title="clean against robust validation accuracy, each trial",
                      xaxis_title="val_accuracy (clean inputs)",
                      yaxis_title="val_robust_accuracy (attacked inputs)",
                      xaxis_range=span, yaxis_range=span)
    return fig
