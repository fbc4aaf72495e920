"""The background MLflow writer and the resume backfill, against a real SQLite store (no
Ray): order kept, requests merged, MLflow's batch limits, a full queue waits, retries,
going offline once, a resumed search's runs found again, and Ray's results backfilled; the
same writer in a process of its own (what the callback uses): everything written, Ctrl-C
ignored, a dead child said once, and no child left behind a killed driver."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from raytune_suite import tracking
from raytune_suite.tracking import _writer
from raytune_suite.tracking._writer import RunWriter
from raytune_suite.tracking._writer_process import ProcessWriter


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """One SQLite store for the module (creating one takes seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    tracking.mlflow_client(uri).search_experiments()
    return uri


@pytest.fixture
def parent(uri, request):
    """A search run in an experiment of the test's own."""
    client = tracking.mlflow_client(uri)
    experiment = client.create_experiment(request.node.name)
    return client.create_run(experiment, run_name="search").info.run_id


class SlowClient(MlflowClient):
    """The real client against the real store, each request delayed: a slow server."""

    def __init__(self, uri, delay=0.3):
        super().__init__(tracking_uri=uri)
        self.delay = delay

    def create_run(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().create_run(*args, **kwargs)

    def log_batch(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().log_batch(*args, **kwargs)


class FlakyClient(MlflowClient):
    """The real client; its first ``fail`` log_batch requests fail as a dropped
    connection does, before reaching the store."""

    def __init__(self, uri, fail=1):
        super().__init__(tracking_uri=uri)
        self.fail = fail

    def log_batch(self, *args, **kwargs):
        if self.fail:
            self.fail -= 1
            raise ConnectionError("Connection reset by peer")
        return super().log_batch(*args, **kwargs)


def _trial(writer, key, steps, params=(("lr", 0.1),), status="FINISHED"):
    tags = {"mlflow.parentRunId": writer.parent_run_id, tracking.TRIAL_ID_TAG: key}
    writer.start(key, f"run {key}", tags, [tracking.param(k, v) for k, v in params])
    for step in steps:
        writer.log(key, step, [tracking.metric("acc", step / 10, step),
                               tracking.metric("loss", 1 / step, step)])
    writer.end(key, status, [tracking.metric("best_acc", max(steps) / 10, 0)],
               [tracking.tag(tracking.OUTCOME_TAG, "completed")])


def _runs(uri, parent):
    client = tracking.mlflow_client(uri)
    return {r.data.tags[tracking.TRIAL_ID_TAG]: r for r in tracking.child_runs(client, parent)}


def _steps(uri, run, key="acc"):
    history = tracking.mlflow_client(uri).get_metric_history(run.info.run_id, key)
    return sorted(m.step for m in history)


def test_events_queued_behind_a_slow_request_become_one_batch_per_run(uri, parent):
    writer = RunWriter(uri, parent, client=SlowClient(uri))
    _trial(writer, "a", [1, 2, 3])
    _trial(writer, "b", [1, 2])
    assert writer.close(timeout=30)
    runs = _runs(uri, parent)
    assert set(runs) == {"a", "b"}
    for key, steps in (("a", [1, 2, 3]), ("b", [1, 2])):
        run = runs[key]
        assert _steps(uri, run) == steps and _steps(uri, run, "loss") == steps
        assert run.data.params == {"lr": "0.1"}
        assert run.data.tags[tracking.OUTCOME_TAG] == "completed"
        assert run.data.metrics["best_acc"] == max(steps) / 10
        assert run.info.status == "FINISHED" and run.info.run_name == f"run {key}"
    # per trial: create, one log_batch (params, every result, the outcome), terminate
    assert writer.requests == {"get_run": 1, "create_run": 2, "log_batch": 2,
                               "set_terminated": 2}


def test_a_trial_that_reports_quickly_costs_three_requests(uri, parent):
    """The writer lingers after an event, so a quick trial's results share one request."""
    writer = RunWriter(uri, parent)
    _trial(writer, "a", [1, 2, 3])
    assert writer.close(timeout=30)
    assert _steps(uri, _runs(uri, parent)["a"]) == [1, 2, 3]
    assert writer.requests == {"get_run": 1, "create_run": 1, "log_batch": 1,
                               "set_terminated": 1}


def test_order_is_kept_across_an_end_and_a_restart(uri, parent):
    """An errored trial retried by Ray: FAILED, then RUNNING again, then more results."""
    writer = RunWriter(uri, parent, client=SlowClient(uri, 0.1))
    _trial(writer, "a", [1, 2], status="FAILED")
    writer.start("a", "run a", {}, [tracking.param("lr", 0.1)])
    writer.log("a", 3, [tracking.metric("acc", 0.3, 3)])
    assert writer.flush(timeout=30)
    run = _runs(uri, parent)["a"]
    assert run.info.status == "RUNNING" and _steps(uri, run) == [1, 2, 3]
    writer.end("a", "FINISHED")
    assert writer.close(timeout=30)
    assert _runs(uri, parent)["a"].info.status == "FINISHED"
    assert writer.requests["update_run"] == 1 and writer.requests["create_run"] == 1


def test_batches_respect_mlflows_limits(uri, parent):
    writer = RunWriter(uri, parent)
    writer.start("a", "run a", {tracking.TRIAL_ID_TAG: "a", "mlflow.parentRunId": parent},
                 [tracking.param(f"p{i}", i) for i in range(150)])
    writer.log("a", 1, [tracking.metric(f"m{i}", i, 1) for i in range(2500)],
               tags=[tracking.tag(f"t{i}", i) for i in range(120)])
    assert writer.close(timeout=60)
    run = _runs(uri, parent)["a"]
    assert len(run.data.params) == 150 and len(run.data.metrics) == 2500
    assert len([k for k in run.data.tags if k.startswith("t")]) >= 120
    assert writer.requests["log_batch"] == 3  # 2,770 entities, at most 1,000 each


def test_a_full_queue_makes_the_loop_wait_and_loses_nothing(uri, parent):
    writer = RunWriter(uri, parent, maxsize=2, client=SlowClient(uri, 0.05))
    _trial(writer, "a", list(range(1, 21)))
    assert writer.waited > 0
    assert writer.close(timeout=60)
    assert _steps(uri, _runs(uri, parent)["a"]) == list(range(1, 21))


def test_a_failed_request_is_retried_once_written(uri, parent, monkeypatch):
    monkeypatch.setattr(_writer, "RETRY_DELAYS", (0.01, 0.01))
    offline = []
    writer = RunWriter(uri, parent, client=FlakyClient(uri, fail=2), on_offline=offline.append)
    _trial(writer, "a", [1, 2, 3])
    assert writer.close(timeout=30)
    assert not offline and writer.offline is None
    assert _steps(uri, _runs(uri, parent)["a"]) == [1, 2, 3]
    assert writer.requests["log_batch"] == 3  # two failures, then the batch


def test_mlflow_down_goes_offline_once_and_drops_the_rest(uri, parent, monkeypatch):
    monkeypatch.setattr(_writer, "RETRY_DELAYS", (0.01, 0.01))
    offline = []
    writer = RunWriter(uri, parent, client=FlakyClient(uri, fail=100), on_offline=offline.append)
    for key in "abc":
        _trial(writer, key, [1, 2])
    assert writer.close(timeout=30)
    assert len(offline) == 1 and writer.offline == "Connection reset by peer"
    _trial(writer, "d", [1])  # after going offline: dropped, never blocks
    assert writer.requests["log_batch"] == 3  # one request, tried three times


def test_a_resumed_search_finds_its_runs_and_skips_steps_they_hold(uri, parent):
    first = RunWriter(uri, parent)
    _trial(first, "a", [1, 2])
    first.start("b", "run b", {tracking.TRIAL_ID_TAG: "b",
                               "mlflow.parentRunId": parent}, [tracking.param("lr", 0.1)])
    first.log("b", 1, [tracking.metric("acc", 0.1, 1)])
    assert first.close(timeout=30)
    tracking.mlflow_client(uri).set_terminated(_runs(uri, parent)["b"].info.run_id, "KILLED")

    second = RunWriter(uri, parent, resumed=True)
    # b restored from its checkpoint of step 1 repeats nothing; c is new
    second.start("b", "run b", {}, [tracking.param("lr", 0.1)])
    for step in (1, 2, 3):
        second.log("b", step, [tracking.metric("acc", step / 10, step)])
    second.end("b", "FINISHED")
    _trial(second, "c", [1])
    assert second.close(timeout=30)
    runs = _runs(uri, parent)
    assert set(runs) == {"a", "b", "c"}
    assert _steps(uri, runs["b"]) == [1, 2, 3] and runs["b"].info.status == "FINISHED"
    assert second.requests["search_runs"] == 1  # one lookup for every trial
    assert second.requests["create_run"] == 1  # c only


def _write_results(folder, trial_id, steps, config):
    trial_dir = folder / f"train_{trial_id}_0_lr=0.1"
    trial_dir.mkdir(parents=True)
    rows = [{"acc": s / 10, "training_iteration": s, "trial_id": trial_id,
             "experiment_tag": "0_lr=0.1", "config": config} for s in steps]
    (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_backfill_writes_what_ray_has_and_mlflow_lacks(uri, parent, tmp_path):
    """A driver killed with its writer behind: one run holds steps 1-2 of 4, another was
    never created. Running the backfill twice writes everything exactly once."""
    writer = RunWriter(uri, parent)
    writer.start("a", "run a", {tracking.TRIAL_ID_TAG: "a", "mlflow.parentRunId": parent,
                                tracking.ROLE_TAG: "trial"}, [])
    writer.log("a", 1, [tracking.metric("acc", 0.1, 1)], [tracking.param("lr", 0.1)])
    writer.log("a", 2, [tracking.metric("acc", 0.2, 2)])
    assert writer.close(timeout=30)
    _write_results(tmp_path, "a", [1, 2, 3, 4], {"lr": 0.1})
    _write_results(tmp_path, "b", [1, 2, 2, 3], {"lr": 0.2})  # b restored: 2 repeated
    assert tracking.backfill_runs(uri, parent, str(tmp_path)) == (1, 5)
    assert tracking.backfill_runs(uri, parent, str(tmp_path)) == (0, 0)
    runs = _runs(uri, parent)
    assert set(runs) == {"a", "b"}
    assert _steps(uri, runs["a"]) == [1, 2, 3, 4] and _steps(uri, runs["b"]) == [1, 2, 3]
    assert runs["b"].data.params == {"lr": "0.2"}
    assert runs["b"].info.run_name.startswith("01 b") or "b" in runs["b"].info.run_name


def test_the_loop_never_waits_on_a_slow_store(uri, parent):
    """The loop's side of 40 results returns in well under one slow request."""
    writer = RunWriter(uri, parent, client=SlowClient(uri, 0.5))
    done = threading.Event()

    def loop():
        _trial(writer, "a", list(range(1, 41)))
        done.set()

    threading.Thread(target=loop).start()
    assert done.wait(0.4)
    assert writer.close(timeout=30)


def test_a_sqlite_store_is_written_in_wal_mode(uri, parent):
    """SQLite stores run in write-ahead-log mode (a commit waits for no fsync; `mlflow ui`
    reading the file does not block the writer), kept in the file for later clients."""
    import sqlite3

    writer = RunWriter(uri, parent)
    _trial(writer, "t1", [1, 2])
    assert writer.close(timeout=60)
    connection = sqlite3.connect(uri[len("sqlite:///"):])
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] >= 4
    finally:
        connection.close()


# ---- the same writer in a process of its own (what the callback uses) ----------------------

def test_the_writer_process_writes_every_run_and_reports_its_requests(uri, parent):
    writer = ProcessWriter(uri, parent)
    for key in "abc":
        _trial(writer, key, [1, 2, 3])
    assert writer.flush(timeout=60)
    runs = _runs(uri, parent)
    assert set(runs) == {"a", "b", "c"}
    for run in runs.values():
        assert _steps(uri, run) == [1, 2, 3] and run.info.status == "FINISHED"
        assert run.data.params == {"lr": "0.1"} and run.data.metrics["best_acc"] == 0.3
    assert writer.requests["create_run"] == 3 and writer.requests["set_terminated"] == 3
    assert writer.close(timeout=60) and writer.offline is None
    # the child, warm, serves the driver's next search with the same store
    client = tracking.mlflow_client(uri)
    second = client.create_run(client.get_run(parent).info.experiment_id).info.run_id
    again = ProcessWriter(uri, second)
    assert again._proc is writer._proc
    _trial(again, "d", [1])
    assert again.close(timeout=60)
    assert list(_runs(uri, second)) == ["d"] and set(_runs(uri, parent)) == {"a", "b", "c"}


def test_the_writer_process_ignores_ctrl_c_so_the_driver_can_flush_it(uri, parent):
    writer = ProcessWriter(uri, parent)
    # Ctrl-C at a terminal signals its foreground process group: the driver's, not the child's
    assert os.getpgid(writer._proc.pid) != os.getpgid(0)
    _trial(writer, "a", [1, 2])
    assert writer.flush(timeout=60)
    writer._proc.send_signal(signal.SIGINT)  # and a SIGINT sent to the child is ignored
    time.sleep(0.2)
    _trial(writer, "b", [1])
    assert writer.close(timeout=60) and writer.offline is None
    assert set(_runs(uri, parent)) == {"a", "b"}


def test_a_writer_process_that_dies_is_offline_once_and_said(uri, parent):
    offline = []
    writer = ProcessWriter(uri, parent, on_offline=offline.append)
    _trial(writer, "a", [1])
    assert writer.flush(timeout=60)
    writer._proc.kill()
    writer._proc.wait(10)
    deadline = time.time() + 10
    while not offline and time.time() < deadline:
        time.sleep(0.05)
    assert len(offline) == 1
    assert writer.offline == f"the MLflow writer process exited (code {-signal.SIGKILL})"
    _trial(writer, "b", [1])  # dropped, never blocks
    writer.close(timeout=10)
    assert len(offline) == 1


def test_a_writer_process_whose_mlflow_refuses_goes_offline_in_the_driver(uri):
    offline = []
    writer = ProcessWriter(uri, "no-such-run", on_offline=offline.append)
    _trial(writer, "a", [1])
    assert writer.close(timeout=60)
    assert len(offline) == 1 and "no-such-run" in writer.offline


def test_the_writer_process_exits_when_the_driver_is_killed(uri, parent, tmp_path):
    """A SIGKILL of the driver closes the pipe: the child stops at once (``resume``
    backfills what it had queued) instead of racing that backfill."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from raytune_suite.tracking._writer_process import ProcessWriter
        writer = ProcessWriter({uri!r}, {parent!r})
        print(writer._proc.pid, flush=True)
        time.sleep(600)
    """))
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(driver.stdout.readline())
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(10)
    deadline = time.time() + 20
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_prestarted_writer_process_is_taken_by_the_search(uri, parent):
    """The runner starts the child while Ray starts; the search's writer takes it."""
    from raytune_suite.tracking import _writer_process

    tracking.prestart_writer()
    spare = _writer_process._spare[0]
    writer = ProcessWriter(uri, parent)
    assert writer._proc is spare and _writer_process._spare is None
    _trial(writer, "a", [1, 2])
    assert writer.close(timeout=60)
    assert _steps(uri, _runs(uri, parent)["a"]) == [1, 2]


def _wait_until_idle(pid: int, quiet_s: float = 0.5, timeout: float = 60) -> None:
    """Until process ``pid`` has used no CPU for ``quiet_s`` (blocked on its pipe), read
    from /proc (Linux): its user and system clock ticks."""
    stat, deadline = Path(f"/proc/{pid}/stat"), time.monotonic() + timeout
    used, since = None, time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "the writer process never went idle"
        fields = stat.read_text().rsplit(")", 1)[1].split()
        now = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        if now != used:
            used, since = now, time.monotonic()
        time.sleep(0.05)


def test_a_prestarted_writer_process_leaves_the_store_to_the_driver(tmp_path):
    """Two processes creating a new SQLite store's tables at once collide: the child
    imports MLflow early but opens the store only once the driver's search run exists."""
    from raytune_suite.tracking import _writer_process

    db = tmp_path / "mlflow.db"
    fresh = f"sqlite:///{db}"
    tracking.prestart_writer()
    _wait_until_idle(_writer_process._spare[0].pid)  # its imports done: waiting for a search
    assert _writer_process._spare[0].poll() is None and not db.exists()
    client = tracking.mlflow_client(fresh)
    parent = client.create_run(client.create_experiment("fresh")).info.run_id
    writer = ProcessWriter(fresh, parent)
    _trial(writer, "a", [1])
    assert writer.close(timeout=60) and list(_runs(fresh, parent)) == ["a"]


def test_a_spare_writer_process_is_stopped_when_mlflow_is_off():
    """`run` starts a writer before it reads the file; a file with MLflow off stops it."""
    from raytune_suite.tracking import _writer_process

    tracking.prestart_writer()
    child = _writer_process._spare[0]
    tracking.stop_spare_writer()
    assert _writer_process._spare is None and child.wait(10) is not None
