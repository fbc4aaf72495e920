"""Ray Tune's result.json, progress.csv and params.json loggers, losing no rows.

Ray's loggers write into a driver "staging" folder that Ray copies to storage every few
seconds, and whenever a trial starts again (each PBT exploit or pause, each retry) they
first copy the trial's file back from storage over the staging copy. Storage is often
older, so that throws away the rows reported since (seen here: a PBT trial of 16 epochs
left with 4 rows in result.json), and a driver killed between two copies loses the
rows since the last one (a resume then warns "Could not fetch metrics ... result.json
and progress.csv were not found").

Where storage is a local folder (or an NFS mount) the suite's loggers write straight
into the trial's folder there: every reported row is on storage when the next result
comes. Elsewhere (s3://) they keep Ray's staging folder but copy from storage only when
the driver has no copy of its own (after a resume, which starts a fresh staging folder).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ray.cloudpickle as cloudpickle
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.result import EXPR_PARAM_FILE, EXPR_PARAM_PICKLE_FILE, EXPR_PROGRESS_FILE, \
    EXPR_RESULT_FILE
from ray.tune.utils.util import SafeFallbackEncoder

from raytune_suite.engine import storage


def _folder(trial) -> Path:
    """Where this trial's result files go: its storage folder when that is local."""
    if storage.is_local(trial.storage.storage_filesystem):
        folder = Path(trial.storage.trial_fs_path)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    trial.init_local_path()
    return Path(trial.local_path)


class _KeepRows:
    def _restore_from_remote(self, file_name: str, trial) -> None:
        if storage.is_local(trial.storage.storage_filesystem):
            return  # written on storage already
        if Path(trial.local_path, file_name).exists():
            return  # the driver's copy is never older than storage's
        remote = Path(trial.storage.trial_fs_path, file_name).as_posix()
        if storage.exists(trial.storage.storage_filesystem, remote):
            super()._restore_from_remote(file_name, trial)


class ResultJsonLogger(_KeepRows, JsonLoggerCallback):
    """``result.json`` (one JSON line per reported result) and ``params.json``, written
    with a trial's first result after it starts: a trial that a crash catches before it
    reports (and that Ray's saved state may never know) leaves no files behind."""

    def log_trial_start(self, trial):
        if trial in self._trial_files:
            self._trial_files.pop(trial).close()

    def log_trial_result(self, iteration: int, trial, result: dict):
        if trial not in self._trial_files:
            self.update_config(trial, trial.config)
            self._restore_from_remote(EXPR_RESULT_FILE, trial)
            self._trial_files[trial] = (_folder(trial) / EXPR_RESULT_FILE).open("at")
        super().log_trial_result(iteration, trial, result)

    def update_config(self, trial, config: dict):
        self._trial_configs[trial] = config
        folder = _folder(trial)
        with (folder / EXPR_PARAM_FILE).open("w") as f:
            json.dump(config, f, indent=2, sort_keys=True, cls=SafeFallbackEncoder)
        with (folder / EXPR_PARAM_PICKLE_FILE).open("wb") as f:
            cloudpickle.dump(config, f)


class ProgressCsvLogger(_KeepRows, CSVLoggerCallback):
    """``progress.csv``: one row per reported result."""

    def _setup_trial(self, trial):
        if trial in self._trial_files:
            self._trial_files[trial].close()
        self._restore_from_remote(EXPR_PROGRESS_FILE, trial)
        path = _folder(trial) / EXPR_PROGRESS_FILE
        self._trial_continue[trial] = path.exists() and path.stat().st_size > 0
        self._trial_files[trial] = path.open("at")
        self._trial_csv[trial] = None


class _NotReportedYet(logging.Filter):
    """Drops Ray's "Failed to fetch metrics" warning when every trial it names simply has
    no result file: with the loggers above, that means the trial had not reported yet
    (pending when the driver stopped, or when the time budget ran out)."""

    def filter(self, record: logging.LogRecord) -> bool:
        lines = record.getMessage().splitlines()
        return not (lines and lines[0].startswith("Failed to fetch metrics") and
                    all("were not found" in line for line in lines[1:]))


def quiet_unreported_trials() -> None:
    analysis = logging.getLogger("ray.tune.analysis.experiment_analysis")
    if not any(isinstance(f, _NotReportedYet) for f in analysis.filters):
        analysis.addFilter(_NotReportedYet())


class _TrialTracebacks(logging.Filter):
    """Drops Ray's "Trial task failed for trial ..." record and its traceback: the
    console display names the trial and its error.txt (which holds the traceback) in
    one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Trial task failed for trial")


class _UnfinishedTrials(logging.Filter):
    """Drops Ray's "Trials did not complete: [...]" at the end of a search: the console
    has named each errored trial, and the summary counts them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Trials did not complete")


_TRACEBACKS = _TrialTracebacks()
_UNFINISHED = _UnfinishedTrials()


def quiet_trial_tracebacks(quiet: bool = True) -> None:
    """Hide (or show again) Ray's traceback of every failed trial attempt."""
    controller = logging.getLogger("ray.tune.execution.tune_controller")
    tune = logging.getLogger("ray.tune.tune")
    if quiet:
        controller.addFilter(_TRACEBACKS)
        tune.addFilter(_UNFINISHED)
    else:
        controller.removeFilter(_TRACEBACKS)
        tune.removeFilter(_UNFINISHED)
