"""Ray's Population Based Training with exploits that are sound.

Three defects of Ray 2.60's PBT, each seen here with the suite's recipes and with Ray's
own ``pbt_function`` example, and what this subclass does instead:

1. **Exploit loops.** After an exploit Ray gives the trial its donor's *perturbation
   time*, but the trial restarts from the donor's checkpoint, which can be older. The
   trial then reaches its "next" perturbation after training a single iteration, is
   again in the lower quantile, exploits the same checkpoint again, and so on (63
   exploits in a 6-trial digits run, one epoch retrained ~20 times). Here a trial sent
   back to an older checkpoint perturbs again only a full interval past the iteration
   it had reached, and never starts twice from the same donor checkpoint.
2. **Lost donors.** A donor's checkpoint is picked when the donor is in the upper
   quantile, but copied only when a weaker trial exploits it, possibly after
   ``checkpoint.keep`` newer checkpoints have rotated it away ("Could not recover from
   checkpoint as it does not exist on storage anymore"). And Ray asks a function
   trainable to "save", which only repeats its last report (no checkpoint there unless
   it had one), and registers that checkpoint twice. Here a donor's checkpoint is
   pinned (hard-linked) when it is picked, the exploiting trial gets its own copy, and
   nothing is registered twice: any ``keep`` works, before and after a resume.
3. **No exploits after a resume.** Ray does not save scheduler state; a restored
   trial's clock starts at 0, so every trial perturbs at its first result after the
   resume, off the checkpoint grid, and never finds a donor checkpoint again. Here a
   restored trial's clock starts at the iteration of the checkpoint it resumes from.

An exploit needs a donor checkpoint no older than ``perturbation_interval`` iterations
and may send a trial back at most that far; otherwise it is skipped and counted.
Every exploit and skip is one JSON line in ``pbt_exploits.jsonl`` in the experiment
folder (receiver, donor, iterations, epochs retrained, hyperparameters before and after).
"""

from __future__ import annotations

import json
import logging
import random
import time
import warnings
from pathlib import Path
from typing import Optional

from ray.train._internal.session import _FutureTrainingResult, _TrainingResult
from ray.tune import Checkpoint
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.schedulers.pbt import _filter_mutated_params_from_config, _make_experiment_tag
from ray.tune.trainable import FunctionTrainable
from ray.tune.utils.util import SafeFallbackEncoder

from raytune_suite.engine import storage
from raytune_suite.engine.checkpoints import trial_checkpoints
from raytune_suite.engine.outcomes import _Recording

logger = logging.getLogger(__name__)

EXPLOITS_FILE = "pbt_exploits.jsonl"
DONORS_DIR = ".pbt_donors"  # pinned donor checkpoints, one per donor
EXPLOIT_PREFIX = "pbt_exploit_"  # a receiver's own copy of the checkpoint it exploited


def _iteration(result: _TrainingResult) -> int:
    return int(result.metrics.get("training_iteration", 0))


class ExploitSafePBT(_Recording, PopulationBasedTraining):
    """Ray's ``PopulationBasedTraining`` (same arguments), with sound exploits."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped = 0
        self._started_from: dict[str, tuple[str, int]] = {}  # receiver -> (donor, iter)
        self._restored_sync: Optional[int] = None

    # ------------------------------------------------------------ trials

    def on_trial_add(self, tune_controller, trial: Trial):
        with warnings.catch_warnings():
            # Ray warns about num_to_keep <= 2; donors are pinned here, so any keep works.
            warnings.filterwarnings("ignore", message=".*num_to_keep.*")
            super().on_trial_add(tune_controller, trial)
        latest = trial.run_metadata.checkpoint_manager.latest_checkpoint_result
        if latest is None:
            return
        # A restored trial resumes at its checkpoint: its perturbation clock starts there.
        at = _iteration(latest)
        state = self._trial_state[trial]
        state.last_perturbation_time = state.last_train_time = at
        if self._synch:
            due = at + self._perturbation_interval
            if self._restored_sync is None or due < self._restored_sync:
                self._restored_sync = due
                self._next_perturbation_sync = due

    def _checkpoint_or_exploit(self, trial: Trial, tune_controller, upper_quantile: list,
                               lower_quantile: list):
        state = self._trial_state[trial]
        if trial in upper_quantile:
            state.last_checkpoint = self._pin_donor_checkpoint(trial, state, tune_controller)
            self._num_checkpoints += state.last_checkpoint is not None
        else:
            state.last_checkpoint = None
        if trial not in lower_quantile or not upper_quantile:
            return
        donor = random.choice(upper_quantile)
        donor_state = self._trial_state[donor]
        if donor_state.last_checkpoint is None:
            # Ranked among the best only since its own last perturbation (async PBT):
            # its newest registered checkpoint will do, if recent enough.
            donor_state.last_checkpoint = self._pin_donor_checkpoint(donor, donor_state)
        source = donor_state.last_checkpoint
        now = state.last_train_time
        if source is None:
            self._skip(trial, donor, now, "the donor has no checkpoint from its last "
                                          f"{self._perturbation_interval} iterations")
            return
        at = _iteration(source)
        if now - at > self._perturbation_interval:
            self._skip(trial, donor, now, f"the donor's checkpoint (iteration {at}) would "
                                          f"send this trial back more than "
                                          f"{self._perturbation_interval} iterations")
            return
        if self._started_from.get(trial.trial_id) == (donor.trial_id, at):
            self._skip(trial, donor, now, f"it already started from this checkpoint "
                                          f"(iteration {at})")
            return
        self._exploit(tune_controller, trial, donor)

    def _pin_donor_checkpoint(self, trial: Trial, state, controller=None
                              ) -> Optional[_TrainingResult]:
        """The trial's newest checkpoint, if no older than the perturbation interval,
        hard-linked where ``keep`` cannot delete it until the trial is a donor again.
        ``controller``: given when the trial's result is the one being processed."""
        found = self._newest_checkpoint(trial, state, controller)
        if found is None or state.last_train_time - _iteration(found) > \
                self._perturbation_interval:
            return None
        fs = trial.storage.storage_filesystem
        folder = Path(trial.storage.experiment_fs_path, DONORS_DIR, trial.trial_id).as_posix()
        storage.remove_folder(fs, folder)  # the previous pin: exploits copied what they took
        pinned = Path(folder, Path(found.checkpoint.path).name).as_posix()
        storage.copy_folder(fs, found.checkpoint.path, pinned)
        return _TrainingResult(checkpoint=Checkpoint(pinned, filesystem=fs),
                               metrics=dict(found.metrics))

    @staticmethod
    def _newest_checkpoint(trial: Trial, state, controller=None) -> Optional[_TrainingResult]:
        """The checkpoint of the result being processed, else the newest one Ray
        registered. A function trainable's is already on storage (it persists it before
        reporting; Ray registers it after the schedulers have seen the result); a class
        trainable is asked to save now, as Ray's PBT does (asking a function trainable
        would only register its last checkpoint a second time)."""
        result = state.last_result or {}
        name = result.get("checkpoint_dir_name")
        if controller is not None and trial.status == Trial.RUNNING:
            if name:
                path = Path(trial.storage.trial_fs_path, name).as_posix()
                return _TrainingResult(
                    Checkpoint(path, filesystem=trial.storage.storage_filesystem), dict(result))
            trainable = trial.get_trainable_cls()
            if trainable is not None and not issubclass(trainable, FunctionTrainable):
                saving = controller._schedule_trial_save(trial, result=result)
                resolved = saving.resolve() if saving is not None else None
                if resolved is not None and resolved.checkpoint is not None:
                    return resolved
        saving = trial.temporary_state.saving_to
        if isinstance(saving, _FutureTrainingResult):  # a paused trial's save in flight
            resolved = saving.resolve()
            if resolved is not None and resolved.checkpoint is not None:
                return resolved
        return trial.run_metadata.checkpoint_manager.latest_checkpoint_result

    def _exploit(self, tune_controller, trial: Trial, trial_to_clone: Trial):
        """Restart ``trial`` from its own copy of the donor's pinned checkpoint, with the
        donor's hyperparameters explored."""
        state = self._trial_state[trial]
        donor_state = self._trial_state[trial_to_clone]
        source: _TrainingResult = donor_state.last_checkpoint
        at, now = _iteration(source), state.last_train_time
        new_config, _ = self._get_new_config(trial, trial_to_clone)
        before = _filter_mutated_params_from_config(trial.config, self._hyperparam_mutations)
        after = _filter_mutated_params_from_config(new_config, self._hyperparam_mutations)
        logger.info("PBT: trial %s (score %.4g) exploits %s (score %.4g) at iteration %d, "
                    "from its checkpoint of iteration %d", trial.trial_id, state.last_score,
                    trial_to_clone.trial_id, donor_state.last_score, now, at)

        fs = trial.storage.storage_filesystem
        copied = Path(trial.storage.trial_fs_path,
                      f"{EXPLOIT_PREFIX}{at:06d}_{trial_to_clone.trial_id}").as_posix()
        storage.copy_folder(fs, source.checkpoint.path, copied)
        if self._log_config:
            self._log_config_on_step(state, donor_state, trial, trial_to_clone, new_config)
        if trial.status != Trial.PAUSED:  # synchronous PBT has paused it already
            tune_controller.pause_trial(trial, should_checkpoint=False)
        trial.set_experiment_tag(_make_experiment_tag(state.orig_tag, new_config,
                                                      self._hyperparam_mutations))
        trial.set_config(new_config)
        trial.run_metadata.checkpoint_manager._latest_checkpoint_result = _TrainingResult(
            checkpoint=Checkpoint(copied, filesystem=fs), metrics=dict(source.metrics))
        self._num_perturbations += 1
        self._started_from[trial.trial_id] = (trial_to_clone.trial_id, at)
        # Ray copies the donor's perturbation clock, which loops when the donor's
        # checkpoint is older than that clock. Here the trial stands where its weights
        # come from, and perturbs again only after a full interval past where it was:
        # no trial perturbs twice at one iteration, however often it is sent back.
        state.last_train_time = at
        state.last_perturbation_time = max(now, at)
        self._log(trial, {"event": "exploit", "receiver": trial.trial_id,
                          "donor": trial_to_clone.trial_id, "iteration": now,
                          "checkpoint_iteration": at, "retrained": max(0, now - at),
                          "receiver_score": _score(state), "donor_score": _score(donor_state),
                          "before": before, "after": after, "checkpoint": copied})

    def _skip(self, trial: Trial, donor: Trial, now: int, why: str) -> None:
        self.skipped += 1
        logger.debug("PBT: trial %s skips exploiting %s at iteration %d: %s",
                     trial.trial_id, donor.trial_id, now, why)
        self._log(trial, {"event": "skip", "receiver": trial.trial_id,
                          "donor": donor.trial_id, "iteration": now, "reason": why})

    def _log(self, trial: Trial, record: dict) -> None:
        path = Path(trial.storage.experiment_fs_path, EXPLOITS_FILE).as_posix()
        storage.append_line(trial.storage.storage_filesystem, path,
                            json.dumps({"time": time.time(), **record},
                                       cls=SafeFallbackEncoder))

    def _log_config_on_step(self, trial_state, new_state, trial: Trial, trial_to_clone: Trial,
                            new_config: dict):
        """Ray's ``pbt_global.txt`` and ``pbt_policy_<trial>.txt`` lines, written straight
        to the experiment folder: Ray writes them to its driver staging folder, which a
        resume does not download (only .json/.pkl files), so the files uploaded after a
        resume would replace the ones from before it."""
        fs = trial.storage.storage_filesystem
        folder = trial.storage.experiment_fs_path
        # [receiver, donor, the receiver's iteration, the iteration of the donor
        # checkpoint it restarts from, the donor's config, the receiver's new config]
        policy = [trial_state.orig_tag, new_state.orig_tag, trial_state.last_train_time,
                  _iteration(new_state.last_checkpoint), trial_to_clone.config, new_config]
        line = json.dumps(policy, cls=SafeFallbackEncoder)
        storage.append_line(fs, Path(folder, "pbt_global.txt").as_posix(), line)
        donor_policy = Path(folder, f"pbt_policy_{trial_to_clone.trial_id}.txt").as_posix()
        history = storage.read_text(fs, donor_policy)
        own = Path(folder, f"pbt_policy_{trial.trial_id}.txt").as_posix()
        with fs.open_output_stream(own) as f:  # the donor's history, then this exploit
            f.write((history + line + "\n").encode())


def _score(state) -> Optional[float]:
    return None if state.last_score is None else float(state.last_score)


def read_exploits(fs, experiment_fs_path: str) -> list[dict]:
    """The records of ``pbt_exploits.jsonl`` (exploits and skipped exploits); [] when
    there is none. ``fs`` None: a folder on this machine."""
    if fs is None:
        import pyarrow.fs

        fs, experiment_fs_path = pyarrow.fs.LocalFileSystem(), str(Path(experiment_fs_path)
                                                                  .resolve())
    text = storage.read_text(fs, Path(experiment_fs_path, EXPLOITS_FILE).as_posix())
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def tidy_after_search(fs, experiment_fs_path: str, trials: list) -> None:
    """Once a PBT search has finished: drop the pinned donor checkpoints, and the copies
    exploits took that are no longer a trial's latest checkpoint."""
    storage.remove_folder(fs, Path(experiment_fs_path, DONORS_DIR).as_posix())
    for trial in trials:
        keep = trial_checkpoints(trial)
        for name in storage.list_folders(fs, trial.storage.trial_fs_path):
            path = Path(trial.storage.trial_fs_path, name).as_posix()
            if name.startswith(EXPLOIT_PREFIX) and path not in keep:
                storage.remove_folder(fs, path)


__all__ = ["ExploitSafePBT", "read_exploits", "tidy_after_search"]
