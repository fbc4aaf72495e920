"""The experiment file, validated into frozen typed models before Ray or MLflow start.

Every mistake becomes one line ``<field path>: <rule>, got <value>``
(:class:`~raytune_suite.errors.SpecError`); nothing is written to disk here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from raytune_suite import algorithms
from raytune_suite.search_space import Domain, SearchSpace
from raytune_suite.search_space import parse as parse_space
from raytune_suite.errors import SpecError, SpecErrors

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Model(BaseModel):
    # strict: YAML already carries types, so "8" is not silently taken for 8.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True,
                              arbitrary_types_allowed=True)


class SearchSpec(_Model):
    algorithm: str = "random"
    num_samples: PositiveInt = 1
    max_concurrent: Optional[PositiveInt] = None
    seed: Optional[int] = None
    n_initial_points: PositiveInt = 10  # hyperopt: random trials before TPE takes over

    @field_validator("algorithm")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in algorithms.SEARCHERS:
            raise ValueError(f"must be one of {', '.join(algorithms.SEARCHERS)}")
        return v


class FifoSpec(_Model):
    type: Literal["fifo"]
    max_t: Optional[PositiveInt] = None  # stop every trial after this many iterations


class AshaSpec(_Model):
    type: Literal["asha"]
    max_t: PositiveInt
    grace_period: PositiveInt = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0
    brackets: PositiveInt = 1


class PbtSpec(_Model):
    type: Literal["pbt"]
    max_t: PositiveInt
    perturbation_interval: PositiveInt = 2  # training iterations
    quantile_fraction: Annotated[float, Field(gt=0, le=0.5)] = 0.25
    resample_probability: Annotated[float, Field(ge=0, le=1)] = 0.25
    synch: bool = False


SchedulerSpec = Annotated[Union[FifoSpec, AshaSpec, PbtSpec], Field(discriminator="type")]


class ResourcesSpec(_Model):
    cpu: PositiveFloat = 1.0
    gpu: Annotated[float, Field(ge=0)] = 0.0

    @field_validator("gpu")
    @classmethod
    def _packable(cls, v: float) -> float:
        if v > 1 and not float(v).is_integer():
            raise ValueError("must be in (0, 1] to share a GPU, or a whole number of GPUs")
        return v


class CheckpointSpec(_Model):
    every: PositiveInt = 1  # training iterations between checkpoints
    keep: PositiveInt = 2


class FailureSpec(_Model):
    max_failures: Annotated[int, Field(ge=0)] = 0


class StopSpec(_Model):
    time_budget_s: Optional[PositiveFloat] = None


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


class ExperimentSpec(_Model):
    """A validated experiment file."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128)]
    trainable: str = "classifier"
    config: dict[str, Any] = {}
    search_space: SearchSpace = SearchSpace()
    metric: Annotated[str, Field(min_length=1)]
    mode: Literal["min", "max"]
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

    @property
    def max_t(self) -> Optional[int]:
        """Training iterations after which every trial stops (None: the trainable decides)."""
        return self.scheduler.max_t

    @property
    def experiment_path(self) -> str:
        """Where Ray Tune writes this experiment's results (absolute, or a URI)."""
        if "://" in self.storage:
            return self.storage.rstrip("/") + "/" + self.name
        return str((Path(self.storage).expanduser().resolve()) / self.name)

    @property
    def mlflow_experiment(self) -> str:
        return self.tracking.mlflow.experiment_name or self.name


# ------------------------------------------------------------------ loading


def load_spec(path: str | Path, overrides: list[str] = ()) -> tuple[ExperimentSpec, dict]:
    """Read, override and validate an experiment file.

    Args:
        path: the YAML file.
        overrides: ``a.b=value`` strings (``--set``); values are typed by the schema.

    Returns:
        The frozen spec and the raw mapping it was built from (saved with the results).

    Raises:
        SpecError: for any mistake, before anything is created.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(str(path), f"must be a readable file ({e.strerror})", str(path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(where, "must be valid YAML", problem) from None
    if not isinstance(raw, dict):
        raise SpecError(str(path), "must hold a mapping of experiment fields", raw)
    for item in overrides:
        apply_override(raw, item)
    return validate(raw), raw


def validate(raw: dict) -> ExperimentSpec:
    """Validate a raw mapping (already overridden) into an :class:`ExperimentSpec`."""
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecErrors([_convert(err, raw) for err in e.errors()]) from None
    _check_consistency(spec)
    from raytune_suite.trainables import resolve_trainable

    resolve_trainable(spec.trainable)  # a bad import path is a spec error too
    if spec.trainable == "classifier":
        _check_classifier_config(spec)
    return spec


def _check_classifier_config(spec: ExperimentSpec) -> None:
    """The built-in trainable's keys and fixed values are checked before Ray starts."""
    from raytune_suite.training.config import ClassifierConfig

    valid = list(ClassifierConfig.model_fields)
    for section, keys in (("search_space", [k for k, _ in spec.search_space.entries]),
                          ("config", list(spec.config))):
        for key in keys:
            if key not in valid:
                raise SpecError(f"{section}.{key}", "unknown key for the classifier trainable; "
                                f"valid keys are {', '.join(valid)}", key)
    searched = {k for k, _ in spec.search_space.entries}
    fixed = {k: v for k, v in spec.config.items() if k not in searched}
    try:
        ClassifierConfig.model_validate(fixed)
    except ValidationError as e:
        err = e.errors()[0]
        raise _convert(dict(err, loc=("config", *err["loc"])), fixed) from None
    # Every value a plain (non-conditional) searched entry can take: its options, or the
    # ends of its range.
    for key, domain in spec.search_space.entries:
        if not isinstance(domain, Domain) or domain.is_conditional:
            continue
        values = domain.args if domain.kind in ("choice", "grid") else domain.args[:2]
        for value in values:
            try:
                ClassifierConfig.model_validate({**fixed, key: value})
            except ValidationError as e:
                err = e.errors()[0]
                raise _convert(dict(err, loc=("search_space", key, *err["loc"][1:])),
                               fixed) from None


def _check_consistency(spec: ExperimentSpec) -> None:
    """Rules that involve more than one field."""
    algo, sched = spec.search.algorithm, spec.scheduler
    leaves = list(spec.search_space.leaves("search_space."))
    if algo == "hyperopt":
        for p, d in leaves:
            if d.kind == "grid":
                raise SpecError(p, "grid entries cannot be used with the hyperopt searcher "
                                   "(use choice, or search.algorithm: grid)", {"grid": list(d.args)})
    if algo == "grid":
        for p, d in leaves:
            if d.kind not in ("grid", "choice"):
                raise SpecError(p, "the grid searcher needs grid or choice entries",
                                {d.kind: list(d.args)})
            if d.is_conditional:
                raise SpecError(p, "the grid searcher cannot enumerate a conditional choice",
                                "choice of mappings")
    if sched.type == "pbt":
        if algo == "hyperopt":
            raise SpecError("search.algorithm", "pbt explores by itself; use random or grid "
                                                "initial configs with it", algo)
        if not spec.search_space.pbt_mutations():
            raise SpecError("search_space", "pbt needs at least one mutable (non-conditional) "
                                            "entry to perturb", "no mutable entries")
        if spec.checkpoint.keep < 3:
            raise SpecError("checkpoint.keep", "must be >= 3 with pbt, so a donor's checkpoint "
                                               "outlives the exploit that copies it",
                            spec.checkpoint.keep)
        if sched.perturbation_interval % spec.checkpoint.every:
            raise SpecError("scheduler.perturbation_interval",
                            f"must be a multiple of checkpoint.every ({spec.checkpoint.every}) "
                            "so exploits start from a fresh checkpoint",
                            sched.perturbation_interval)
    if sched.type == "asha" and sched.grace_period > sched.max_t:
        raise SpecError("scheduler.grace_period", f"must be <= scheduler.max_t ({sched.max_t})",
                        sched.grace_period)
    epochs = spec.config.get("epochs")
    if sched.max_t and isinstance(epochs, int) and "epochs" not in dict(spec.search_space.entries) \
            and epochs < sched.max_t:
        raise SpecError("scheduler.max_t", f"must be <= config.epochs ({epochs}); the trainable "
                                           "stops there", sched.max_t)


# ------------------------------------------------------------------ overrides


def apply_override(raw: dict, item: str) -> None:
    """Apply one ``--set a.b=value`` to the raw mapping, typed by the schema.

    The value is read as YAML (``3`` is an int, ``1e-3`` a float, ``[1, 2]`` a list)
    unless the schema says the field is a string, in which case it is kept verbatim.
    """
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise SpecError("--set", "must look like field.path=value", item)
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise SpecError("--set", "field path must not have empty parts", key)
    value: Any = text
    if not _schema_wants_str(parts):
        try:
            value = yaml.safe_load(text) if text.strip() else text
        except yaml.YAMLError:
            value = text
        if isinstance(value, str) and parts[0] == "search_space":
            raise SpecError(f"--set {key}", "must be a domain mapping such as "
                            "{loguniform: [1e-4, 1e-1]}", text)
    node = raw
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise SpecError(f"--set {key}", f"{p} is not a mapping", child)
        node = child
    node[parts[-1]] = value


def _schema_wants_str(parts: list[str]) -> bool:
    return _type_at(parts) is str


_SCHEDULER_VARIANTS = {"fifo": FifoSpec, "asha": AshaSpec, "pbt": PbtSpec}


def _type_at(path) -> Any:
    """The schema's type at a field path; None where the path leaves the schema
    (free-form ``config.*``, or an unknown key that validation reports anyway).

    Under ``scheduler``, pydantic's error paths carry the variant's tag (``asha``); a
    plain field name is looked up on ASHA, since the variants share their field types.
    """
    model: Any = ExperimentSpec
    for p in path:
        if model == Union[FifoSpec, AshaSpec, PbtSpec]:
            if p in _SCHEDULER_VARIANTS:
                model = _SCHEDULER_VARIANTS[p]
                continue
            model = AshaSpec
        fields = getattr(model, "model_fields", None)
        if not fields or p not in fields:
            return None
        model = _unwrap(fields[p].annotation)
    return model


def _unwrap(annotation: Any) -> Any:
    from typing import get_args, get_origin

    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Union:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
        return Union[tuple(args)]
    return annotation


# ------------------------------------------------------------------ error text

_RULES = {
    "missing": "is required",
    "union_tag_not_found": "is required",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "finite_number": "must be a finite number",
    "string_too_short": "must not be empty",
}


def _convert(err: dict, raw: dict) -> SpecError:
    loc = _display_loc(err["loc"])
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        valid = _valid_keys(err["loc"][:-1])
        hint = f"; valid keys are {', '.join(valid)}" if valid else ""
        return SpecError(loc, f"unknown key{hint}", err["loc"][-1])
    if kind == "missing":
        return SpecError(loc, "is required")
    if kind == "union_tag_invalid":
        tags = ", ".join(t.strip("'") for t in str(ctx.get("expected_tags", "")).split(", "))
        return SpecError(f"{loc}.type" if loc else "type", f"must be one of {tags}", ctx.get("tag"))
    if kind == "union_tag_not_found":
        return SpecError(f"{loc}.type", "is required (one of fifo, asha, pbt)")
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "")
        return SpecError(loc, f"must be one of {expected.replace(' or ', ', ')}", value)
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        return SpecError(loc, f"must be {op} {bound}", value)
    if kind == "string_pattern_mismatch":
        return SpecError(loc, "must use only letters, digits, '_', '.' and '-' "
                              "(it names a folder and an MLflow experiment)", value)
    if kind == "value_error":
        return SpecError(loc, str(ctx.get("error", err["msg"])), value)
    if kind == "float_type" and isinstance(value, float) and math.isnan(value):
        return SpecError(loc, "must be a number, not NaN", value)
    rule = _RULES.get(kind) or err["msg"][0].lower() + err["msg"][1:]
    return SpecError(loc, rule, value)


_UNION_MEMBERS = {"int", "float", "str", "bool", "list", "dict", "none"}


def _display_loc(loc: tuple) -> str:
    # Drop the discriminator tag that pydantic inserts for tagged unions.
    # Also the union members it names in a path (``literal['sgd','adam']``, ``int``).
    parts = [str(p) for i, p in enumerate(loc)
             if not (i == 1 and loc[0] == "scheduler" and p in algorithms.SCHEDULERS)
             and not (isinstance(p, str) and ("[" in p or p in _UNION_MEMBERS))]
    return ".".join(parts)


def _valid_keys(loc: tuple) -> list[str]:
    return list(getattr(_type_at(loc), "model_fields", {}))
