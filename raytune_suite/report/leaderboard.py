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
             str(t.epochs), ", ".join(f"{k}={_fmt(v)}" for k, v in t.config.items())]
            for i, t in enumerate(rows[:top])]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header) - 1)]
    lines = []
    for r in [header, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return "\n".join(lines)
