"""What `run` and `resume` print while a search runs.

On a terminal: one live display (rich), redrawn at most once a second: trials done out
of ``num_samples``, running, pending, stopped early, errored, diverged, the best value
of the metric so far and its trial, elapsed time and an estimate of the time left.
Elsewhere (CI logs, ``ray job logs``): a status line at most every 10 s. Both print one
line per finished trial (id, outcome, best value, epochs); an errored trial's line
ends with its error and the path of its error.txt.

:class:`ConsoleProgress` is a Ray Tune callback; it only reads the trials Ray hands
it, so tests drive it with stand-ins and an injected clock.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, TextIO

from ray.tune import Callback

STATUS_EVERY_S = 10.0  # status lines, when the output is not a terminal
REDRAW_EVERY_S = 1.0  # the live display, on a terminal
ERROR_FILE = "error.txt"


def console_callbacks(spec) -> list:
    """The Tune callbacks that show a search of ``spec`` on this process's stdout."""
    return [ConsoleProgress(spec.name, spec.metric, spec.mode, spec.search.num_samples,
                            max_t=spec.max_t, time_attr=spec.time_attr,
                            time_budget_s=spec.stop.time_budget_s)]


class ConsoleProgress(Callback):
    """Progress of a search on the console (see the module docstring).

    Args:
        name: the experiment's name, shown on the live display.
        metric, mode: the experiment's metric and ``max`` or ``min``.
        num_samples: trials the search runs in all.
        max_t: epochs a trial runs at most (for the time estimate), if known.
        time_attr: the result key that counts a trial's epochs.
        time_budget_s: the search's time budget, if any (caps the estimate).
        stream: where to print (default: stdout).
        live: a live display (default: when ``stream`` is a terminal).
        clock: seconds, monotonic (tests inject their own).
        status_every_s: seconds between status lines when not live.
    """

    def __init__(self, name: str, metric: str, mode: str, num_samples: int,
                 max_t: Optional[int] = None, time_attr: str = "training_iteration",
                 time_budget_s: Optional[float] = None, stream: Optional[TextIO] = None,
                 live: Optional[bool] = None, clock: Callable[[], float] = time.monotonic,
                 status_every_s: float = STATUS_EVERY_S):
        self.name, self.metric, self.mode = name, metric, mode
        self.total = num_samples
        self.max_t, self.time_attr, self.time_budget_s = max_t, time_attr, time_budget_s
        self.stream = stream or sys.stdout
        self.live = _is_terminal(self.stream) if live is None else live
        self.clock = clock
        self.status_every_s = status_every_s
        self._start: Optional[float] = None
        self._last_status = -math.inf
        self._last_redraw = -math.inf
        self._status: dict[str, str] = {}  # trial id -> Ray status
        self._outcome: dict[str, str] = {}  # trial id -> outcome, once finished
        self._best: dict[str, float] = {}  # trial id -> best finite value of the metric
        self._epochs: dict[str, int] = {}  # trial id -> epochs reported
        self._epochs_now = 0  # epochs reported in this session (the pace)
        self._printed: set[str] = set()  # finished trials with their line printed
        self._display = None  # rich.live.Live, on a terminal

    # ------------------------------------------------------------ Ray's hooks

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        if isinstance(total_num_samples, int) and 0 < total_num_samples < sys.maxsize:
            self.total = total_num_samples
        self._begin()

    def on_step_begin(self, iteration: int, trials: list, **info):
        first = self._start is None or not self._status
        self._begin()
        self._see(trials, restored=first)

    def on_step_end(self, iteration: int, trials: list, **info):
        self._see(trials)
        self.tick()

    def on_trial_start(self, iteration: int, trials: list, trial, **info):
        self._status[trial.trial_id] = "RUNNING"

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info):
        tid = trial.trial_id
        epochs = _int(result.get(self.time_attr, result.get("training_iteration")))
        if epochs is not None:
            self._epochs_now += max(1, epochs - self._epochs.get(tid, 0))
            self._epochs[tid] = epochs
        value = result.get(self.metric)
        if not result.get("diverged") and _finite(value):
            self._improve(tid, float(value))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info):
        self._finish(trial, _outcome_of(_last_result(trial)))

    def on_trial_error(self, iteration: int, trials: list, trial, **info):
        self._finish(trial, "errored")

    def on_trial_recover(self, iteration: int, trials: list, trial, **info):
        self._print(f"trial {trial.trial_id}  failed, retrying: {_error_line(trial)}")

    def on_experiment_end(self, trials: list, **info):
        self._see(trials)
        self.close()

    # ------------------------------------------------------------ state

    def _begin(self) -> None:
        if self._start is None:
            self._start = self.clock()
            if self.live:
                self._open_display()

    def _see(self, trials: list, restored: bool = False) -> None:
        """Take the statuses from Ray's trial list. ``restored``: the first look at a
        resumed search, whose finished trials count as done (with the outcome and best
        value they had) but get no line; a trial found finished later without a hook
        (stopped by the time budget) gets its line."""
        # Ray hands over every trial at every step; only the finished, those still
        # without a value, and (on the first look at a resumed search) all of them have
        # anything to tell. A trial waiting for its first start has none: skipping it
        # keeps a step's cost to the running trials, not the whole search (with 256
        # pending trials, reading each one's results every step cost the driver 20 ms
        # per trial).
        for trial in trials:
            tid = trial.trial_id
            if tid in self._outcome:
                continue
            status = self._status[tid] = trial.status
            if (status == "PENDING" and not restored) or (
                    tid in self._best and status not in ("TERMINATED", "ERROR")):
                continue
            last = _last_result(trial)
            seen = _metric_analysis(trial, self.metric, self.mode)
            if seen is not None and not last.get("diverged") and tid not in self._best:
                self._improve(tid, seen)
            epochs = _int(last.get(self.time_attr, last.get("training_iteration")))
            if epochs is not None:
                self._epochs.setdefault(tid, epochs)
            if trial.status in ("TERMINATED", "ERROR"):
                if restored:
                    self._printed.add(tid)  # finished before this session: no line
                budget = "stopped_by_budget" if self.time_budget_s else "completed"
                self._finish(trial, "errored" if trial.status == "ERROR" else
                             _outcome_of(last, budget))

    def _improve(self, tid: str, value: float) -> None:
        old = self._best.get(tid)
        if old is None or (value > old if self.mode == "max" else value < old):
            self._best[tid] = value

    def _finish(self, trial, outcome: str) -> None:
        tid = trial.trial_id
        self._status[tid] = "ERROR" if outcome == "errored" else "TERMINATED"
        self._outcome[tid] = outcome
        if outcome == "diverged":
            self._best.pop(tid, None)  # a diverged trial's earlier epochs never win
        if tid in self._printed:
            return
        self._printed.add(tid)
        epochs = self._epochs.get(tid, 0)
        line = f"trial {tid}  {outcome.replace('_', ' '):<17} {self._value(tid)}  " \
               f"{epochs:>3} epoch{'' if epochs == 1 else 's'}"
        if outcome == "errored":
            line += f"  {_error_line(trial)}"
        self._print(line)

    # ------------------------------------------------------------ what is shown

    def counts(self) -> dict[str, int]:
        """Trials by state: done (of which stopped_early, errored, diverged), running,
        paused, pending (not started yet, created or not)."""
        done = len(self._outcome)
        running = sum(1 for tid, s in self._status.items()
                      if s == "RUNNING" and tid not in self._outcome)
        paused = sum(1 for tid, s in self._status.items()
                     if s == "PAUSED" and tid not in self._outcome)
        outcomes = list(self._outcome.values())
        return {"done": done, "running": running, "paused": paused,
                "pending": max(0, max(self.total, len(self._status)) - done - running - paused),
                "stopped_early": outcomes.count("stopped_early"),
                "errored": outcomes.count("errored"), "diverged": outcomes.count("diverged")}

    def best(self) -> Optional[tuple[str, float]]:
        """(trial id, value) of the best value of the metric so far."""
        if not self._best:
            return None
        pick = max if self.mode == "max" else min
        return pick(self._best.items(), key=lambda item: item[1])

    def elapsed(self) -> float:
        return 0.0 if self._start is None else self.clock() - self._start

    def eta(self) -> Optional[float]:
        """Seconds left, from this session's pace in epochs and the epochs a finished
        trial ran on average (``max_t`` until one has finished); None while unknown."""
        c = self.counts()
        total = max(self.total, len(self._status))
        if c["done"] >= total:
            return 0.0
        elapsed = self.elapsed()
        if not self._epochs_now or elapsed <= 0:
            return None
        finished = [self._epochs.get(tid, 0) for tid in self._outcome]
        per_trial = sum(finished) / len(finished) if finished else self.max_t
        if not per_trial:
            return None
        started = sum(self._epochs.get(tid, 0) for tid, s in self._status.items()
                      if tid not in self._outcome)
        left = max(0.0, (total - c["done"]) * per_trial - started)
        eta = left / (self._epochs_now / elapsed)
        if self.time_budget_s:
            eta = min(eta, max(0.0, self.time_budget_s - elapsed))
        return eta

    def status_line(self) -> str:
        c = self.counts()
        total = max(self.total, len(self._status))
        parts = [f"{c['running']} running"]
        if c["paused"]:
            parts.append(f"{c['paused']} paused")
        parts += [f"{c['pending']} pending", f"{c['stopped_early']} stopped early",
                  f"{c['errored']} errored", f"{c['diverged']} diverged"]
        eta = self.eta()
        return (f"[{_clock(self.elapsed())}] {c['done']}/{total} trials done "
                f"({', '.join(parts)}); best {self._best_text()}; "
                f"ETA {_clock(eta) if eta is not None else '?'}")

    def tick(self) -> None:
        """Redraw the live display (at most once a second), or print a status line (at
        most every ``status_every_s``)."""
        now = self.clock()
        if self._display is not None:
            if now - self._last_redraw >= REDRAW_EVERY_S:
                self._last_redraw = now
                self._display.update(self._renderable(), refresh=True)
        elif not self.live and now - self._last_status >= self.status_every_s:
            self._last_status = now
            self._print(self.status_line())

    def close(self) -> None:
        """The last word: the final display, or the final status line."""
        if self._display is not None:
            self._display.update(self._renderable(), refresh=True)
            self._display.stop()
            self._display = None
        elif not self.live and self._start is not None:
            self._print(self.status_line())

    def _value(self, tid: str) -> str:
        value = self._best.get(tid)
        return f"{self.metric} {_num(value) if value is not None else '-':<8}"

    def _best_text(self) -> str:
        best = self.best()
        if best is None:
            return f"{self.metric} -"
        return f"{self.metric} {_num(best[1])} ({best[0]})"

    def _print(self, line: str) -> None:
        if self._display is not None:
            self._display.console.print(line, markup=False, highlight=False,
                                        soft_wrap=True)
        else:
            print(line, file=self.stream, flush=True)

    def _open_display(self) -> None:
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.stream)
        self._display = Live(self._renderable(), console=console, auto_refresh=False,
                             transient=False, redirect_stdout=False, redirect_stderr=False)
        self._display.start(refresh=True)
        self._last_redraw = self.clock()

    def _renderable(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        c = self.counts()
        total = max(self.total, len(self._status))
        eta = self.eta()
        top = Table.grid(padding=(0, 1))
        top.add_row(Text(self.name, style="bold"),
                    ProgressBar(total=total or 1, completed=c["done"], width=30),
                    Text(f"{c['done']}/{total} trials"),
                    Text(f"{_clock(self.elapsed())} elapsed, ETA "
                         f"{_clock(eta) if eta is not None else '?'}", style="dim"))
        paused = f" · {c['paused']} paused" if c["paused"] else ""
        states = Text(f"{c['running']} running{paused} · {c['pending']} pending · "
                      f"{c['stopped_early']} stopped early · {c['errored']} errored · "
                      f"{c['diverged']} diverged")
        return Group(top, states, Text(f"best {self._best_text()}"))


# ------------------------------------------------------------------ helpers


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _last_result(trial) -> dict:
    """The trial's last reported result, as Ray's run metadata holds it. Ray's own
    ``Trial.last_result`` asks a trial that has not reported yet for its default
    metrics: a call to its actor, waited on, at every step that looks (1 to 2 ms each)."""
    result = getattr(getattr(trial, "run_metadata", None), "last_result", None)
    if result is None:  # not a Ray trial (a stand-in)
        result = getattr(trial, "last_result", None)
    return result or {}


def _outcome_of(last: dict, default: str = "completed") -> str:
    """The outcome OutcomeCallback wrote into a finished trial's last result."""
    return last.get("outcome") or ("diverged" if last.get("diverged") else default)


def _metric_analysis(trial, metric: str, mode: str) -> Optional[float]:
    """The best value Ray recorded for a trial (restored with a resumed search)."""
    metadata = getattr(trial, "run_metadata", None)
    value = (getattr(metadata, "metric_analysis", None) or {}).get(metric, {}).get(mode)
    return float(value) if _finite(value) else None


def _finite(value: Any) -> bool:
    try:
        return not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _int(value: Any) -> Optional[int]:
    return int(value) if _finite(value) else None


def _num(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def error_summary(text: str) -> str:
    """The one line of a trial's error.txt that says what went wrong: the last line of
    its last failure (the exception, after Ray's and Python's traceback)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Failure #")]
    return lines[-1][:200] if lines else ""


def _error_line(trial) -> str:
    """The error in one line, and where its error.txt is (on storage)."""
    path = None
    trial_storage = getattr(trial, "storage", None)
    try:
        path = Path(trial_storage.trial_fs_path, ERROR_FILE).as_posix()
    except Exception:  # noqa: BLE001 - a stand-in without storage
        pass
    text = ""
    for candidate in (getattr(trial, "error_file", None), path):
        try:
            if candidate:
                text = Path(candidate).read_text()
                break
        except OSError:
            continue
    summary = error_summary(text) or "failed"
    return f"{summary} (see {path})" if path else summary


__all__ = ["ConsoleProgress", "console_callbacks", "error_summary"]
