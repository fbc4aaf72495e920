"""The experiment file, validated into frozen typed models before Ray or MLflow start.

Every mistake becomes one line ``<field path>: <rule>, got <value>``
(:class:`~raytune_suite.errors.SpecError`); nothing is written to disk here.
Whether Ray Tune accepts what the file describes (the searcher, scheduler and param
space built for real) is checked by :func:`raytune_suite.engine.check`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from raytune_suite.errors import SpecError, SpecErrors
from raytune_suite.experiment.messages import convert, type_at
from raytune_suite.experiment.models import (MULTI_OBJECTIVE_SEARCHERS, UNSUPPORTED_SCHEDULERS,
                                             ExperimentSpec, PbtSpec)
from raytune_suite.experiment.space import Domain, SearchSpace, find_domain_literal


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


def validate(raw: dict, teacher: bool = True) -> ExperimentSpec:
    """Validate a raw mapping (already overridden) into an :class:`ExperimentSpec`.

    ``teacher=False``: leave ``config.distill_from`` as written, unresolved and unchecked
    (reading a finished search's results, whose teacher may be gone since)."""
    _check_unsupported(raw)
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecErrors([convert(err) for err in e.errors()]) from None
    _check_consistency(spec)
    from raytune_suite.trainables import resolve_trainable

    resolve_trainable(spec.trainable)  # a bad import path is a spec error too
    if spec.trainable == "classifier":
        spec = _check_classifier_config(spec, teacher)
    return spec


def _check_unsupported(raw: dict) -> None:
    scheduler = raw.get("scheduler")
    kind = scheduler.get("type") if isinstance(scheduler, dict) else None
    if isinstance(kind, str) and kind in UNSUPPORTED_SCHEDULERS:
        raise SpecError("scheduler.type", f"not supported: {UNSUPPORTED_SCHEDULERS[kind]}", kind)


def mutation_space(spec: ExperimentSpec) -> SearchSpace:
    """What PBT may change: ``scheduler.hyperparam_mutations``, or else the searched
    entries themselves."""
    sched = spec.scheduler
    if isinstance(sched, PbtSpec) and sched.hyperparam_mutations is not None:
        return sched.hyperparam_mutations
    return spec.search_space


def _check_classifier_config(spec: ExperimentSpec, teacher: bool = True) -> ExperimentSpec:
    """The built-in trainable's keys and fixed values are checked before Ray starts.

    Returns the spec, with ``config.distill_from`` replaced by the absolute path of the
    teacher's checkpoint folder when it is set and ``teacher`` (see
    :mod:`experiment.teacher`)."""
    from pydantic import ValidationError as PydanticError

    from raytune_suite.training.config import ClassifierConfig

    valid = list(ClassifierConfig.model_fields)
    spaces = [("search_space", spec.search_space)]
    if isinstance(spec.scheduler, PbtSpec) and spec.scheduler.hyperparam_mutations:
        spaces.append(("scheduler.hyperparam_mutations", spec.scheduler.hyperparam_mutations))
    for section, keys in [(name, [k for k, _ in space.entries]) for name, space in spaces] + \
            [("config", list(spec.config))]:
        for key in keys:
            if key not in valid:
                raise SpecError(f"{section}.{key}", "unknown key for the classifier trainable; "
                                f"valid keys are {', '.join(valid)}", key)
    searched = {k for k, _ in spec.search_space.entries}
    fixed = {k: v for k, v in spec.config.items() if k not in searched}
    try:
        ClassifierConfig.model_validate(fixed)
    except PydanticError as e:
        err = e.errors()[0]
        raise convert(dict(err, loc=("config", *err["loc"]))) from None
    # Every value a plain (non-conditional) searched or mutated entry can take: its
    # options, or the ends of its range.
    for section, space in spaces:
        for key, domain in space.entries:
            if not isinstance(domain, Domain) or domain.is_conditional:
                continue
            values = domain.args if domain.kind in ("choice", "grid") else \
                (domain.bounds or domain.args[:1])
            for value in values:
                try:
                    ClassifierConfig.model_validate({**fixed, key: value})
                except PydanticError as e:
                    err = e.errors()[0]
                    raise convert(dict(err, loc=(*section.split("."), key,
                                                 *err["loc"][1:]))) from None
    return _with_teacher(spec, fixed, spaces) if teacher else spec


def _with_teacher(spec: ExperimentSpec, fixed: dict, spaces: list) -> ExperimentSpec:
    """``distill_from``: fixed, with the data fixed too, and naming a teacher trained on
    the same data set and split; the spec with the teacher's checkpoint folder in it."""
    from raytune_suite.experiment.teacher import check_teacher
    from raytune_suite.training.config import DATA_KEYS

    for section, space in spaces:
        if "distill_from" in dict(space.entries):
            raise SpecError(f"{section}.distill_from", "must be fixed (under config): one "
                            "teacher per search", "searched")
    ref = fixed.get("distill_from")
    if not ref:
        return spec
    models: list = []
    for section, space in spaces:
        for key, domain in space.entries:
            if key == "model" and isinstance(domain, Domain) and not domain.is_conditional \
                    and domain.kind in ("choice", "grid"):
                models += [m for m in domain.args if m not in models]
            elif key in DATA_KEYS:
                raise SpecError(f"{section}.{key}", "cannot be searched with "
                                "config.distill_from: the teacher was trained on one data "
                                "set and split", "searched")
    path = check_teacher(ref, fixed, spec.storage, models)
    return spec.model_copy(update={"config": {**spec.config, "distill_from": str(path)}})


def _check_consistency(spec: ExperimentSpec) -> None:
    """Rules that involve more than one field."""
    _check_config_is_fixed(spec)
    _check_searcher(spec)
    _check_scheduler(spec)
    _check_stop(spec)


def _check_config_is_fixed(spec: ExperimentSpec) -> None:
    literal = find_domain_literal(spec.config, "config")
    if literal:
        node: Any = spec.config
        for part in literal.split(".")[1:]:
            node = node[part]
        raise SpecError(literal, "must be a fixed value; a domain such as this one belongs "
                                 f"under search_space ({literal.replace('config', 'search_space', 1)})",
                        node)
    for path, _ in spec.search_space.leaves():
        node, parts = spec.config, path.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
            fixed = ".".join(parts[:i + 1])
            if i == len(parts) - 1 or not isinstance(node, dict):
                raise SpecError(f"search_space.{path}", f"is also fixed at config.{fixed}; a "
                                "value is either fixed (config) or searched (search_space). "
                                "For PBT from a fixed start, keep config and list the "
                                "mutation under scheduler.hyperparam_mutations", node)


def _check_searcher(spec: ExperimentSpec) -> None:
    algo = spec.search.algorithm
    leaves = list(spec.search_space.leaves("search_space."))
    if algo in ("hyperopt", "optuna"):
        for p, d in leaves:
            if d.kind == "grid":
                raise SpecError(p, f"grid entries cannot be used with the {algo} searcher "
                                   "(use choice, or search.algorithm: grid)", {"grid": list(d.args)})
    if algo == "optuna":
        for p, d in leaves:
            if d.is_conditional:
                raise SpecError(p, "the optuna searcher cannot map a conditional choice (Ray "
                                   "Tune's OptunaSearch takes flat spaces); list plain values, "
                                   "or use search.algorithm: hyperopt", "choice of mappings")
    if spec.objectives:
        if algo not in MULTI_OBJECTIVE_SEARCHERS:
            raise SpecError("search.algorithm", f"must be optuna to search several objectives "
                                                f"(metric lists {len(spec.objectives)}; the "
                                                "other searchers optimise one)", algo)
        if spec.scheduler.type != "fifo":
            raise SpecError("scheduler.type", "must be fifo with several objectives: asha, "
                                              "hyperband and pbt stop or replace trials by one "
                                              "metric, which would cut the Pareto front short",
                            spec.scheduler.type)
    if algo == "grid":
        for p, d in leaves:
            if d.kind not in ("grid", "choice"):
                raise SpecError(p, "the grid searcher needs grid or choice entries",
                                {d.kind: list(d.args)})
            if d.is_conditional:
                raise SpecError(p, "the grid searcher cannot enumerate a conditional choice",
                                "choice of mappings")


def _check_scheduler(spec: ExperimentSpec) -> None:
    sched = spec.scheduler
    if sched.type == "pbt":
        _check_pbt(spec)
    if sched.type == "asha" and sched.grace_period > sched.max_t:
        raise SpecError("scheduler.grace_period", f"must be <= scheduler.max_t ({sched.max_t})",
                        sched.grace_period)
    epochs = spec.config.get("epochs")
    if sched.max_t and spec.time_attr == "training_iteration" and isinstance(epochs, int) \
            and "epochs" not in dict(spec.search_space.entries) and epochs < sched.max_t:
        raise SpecError("scheduler.max_t", f"must be <= config.epochs ({epochs}); the trainable "
                                           "stops there", sched.max_t)


def _check_pbt(spec: ExperimentSpec) -> None:
    sched = spec.scheduler
    if spec.search.algorithm in ("hyperopt", "optuna"):
        raise SpecError("search.algorithm", "pbt explores by itself; use random or grid "
                                            "initial configs with it", spec.search.algorithm)
    if sched.time_attr != "training_iteration":
        raise SpecError("scheduler.time_attr", "must be training_iteration with pbt (its "
                                               "exploits and checkpoints count iterations)",
                        sched.time_attr)
    mutations = mutation_space(spec)
    where = "scheduler.hyperparam_mutations" if sched.hyperparam_mutations is not None \
        else "search_space"
    for path, domain in mutations.leaves(f"{where}."):
        if domain.is_conditional and sched.hyperparam_mutations is not None:
            raise SpecError(path, "a choice of mappings cannot be mutated by pbt; list plain "
                                  "values", "choice of mappings")
    if not mutations.pbt_mutations():
        raise SpecError(where, "pbt needs at least one mutable (non-conditional) entry to "
                               "perturb", "no mutable entries")
    from raytune_suite.trainables import obeys_checkpoint_every

    if obeys_checkpoint_every(spec.trainable) and \
            sched.perturbation_interval % spec.checkpoint.every:
        raise SpecError("scheduler.perturbation_interval",
                        f"must be a multiple of checkpoint.every ({spec.checkpoint.every}) "
                        "so exploits start from a fresh checkpoint",
                        sched.perturbation_interval)


def _check_stop(spec: ExperimentSpec) -> None:
    if spec.stop.done is False:
        raise SpecError("stop.done", "must be true or left out (a trial that reports "
                                     "done=True always stops)", False)
    for key, value in spec.stop.thresholds.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not math.isfinite(value):
            raise SpecError(f"stop.{key}", "must be a number: a trial stops once its "
                                           f"reported {key} reaches it", value)


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
    objective_list = parts in (["metric"], ["mode"]) and text.strip().startswith("[")
    if type_at(parts) is not str or objective_list:
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
