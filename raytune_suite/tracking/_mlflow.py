"""The MLflow client and its plain records: URIs, reachability, entities, flattening."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Optional


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` absolute (against the working directory)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).expanduser().resolve())
    return uri


def configure_client() -> None:
    """Fail over in seconds, not minutes. MLflow's HTTP client retries a request 7 times
    with exponential backoff by default (about 4 minutes); the driver logs every result,
    so a dead server would stall tuning. The user's own settings win."""
    for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
                        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")):
        os.environ.setdefault(name, value)


def short_reason(error: BaseException) -> str:
    """The useful part of an MLflow client error (``Connection refused``, a status code)."""
    text = " ".join(str(error).split())
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return found.group(1).strip() if found else text[:200]


def check_reachable(uri: str) -> None:
    """Raise a :class:`SpecError` (before Ray starts) when runs cannot be logged to ``uri``.

    A SQLite file's folder must exist (the file itself is created on first use); a
    tracking server must answer a request within the client's timeout.
    """
    from raytune_suite.errors import SpecError

    field = "tracking.mlflow.tracking_uri"
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise SpecError(field, f"the SQLite file's folder {folder} must exist", uri)
        return
    if uri.startswith(("http://", "https://")):
        configure_client()
        try:
            mlflow_client(uri).search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - connection, auth and server errors alike
            raise SpecError(field, f"no MLflow tracking server answered ({short_reason(e)}); "
                                   "start it, fix the URI, or run with --no-mlflow",
                            uri) from None


def mlflow_client(uri: str):
    warming = _warming.get(uri)
    if warming is not None and warming is not threading.current_thread():
        warming.join()
    return _client(uri)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:"):
        _sqlite_wal()
    return MlflowClient(tracking_uri=uri)


_warming: dict[str, threading.Thread] = {}


def warm_up(uri: str) -> None:
    """Import MLflow and open ``uri``'s store on a background thread, while the driver
    starts Ray (which mostly waits for its processes): seconds of imports and, for
    SQLite, the schema check, or the tables of a new ``mlflow.db``. MLflow keeps the
    store per URI; :func:`mlflow_client` waits for the warm-up before its first use. A
    failure here is left for that first use to report."""

    def work() -> None:
        try:
            _client(uri).search_experiments(max_results=1)
        except Exception:  # noqa: BLE001 - the real request says what is wrong
            pass

    if uri not in _warming:
        _warming[uri] = threading.Thread(target=work, name="mlflow-warm-up", daemon=True)
        _warming[uri].start()


_WAL = False


def _sqlite_wal() -> None:
    """Open SQLite tracking stores in write-ahead-log mode with ``synchronous=NORMAL``.

    MLflow's SQL store commits 8 to 10 times per trial run (each ``log_batch`` opens
    sessions for metrics, params and tags); in SQLite's default rollback-journal mode
    each commit writes and deletes a journal file and waits for two fsyncs. In WAL mode
    a commit appends to ``mlflow.db-wal`` and, with ``synchronous=NORMAL``, waits for no
    fsync (a process crash loses nothing; a power cut may lose the last commits, never
    the database), and readers (``mlflow ui`` during a search) no longer block the
    writer. WAL is a property of the file, kept for every later client. Set once per
    process, for every SQLite connection SQLAlchemy opens from then on."""
    global _WAL
    if _WAL:
        return
    import sqlite3

    import sqlalchemy

    def pragmas(connection, _record) -> None:
        if not isinstance(connection, sqlite3.Connection):
            return
        cursor = connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError:  # another process holds the file: as it is
            pass
        finally:
            cursor.close()

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", pragmas)
    _WAL = True


def param(k, v):
    from mlflow.entities import Param

    return Param(str(k), str(v)[:6000])


def metric(k, v, step):
    from mlflow.entities import Metric

    return Metric(str(k), float(v), int(time.time() * 1000), int(step))


def tag(k, v):
    from mlflow.entities import RunTag

    return RunTag(str(k), str(v)[:8000])


def as_float(v: Any) -> Optional[float]:
    if isinstance(v, bool):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``, as Ray Tune flattens configs and results."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out
