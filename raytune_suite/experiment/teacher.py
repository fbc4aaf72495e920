"""``config.distill_from``: the teacher of a distilling ``classifier`` search, found and
checked before Ray starts.

The value names a checkpoint folder, or a finished experiment (its folder, or its name under
the student's ``storage``), whose best checkpoint is then picked the way ``raytune-suite
best`` picks it: the trial with the best value of the experiment's (first) metric over its
epochs, not diverged, and that trial's best retained checkpoint (trials without one are
passed over). The experiment is read from its own files (the experiment file as run, each
trial's ``result.json`` rows, whose ``checkpoint_dir_name`` names the checkpoint saved with
the row): the experiment layer does not call up into the engine.

Validation replaces the value with the checkpoint folder's absolute path, so every trial
(whatever its working directory, on whichever node) loads the same teacher, and MLflow
records which one.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import yaml

from raytune_suite.errors import CheckpointError, SpecError, one_line

FIELD = "config.distill_from"
SPEC_FILE = "raytune_suite.yaml"  # the experiment file as run (engine.state.SPEC_FILE)
RESULT_FILE = "result.json"  # Ray Tune's rows, one JSON line per reported result
CHECKPOINT_FILES = ("checkpoint.pt", "meta.json")  # training.checkpoint's


def resolve_teacher(ref: str, storage: str = "./ray_results") -> Path:
    """The absolute checkpoint folder ``ref`` names.

    Args:
        ref: a checkpoint folder, an experiment folder, or an experiment name under
            ``storage``.
        storage: the student experiment's storage (names are looked up there).

    Raises:
        SpecError: nothing of the kind there, or an experiment with no usable checkpoint.
    """
    candidates = [Path(ref).expanduser()]
    if "://" not in storage:
        candidates.append(Path(storage).expanduser() / ref)
    for candidate in candidates:
        if all((candidate / name).is_file() for name in CHECKPOINT_FILES):
            return candidate.resolve()
        if (candidate / SPEC_FILE).is_file():
            return best_checkpoint(candidate).resolve()
    raise SpecError(FIELD, "must be a checkpoint folder (checkpoint.pt and meta.json), or a "
                           f"finished experiment's folder or name under {storage}", ref)


def best_checkpoint(experiment: Path) -> Path:
    """The checkpoint folder of ``experiment``'s best trial (see the module's docstring).

    Raises:
        SpecError: no trial has a finite metric and a retained checkpoint.
    """
    metric, mode = _objective(experiment)
    sign = 1.0 if mode == "max" else -1.0
    found: list[tuple[float, float, Path]] = []  # (trial's best, checkpoint's value, folder)
    for trial in sorted(p for p in experiment.iterdir() if (p / RESULT_FILE).is_file()):
        rows = result_rows(trial / RESULT_FILE)
        if not rows or rows[-1].get("diverged"):
            continue
        values = [sign * v for v in (_number(r.get(metric)) for r in rows) if v is not None]
        saved = {}  # checkpoint folder -> the value reported with it (the last row wins)
        for r in rows:
            name, value = r.get("checkpoint_dir_name"), _number(r.get(metric))
            if name and value is not None and \
                    all((trial / name / f).is_file() for f in CHECKPOINT_FILES):
                saved[name] = sign * value
        if values and saved:
            name = max(saved, key=saved.get)
            found.append((max(values), saved[name], trial / name))
    if not found:
        raise SpecError(FIELD, f"must name an experiment with a checkpoint of a trial that "
                               f"reported a finite {metric}; {experiment} has none",
                        str(experiment))
    return max(found, key=lambda f: (f[0], f[1]))[2]


def _objective(experiment: Path) -> tuple[str, str]:
    """The experiment's (first) metric and mode, from the file as run."""
    try:
        raw = yaml.safe_load((experiment / SPEC_FILE).read_text())
        metric, mode = raw["metric"], raw["mode"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise SpecError(FIELD, f"must name a readable experiment ({SPEC_FILE}: {e})",
                        str(experiment)) from None
    # Several objectives (metric: [a, b]): the first ranks trials, as `best` does.
    metric = metric[0] if isinstance(metric, list) and metric else metric
    mode = mode[0] if isinstance(mode, list) and mode else mode
    return str(metric), str(mode)


def result_rows(path: Path) -> list[dict[str, Any]]:
    """A trial's result.json rows, skipping a last line a crash cut short."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _number(value: Any) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def check_teacher(ref: str, student: dict[str, Any], storage: str,
                  searched_models: list[str] = ()) -> Path:
    """Find the teacher, load it (digest checked, ``weights_only``) and make sure it was
    trained on the student's data set and split; returns its checkpoint folder.

    Same data set and split, not only the same input shape and classes: a teacher trained
    on another split has seen the student's validation (or test) samples and would carry
    them into the student's scores. ``limit_train`` may differ.

    Args:
        ref: the ``distill_from`` value.
        student: the student's fixed config.
        storage: the student experiment's storage.
        searched_models: values of a searched ``model`` (it decides whether digits are
            images or features): each must fit the teacher's data too.

    Raises:
        SpecError: naming ``config.distill_from`` and what does not fit.
    """
    from pydantic import ValidationError

    from raytune_suite.training import checkpoint as ckpt
    from raytune_suite.training.config import ClassifierConfig
    from raytune_suite.training.data import data_spec

    path = resolve_teacher(ref, storage)
    try:
        state = ckpt.load(path)
    except CheckpointError as e:
        raise SpecError(FIELD, f"must be a readable checkpoint ({e})", ref) from None
    try:
        teacher = ClassifierConfig.model_validate(state["config"])
    except (ValidationError, TypeError) as e:
        raise SpecError(FIELD, "must be a checkpoint of the classifier trainable (its config "
                               f"does not validate: {one_line(e, 200)})",
                        ref) from None
    expected = _data_of(data_spec(teacher))
    for model in list(searched_models) or [None]:
        cfg = ClassifierConfig.model_validate({**student, **({"model": model} if model else {})})
        got = _data_of(data_spec(cfg))
        if got != expected:
            differ = ", ".join(_difference(k, getattr(got, k), getattr(expected, k))
                               for k in got.__dataclass_fields__
                               if getattr(got, k) != getattr(expected, k))
            raise SpecError(FIELD, "must be a teacher trained on the student's data set and "
                                   f"split (a teacher that saw other samples would leak them "
                                   f"into the student's scores); differs in {differ}", ref)
    return path


# DataSpec's fields by the config keys that set them.
_KEYS = {"name": "dataset", "root": "data_root", "folds": "cv_folds"}


def _difference(field: str, student: Any, teacher: Any) -> str:
    if field == "image":  # digits: 1x8x8 images for image models, 64 features for mlp
        kind = {True: "images (an image model)", False: "features (model mlp)"}
        return f"digits read as {kind[student]} (teacher: as {kind[teacher]})"
    return f"{_KEYS.get(field, field)} {student!r} (teacher: {teacher!r})"


def _data_of(spec):
    """A DataSpec reduced to what decides the samples and split of each sample."""
    root = os.path.realpath(spec.root) if spec.root else None
    return replace(spec, root=root, download=False, limit=None)
