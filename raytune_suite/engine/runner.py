"""The one place the pieces meet: spec -> Tuner -> fit/restore -> MLflow -> summary."""

from __future__ import annotations

import logging
import re
import shutil
import sys
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from raytune_suite.engine import extend, gpu_probe, phases, registry, storage
from raytune_suite.engine.checkpoints import frequent_snapshots
from raytune_suite.engine.logs import quiet_trial_tracebacks, quiet_unreported_trials
from raytune_suite.engine.outcomes import settle
from raytune_suite.engine.state import (LOCK_FILE, SPEC_FILE, STATE_FILE, adopt_old_names,
                                        experiment_lock, has_ray_state, read_outcomes, read_state,
                                        record_outcomes, resolve_experiment,
                                        set_aside_lost_trials, update_state, write_state)
from raytune_suite.engine.tuner import (build_tuner, check_storage, init_ray, shared_data,
                                        own_loggers_only, show_progress,
                                        to_object_store, trainable, warn_sqlite_on_cluster)
from raytune_suite.errors import Interrupted, SpecError
from raytune_suite.experiment import ExperimentSpec, validate
from raytune_suite.engine.results import TrialSummary, pareto_front, summarize

logger = logging.getLogger(__name__)

Progress = Callable[[ExperimentSpec], list]  # spec -> Tune callbacks that show the search

__all__ = ["Outcome", "run_experiment", "resume_experiment", "load_outcome", "load_results",
           "resolve_experiment", "update_state", "init_ray"]


@dataclass
class Outcome:
    """What a finished (or resumed) search found."""

    spec: ExperimentSpec
    path: str
    trials: list[TrialSummary]
    errors: int
    tracking_uri: Optional[str]
    mlflow_offline: Optional[str] = None  # why MLflow stopped logging mid-search, if it did
    pbt: dict[str, int] = field(default_factory=dict)  # exploits, retrained, skipped

    @property
    def best(self) -> Optional[TrialSummary]:
        return self.trials[0] if self.trials and self.trials[0].best is not None else None

    @property
    def pareto(self) -> list[TrialSummary]:
        """With several objectives: the trials on the Pareto front (else empty)."""
        return pareto_front(self.trials, self.spec.objectives) if self.spec.objectives else []

    @property
    def outcomes(self) -> Counter:
        """Trials by outcome (completed, stopped_early, ...)."""
        return Counter(t.outcome for t in self.trials)

    def best_record(self) -> Optional[dict[str, Any]]:
        """The best trial as the search's MLflow run records it."""
        best = self.best
        return best and {"metric": self.spec.metric, "value": best.best,
                         "trial_id": best.trial_id, "checkpoint": best.checkpoint,
                         "config": best.config}


def run_experiment(spec: ExperimentSpec, raw: dict[str, Any], address: Optional[str] = None,
                   use_mlflow: bool = True, progress: Optional[Progress] = None,
                   source: Optional[str] = None) -> Outcome:
    """Run a validated experiment to the end.

    Args:
        spec: the validated experiment.
        raw: the mapping ``spec`` was built from; saved beside the results for resume.
        address: a Ray cluster (``auto``, ``HOST:PORT``); None starts embedded Ray.
        use_mlflow: log to MLflow (``tracking.mlflow.enabled`` must also be true).
        progress: builds the Tune callbacks that show the search (a console display);
            they replace Ray's own console output. None: Ray's trial tables.
        source: the experiment file as the user wrote it (logged to MLflow with its
            comments), if there is one.
    """
    registry.check(spec)  # what validates must run: Ray Tune's own checks, before anything
    phases.mark("file checked")
    path = Path(spec.experiment_path)
    local = "://" not in spec.storage
    if local and has_ray_state(path):
        raise SpecError("name", f"an experiment already exists at {path}; resume it with "
                                f"`raytune-suite resume {path}` or pick another name "
                                "(--set name=...)", spec.name)
    uri = _tracking_uri(spec) if use_mlflow else None
    if uri:
        from raytune_suite.tracking import check_reachable

        check_reachable(uri)
    data = shared_data(spec)
    phases.mark("data loaded")
    if uri:  # every user mistake is caught by now: nothing was written
        from raytune_suite.tracking import prestart_writer, warm_up

        prestart_writer()  # the trial runs' writer process starts while Ray starts
        if not address:
            warm_up(uri)  # MLflow's imports and store, on a thread, while Ray starts
    else:  # `run` started a writer before it knew MLflow is off for this file
        from raytune_suite.tracking import stop_spare_writer

        stop_spare_writer()
    init_ray(address, log_to_driver=progress is None, spec=spec)
    phases.mark("Ray started")
    check_storage(spec)
    warn_sqlite_on_cluster(uri)
    spec, gpu_auto = resolve_gpu(spec, data)
    existed = path.exists()
    with experiment_lock(path) if local else nullcontext():
        if existed:
            _discard_unstarted(path)
        return _start(spec, raw, path, {"tracking_uri": uri, "parent_run_id": None,
                                        "gpu_auto": gpu_auto}, data, progress, source)


def resolve_gpu(spec: ExperimentSpec, data=None, kept: Optional[dict] = None
                ) -> tuple[ExperimentSpec, Optional[dict]]:
    """``resources.gpu: auto`` made a number, with one line saying what and why: the
    decision ``kept`` in the experiment's state (a resumed search), else the probe's on
    the Ray cluster's GPU (:mod:`engine.gpu_probe`); CPU trials without a GPU. Ray is up.
    Other files come back as they are, with None."""
    if not spec.resources.auto_gpu:
        return spec, None
    if kept:
        print(f"{kept['line']} (decided when the search started)")
        return gpu_probe.resolved(spec, kept["gpu"]), kept
    import ray

    _, record = gpu_probe.decide_for(spec, ray.cluster_resources().get("GPU", 0), data)
    print(record["line"])
    if "measurements" in record:
        print(f"gpu: auto probe on {record['device']} ({record['seconds']:g} s): " +
              "; ".join(f"{k} at once {figures}"
                        for k, figures in record["measurements"].items()))
    return gpu_probe.resolved(spec, record["gpu"]), record


def _start(spec: ExperimentSpec, raw: dict, path: Path, state: dict, data=None,
           progress: Optional[Progress] = None, source: Optional[str] = None) -> Outcome:
    """Start the search in ``path`` (new, or one that stopped before Ray saved state)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / SPEC_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
    if state["tracking_uri"] and not state["parent_run_id"]:
        state["parent_run_id"] = start_search_run(spec, state["tracking_uri"], path, source,
                                                  state.get("gpu_auto"))
        phases.mark("MLflow search run")
    write_state(path, state)
    tuner = build_tuner(spec, _callbacks(spec, path, state), to_object_store(data))
    phases.mark("search built")
    del data  # the object store holds it now; a driver copy would double its memory
    try:
        return _fit_and_finish(spec, tuner, path, state, progress)
    except SpecError:
        # The trainable broke the experiment's contract (no metric): nothing worth
        # resuming was made; leave no folder behind that would block the fixed rerun.
        shutil.rmtree(path, ignore_errors=True)
        raise
    except Exception:
        if not _any_result(path):  # failed before its first result: nothing to resume
            _empty(path, keep=(LOCK_FILE,))
        raise


def _any_result(path: Path) -> bool:
    return any(f.stat().st_size for f in path.glob("*/result.json"))


def _discard_unstarted(path: Path) -> None:
    """A folder without Ray's experiment state is what a run left that stopped (killed,
    or failed) before Ray saved anything: no trial result can be recovered from it.
    Empty it, and delete its MLflow runs, so that the search can start again."""
    leftovers = [p for p in path.iterdir() if p.name != LOCK_FILE]
    if not leftovers:
        return
    state = read_state(path)
    if state.get("tracking_uri") and state.get("parent_run_id"):
        from raytune_suite import tracking

        try:
            tracking.discard_search(state["tracking_uri"], state["parent_run_id"])
        except Exception as e:  # noqa: BLE001 - the new run matters more than the old log
            logger.warning("the MLflow run of the unstarted attempt stays (%s)",
                           tracking.short_reason(e))
    print(f"note: {path} held a run that stopped before Ray saved any state; starting "
          "afresh", file=sys.stderr)
    _empty(path, keep=(LOCK_FILE,))


def _empty(path: Path, keep: tuple = ()) -> None:
    for item in path.iterdir():
        if item.name not in keep:
            shutil.rmtree(item) if item.is_dir() else item.unlink()


def start_search_run(spec: ExperimentSpec, uri: str, path: Path,
                     source: Optional[str] = None, gpu_auto: Optional[dict] = None) -> str:
    """The MLflow run of the whole search (parent of the trial runs); returns its id.
    Its params: the searcher's and scheduler's settings, as the file gives them or by
    default (``search.seed``, ``scheduler.grace_period``, ...), and what ``gpu: auto``
    decided, with the probe's figures for each packing (``gpu_auto.k2``, ...)."""
    from raytune_suite import tracking

    settings = {"search": spec.search.model_dump(),
                "scheduler": spec.scheduler.model_dump(exclude={"hyperparam_mutations"}),
                "resources": spec.resources.model_dump(), "stop": spec.stop.model_dump(),
                "checkpoint": spec.checkpoint.model_dump(), "failure": spec.failure.model_dump()}
    if gpu_auto:
        settings["gpu_auto"] = {"decision": gpu_auto["line"], "k": gpu_auto["k"],
                                **{f"k{k}": v for k, v in gpu_auto.get("measurements",
                                                                       {}).items()},
                                **({"device": gpu_auto["device"]} if "device" in gpu_auto
                                   else {})}
    return tracking.start_search_run(
        uri, spec.mlflow_experiment, f"{spec.name}-search", str(path), path / SPEC_FILE,
        params={"searcher": spec.search.algorithm, "scheduler": spec.scheduler.type,
                "num_samples": spec.search.num_samples, "metric": spec.metric,
                "mode": spec.mode, "trainable": spec.trainable, **settings},
        source=Path(source) if source else None, metric_name=spec.metric, mode=spec.mode,
        searched=tracking.layout(spec).searched)


def _callbacks(spec: ExperimentSpec, path: Path, state: dict) -> list:
    if not state.get("parent_run_id"):
        return []
    from raytune_suite import tracking

    tracking.configure_client()
    return [tracking.TrialRunsCallback(state["tracking_uri"], state["parent_run_id"],
                                       spec.max_t, str(path), spec.time_attr,
                                       tracking.layout(spec), spec.metric, spec.mode)]


def resume_experiment(ref: str, address: Optional[str] = None,
                      progress: Optional[Progress] = None,
                      more_samples: Optional[int] = None) -> Outcome:
    """Restore an interrupted experiment (``Tuner.restore``) and finish it. One that
    stopped before Ray saved any state is started afresh from its saved file.
    ``progress``: as for :func:`run_experiment`. ``more_samples``: trials to add to the
    search (``raytune-suite extend``; the search may have ended)."""
    from ray import tune

    path = resolve_experiment(ref)
    raw = yaml.safe_load((path / SPEC_FILE).read_text())
    spec = validate(raw)
    registry.check(spec)
    extending = more_samples is not None
    if extending:
        extend.check_extendable(spec, more_samples)
    with experiment_lock(path):
        adopt_old_names(path)  # before Ray copies the folder's .json files (state.py)
        if extending:
            if not has_ray_state(path):
                raise SpecError("EXPERIMENT", "has no results yet to extend; run "
                                              f"`raytune-suite resume {path}` first", str(path))
            extend.grow_search(path, spec, more_samples)
            raw = yaml.safe_load((path / SPEC_FILE).read_text())
            spec = validate(raw)  # its num_samples now counts the new trials
        state = read_state(path)
        state.setdefault("tracking_uri", None)
        state.setdefault("parent_run_id", None)
        if state["parent_run_id"]:
            _reopen_search_run(state, spec.search.num_samples if extending else None,
                               path / SPEC_FILE if extending else None)
        data = shared_data(spec)
        phases.mark("data loaded")
        init_ray(address, log_to_driver=progress is None, spec=spec)
        phases.mark("Ray started")
        check_storage(spec)
        spec, state["gpu_auto"] = resolve_gpu(spec, data, state.get("gpu_auto"))
        if not has_ray_state(path) or not tune.Tuner.can_restore(str(path)):
            # Killed in the first seconds: Ray would "restore" one trial with an empty
            # config. Nothing ran, so the search starts over in the same folder.
            print(f"note: Ray saved no state of {path} before it stopped; the search "
                  "starts from the beginning", file=sys.stderr)
            _empty(path, keep=(SPEC_FILE, STATE_FILE, LOCK_FILE))
            return _start(spec, raw, path, state, data, progress)
        if state["parent_run_id"] and "://" not in spec.storage:
            _backfill_mlflow(spec, path, state)
        quiet_unreported_trials()
        tuner = tune.Tuner.restore(str(path), trainable=trainable(spec, to_object_store(data)),
                                   resume_unfinished=True, resume_errored=True)
        extend.seed_asha_rungs(tuner, path, spec)
        phases.mark("search built")
        del data
        return _fit_and_finish(spec, tuner, path, state, progress)


def _reopen_search_run(state: dict, num_samples: Optional[int] = None,
                       spec_file: Optional[Path] = None) -> None:
    from raytune_suite import tracking

    tracking.configure_client()
    try:
        tracking.reopen_run(state["tracking_uri"], state["parent_run_id"], num_samples,
                            spec_file)
    except Exception as e:  # noqa: BLE001 - resuming matters more than the log
        raise SpecError("tracking.mlflow.tracking_uri",
                        f"the search's MLflow run could not be reopened "
                        f"({tracking.short_reason(e)}); start the server, or resume "
                        "and backfill later with `raytune-suite mlflow-sync`",
                        state["tracking_uri"]) from None


def _backfill_mlflow(spec: ExperimentSpec, path: Path, state: dict) -> None:
    """Write what the stopped driver had not yet written to MLflow (its writer's queue
    dies with it) from Ray's result files, before the restored search logs more."""
    from raytune_suite import tracking

    try:
        created, logged = tracking.backfill_runs(state["tracking_uri"], state["parent_run_id"],
                                                 str(path), tracking.layout(spec))
    except Exception as e:  # noqa: BLE001 - resuming matters more than the log
        logger.warning("MLflow was not backfilled (%s); run raytune-suite mlflow-sync %s "
                       "when the search ends", tracking.short_reason(e), path)
        return
    if created or logged:
        logger.info("MLflow backfilled from Ray's results: %d run(s) created, %d metric "
                    "value(s) logged", created, logged)


_NO_METRIC = re.compile(r"did not include the specified metric\(s\) `([^`]+)`.*?Result: (\{.*)",
                        re.S)
_RAY_KEYS = {"timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id",
             "date", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip",
             "time_since_restore", "iterations_since_restore", "experiment_tag"}


def _missing_metric_error(error: BaseException, spec: ExperimentSpec) -> Optional[SpecError]:
    """Ray's strict metric check (first result without the experiment's metric) as one
    line naming the metric and what the trainable reported instead."""
    found = _NO_METRIC.search(str(error))
    if not found:
        return None
    keys = [k for k in re.findall(r"'([^']+)':", found.group(2))
            if k not in _RAY_KEYS and not k.startswith("config/")]
    return SpecError("metric", f"must be reported by the trainable {spec.trainable} "
                               f"(it reported {', '.join(keys) or 'no metrics'}); add it to "
                               "tune.report(...) or change metric", found.group(1))


def _fit_and_finish(spec: ExperimentSpec, tuner, path: Path, state: dict,
                    progress: Optional[Progress] = None) -> Outcome:
    quiet_unreported_trials()
    console = show_progress(tuner, progress(spec)) if progress is not None else nullcontext()
    quiet_trial_tracebacks(progress is not None)
    uri, parent = state.get("tracking_uri"), state.get("parent_run_id")
    stop_signal = _StopSignal()
    tune_logger = logging.getLogger("ray.tune.tune")
    tune_logger.addHandler(stop_signal)
    try:
        with console, own_loggers_only(), frequent_snapshots(), \
                storage.atomic_snapshot_uploads():
            results = tuner.fit()
        phases.mark("search done")
    except BaseException as e:
        if parent:
            _close_mlflow(uri, parent, {}, spec,
                          "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        error = _missing_metric_error(e, spec)
        if error:
            raise error from None
        raise
    finally:
        tune_logger.removeHandler(stop_signal)
        quiet_trial_tracebacks(False)
    ray_trials = results._experiment_analysis.trials
    trials = {t.trial_id: t for t in ray_trials}
    interrupted = stop_signal.seen
    if "://" not in spec.storage:
        set_aside_lost_trials(path, {t.storage.trial_dir_name for t in ray_trials})
        if not interrupted:
            record_outcomes(path, settle(ray_trials, spec.max_t, spec.time_attr,
                                         budget=bool(spec.stop.time_budget_s)))
    offline = read_state(path).get("mlflow_offline")  # set by the callback if MLflow failed
    runs: list = []  # the trial runs _close_mlflow found, labelled below without a refetch
    if parent and not offline:
        # Runs a stop left open: trials the time budget (or Ctrl-C) stopped get no end
        # from Ray's callbacks; after a restore, runs of trials that ended before the crash.
        offline, runs = _close_mlflow(uri, parent, trials, spec,
                                      "KILLED" if interrupted else None)
    if interrupted:
        raise Interrupted(str(path))
    pbt = _finish_pbt(spec, ray_trials) if spec.scheduler.type == "pbt" else {}
    searched = [p for p, _ in spec.search_space.leaves()]
    outcome = Outcome(spec, str(path), summarize(results, spec, searched, read_outcomes(path)),
                      len(results.errors), uri, offline, pbt)
    if parent and not offline:
        from raytune_suite import tracking

        try:
            tracking.finish_search_run(uri, parent, outcome.best_record(), outcome=outcome,
                                       runs=runs)
        except Exception as e:  # noqa: BLE001 - the search itself succeeded
            outcome.mlflow_offline = tracking.short_reason(e)
    return outcome


def _finish_pbt(spec: ExperimentSpec, trials: list) -> dict[str, int]:
    """Tidy a finished PBT search's exploit copies; count its exploits."""
    from raytune_suite.engine.pbt import read_exploits, tidy_after_search

    if not trials:
        return {}
    fs = trials[0].storage.storage_filesystem
    folder = trials[0].storage.experiment_fs_path
    if all(t.status in ("TERMINATED", "ERROR") for t in trials):
        tidy_after_search(fs, folder, trials)
    records = read_exploits(fs, folder)
    exploits = [r for r in records if r["event"] == "exploit"]
    return {"exploits": len(exploits), "retrained": sum(r["retrained"] for r in exploits),
            "skipped": sum(r["event"] == "skip" for r in records)}


class _StopSignal(logging.Handler):
    """Notices Ray Tune's "Stop signal received" warning: on Ctrl-C (SIGINT) ``fit``
    saves the experiment state and returns as if the search had ended, so this is how
    the runner tells an interrupted search from a finished one."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Stop signal received"):
            self.seen = True


def _close_mlflow(uri: str, parent: str, trials: dict, spec: ExperimentSpec,
                  status: Optional[str]) -> tuple[Optional[str], list]:
    """End the runs a stopped search leaves RUNNING in MLflow: trials Ray finished whose
    end never reached MLflow (the driver was killed in between) are closed as Ray ended
    them; unfinished ones (and the search run) get ``status`` (KILLED when interrupted).
    Returns (why MLflow could not be reached, or None; the trial runs it fetched)."""
    from raytune_suite import tracking

    try:
        runs = tracking.close_open_runs(uri, parent, trials, spec.max_t, status,
                                        spec.time_attr)
        if status:
            tracking.finish_search_run(uri, parent, None, status=status)
    except Exception as e:  # noqa: BLE001 - never hide the search's own outcome
        logger.warning("MLflow runs could not be closed (%s); backfill them later with "
                       "raytune-suite mlflow-sync", tracking.short_reason(e))
        return tracking.short_reason(e), []
    return None, runs


def load_results(ref: str):
    """(folder, spec, saved state, Ray ``ResultGrid``) of an experiment (no Ray needed)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    path = resolve_experiment(ref)
    # the teacher of a distillation search trained it; its results need it no more
    spec = validate(yaml.safe_load((path / SPEC_FILE).read_text()), teacher=False)
    if not has_ray_state(path):
        raise SpecError("EXPERIMENT", "has no results yet (it stopped before Ray saved any "
                                      f"state); run `raytune-suite resume {path}`", str(path))
    analysis = ExperimentAnalysis(str(path), default_metric=spec.metric, default_mode=spec.mode)
    return path, spec, read_state(path), ResultGrid(analysis)


def load_outcome(ref: str) -> Outcome:
    """Summarise a finished experiment from its results folder (no Ray needed)."""
    path, spec, state, results = load_results(ref)
    searched = [p for p, _ in spec.search_space.leaves()]
    trials = summarize(results, spec, searched, read_outcomes(path))
    return Outcome(spec, str(path), trials, len(results.errors), state.get("tracking_uri"),
                   state.get("mlflow_offline"))


def _tracking_uri(spec: ExperimentSpec) -> Optional[str]:
    if not spec.tracking.mlflow.enabled:
        return None
    from raytune_suite.tracking import resolve_tracking_uri

    return resolve_tracking_uri(spec.tracking.mlflow.tracking_uri)


def mlflow_hint(uri: Optional[str], path: Optional[str] = None) -> str:
    """How to see the search in MLflow: the UI command (any folder) and the link to the
    trial runs of the search in ``path``."""
    if not uri:
        return ""
    from raytune_suite.tracking import ui_hint

    parent = read_state(Path(path)).get("parent_run_id") if path else None
    return ui_hint(uri, parent)
