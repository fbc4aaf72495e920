"""``checkpoint.keep`` without Ray's forced experiment snapshots.

Ray deletes a trial's older checkpoints as soon as it registers a new one when
``CheckpointConfig(num_to_keep)`` is set. Its experiment state (the snapshot
``Tuner.restore`` starts from) is saved only every ~10 s, so after ``num_to_keep``
new checkpoints every checkpoint the saved snapshot names could be gone; Ray therefore
forces a synchronous snapshot whenever a trial has checkpointed ``num_to_keep`` times
since the last one (``ray/tune/execution/experiment_state.py``, ``on_trial_checkpoint``
and ``sync_up_experiment_state``; ray-project/ray #30187, #31613). With a checkpoint per
epoch of a fast trial that is several snapshots a second, and the warning "Experiment
state snapshotting has been triggered multiple times in the last 5.0 seconds".

Here Ray keeps every checkpoint (no ``num_to_keep``: no forced snapshots) and
:class:`CheckpointRotation` does the rotation in two steps:

1. When a trial saves a checkpoint, its older checkpoints beyond ``keep`` leave the
   trial's checkpoint list at once (Ray then marks the trial, so every snapshot taken
   from then on no longer names them) and wait, on storage, to be deleted.
2. A waiting checkpoint is deleted only once the experiment state on storage (the file
   ``Tuner.restore`` would read: the newest ``experiment_state-*.json``) was taken at a
   later controller iteration than the one that dropped it, and none of the trials'
   checkpoint lists saved in it names it. Ray
   uploads snapshots in order, so storage never goes back to an older one: a crash at
   any moment restores from a snapshot whose checkpoints all exist.

Without forced snapshots Ray would save its state only every 10 s or more ("auto":
``max(10, 19 x the time a snapshot takes)``), and a crash would lose that much of every
trial's training; :func:`frequent_snapshots` keeps Ray's adaptive rule (at most 5% of the
driver's time goes to snapshots) with a floor of a quarter second instead of 10 s. The
snapshots are taken in the background (neither forced nor waited for; only the trials
that changed are serialized again), so a large search slows them down by itself.

At the end of the search (after Ray's last, waited-for snapshot) the waiting ones are
deleted, and so are checkpoint folders a killed run left behind that no trial and no
snapshot names: each trial ends with its ``keep`` newest checkpoints, as with Ray's
own ``num_to_keep``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback

from raytune_suite.engine import storage

logger = logging.getLogger(__name__)

_CHECKPOINT_DIR = re.compile(r"checkpoint_\d+")
SNAPSHOT_FLOOR_S = 0.25  # shortest period between Ray's background state snapshots


@contextlib.contextmanager
def frequent_snapshots():
    """Run ``Tuner.fit`` with Ray's adaptive snapshot period floored at
    ``SNAPSHOT_FLOOR_S`` instead of 10 s. A period set by the user
    (``TUNE_GLOBAL_CHECKPOINT_S``, which turns Ray's adaptive rule off) stays in charge."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as Manager

    original = Manager._update_auto_checkpoint_time

    def adaptive(self, time_taken: float) -> None:
        if self._auto_checkpoint_enabled:  # 19 x: at most 5% of the time, as Ray's rule
            self._checkpoint_period = max(SNAPSHOT_FLOOR_S, time_taken * 19)

    Manager._update_auto_checkpoint_time = adaptive
    try:
        yield
    finally:
        Manager._update_auto_checkpoint_time = original


class CheckpointRotation(Callback):
    """Keep each trial's ``keep`` newest checkpoints; delete older ones only once the
    saved experiment state no longer needs them (see the module docstring).

    Args:
        keep: checkpoints kept per trial (``checkpoint.keep``), at least 1.
        recheck_s: seconds between looks at the saved experiment state while
            checkpoints wait to be deleted.
    """

    def __init__(self, keep: int, recheck_s: float = 2.0):
        if keep < 1:
            raise ValueError(f"`keep >= 1` must hold, but got {keep=}")
        self.keep = keep
        self.recheck_s = recheck_s
        self._waiting: list[tuple[int, Any, str]] = []  # (iteration dropped at, fs, path)
        self._iteration = 0
        self._last_change = -1  # controller iteration of the last checkpoint seen
        self._last_look = -math.inf
        self._experiment: Optional[tuple[Any, str]] = None  # (filesystem, folder)

    def __getstate__(self):
        # Pickled into tuner.pkl when the Tuner is built: only the settings travel.
        state = self.__dict__.copy()
        state.update(_waiting=[], _iteration=0, _last_change=-1, _last_look=-math.inf,
                     _experiment=None)
        return state

    # ------------------------------------------------------------ Ray's hooks

    def on_step_begin(self, iteration: int, trials: list, **info):
        self._iteration = iteration
        if self._experiment is None and trials:
            self._experiment = _experiment_of(trials[0])

    def on_step_end(self, iteration: int, trials: list, **info):
        now = time.monotonic()
        if self._waiting and now - self._last_look >= self.recheck_s:
            self._last_look = now
            self.delete_superseded()

    def on_checkpoint(self, iteration: int, trials: list, trial, checkpoint, **info):
        # Called just before Ray registers ``checkpoint`` in the trial's list (and then
        # marks the trial for the next snapshot): keep the keep - 1 newest before it.
        self._iteration = self._last_change = iteration
        self._experiment = self._experiment or _experiment_of(trial)
        manager = trial.run_metadata.checkpoint_manager
        held = list(manager._checkpoint_results)
        kept = held[len(held) - (self.keep - 1):] if self.keep > 1 else []
        manager._checkpoint_results = kept
        trial.run_metadata.invalidate_cache()
        for result in held[:len(held) - len(kept)]:
            ckpt = result.checkpoint
            if ckpt is not None and ckpt.path != checkpoint.path:
                self._waiting.append((iteration, ckpt.filesystem, ckpt.path))

    def on_experiment_end(self, trials: list, **info):
        # Ray has saved (and waited for) its last snapshot before this hook.
        if self._experiment is None and trials:
            self._experiment = _experiment_of(trials[0])
        saved = self.delete_superseded()
        if saved is not None and saved[0] > self._last_change:
            _delete_unnamed(trials, saved[1])

    # ------------------------------------------------------------ deleting

    def delete_superseded(self) -> Optional[tuple[int, set[str]]]:
        """Delete the waiting checkpoints the saved experiment state no longer needs.
        Returns the saved state's (iteration, checkpoints it names), or None if it could
        not be read."""
        saved = self._saved_state()
        if saved is None:
            return None
        iteration, named = saved
        waiting = []
        for dropped_at, fs, path in self._waiting:
            if iteration > dropped_at and path not in named:
                storage.remove_folder(fs, path)
            else:
                waiting.append((dropped_at, fs, path))
        self._waiting = waiting
        return saved

    @property
    def waiting(self) -> list[str]:
        """Paths of the checkpoints dropped from their trial's list, not yet deleted."""
        return [path for _, _, path in self._waiting]

    def _saved_state(self) -> Optional[tuple[int, set[str]]]:
        """(controller iteration, checkpoint paths its trials name) of the experiment
        state on storage: the file ``Tuner.restore`` would read. None while there is
        none, or it is being written (a partial file does not parse)."""
        if self._experiment is None:
            return None
        from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

        fs, folder = self._experiment
        try:
            path = _find_newest_experiment_checkpoint(folder, fs)
            if path is None:
                return None
            state = json.loads(storage.read_text(fs, path))
            return int(state["runner_data"]["_iteration"]), _checkpoints_named(state)
        except Exception as e:  # noqa: BLE001 - unreadable now: delete nothing, look later
            logger.debug("experiment state not readable yet (%s)", e)
            return None


def _experiment_of(trial) -> tuple[Any, str]:
    return trial.storage.storage_filesystem, trial.storage.experiment_fs_path


def _checkpoints_named(state: dict) -> set[str]:
    """The checkpoints a saved experiment state names: each trial's checkpoint list
    and latest checkpoint, decoded as ``Tuner.restore`` decodes them."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    named = set()
    for _, run_metadata in state["trial_data"]:
        manager = _TrainingRunMetadata.from_json_state(run_metadata).checkpoint_manager
        if manager is None:
            continue
        for result in (*manager._checkpoint_results, manager.latest_checkpoint_result):
            if result is not None and result.checkpoint is not None:
                named.add(result.checkpoint.path)
    return named


def trial_checkpoints(trial) -> set[str]:
    """The checkpoint paths a trial's bookkeeping names: its retained list and its latest
    (which a PBT exploit or a restore may have set outside the list)."""
    manager = trial.run_metadata.checkpoint_manager
    named = {r.checkpoint.path for r in manager._checkpoint_results if r.checkpoint}
    latest = manager.latest_checkpoint_result
    if latest is not None and latest.checkpoint is not None:
        named.add(latest.checkpoint.path)
    return named


def _delete_unnamed(trials: list, saved: set[str]) -> None:
    """Checkpoint folders that neither a trial's list nor the saved state names (left
    by a run killed before it could delete them)."""
    for trial in trials:
        named = trial_checkpoints(trial)
        try:
            fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
        except Exception:  # noqa: BLE001 - a trial that never got a folder
            continue
        for name in storage.list_folders(fs, folder):
            path = Path(folder, name).as_posix()
            if _CHECKPOINT_DIR.fullmatch(name) and path not in named and path not in saved:
                storage.remove_folder(fs, path)


__all__ = ["CheckpointRotation", "frequent_snapshots"]
