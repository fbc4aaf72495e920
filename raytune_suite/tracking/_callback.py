"""Ray Tune callback logging every trial to MLflow from the driver's machine (workers never
need access to the tracking store), through a writer process (``tracking._writer_process``)."""

from __future__ import annotations

import logging
import math
from typing import Optional

from ray.tune.logger import LoggerCallback

from raytune_suite.tracking._mlflow import flatten, metric, param
from raytune_suite.tracking._names import Layout, result_metrics, run_name
from raytune_suite.tracking._runs import ROLE_TAG, TRIAL_ID_TAG, end_tags

logger = logging.getLogger(__name__)


class TrialRunsCallback(LoggerCallback):
    """One MLflow run per trial, child of the search's run, written off the driver loop.

    What it does, each for a reason:
    - every hook turns Ray's trial and result into plain MLflow records and hands them
      to a :class:`~raytune_suite.tracking._writer.RunWriter` in a process of its own
      (:class:`~raytune_suite.tracking._writer_process.ProcessWriter`), which makes the
      requests: the driver loop never waits on MLflow (unless the writer's queue is
      full) nor shares its GIL with MLflow's client, and a trial costs ``create_run``,
      one ``log_batch`` per batch of results (its params in the first, its outcome in
      the last) and ``set_terminated``;
    - runs are named for what tells trials apart (``tracking._names.run_name``); Ray's
      bookkeeping and the ``epoch`` copy of the step are not logged;
    - every trial run carries the Ray trial id and the parent search run, and is found
      again by that id after ``raytune-suite resume`` instead of being duplicated; steps
      it already holds are not logged again (a restored trial repeats the iterations
      after its checkpoint);
    - the end says how the trial ended (``engine.outcomes``: completed, stopped early by
      the scheduler, stopped by the time budget, diverged with its ``stop_reason``, or
      errored with the end of its ``error.txt``), with ``best_<metric>`` and
      ``epochs_trained`` when this driver saw all of the trial's results;
    - PBT changes a trial's hyperparameters mid-run; MLflow params are immutable (they
      keep the first values), so the mutated ones are also ``config/<name>`` metrics at
      every step, from step 1;
    - if the tracking server fails mid-search, tuning goes on: one warning, no more
      MLflow requests (``offline`` says why), and ``raytune-suite mlflow-sync``
      backfills from Ray's results later.
    The writer is flushed at the end of the search, on Ctrl-C and on errors
    (``on_experiment_end``), before the runner closes the runs.
    """

    def __init__(self, tracking_uri: str, parent_run_id: str, max_t: Optional[int],
                 experiment_path: str = "", time_attr: str = "training_iteration",
                 layout: Optional[Layout] = None, metric: Optional[str] = None,
                 mode: str = "max"):
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self.max_t = max_t
        self.time_attr = time_attr
        self.experiment_path = experiment_path
        self.layout = layout or Layout()  # what names the runs; what PBT mutates
        self.metric, self.mode = metric, mode
        self.resumed = False  # set when Tuner.restore unpickles this callback
        self.writer = None
        self._best: dict[str, Optional[float]] = {}  # trial -> best metric seen ...
        self._whole: set[str] = set()  # ... for trials whose every result this driver saw

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(writer=None, _best={}, _whole=set())
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.resumed = True

    @property
    def offline(self) -> Optional[str]:
        return self.writer.offline if self.writer is not None else None

    def setup(self, *args, **kwargs):
        from raytune_suite.tracking._writer_process import ProcessWriter

        self.writer = ProcessWriter(self.tracking_uri, self.parent_run_id, resumed=self.resumed,
                                on_offline=self.go_offline)

    def go_offline(self, error: BaseException) -> None:
        """Say once that MLflow failed, and record it in the experiment's state so the end
        of the run and ``best`` point at mlflow-sync."""
        logger.warning("MLflow at %s failed (%s): tuning goes on without MLflow. When it "
                       "is back, backfill the missing runs with: raytune-suite mlflow-sync "
                       "%s", self.tracking_uri, self.offline, self.experiment_path)
        if self.experiment_path:
            from raytune_suite.engine.state import update_state

            update_state(self.experiment_path, mlflow_offline=self.offline)

    def log_trial_start(self, trial):
        tags = {"mlflow.parentRunId": self.parent_run_id, ROLE_TAG: "trial",
                "trial_name": str(trial), TRIAL_ID_TAG: trial.trial_id}
        name = run_name(trial.trial_id, trial.experiment_tag, trial.config,
                        self.layout.searched)
        params = [param(k, v) for k, v in flatten(trial.config).items()]
        self.writer.start(trial.trial_id, name, tags, params)

    def log_trial_result(self, iteration: int, trial, result: dict):
        step = int(result.get("training_iteration", iteration))
        key = trial.trial_id
        if step == 1:
            self._whole.add(key)
            self._best[key] = None
        value = result.get(self.metric) if self.metric else None
        if key in self._whole and isinstance(value, (int, float)) and math.isfinite(value):
            best = self._best.get(key)
            if best is None or (value > best if self.mode == "max" else value < best):
                self._best[key] = float(value)
        self.writer.log(key, step, result_metrics(result, step, self.layout.mutated))

    def log_trial_end(self, trial, failed: bool = False):
        last = trial.last_result or {}
        outcome, tags = end_tags(last, failed, self.max_t,
                                 trial.error_file if failed else None, self.time_attr)
        metrics = []
        key = trial.trial_id
        if key in self._whole and self.metric:  # what the leaderboard will say
            from raytune_suite.tracking._search import EPOCHS_METRIC

            metrics.append(metric(EPOCHS_METRIC, int(last.get("training_iteration", 0)), 0))
            best = self._best.get(key)
            if best is not None and not last.get("diverged"):
                metrics.append(metric(f"best_{self.metric}", best, 0))
        self.writer.end(key, "FAILED" if outcome == "errored" else "FINISHED", metrics, tags)

    def on_experiment_end(self, trials, **info):
        if self.writer is not None:
            self.writer.close()
