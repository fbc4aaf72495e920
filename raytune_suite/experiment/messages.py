"""pydantic's validation errors -> one line ``<field>: <rule>, got <value>`` each."""

from __future__ import annotations

import math
from typing import Annotated, Any, Union, get_args, get_origin

from raytune_suite.errors import SpecError
from raytune_suite.experiment.models import SCHEDULER_MODELS, SCHEDULERS, ExperimentSpec

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
_UNION_MEMBERS = {"int", "float", "str", "bool", "list", "dict", "none"}
_SCHEDULER_UNION = Union[tuple(SCHEDULER_MODELS.values())]


def convert(err: dict) -> SpecError:
    """One pydantic error (``ValidationError.errors()`` item) as a :class:`SpecError`."""
    loc = display_loc(err["loc"])
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        valid = valid_keys(err["loc"][:-1])
        hint = f"; valid keys are {', '.join(valid)}" if valid else ""
        return SpecError(loc, f"unknown key{hint}", err["loc"][-1])
    if kind == "missing":
        return SpecError(loc, "is required")
    if kind == "union_tag_invalid":
        tags = ", ".join(t.strip("'") for t in str(ctx.get("expected_tags", "")).split(", "))
        return SpecError(f"{loc}.type" if loc else "type", f"must be one of {tags}", ctx.get("tag"))
    if kind == "union_tag_not_found":
        return SpecError(f"{loc}.type", f"is required (one of {', '.join(SCHEDULERS)})")
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


def display_loc(loc: tuple) -> str:
    """A field path without the tags pydantic inserts for tagged unions (``asha``) and
    the union members it names (``literal['sgd','adam']``, ``int``)."""
    parts = [str(p) for i, p in enumerate(loc)
             if not (i == 1 and loc[0] == "scheduler" and p in SCHEDULER_MODELS)
             and not (isinstance(p, str) and ("[" in p or p in _UNION_MEMBERS))]
    return ".".join(parts)


def valid_keys(loc: tuple) -> list[str]:
    return list(getattr(type_at(loc), "model_fields", {}))


def type_at(path) -> Any:
    """The schema's type at a field path; None where the path leaves the schema
    (free-form ``config.*``, or an unknown key that validation reports anyway).

    Under ``scheduler``, pydantic's error paths carry the variant's tag (``asha``); a
    plain field name is looked up on the first variant that has it.
    """
    model: Any = ExperimentSpec
    for p in path:
        if model == _SCHEDULER_UNION:
            if p in SCHEDULER_MODELS:
                model = SCHEDULER_MODELS[p]
                continue
            model = next((m for m in SCHEDULER_MODELS.values() if p in m.model_fields),
                         SCHEDULER_MODELS["asha"])
        fields = getattr(model, "model_fields", None)
        if not fields or p not in fields:
            return None
        model = _unwrap(fields[p].annotation)
    return model


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Union:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
        return Union[tuple(args)]
    return annotation
