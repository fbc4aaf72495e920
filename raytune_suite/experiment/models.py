"""The experiment file's typed, frozen models (pydantic). Cross-field rules live in
:mod:`raytune_suite.experiment.spec`; turning the models into Ray Tune objects lives in
:mod:`raytune_suite.engine`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from raytune_suite.errors import SpecError
from raytune_suite.experiment.space import SearchSpace
from raytune_suite.experiment.space import parse as parse_space

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]

SEARCHERS = ("grid", "random", "hyperopt", "optuna")
MULTI_OBJECTIVE_SEARCHERS = ("optuna",)  # the searchers that take several objectives
SCHEDULERS = ("fifo", "asha", "hyperband", "pbt")
# Names Ray Tune knows that the suite does not offer, and what to use instead.
UNSUPPORTED_SEARCHERS = {
    "bohb": "BOHB needs the hpbandster and ConfigSpace packages, which raytune-suite does "
            "not install; use search.algorithm: hyperopt with scheduler.type: hyperband",
    "ax": "use search.algorithm: hyperopt",
    "bayesopt": "use search.algorithm: hyperopt",
    "hebo": "use search.algorithm: hyperopt",
    "nevergrad": "use search.algorithm: hyperopt",
    "zoopt": "use search.algorithm: hyperopt",
}
UNSUPPORTED_SCHEDULERS = {
    "bohb": "BOHB needs the hpbandster and ConfigSpace packages, which raytune-suite does "
            "not install; use scheduler.type: hyperband (or asha) with search.algorithm: "
            "hyperopt",
    "hb_bohb": "use scheduler.type: hyperband with search.algorithm: hyperopt",
    "pb2": "PB2 needs GPy, which raytune-suite does not install; use scheduler.type: pbt",
    "median_stopping_rule": "use scheduler.type: asha",
    "resource_changing": "set resources per trial under resources:",
}


class _Model(BaseModel):
    # strict: YAML already carries types, so "8" is not silently taken for 8.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True,
                              arbitrary_types_allowed=True)


class SearchSpec(_Model):
    algorithm: str = "random"
    num_samples: PositiveInt = 1
    max_concurrent: Optional[PositiveInt] = None
    seed: Optional[int] = None
    n_initial_points: PositiveInt = 10  # hyperopt, optuna: random trials before TPE takes over

    @field_validator("algorithm")
    @classmethod
    def _known(cls, v: str) -> str:
        if v in UNSUPPORTED_SEARCHERS:
            raise ValueError(f"not supported: {UNSUPPORTED_SEARCHERS[v]}")
        if v not in SEARCHERS:
            raise ValueError(f"must be one of {', '.join(SEARCHERS)}")
        return v


TimeAttr = Annotated[str, Field(min_length=1)]
Mode = Literal["min", "max"]


class FifoSpec(_Model):
    type: Literal["fifo"]
    max_t: Optional[PositiveInt] = None  # stop every trial after this much time_attr
    time_attr: TimeAttr = "training_iteration"


class AshaSpec(_Model):
    type: Literal["asha"]
    max_t: PositiveInt
    grace_period: PositiveInt = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0
    brackets: PositiveInt = 1
    time_attr: TimeAttr = "training_iteration"


class HyperbandSpec(_Model):
    type: Literal["hyperband"]
    max_t: PositiveInt
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0
    stop_last_trials: bool = True
    time_attr: TimeAttr = "training_iteration"


class PbtSpec(_Model):
    type: Literal["pbt"]
    max_t: PositiveInt
    perturbation_interval: PositiveInt = 2  # training iterations
    burn_in_period: Annotated[int, Field(ge=0)] = 0
    quantile_fraction: Annotated[float, Field(gt=0, le=0.5)] = 0.25
    resample_probability: Annotated[float, Field(ge=0, le=1)] = 0.25
    synch: bool = False
    # Ray's hyperparam_mutations: what PBT may change, apart from the starting values
    # (config/search_space). None: derived from search_space.
    hyperparam_mutations: Optional[SearchSpace] = None
    time_attr: TimeAttr = "training_iteration"

    @field_validator("hyperparam_mutations", mode="before")
    @classmethod
    def _parse_mutations(cls, v: Any) -> Optional[SearchSpace]:
        if v is None:
            return None
        return parse_space(v, "scheduler.hyperparam_mutations", lists_are_choices=True)


SchedulerSpec = Annotated[Union[FifoSpec, AshaSpec, HyperbandSpec, PbtSpec],
                          Field(discriminator="type")]
SCHEDULER_MODELS = {"fifo": FifoSpec, "asha": AshaSpec, "hyperband": HyperbandSpec,
                    "pbt": PbtSpec}


class ResourcesSpec(_Model):
    cpu: PositiveFloat = 1.0
    # GPUs per trial: a share of one (0.25: four trials per GPU), whole GPUs, or "auto":
    # a probe on the cluster's GPU measures the packing (engine/gpu_probe.py); CPU trials
    # where there is no GPU.
    gpu: Union[Literal["auto"], Annotated[float, Field(ge=0)]] = 0.0

    @field_validator("gpu", mode="before")
    @classmethod
    def _packable(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("must be a number of GPUs per trial (0.25 to share one GPU among "
                             "4 trials) or auto")
        if v < 0:
            raise ValueError("must be >= 0 GPUs per trial, or auto")
        if v > 1 and not float(v).is_integer():
            raise ValueError("must be in (0, 1] to share a GPU, or a whole number of GPUs")
        return v

    @property
    def auto_gpu(self) -> bool:
        """``gpu: auto``: the packing is measured when the search starts."""
        return self.gpu == "auto"

    @property
    def wants_gpu(self) -> bool:
        """The trials would use a GPU where there is one."""
        return self.auto_gpu or self.gpu > 0

    def gpu_share(self, gpus: float) -> float:
        """GPUs per trial on a machine or cluster with ``gpus`` GPUs, before any probe:
        ``auto`` counts as none without a GPU and as one GPU per trial with one."""
        if self.auto_gpu:
            return 1.0 if gpus else 0.0
        return self.gpu


class CheckpointSpec(_Model):
    # Training iterations between checkpoints: the built-in trainable and class
    # trainables obey it; a function trainable decides for itself.
    every: PositiveInt = 1
    keep: PositiveInt = 2


class FailureSpec(_Model):
    max_failures: Annotated[int, Field(ge=0)] = 0


class StopSpec(BaseModel):
    """Ray Tune's ``stop``: ``training_iteration``, ``done``, and thresholds on reported
    metrics (any other key), plus the search's wall-clock budget."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    time_budget_s: Optional[PositiveFloat] = None
    training_iteration: Optional[PositiveInt] = None
    done: Optional[bool] = None

    @property
    def thresholds(self) -> dict[str, Any]:
        """Metric name -> value at which a trial stops (checked in spec.py)."""
        return dict(self.model_extra or {})


class MlflowSpec(_Model):
    enabled: bool = True
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment_name: Optional[str] = None  # defaults to the experiment's name

    @field_validator("tracking_uri")
    @classmethod
    def _is_uri(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", v):
            raise ValueError("must be a URI such as sqlite:///mlflow.db or http://host:5000")
        return v


class TrackingSpec(_Model):
    mlflow: MlflowSpec = MlflowSpec()
    # Ray Tune's TensorBoard files (events.out.tfevents.* per trial). Off by default: MLflow
    # holds the same curves, and Ray's TensorBoard logger costs the driver an import of
    # torch (about 1.5 s at start) and a writer thread per trial.
    tensorboard: bool = False


class ExperimentSpec(_Model):
    """A validated experiment file."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128)]
    trainable: str = "classifier"
    config: dict[str, Any] = {}
    search_space: SearchSpace = SearchSpace()
    metric: Annotated[str, Field(min_length=1)]  # the first objective with several
    mode: Mode
    # Several objectives (multi-objective search), written in the file as lists of equal
    # length (metric: [val_accuracy, model_size_kb], mode: [max, min]): every (metric,
    # mode) pair, the first being `metric`/`mode`, which rank the leaderboard and pick
    # `best`. Empty with one objective.
    objectives: tuple[tuple[str, Mode], ...] = ()
    search: SearchSpec = SearchSpec()
    scheduler: SchedulerSpec = FifoSpec(type="fifo")
    resources: ResourcesSpec = ResourcesSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    failure: FailureSpec = FailureSpec()
    stop: StopSpec = StopSpec()
    storage: str = "./ray_results"
    storage_shared: bool = False  # the local storage path is an NFS mount every node sees
    tracking: TrackingSpec = TrackingSpec()

    @field_validator("search_space", mode="before")
    @classmethod
    def _parse_space(cls, v: Any) -> SearchSpace:
        return parse_space(v)  # raises SpecError with the entry's path

    @model_validator(mode="before")
    @classmethod
    def _objective_lists(cls, data: Any) -> Any:
        """``metric`` and ``mode`` as lists -> the first pair, and every pair in
        ``objectives``."""
        if not isinstance(data, dict):
            return data
        metric, mode = data.get("metric"), data.get("mode")
        if "objectives" in data:  # only as a validated spec dumps it (model_dump)
            given = data["objectives"]
            pairs = tuple(tuple(p) for p in given) if isinstance(given, (list, tuple)) \
                and all(isinstance(p, (list, tuple)) for p in given) else None
            if pairs is not None and not isinstance(metric, list) and \
                    (not pairs or len(pairs) > 1 and pairs[0] == (metric, mode)):
                return {**data, "objectives": pairs}
            raise SpecError("objectives", "is not a field; list several objectives as metric: "
                                          "[a, b] with mode: [max, min]", given)
        if not isinstance(metric, list) and not isinstance(mode, list):
            return data
        metrics = metric if isinstance(metric, list) else [metric]
        modes = mode if isinstance(mode, list) else [mode]
        if not metrics or not all(isinstance(m, str) and m for m in metrics):
            raise SpecError("metric", "must be a metric name or a list of metric names",
                            metric)
        if not isinstance(metric, list):
            raise SpecError("mode", "must be 'min' or 'max' (a list goes with a list of "
                                    "metrics)", mode)
        if len(metric) < 2:
            raise SpecError("metric", "must be a metric name, or a list of at least 2 for a "
                                      "multi-objective search", metric)
        if len(set(metrics)) != len(metrics):
            raise SpecError("metric", "must not name a metric twice", metric)
        if len(modes) != len(metrics):
            raise SpecError("mode", f"must list one mode per metric ({len(metrics)} metrics)",
                            mode)
        for i, m in enumerate(modes):
            if m not in ("min", "max"):
                raise SpecError(f"mode[{i}]", "must be 'min' or 'max'", m)
        return {**data, "metric": metrics[0], "mode": modes[0],
                "objectives": tuple(zip(metrics, modes))}

    @property
    def all_objectives(self) -> tuple[tuple[str, str], ...]:
        """Every (metric, mode) pair the search optimises: one, or ``objectives``."""
        return self.objectives or ((self.metric, self.mode),)

    @property
    def metrics(self) -> list[str]:
        return [m for m, _ in self.all_objectives]

    @property
    def max_t(self) -> Optional[int]:
        """``time_attr`` units after which every trial stops (None: the trainable decides)."""
        return self.scheduler.max_t

    @property
    def time_attr(self) -> str:
        return self.scheduler.time_attr

    @property
    def max_iterations(self) -> Optional[int]:
        """Training iterations after which every trial stops, where the file says."""
        limits = [self.stop.training_iteration]
        if self.time_attr == "training_iteration":
            limits.append(self.max_t)
        limits = [x for x in limits if x]
        return min(limits) if limits else None

    @property
    def experiment_path(self) -> str:
        """Where Ray Tune writes this experiment's results (absolute, or a URI)."""
        if "://" in self.storage:
            return self.storage.rstrip("/") + "/" + self.name
        return str((Path(self.storage).expanduser().resolve()) / self.name)

    @property
    def mlflow_experiment(self) -> str:
        return self.tracking.mlflow.experiment_name or self.name
