"""The files that make a folder an experiment of the suite's: the experiment file as run
(``raytune_suite.yaml``), the suite's own state (``raytune_suite.json``: tracking URI,
parent MLflow run, gaps), and whether Ray Tune saved any state of its own yet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raytune_suite.errors import SpecError

SPEC_FILE = "raytune_suite.yaml"  # the experiment file as run (after --set)
STATE_FILE = "raytune_suite.json"  # tracking URI, parent run, whether MLflow has gaps


def resolve_experiment(ref: str, storage: str = "./ray_results") -> Path:
    """An experiment given by path, or by name under the default storage."""
    for candidate in (Path(ref), Path(storage) / ref):
        if (candidate / SPEC_FILE).is_file():
            return candidate.resolve()
    raise SpecError("EXPERIMENT", f"must be an experiment folder or a name under {storage} "
                                  f"(no {SPEC_FILE} found)", ref)


def has_ray_state(path: str | Path) -> bool:
    """Whether Ray Tune saved this experiment's state at least once (before that, a
    crash leaves nothing that Tuner.restore could continue)."""
    return any(Path(path).glob("experiment_state-*.json"))


def read_state(path: str | Path) -> dict:
    file = Path(path) / STATE_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def write_state(path: str | Path, state: dict) -> None:
    """Replace the saved state (atomically: a crash leaves the old file or the new one)."""
    path = Path(path)
    partial = path / f".{STATE_FILE}.partial"
    partial.write_text(json.dumps(state))
    partial.replace(path / STATE_FILE)


def update_state(path: str | Path, **changes: Any) -> None:
    """Change fields of an experiment's saved state. A value of None removes the field
    (except the tracking URI and parent run, which may be None)."""
    state = {k: v for k, v in {**read_state(path), **changes}.items()
             if v is not None or k in ("tracking_uri", "parent_run_id")}
    write_state(path, state)
