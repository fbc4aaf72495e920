"""Ray Tune's result.json and progress.csv loggers, without losing rows.

When a trial starts again in the same search (a PBT or HyperBand pause, a retry),
Ray's loggers copy the trial's file from storage over the driver's local copy before
appending. Storage receives the local copy only at the next experiment sync, so it is
often older: the copy throws away the rows reported since (seen here: a PBT trial of 16
epochs with 4 rows in result.json), and warns "Remote file not found" when storage has
none yet. Here the storage copy is used only when the driver has none (after a
resume, which starts a fresh local folder): the local file is never older.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from raytune_suite.engine import storage


class _KeepLocalRows:
    def _restore_from_remote(self, file_name: str, trial) -> None:
        if Path(trial.local_path, file_name).exists():
            return
        remote = Path(trial.storage.trial_fs_path, file_name).as_posix()
        if storage.exists(trial.storage.storage_filesystem, remote):
            super()._restore_from_remote(file_name, trial)


class ResultJsonLogger(_KeepLocalRows, JsonLoggerCallback):
    """``result.json``: one JSON line per reported result."""


class ProgressCsvLogger(_KeepLocalRows, CSVLoggerCallback):
    """``progress.csv``: one row per reported result."""
