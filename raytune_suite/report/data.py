"""What the HTML report shows, read from an experiment folder as plain records.

:func:`load_report_data` reads the folder once (Ray's ``ResultGrid``, the suite's
outcomes, PBT's ``pbt_exploits.jsonl``); everything else here is a pure function of
those records (rungs, lineage, best so far, parameter scales), tested without Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from raytune_suite.experiment.space import LOG_KINDS, Domain

_ROW_KEYS = ("training_iteration", "timestamp", "time_this_iter_s", "time_total_s")


@dataclass
class ReportData:
    """One experiment as the report sees it."""

    path: Path
    spec: Any  # ExperimentSpec
    spec_text: str  # the experiment file as run
    trials: list  # TrialSummary, best first (engine.results.summarize)
    histories: dict[str, list[dict]]  # trial id -> its result rows, in the order reported
    params: list[tuple[str, Domain]]  # searched hyperparameters (dotted path, domain)
    exploits: list[dict] = field(default_factory=list)  # pbt_exploits.jsonl records
    errors: int = 0
    ensembles: list[dict] = field(default_factory=list)  # ensembles.jsonl (best --ensemble)


def load_report_data(experiment: str | Path) -> ReportData:
    """Read an experiment folder (or a name under ./ray_results); no Ray runtime needed.

    Raises:
        SpecError: not an experiment folder, or one without results yet.
    """
    from raytune_suite.engine.results import summarize
    from raytune_suite.engine.runner import load_results
    from raytune_suite.engine.state import SPEC_FILE, read_outcomes
    from raytune_suite.training.ensemble import read_ensembles

    path, spec, _state, results = load_results(str(experiment))
    params = list(spec.search_space.leaves())
    trials = summarize(results, spec, [p for p, _ in params], read_outcomes(path))
    histories = {}
    for r in results:
        trial_id = str((r.metrics or {}).get("trial_id", r.path.rsplit("/", 1)[-1]))
        histories[trial_id] = history_rows(r.metrics_dataframe, spec.metric)
    return ReportData(path=Path(path), spec=spec, spec_text=(path / SPEC_FILE).read_text(),
                      trials=trials, histories=histories, params=params,
                      exploits=read_exploit_records(path), errors=len(results.errors),
                      ensembles=read_ensembles(path))


def history_rows(frame, metric: str) -> list[dict]:
    """A trial's result rows (a ``metrics_dataframe``) as dicts of the columns used here."""
    if frame is None or len(frame) == 0:
        return []
    keys = [k for k in (*_ROW_KEYS, metric) if k in frame.columns]
    return [{k: _number(row[k]) for k in keys} for row in frame[keys].to_dict("records")]


def read_exploit_records(path: str | Path) -> list[dict]:
    """The records of a PBT search's ``pbt_exploits.jsonl`` ([] for other searches)."""
    from raytune_suite.engine.pbt import read_exploits

    return read_exploits(None, str(path))


def _number(value: Any) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------ ensembles


def ensemble_is_current(record: dict, trials: list) -> bool:
    """Whether an ``ensembles.jsonl`` record's members are still the leaderboard's top K
    (trials with a finite metric and a checkpoint); a resumed or extended search may have
    found better ones since."""
    usable = [(t.trial_id, str(t.checkpoint)) for t in trials
              if t.best is not None and t.checkpoint]
    members = [(m["trial_id"], m["checkpoint"]) for m in record.get("members", [])]
    return usable[:len(members)] == members


# ------------------------------------------------------------------ scales


def param_scale(domain: Domain) -> str:
    """How a searched hyperparameter is drawn: ``log``, ``linear`` or ``categorical``."""
    if domain.kind in ("choice", "grid"):
        return "categorical"
    return "log" if domain.kind in LOG_KINDS else "linear"


def param_value(value: Any) -> Any:
    """A searched value as plotted: numbers stay numbers; an option of a conditional
    choice (a mapping) is named by its ``name`` key, or its first value."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, dict):
        if "name" in value:
            return str(value["name"])
        return ", ".join(f"{k}={v}" for k, v in value.items() if not isinstance(v, dict))
    return str(value)


# ------------------------------------------------------------------ ASHA / HyperBand


def rung_levels(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The iterations at which ASHA (and HyperBand's most aggressive bracket) compares
    trials: ``grace_period * reduction_factor**k`` up to ``max_t``, then ``max_t``."""
    if grace_period < 1 or reduction_factor <= 1 or max_t < 1:
        raise ValueError(f"`grace_period >= 1`, `reduction_factor > 1` and `max_t >= 1` "
                         f"must hold, but got ({grace_period=}, {reduction_factor=}, "
                         f"{max_t=}).")
    levels, k = [], 0
    while True:
        level = int(round(grace_period * reduction_factor ** k))
        if level >= max_t:
            break
        if not levels or level > levels[-1]:
            levels.append(level)
        k += 1
    return [*levels, max_t]


def rung_counts(epochs: list[int], levels: list[int]) -> list[tuple[int, int]]:
    """(rung, number of trials whose training reached it) for each rung."""
    return [(level, sum(e >= level for e in epochs)) for level in levels]


def scheduler_rungs(spec) -> Optional[list[int]]:
    """The rungs of an ASHA or HyperBand search, None for other schedulers."""
    s = spec.scheduler
    if s.type == "asha":
        return rung_levels(s.grace_period, s.reduction_factor, s.max_t)
    if s.type == "hyperband":
        return rung_levels(1, s.reduction_factor, s.max_t)
    return None


# ------------------------------------------------------------------ PBT


def lineage_rows(records: list[dict]) -> list[dict]:
    """Every PBT exploit, in the order they happened: receiver, donor, the iteration the
    receiver had reached, the donor checkpoint's iteration, and the hyperparameters
    before and after (only those that changed in ``changed``). Skips are left out."""
    rows = []
    for r in records:
        if r.get("event") != "exploit":
            continue
        before, after = dict(r.get("before") or {}), dict(r.get("after") or {})
        rows.append({
            "time": r.get("time"), "receiver": str(r["receiver"]), "donor": str(r["donor"]),
            "iteration": int(r["iteration"]),
            "checkpoint_iteration": int(r.get("checkpoint_iteration", r["iteration"])),
            "before": _flat(before), "after": _flat(after),
            "changed": sorted(k for k in set(_flat(before)) | set(_flat(after))
                              if _flat(before).get(k) != _flat(after).get(k)),
        })
    rows.sort(key=lambda row: (row["time"] is None, row["time"] or 0, row["iteration"]))
    return rows


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ------------------------------------------------------------------ curves and time


def curve_points(rows: list[dict], metric: str) -> tuple[list, list]:
    """(iterations, values) of one trial's learning curve, with a gap (None) wherever
    the iteration does not advance by one: a PBT exploit restarting the trial from a
    donor's checkpoint, older or newer."""
    xs: list = []
    ys: list = []
    last = None
    for row in rows:
        x, y = row.get("training_iteration"), row.get(metric)
        if x is None or y is None:
            continue
        if last is not None and x != last + 1:
            xs.append(None)
            ys.append(None)
        xs.append(x)
        ys.append(y)
        last = x
    return xs, ys


def result_times(rows: list[dict]) -> list[Optional[float]]:
    """When each result of a trial was reported (epoch seconds, None if unknown).

    Ray's ``timestamp`` has whole seconds only; within a run of the trial (a stretch of
    advancing iterations) ``time_total_s`` is exact, so each result's time is the run's
    start, as well as the timestamps bound it, plus its ``time_total_s``. A PBT exploit
    restores the donor's clock, so each run is anchored on its own."""
    times: list[Optional[float]] = [None] * len(rows)
    runs: list[list[int]] = []
    last = None
    for i, row in enumerate(rows):
        it = row.get("training_iteration")
        if not runs or (it is not None and last is not None and it <= last):
            runs.append([])
        runs[-1].append(i)
        last = it if it is not None else last
    for run in runs:
        offsets = [rows[i]["timestamp"] - rows[i]["time_total_s"] for i in run
                   if rows[i].get("timestamp") is not None
                   and rows[i].get("time_total_s") is not None]
        anchor = max(offsets) if offsets else None
        for i in run:
            row = rows[i]
            if anchor is not None and row.get("time_total_s") is not None:
                times[i] = anchor + row["time_total_s"]
            else:
                times[i] = row.get("timestamp")
    return times


def search_start(histories: dict[str, list[dict]]) -> Optional[float]:
    """When the first trial started (its first result's time, less that iteration's)."""
    starts = []
    for rows in histories.values():
        times = result_times(rows)
        if rows and times[0] is not None:
            starts.append(times[0] - (rows[0].get("time_this_iter_s") or 0.0))
    return min(starts) if starts else None


def wall_time(histories: dict[str, list[dict]]) -> Optional[float]:
    """Seconds from the first trial's start to the last result (pauses of a resumed
    search included)."""
    start = search_start(histories)
    ends = [t for rows in histories.values() for t in result_times(rows) if t is not None]
    return max(ends) - start if start is not None and ends else None


def best_so_far(histories: dict[str, list[dict]], metric: str, mode: str
                ) -> list[tuple[float, float, str]]:
    """(seconds since the search started, best value so far, its trial) at every result
    that improved on the best."""
    start = search_start(histories) or 0.0
    points = sorted((t - start, r[metric], trial)
                    for trial, rows in histories.items()
                    for r, t in zip(rows, result_times(rows))
                    if t is not None and r.get(metric) is not None)
    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    out: list[tuple[float, float, str]] = []
    for t, value, trial in points:
        if not out or better(value, out[-1][1]):
            out.append((t, value, trial))
    return out


def epochs_trained(histories: dict[str, list[dict]]) -> int:
    """Training iterations run, over all trials (PBT's retrained ones included)."""
    return sum(len(rows) for rows in histories.values())


def planned_trials(spec) -> int:
    """The trials the search sets out to run: ``num_samples`` times every grid point
    (Ray repeats each ``grid`` combination ``num_samples`` times; the grid searcher
    enumerates every ``choice`` as a grid too)."""
    points = 1
    for _, domain in spec.search_space.leaves():
        if domain.kind == "grid" or (spec.search.algorithm == "grid"
                                     and domain.kind == "choice"):
            points *= max(1, len(domain.args))
    return spec.search.num_samples * points
