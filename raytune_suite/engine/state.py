"""The files that make a folder an experiment of the suite's: the experiment file as run
(``raytune_suite.yaml``), the suite's own state (``raytune_suite.state``: tracking URI,
parent MLflow run, gaps), how each trial ended (``outcomes.jsonl``), and whether Ray Tune
saved any state of its own yet.

None of the suite's files ends in ``.json`` or ``.pkl``: on ``Tuner.restore`` Ray copies
every such file of the experiment folder into its driver staging folder and uploads the
copies back at every snapshot, so a file of ours by such a name would be overwritten with
its stale copy during a resumed search (and cut short by a kill mid-upload). Experiments
made before keep ``raytune_suite.json`` / ``outcomes.json``; they are read, and replaced
by the new names at the next write."""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from raytune_suite.errors import SpecError

SPEC_FILE = "raytune_suite.yaml"  # the experiment file as run (after --set)
STATE_FILE = "raytune_suite.state"  # JSON: tracking URI, parent run, whether MLflow has gaps
OUTCOMES_FILE = "outcomes.jsonl"  # one JSON line per trial: how it ended (engine.outcomes)
_OLD_STATE_FILE, _OLD_OUTCOMES_FILE = "raytune_suite.json", "outcomes.json"


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
    for name in (STATE_FILE, _OLD_STATE_FILE):
        file = Path(path) / name
        if file.is_file():
            return json.loads(file.read_text())
    return {}


def _replace(path: Path, name: str, text: str, old_name: str) -> None:
    """Write ``path/name`` atomically (a crash leaves the old file or the new one) and
    remove the file it replaces under its old name."""
    partial = path / f".{name}.partial"
    partial.write_text(text)
    partial.replace(path / name)
    (path / old_name).unlink(missing_ok=True)


def write_state(path: str | Path, state: dict) -> None:
    """Replace the saved state."""
    _replace(Path(path), STATE_FILE, json.dumps(state), _OLD_STATE_FILE)


def update_state(path: str | Path, **changes: Any) -> None:
    """Change fields of an experiment's saved state. A value of None removes the field
    (except the tracking URI and parent run, which may be None)."""
    state = {k: v for k, v in {**read_state(path), **changes}.items()
             if v is not None or k in ("tracking_uri", "parent_run_id")}
    write_state(path, state)


def adopt_old_names(path: str | Path) -> None:
    """Move the files of a folder made before the rename to their new names (before
    ``Tuner.restore`` copies the folder's ``.json`` files); nothing else is written."""
    path = Path(path)
    if (path / _OLD_STATE_FILE).is_file():
        write_state(path, read_state(path))
    if (path / _OLD_OUTCOMES_FILE).is_file():
        record_outcomes(path, {})


def read_outcomes(path: str | Path) -> dict[str, str]:
    """Trial id -> how it ended, for the trials the search has settled."""
    file = Path(path) / OUTCOMES_FILE
    if file.is_file():
        rows = (json.loads(line) for line in file.read_text().splitlines() if line.strip())
        return {row["trial_id"]: row["outcome"] for row in rows}
    old = Path(path) / _OLD_OUTCOMES_FILE
    return json.loads(old.read_text()) if old.is_file() else {}


def record_outcomes(path: str | Path, outcomes: dict[str, str]) -> None:
    """Add these trials' outcomes to the experiment's (a resume settles only its own)."""
    merged = {**read_outcomes(path), **outcomes}
    text = "".join(json.dumps({"trial_id": k, "outcome": merged[k]}) + "\n"
                   for k in sorted(merged))
    _replace(Path(path), OUTCOMES_FILE, text, _OLD_OUTCOMES_FILE)


LOCK_FILE = ".raytune_suite.lock"


@contextmanager
def experiment_lock(path: str | Path) -> Iterator[None]:
    """Hold the experiment folder for one process: a second ``run`` or ``resume`` of the
    same experiment while the first still runs would have two drivers deleting each
    other's checkpoints. The lock dies with its process (a SIGKILL frees it)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise SpecError("EXPERIMENT", f"is being run by another process (pid {holder}); "
                                      "wait for it to end, or stop it first", str(path)) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


LOST_DIR = ".lost_trials"


def set_aside_lost_trials(path: str | Path, known: set[str]) -> list[str]:
    """Move the folders of trials Ray's state does not know into ``.lost_trials/``.

    A driver killed after a trial reported but before Ray saved its state leaves that
    trial's folder (its rows are written to storage at once), while the resumed search
    never runs it again: Ray's searcher suggests afresh. Its MLflow run is deleted for the
    same reason; both stay restorable. Returns the folder names moved.
    """
    path = Path(path)
    moved = []
    for folder in path.iterdir():
        if not folder.is_dir() or folder.name.startswith(".") or folder.name in known:
            continue
        if (folder / "result.json").exists() or (folder / "params.json").exists():
            (path / LOST_DIR).mkdir(exist_ok=True)
            folder.replace(path / LOST_DIR / folder.name)
            moved.append(folder.name)
    return moved
