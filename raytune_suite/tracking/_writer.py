"""One background thread that makes every MLflow request of a search's trial runs.

Ray Tune handles every result of every trial in one driver loop, and each MLflow request
is a database transaction (or an HTTP round trip): made inside the loop, they stall the
search. The callback (``tracking._callback``) hands plain events to a :class:`RunWriter`
instead and returns at once. The writer:

- keeps each run's events in order and merges what piles up into as few requests as it
  can: ``create_run``, one ``log_batch`` for every params/metrics/tags event in a row
  (params of a new run and the outcome tags of its end included; at most 1,000 metrics,
  100 params and 100 tags per request, MLflow's limits) and ``set_terminated``;
- after a resume, looks up the search's existing runs once (one request), so that a
  trial's run is found again instead of duplicated and steps it holds are not repeated;
- retries a failed request (2 more tries, 1 and 3 s apart; a ``create_run`` is looked up
  by its trial before it is tried again); when MLflow still fails, it goes offline:
  ``on_offline`` is called once (one warning) and later events are dropped; tuning goes
  on and ``raytune-suite mlflow-sync`` backfills later;
- makes the loop wait when its queue is full: nothing is dropped while MLflow answers.

What a SIGKILL of the driver loses from the queue, Ray still has in the experiment's
result files: ``tracking.backfill`` writes it when the search is resumed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from raytune_suite.tracking._mlflow import short_reason

logger = logging.getLogger(__name__)

MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # MLflow's log_batch limits
LINGER = 0.05  # seconds the writer waits after an event for more to merge with it
RETRY_DELAYS = (1.0, 3.0)  # seconds before the 2nd and the 3rd try of a request
PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "PERMISSION_DENIED",
             "UNAUTHENTICATED"}  # MLflow error codes that a retry cannot fix


@dataclass
class _Run:
    """What MLflow holds of one trial's run, as far as this writer knows."""

    run_id: Optional[str] = None
    status: Optional[str] = None  # RUNNING, FINISHED, FAILED, ...
    params: set = field(default_factory=set)  # param keys the run holds
    logged_through: int = 0  # a resumed run: steps up to this one are already logged
    pending_params: list = field(default_factory=list)  # to go with the next request


class _Flush:
    """A marker in the queue: set once everything queued before it is written."""

    def __init__(self):
        self.done = threading.Event()


_STOP = object()


class Events:
    """The events of trial runs, as the callback hands them to a writer (``put``)."""

    def put(self, event: tuple) -> None:
        raise NotImplementedError

    def start(self, key: str, name: str, tags: dict[str, str], params: list = ()) -> None:
        """The trial ``key`` started (or restarted): create its run, or mark it RUNNING
        again; ``params`` go with the run's next request."""
        self.put(("start", key, (name, dict(tags), list(params))))

    def log(self, key: str, step: int, metrics: list = (), params: list = (),
            tags: list = ()) -> None:
        """Metrics of one result (all at ``step``), params and tags of run ``key``."""
        self.put(("data", key, (step, list(metrics), list(params), list(tags))))

    def end(self, key: str, status: str, metrics: list = (), tags: list = ()) -> None:
        """The trial ended: ``metrics`` and ``tags`` in its last request, then ``status``."""
        self.put(("end", key, (status, list(metrics), list(tags))))


class RunWriter(Events):
    """A writer thread for the trial runs (children of ``parent_run_id``) of one search.

    Args:
        uri: the tracking URI.
        parent_run_id: the search's MLflow run; its experiment holds the trial runs.
        resumed: the search ran before (a resume): look its runs up before creating any.
        on_offline: called once, from the writer thread, with the error that made it stop.
        maxsize: events the queue holds before the loop waits.
        client: an ``MlflowClient`` (made from ``uri`` when None).
        linger: seconds to wait, once an event arrives, for more of them: a trial that
            reports quickly then costs one ``log_batch`` for several results.
    """

    def __init__(self, uri: str, parent_run_id: str, resumed: bool = False,
                 on_offline: Optional[Callable[[BaseException], None]] = None,
                 maxsize: int = 10_000, client=None, linger: float = LINGER):
        self.uri, self.parent_run_id, self.resumed = uri, parent_run_id, resumed
        self.linger = linger
        self.on_offline = on_offline
        self.offline: Optional[str] = None
        self.requests: Counter = Counter()  # MLflow requests made, by method
        self.waited = 0.0  # seconds the loop waited on a full queue
        self.seconds = 0.0  # seconds spent in MLflow requests (retries' waits included)
        self._client = client
        self._experiment_id: Optional[str] = None
        self._runs: dict[str, _Run] = {}
        self._known: Optional[dict[str, Any]] = None  # trial key -> an earlier Run
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._work, name="mlflow-writer", daemon=True)
        self._thread.start()

    # ---- the loop's side: enqueue and return -------------------------------------------

    def put(self, event: tuple) -> None:
        """An event as ``start``, ``log`` and ``end`` make it: ``(kind, key, payload)``."""
        self._put(event)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued so far is written (or dropped, offline); False
        if ``timeout`` passed first."""
        if not self._thread.is_alive():
            return self._queue.empty()
        marker = _Flush()
        self._put(marker)
        return marker.done.wait(timeout)

    def close(self, timeout: Optional[float] = None) -> bool:
        """Flush and stop the thread."""
        done = self.flush(timeout)
        if self._thread.is_alive():
            self._put(_STOP)
            self._thread.join(timeout)
        return done

    def _put(self, item) -> None:
        if self.offline and not isinstance(item, _Flush) and item is not _STOP:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            start = time.perf_counter()
            self._queue.put(item)
            self.waited += time.perf_counter() - start

    # ---- the writer thread ----------------------------------------------------------------

    def _work(self) -> None:
        while True:
            items = [self._queue.get()]
            if self.linger and not isinstance(items[0], _Flush) and items[0] is not _STOP:
                time.sleep(self.linger)  # let a trial's next results join this request
            while len(items) < 5000:  # what piled up meanwhile
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            events: list = []
            for item in items:
                if isinstance(item, _Flush) or item is _STOP:
                    self._write(events)
                    events = []
                    if item is _STOP:
                        return
                    item.done.set()
                else:
                    events.append(item)
            self._write(events)

    def _write(self, events: list) -> None:
        """Write a run's events in order, merging consecutive data into one request."""
        if not events or self.offline:
            return
        ops: dict[str, list] = {}
        for kind, key, payload in events:
            run_ops = ops.setdefault(key, [])
            if kind == "start":
                run_ops.append(["start", payload])
                continue
            if kind == "data":
                step, metrics, params, tags = payload
                metrics = [(step, m) for m in metrics]
            else:
                status, metrics, tags = payload
                metrics, params = [(None, m) for m in metrics], []
            if run_ops and run_ops[-1][0] == "data":
                last = run_ops[-1][1]
                last[0].extend(metrics)
                last[1].extend(params)
                last[2].extend(tags)
            else:
                run_ops.append(["data", (metrics, params, tags)])
            if kind == "end":
                run_ops.append(["status", status])
        try:
            for key, run_ops in ops.items():
                for op, payload in run_ops:
                    self._apply(key, op, payload)
        except Exception as e:  # noqa: BLE001 - MLflow raises many types; tuning goes on
            self._go_offline(e)

    def _apply(self, key: str, op: str, payload) -> None:
        run = self._runs.get(key)
        if op == "start":
            name, tags, params = payload
            if run is None:
                run = self._runs[key] = self._earlier_run(key) or _Run()
            if run.run_id is None:
                run.run_id = self._create(name, tags)
                run.status = "RUNNING"
            elif run.status != "RUNNING":
                self._request("update_run", run.run_id, status="RUNNING")
                run.status = "RUNNING"
            run.pending_params.extend(p for p in params if p.key not in run.params)
            return
        if run is None or run.run_id is None:
            return  # the run could not be created (offline): nothing to add to
        if op == "status":
            self._request("set_terminated", run.run_id, status=payload)
            run.status = payload
            return
        steps_metrics, params, tags = payload
        metrics = []
        for step, m in steps_metrics:
            if step is not None:
                if step <= run.logged_through:
                    continue  # logged before a resume; the restored trial repeats it
                run.logged_through = 0
            metrics.append(m)
        params = [p for p in run.pending_params + params if p.key not in run.params]
        run.pending_params = []
        self._log_batch(run.run_id, metrics, list({p.key: p for p in params}.values()), tags)
        run.params.update(p.key for p in params)

    def _log_batch(self, run_id: str, metrics: list, params: list, tags: list) -> None:
        """As few ``log_batch`` requests as MLflow's limits allow."""
        while metrics or params or tags:
            p, params = params[:MAX_PARAMS], params[MAX_PARAMS:]
            t, tags = tags[:MAX_TAGS], tags[MAX_TAGS:]
            m, metrics = metrics[:MAX_METRICS - len(p) - len(t)], \
                metrics[MAX_METRICS - len(p) - len(t):]
            self._request("log_batch", run_id, metrics=m, params=p, tags=t)

    def _create(self, name: str, tags: dict[str, str]) -> str:
        experiment_id = self._experiment()

        def create() -> str:
            return self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id

        def created_already() -> Optional[str]:  # a lost response to a request that worked
            from raytune_suite.tracking._runs import TRIAL_ID_TAG, find_trial_run

            trial_id = tags.get(TRIAL_ID_TAG)
            return find_trial_run(self.client, experiment_id, trial_id) if trial_id else None

        return self._retry("create_run", create, before_retry=created_already)

    def _experiment(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self._retry(
                "get_run", lambda: self.client.get_run(self.parent_run_id).info.experiment_id)
        return self._experiment_id

    def _earlier_run(self, key: str) -> Optional[_Run]:
        """The run a driver before a resume made for trial ``key``: one lookup of all the
        search's runs (their params and last steps) the first time it is needed."""
        if not self.resumed:
            return None
        if self._known is None:
            from raytune_suite.tracking._runs import TRIAL_ID_TAG

            runs = self._retry("search_runs", self._child_runs)
            self._known = {r.data.tags.get(TRIAL_ID_TAG): r for r in runs}
            self._experiment_id = self._experiment_id or next(
                (r.info.experiment_id for r in runs), None)
        found = self._known.pop(key, None)
        if found is None:
            return None
        steps = [m.step for m in getattr(found.data, "_metric_objs", [])]
        return _Run(found.info.run_id, found.info.status, set(found.data.params),
                    max(steps, default=0))

    def _child_runs(self) -> list:
        from raytune_suite.tracking._runs import TRIAL_ID_TAG

        runs = self.client.search_runs(
            [self._experiment()], max_results=10000,
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'")
        return [r for r in runs if r.data.tags.get(TRIAL_ID_TAG)]

    @property
    def client(self):
        if self._client is None:
            from raytune_suite.tracking._mlflow import mlflow_client

            self._client = mlflow_client(self.uri)
        return self._client

    def _request(self, method: str, *args, **kwargs):
        return self._retry(method, lambda: getattr(self.client, method)(*args, **kwargs))

    def _retry(self, method: str, call: Callable[[], Any],
               before_retry: Optional[Callable[[], Any]] = None):
        start = time.perf_counter()
        try:
            return self._try(method, call, before_retry)
        finally:
            self.seconds += time.perf_counter() - start

    def _try(self, method: str, call: Callable[[], Any],
             before_retry: Optional[Callable[[], Any]]):
        for attempt in range(len(RETRY_DELAYS) + 1):
            try:
                self.requests[method] += 1
                return call()
            except Exception as e:  # noqa: BLE001 - MLflow raises many types
                code = getattr(e, "error_code", None)
                if attempt == len(RETRY_DELAYS) or code in PERMANENT:
                    raise
                logger.debug("MLflow %s failed (%s); trying again", method, short_reason(e))
                time.sleep(RETRY_DELAYS[attempt])
                if before_retry is not None:
                    self.requests["search_runs"] += 1
                    found = before_retry()
                    if found is not None:
                        return found

    def _go_offline(self, error: BaseException) -> None:
        self.offline = short_reason(error)
        while True:  # drop what is queued; flush markers are set by the loop in _work
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Flush):
                item.done.set()
            elif item is _STOP:
                self._queue.put_nowait(_STOP)
                break
        if self.on_offline is not None:
            self.on_offline(error)
