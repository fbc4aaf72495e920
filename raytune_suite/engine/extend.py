"""More trials for a search that has ended (``raytune-suite extend``), and the scheduler
state Ray Tune does not save (ASHA's rungs), put back on every restore.

Ray Tune cannot add trials to a finished search: ``Tuner.restore`` reads back how many
trials the search generator was to make, and it made them all. It does save the whole
search generator, wrappers and searcher included (HyperOpt's ``Trials`` hold every
earlier suggestion and its result), so :func:`grow_search` raises that count in the saved
state before the restore; the searcher then continues where it stopped (TPE does not
start its random phase again) and the new trials get the next ordinals.

Ray does not save the trial scheduler at all: a restored search starts ASHA with empty
rungs, so the first new trial at each rung would pass for lack of rivals, and so would
every trial of a resumed search until the rungs fill again. :func:`seed_asha_rungs` fills
them from the trials' own result rows, as ASHA recorded them the first time.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import yaml

from raytune_suite.engine.state import SPEC_FILE
from raytune_suite.errors import SpecError
from raytune_suite.experiment import ExperimentSpec
from raytune_suite.experiment.teacher import result_rows

logger = logging.getLogger(__name__)

# Ray Tune's saved search generators: the one that wraps a Searcher (HyperOpt), and the
# random/grid one (search/search_generator.py, search/basic_variant.py).
_SEARCH_GEN_STATE = "search_gen_state-*.json"
_BASIC_VARIANT_STATE = "basic-variant-state-*.json"


def check_extendable(spec: ExperimentSpec, n: int) -> None:
    """Refuse, as a user mistake, what cannot grow: a bad count, a pure grid (every
    configuration has run), and the schedulers that train trials as one group."""
    if n < 1:
        raise SpecError("--num-samples", "must be a whole number >= 1", n)
    if spec.search.algorithm == "grid":
        raise SpecError("search.algorithm", "a grid search has run every configuration of its "
                                            "grid; to search further, change the grid and run "
                                            "a new experiment", "grid")
    if spec.scheduler.type in ("pbt", "hyperband"):
        raise SpecError("scheduler.type", "extend adds trials one by one; pbt and hyperband "
                                          "train their trials as one population or bracket, "
                                          "so run a new experiment instead",
                        spec.scheduler.type)


def grow_search(path: Path, spec: ExperimentSpec, n: int) -> int:
    """Let the saved search generator of the experiment in ``path`` make ``n`` more
    trials (before ``Tuner.restore`` reads it), and record the new total in the
    experiment's saved file. Returns the new ``search.num_samples``.

    The caller has checked ``spec`` and ``n`` with :func:`check_extendable`.

    Raises:
        SpecError: when Ray saved no search generator state (it stopped before its first
            snapshot: resume it first).
    """
    generator = _newest(path, _SEARCH_GEN_STATE)
    if generator:  # a Searcher (HyperOpt) behind Ray's SearchGenerator
        state = _load(generator)
        state["total_samples"] += n
        state["finished"] = False
        _save(generator, state)
    else:
        variant = _newest(path, _BASIC_VARIANT_STATE)
        if not variant:
            raise SpecError("EXPERIMENT", "has no saved searcher state to continue from "
                                          f"(it stopped too early); run `raytune-suite resume "
                                          f"{path}` first", str(path))
        state = _load(variant)
        # one more sample is one more pass over the grid keys of a random search
        iterator = state["_iterators"][-1]
        per_sample = state["_total_samples"] // max(1, iterator.num_samples)
        iterator.num_samples += n
        iterator.num_samples_left += n
        state["_total_samples"] += n * per_sample
        state["_finished"] = False
        _save(variant, state)
    raw = yaml.safe_load((path / SPEC_FILE).read_text())
    total = spec.search.num_samples + n
    raw.setdefault("search", {})["num_samples"] = total
    partial = path / f".{SPEC_FILE}.partial"
    partial.write_text(yaml.safe_dump(raw, sort_keys=False))
    partial.replace(path / SPEC_FILE)
    return total


def _newest(path: Path, pattern: str) -> str | None:
    # Ray restores the file whose name sorts last (ray.tune.utils.util._load_newest_checkpoint)
    found = glob.glob(os.path.join(str(path), pattern))
    return max(found) if found else None


def _load(file: str) -> dict:
    import ray.cloudpickle as cloudpickle

    with open(file, "rb") as f:
        return cloudpickle.load(f)


def _save(file: str, state: dict) -> None:
    import ray.cloudpickle as cloudpickle

    partial = f"{file}.partial"
    with open(partial, "wb") as f:
        cloudpickle.dump(state, f)
    os.replace(partial, file)


def seed_asha_rungs(tuner, path: Path, spec: ExperimentSpec) -> int:
    """Fill the restored ``tuner``'s ASHA rungs with what its earlier trials recorded
    there; returns how many rung entries were filled.

    With one bracket (the suite's default) every trial recorded into that bracket. With
    several, Ray picked a bracket per trial at random and saved none of the picks, so
    the rungs stay empty and the log says so.
    """
    from ray.tune.schedulers import AsyncHyperBandScheduler

    scheduler = tuner._local_tuner._tune_config.scheduler  # what fit() will use
    if not isinstance(scheduler, AsyncHyperBandScheduler):
        return 0
    brackets = scheduler._brackets
    if len(brackets) != 1:
        logger.warning("ASHA with %d brackets: Ray did not save which bracket each earlier "
                       "trial was in, so the restored rungs start empty", len(brackets))
        return 0
    sign = 1.0 if spec.mode == "max" else -1.0  # ASHA's metric_op, set only when fit starts
    rungs = brackets[0]._rungs  # [(milestone, {trial_id: value}), ...], highest first
    filled = 0
    for trial_id, rows in _result_rows(path):
        for row in rows:
            if spec.metric not in row or spec.time_attr not in row:
                continue
            # as ASHA's _Bracket.on_result: the highest milestone reached and not yet
            # recorded takes this result's value
            for milestone, recorded in rungs:
                if row[spec.time_attr] < milestone or trial_id in recorded:
                    continue
                recorded[trial_id] = sign * float(row[spec.metric])
                filled += 1
                break
    return filled


def _result_rows(path: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(trial id, its result rows) of each trial folder of the experiment (not those set
    aside as lost: Ray's state does not know them)."""
    for file in sorted(path.glob("*/result.json")):
        rows = result_rows(file)  # a resume may follow a kill mid-line
        if rows and "trial_id" in rows[0]:
            yield str(rows[0]["trial_id"]), rows
