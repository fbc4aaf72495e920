"""The trial runs' MLflow writer in a process of its own, so that it never shares the
driver's GIL with Ray Tune's loop.

A :class:`~raytune_suite.tracking._writer.RunWriter` on a thread keeps MLflow's requests
out of the loop's way only while they wait (on a server, on SQLite's disk); the rest of a
request is Python (MLflow's client and SQLAlchemy: about 15 ms of CPU per trial run
against a SQLite store) that runs under the same GIL as the loop, and at dozens of trials
a second that time is taken from the loop. :class:`ProcessWriter` has the same interface
and runs the same ``RunWriter`` in a child process (this module's ``main``) instead;
the loop only pickles each event into a pipe. What stays the same:

- events keep their order, are merged and retried by the ``RunWriter`` in the child;
- backpressure: the pipe holds about 1 MiB of events, then the child's bounded queue;
  when both are full the loop waits (``waited``) and nothing is dropped;
- offline: the child says so once (one line back on the pipe) and ``on_offline`` is
  called in the driver, as with the thread; a child that dies counts as offline, with
  its exit code as the reason, so nothing is lost silently (``mlflow-sync`` backfills);
- ``flush``/``close`` wait until the child has written everything sent before them;
- Ctrl-C is the driver's to handle: the child runs in a process group of its own (the
  terminal signals the driver's group) and ignores SIGINT, so the driver's
  ``on_experiment_end`` can still flush it;
- a SIGKILL of the driver closes the pipe: the child exits at once, without writing
  what is left (exactly as the thread would die with its process), and ``resume``
  backfills it from Ray's results; a child that kept writing would race that backfill.

The child starts first thing (:func:`prestart`, called by ``raytune-suite run``), while
the driver checks the file and starts Ray, and serves every later search of the same
driver: its imports (MLflow, SQLAlchemy: seconds of CPU) are paid once per driver, on a
core the driver leaves idle meanwhile, never during a search.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable, Optional

from raytune_suite.tracking._writer import Events

logger = logging.getLogger(__name__)

PIPE_BYTES = 1 << 20  # the driver -> writer pipe's buffer (Linux allows 1 MiB unprivileged)


class ProcessWriter(Events):
    """A :class:`~raytune_suite.tracking._writer.RunWriter` in a child process, with its
    interface: ``start``, ``log``, ``end``, ``flush``, ``close``, ``offline``,
    ``requests`` (by method, known once flushed) and ``waited``."""

    def __init__(self, uri: str, parent_run_id: str, resumed: bool = False,
                 on_offline: Optional[Callable[[BaseException], None]] = None):
        self.uri, self.parent_run_id, self.on_offline = uri, parent_run_id, on_offline
        self.offline: Optional[str] = None
        self.requests: Counter = Counter()
        self.seconds = 0.0  # spent in MLflow requests, in the child
        self.waited = 0.0
        self._acks: dict[int, threading.Event] = {}
        self._flushes = 0
        self._closing = False
        self._stopped = False  # the child acknowledged "stop"
        global _spare
        spare, _spare = _spare, None
        if spare is None or spare[0].poll() is not None:
            spare = _spawn()
        self._proc, self._send_conn, self._recv_conn = spare
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="mlflow-writer-pipe",
                                        daemon=True)
        self._reader.start()
        self._send(("config", uri, parent_run_id, resumed), control=True)

    # ---- the loop's side ----------------------------------------------------------------

    def put(self, event: tuple) -> None:
        self._send(event)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until the child has written (or, offline, dropped) everything sent so far;
        False if ``timeout`` passed first or the child is gone."""
        if not self._reader.is_alive():
            return False
        self._flushes += 1
        done = self._acks[self._flushes] = threading.Event()
        if not self._send(("flush", self._flushes), control=True):
            return False
        return done.wait(timeout)

    def close(self, timeout: Optional[float] = None) -> bool:
        """Flush and end this search's writer; the child, warm, waits for the next search
        of this driver with the same store (tests and benchmarks run many in one process),
        or exits with the driver."""
        done = self.flush(timeout)
        self._closing = True
        self._send(("stop",), control=True)
        self._reader.join(timeout)
        global _spare
        if self._stopped and self._proc.poll() is None and _spare is None:
            _spare = (self._proc, self._send_conn, self._recv_conn)
        elif self._proc.poll() is None:
            self._proc.kill()
        logger.debug("MLflow writer process: %d requests (%s), %.2f s in them, loop waited "
                     "%.2f s", sum(self.requests.values()), dict(self.requests),
                     self.seconds, self.waited,
                     extra={"requests": dict(self.requests), "seconds": self.seconds})
        return done

    def _send(self, message, control: bool = False) -> bool:
        if self.offline and not control:
            return False
        start = time.perf_counter()
        try:
            with self._send_lock:
                self._send_conn.send(message)
        except (OSError, ValueError):  # the child is gone; the reader says why
            return False
        took = time.perf_counter() - start
        if took > 0.001:  # a full pipe: the child is behind
            self.waited += took
        return True

    # ---- what the child says --------------------------------------------------------------

    def _read(self) -> None:
        while True:
            try:
                message = self._recv_conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "offline":
                self._go_offline(message[1])
            elif kind in ("flushed", "stopped"):
                self.requests = Counter(message[2])
                self.seconds = message[3]
                if kind == "stopped":
                    self._stopped = True
                    break
                event = self._acks.pop(message[1], None)
                if event is not None:
                    event.set()
        code = self._proc.poll()
        if not self._closing:
            if code is None:
                try:
                    code = self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    code = "still running, not answering"
            self._go_offline(f"the MLflow writer process exited (code {code})")
        for event in self._acks.values():
            event.set()

    def _go_offline(self, reason: str) -> None:
        if self.offline:
            return
        self.offline = reason
        if self.on_offline is not None:
            self.on_offline(RuntimeError(reason))


_spare: Optional[tuple] = None  # a started child that waits for its next search


def prestart() -> None:
    """Start a writer process now, so that its imports (MLflow and SQLAlchemy: over 2 s of
    CPU) run while the driver checks the file and starts Ray, and none of it during the
    search. The CLI calls it first thing; it writes and connects to nothing until a
    :class:`ProcessWriter` takes it with its store's URI; unused, it is stopped when the
    driver exits."""
    global _spare
    if _spare is None or _spare[0].poll() is not None:
        _spare = _spawn()


@atexit.register
def stop_spare() -> None:
    """Stop the waiting child, if any: at exit, and when the search turns out to log
    nothing to MLflow (``tracking.mlflow.enabled: false``), so that its imports do not
    compete with Ray's start."""
    global _spare
    if _spare is not None and _spare[0].poll() is None:
        _spare[0].kill()
    _spare = None


def _spawn() -> tuple:
    """A child process and the two ends of its pipes: (process, send, recv)."""
    to_child, from_driver = os.pipe()
    from_child, to_driver = os.pipe()
    try:
        import fcntl

        fcntl.fcntl(from_driver, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass  # the default 64 KiB: the loop may wait sooner, nothing else changes
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # raytune_suite's parent folder
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", f"import sys; from {__name__} import main; main(sys.argv[1:])",
             str(to_child), str(to_driver)],
            pass_fds=(to_child, to_driver), stdin=subprocess.DEVNULL, env=env,
            process_group=0)  # Ctrl-C signals the terminal's group: the driver's, not this
    finally:
        os.close(to_child)
        os.close(to_driver)
    return (proc, Connection(from_driver, readable=False),
            Connection(from_child, writable=False))


def _child(argv: list[str]) -> None:
    """The child: read events from the driver, hand them to a RunWriter, answer flushes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    from_driver, to_driver = argv
    inbox = Connection(int(from_driver), writable=False)
    outbox = Connection(int(to_driver), readable=False)
    lock = threading.Lock()

    def say(message) -> None:
        with lock:
            outbox.send(message)

    def receive():
        try:
            return inbox.recv()
        except (EOFError, OSError):
            os._exit(0)  # the driver is gone (SIGKILL): resume backfills what is queued

    from raytune_suite.tracking._mlflow import configure_client, short_reason
    from raytune_suite.tracking._writer import RunWriter

    configure_client()  # fail over in seconds: the driver set it after this child started

    # MLflow's imports while the driver checks the file and starts Ray. A store is opened
    # only once the driver has opened it (its search run comes before "config"): two
    # processes creating the tables of a new SQLite store at once collide.
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import mlflow.tracking  # noqa: F401
    while True:  # one search after the other, until the driver exits
        _, uri, parent_run_id, resumed = receive()  # ("config", ...): the next search
        writer = RunWriter(uri, parent_run_id, resumed=resumed,
                           on_offline=lambda e: say(("offline", short_reason(e))))
        while True:
            message = receive()
            kind = message[0]
            if kind == "flush":
                writer.flush()
                say(("flushed", message[1], dict(writer.requests), writer.seconds))
            elif kind == "stop":
                writer.close()
                say(("stopped", None, dict(writer.requests), writer.seconds))
                break
            else:
                writer.put(message)


def main(argv: list[str]) -> None:
    """The child's entry point (``python -c``, so that its package's ``__init__``, which
    imports this module, runs first)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _child(argv)
