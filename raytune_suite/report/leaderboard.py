"""The leaderboard: the top trials as a plain-text table (the CLI, the report, MLflow)."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def leaderboard(rows: list, metric: str, top: int = 5) -> str:
    """A plain-text table of the ``top`` trials."""
    header = ["rank", "trial", metric, "epochs", "config"]
    body = [[str(i + 1), t.trial_id, _fmt(t.best) if t.best is not None else "-",
             str(t.epochs), _config(t)] for i, t in enumerate(rows[:top])]
    return _table(header, body)


def pareto_table(front: list, objectives: list[tuple[str, str]]) -> str:
    """A plain-text table of the trials on a Pareto front, each with its objectives'
    last reported values (``engine.results.pareto_front``)."""
    header = ["trial", *(f"{m} ({mode})" for m, mode in objectives), "epochs", "config"]
    body = [[t.trial_id, *(_fmt(t.values[m]) for m, _ in objectives), str(t.epochs),
             _config(t)] for t in front]
    return _table(header, body)


def _config(t) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in t.config.items())


def _table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header) - 1)]
    lines = []
    for r in [header, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return "\n".join(lines)
