"""Building the ``tune.Tuner`` an experiment file describes, and the Ray runtime it
runs on (embedded, or a cluster's)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Optional

from ray.tune import Callback
from ray.tune.progress_reporter import ProgressReporter, TrialProgressCallback

from raytune_suite.engine import phases, registry
from raytune_suite.engine.checkpoints import CheckpointRotation
from raytune_suite.engine.logs import ProgressCsvLogger, ResultJsonLogger
from raytune_suite.engine.outcomes import OutcomeCallback
from raytune_suite.errors import SpecError, one_line, token_auth_error
from raytune_suite.experiment import ExperimentSpec
from raytune_suite.trainables import (BUILTIN, BUILTIN_MODULES, is_class_trainable,
                                      resolve_trainable)

logger = logging.getLogger(__name__)


def trainable(spec: ExperimentSpec, data=None):
    from ray import tune

    fn = resolve_trainable(spec.trainable)
    if spec.trainable in BUILTIN:
        # with_parameters puts the data set into Ray's object store once; every node
        # fetches it once and its trials read it there without copying.
        fn = tune.with_parameters(fn, checkpoint_every=spec.checkpoint.every, data=data)
    return tune.with_resources(fn, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def shared_data(spec: ExperimentSpec):
    """The built-in trainable's data set, loaded once in the driver before Ray starts
    (a missing data folder is the user's to fix, exit 2), when the search does not vary
    what data the trials see; else None and each trial process loads its own."""
    if spec.trainable not in BUILTIN:
        return None
    from raytune_suite.training.config import DATA_KEYS
    from raytune_suite.training.data import load_arrays_for

    searched = {path.split(".")[0] for path, _ in spec.search_space.leaves()}
    if searched & set(DATA_KEYS):
        return None
    try:
        return load_arrays_for(dict(spec.config))
    except (ValueError, FileNotFoundError) as e:
        raise SpecError("config.data_root" if spec.config.get("data_root") else "config.dataset",
                        f"data could not be loaded: {e}",
                        spec.config.get("data_root") or spec.config.get("dataset")) from None


def to_object_store(data):
    """Put the data set into Ray's object store and hand back only the reference, so
    the driver does not keep a second copy alive for the whole search."""
    if data is None:
        return None
    import ray

    return ray.put(data)


def reuses_actors(spec: ExperimentSpec) -> bool:
    """A fresh worker process per trial costs ~2 s here; trials clean their own state.
    Not with schedulers that pause trials until a whole group catches up (synchronous
    PBT, HyperBand): the paused trials' cached actors can starve a trial that never
    started, and the group then waits for it forever (seen with synchronous PBT)."""
    sched = spec.scheduler
    return not ((sched.type == "pbt" and sched.synch) or sched.type == "hyperband")


def build_tuner(spec: ExperimentSpec, callbacks: list, data=None):
    """The ``tune.Tuner`` an experiment file describes."""
    from ray import tune

    parts = registry.build(spec)
    tune_config = tune.TuneConfig(
        metric=spec.metric,
        mode=spec.mode,
        search_alg=parts.searcher,
        scheduler=parts.scheduler,
        num_samples=registry.tune_num_samples(spec),
        reuse_actors=reuses_actors(spec),
        time_budget_s=spec.stop.time_budget_s,
        trial_dirname_creator=trial_dirname,
    )
    storage = spec.storage if "://" in spec.storage else str(Path(spec.storage).resolve())
    # No num_to_keep: Ray would force an experiment snapshot every `keep` checkpoints;
    # CheckpointRotation keeps `keep` without that (see engine/checkpoints.py).
    checkpoints = {}
    if is_class_trainable(resolve_trainable(spec.trainable)):
        # Ray drives a class trainable's checkpoints; a function trainable decides itself.
        checkpoints.update(checkpoint_frequency=spec.checkpoint.every, checkpoint_at_end=True)
    run_config = tune.RunConfig(
        name=spec.name,
        storage_path=storage,
        stop=parts.stopper,
        checkpoint_config=tune.CheckpointConfig(**checkpoints),
        failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures),
        callbacks=[OutcomeCallback(spec.max_t, spec.time_attr,
                                   budget=bool(spec.stop.time_budget_s)), PhaseMarks(),
                   *([ObjectivesReported(spec.metrics)] if spec.objectives else []),
                   *callbacks,
                   ResultJsonLogger(), ProgressCsvLogger(), *tensorboard(spec),
                   CheckpointRotation(spec.checkpoint.keep)],
        verbose=1,  # Ray's trial tables, unless show_progress() replaces them
    )
    return tune.Tuner(trainable(spec, data), param_space=parts.param_space,
                      tune_config=tune_config, run_config=run_config)


def tensorboard(spec: ExperimentSpec) -> list:
    """Ray's TensorBoard logger when the file asks for it (``tracking.tensorboard``).
    Ray adds its default loggers to a search unless ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS``
    is set; :func:`own_loggers_only` sets it around ``fit``, so the suite's loggers are the
    whole list."""
    if not spec.tracking.tensorboard:
        return []
    from ray.tune.logger import TBXLoggerCallback

    return [TBXLoggerCallback()]


def own_loggers_only():
    """The context to run ``fit`` in so that Ray adds none of its default loggers (its
    JSON and CSV loggers are replaced by the suite's; TensorBoard is opt-in)."""
    return _environment("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def show_progress(tuner, callbacks: list):
    """Show the search through ``callbacks`` (a console display) instead of Ray's own
    output, in this process only. Returns the context to run ``fit`` in.

    The Tuner's run config is pickled into the experiment folder when the Tuner is
    built, and ``Tuner.restore`` reads it back from there: a display bound to this
    process's terminal cannot travel that way, so it is attached to the built or
    restored Tuner here. Ray's newer output engine prints its banner, "View detailed
    results here", the last "Trial status" table and every trial error at any
    verbosity; its older one (``RAY_AIR_NEW_OUTPUT=0``) prints nothing at verbosity 0
    with a silent reporter, so ``fit`` runs under that one. A Tuner driven through Ray
    Client has no local run config and keeps Ray's output."""
    local = getattr(tuner, "_local_tuner", None)
    if local is None:
        return contextlib.nullcontext()
    run_config = local.get_run_config()
    # Ray adds its own per-trial printer unless one of this kind is among the callbacks.
    run_config.callbacks = [_SilentTrialPrinter(), *(run_config.callbacks or []), *callbacks]
    run_config.progress_reporter = _SilentReporter()
    run_config.verbose = 0
    return _environment("RAY_AIR_NEW_OUTPUT", "0")  # the older output engine


@contextlib.contextmanager
def _environment(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


class _SilentTrialPrinter(TrialProgressCallback):
    def _nothing(self, *args, **kwargs):
        pass

    on_trial_start = on_trial_result = on_trial_complete = on_trial_error = _nothing


class _SilentReporter(ProgressReporter):
    def should_report(self, trials, done: bool = False) -> bool:
        return False

    def report(self, trials, done: bool, *sys_info) -> None:
        pass


def trial_dirname(trial) -> str:
    """``train_classifier_1a2b3c4d`` instead of Ray's config-laden folder names."""
    return f"{trial.trainable_name}_{trial.trial_id}"


class ObjectivesReported(Callback):
    """With several objectives Ray checks only TuneConfig's metric (the first) in a
    trial's first result; this checks every other one the same way and fails the search
    in Ray's words, which the runner turns into one line naming each missing metric."""

    def __init__(self, metrics: list[str]):
        self.metrics, self.seen = metrics, set()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.trial_id in self.seen:
            return
        self.seen.add(trial.trial_id)
        missing = [m for m in self.metrics if m not in result]
        if missing:
            raise ValueError(f"Trial returned a result which did not include the specified "
                             f"metric(s) `{', '.join(missing)}` that the search optimises. "
                             f"Result: {result}")


class PhaseMarks(Callback):
    """Marks the first trial start and the first result (``engine.phases``)."""

    def on_trial_start(self, iteration, trials, trial, **info):
        phases.mark("first trial started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        phases.mark("first result")


def quiet_worker_logs() -> None:
    """As a ``worker_process_setup_hook`` (a runtime that is not the suite's own, e.g. the
    tests' shared one): what ``engine.worker`` does in the suite's embedded workers."""
    import raytune_suite.engine.worker  # noqa: F401


WORKER_MODULE = "raytune_suite.engine.worker"  # imported by every embedded worker


def worker_preloads(spec: Optional[ExperimentSpec]) -> list[str]:
    """What the embedded runtime's workers import as they start: ``engine.worker``
    always, and a built-in trainable's module (the classifier's imports torch: 2 to 5 s
    of CPU) when the search trains it. A user's trainable is imported by its trials, as
    Ray does it (it may be shipped by value, and need not be importable by name)."""
    module = BUILTIN_MODULES.get(spec.trainable) if spec is not None else None
    return [WORKER_MODULE] + ([module] if module else [])


def init_ray(address: Optional[str], log_to_driver: bool = True,
             spec: Optional[ExperimentSpec] = None) -> None:
    """Connect to a cluster, or start embedded Ray with all local CPUs and GPUs, whose
    workers import :func:`worker_preloads` while the driver builds the search.
    ``log_to_driver=False``: the trials' own stdout and stderr stay in Ray's log
    files (a failed trial's traceback is in its error.txt either way)."""
    import ray

    if ray.is_initialized():
        return
    if not address:
        # address="local": always a fresh embedded runtime, even when a `ray start` cluster
        # runs on this machine (plain ray.init() would silently join it).
        ray.init(address="local", logging_level=logging.WARNING, include_dashboard=False,
                 log_to_driver=log_to_driver,
                 _system_config={"preload_python_modules": worker_preloads(spec),
                                 # no workers for "any job" at Ray's start: still busy
                                 # with the preloads when the driver connects, they made
                                 # Ray start the job's own as well, and four workers
                                 # importing torch at once on 2 cores delayed the two
                                 # that run the trials (quickstart's first result
                                 # 11.3 -> 9.5 s)
                                 "prestart_worker_first_driver": False})
        return
    try:
        # On a cluster the job's own runtime_env (if any) stays in charge.
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver)
    except ConnectionError as e:
        raise SpecError("--address", f"no Ray cluster answered ({one_line(e, 160)}"
                                     "); start one with `ray start --head`, or leave --address "
                                     "out for embedded Ray", address) from None
    except Exception as e:  # noqa: BLE001 - auth failures come as several types
        if "uthenticat" in type(e).__name__ + str(e):
            raise token_auth_error(address) from None
        raise


def check_storage(spec: ExperimentSpec) -> None:
    """More than one node needs storage every node sees (Ray Tune syncs trial results and
    checkpoints through it); a local path only exists on the driver's machine."""
    import ray

    nodes = _alive_nodes()
    if nodes <= 1 or "://" in spec.storage or spec.storage_shared:
        return
    ray.shutdown()
    raise SpecError("storage", f"with {nodes} nodes, results and checkpoints must go to "
                               "storage every node sees: an NFS path mounted on all nodes (then "
                               "also set storage_shared: true) or a URI such as "
                               "s3://bucket/path", spec.storage)


def _alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def warn_sqlite_on_cluster(uri: Optional[str]) -> None:
    if uri and uri.startswith("sqlite:") and _alive_nodes() > 1:
        logger.warning("MLflow logs to %s from the driver only (workers never write to it); "
                       "with several users or drivers use a tracking server: "
                       "tracking.mlflow.tracking_uri: http://HEAD:5000", uri)
