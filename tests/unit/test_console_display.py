"""The console display, driven with stand-in trials and results and a fake clock: no Ray
runs here."""

import io
from types import SimpleNamespace

from raytune_suite.report.console import ConsoleProgress, error_summary


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def trial(tid, status="PENDING", last=None, folder="/r/exp"):
    return SimpleNamespace(trial_id=tid, status=status, last_result=last or {},
                           storage=SimpleNamespace(trial_fs_path=f"{folder}/train_{tid}"),
                           error_file=None)


def console(**kw):
    out, clock = io.StringIO(), Clock()
    c = ConsoleProgress("digits", "val_accuracy", "max", kw.pop("num_samples", 4), max_t=4,
                        stream=out, live=False, clock=clock, **kw)
    c.setup()
    return c, out, clock


def lines(out):
    return out.getvalue().splitlines()


def test_counts_best_and_one_line_per_finished_trial():
    c, out, clock = console()
    trials = [trial("a"), trial("b"), trial("c")]
    c.on_step_begin(0, trials)
    for t in trials[:2]:
        t.status = "RUNNING"
        c.on_trial_start(0, trials, t)
    c.on_trial_result(1, trials, trials[0], {"training_iteration": 1, "val_accuracy": 0.5})
    c.on_trial_result(1, trials, trials[1], {"training_iteration": 1, "val_accuracy": 0.7})
    c.on_trial_result(2, trials, trials[0], {"training_iteration": 2, "val_accuracy": 0.9})
    assert c.best() == ("a", 0.9)
    assert c.counts() == {"done": 0, "running": 2, "paused": 0, "pending": 2,
                          "stopped_early": 0, "errored": 0, "diverged": 0}

    trials[1].last_result = {"training_iteration": 1, "outcome": "stopped_early"}
    c.on_trial_complete(3, trials, trials[1])
    trials[1].status = "TERMINATED"
    c.on_step_end(3, trials)
    counts = c.counts()
    assert counts["done"] == 1 and counts["stopped_early"] == 1 and counts["running"] == 1
    finished = [ln for ln in lines(out) if ln.startswith("trial ")]
    assert [ln.split() for ln in finished] == [
        ["trial", "b", "stopped", "early", "val_accuracy", "0.7000", "1", "epoch"]]
    # Seen again at the next step: no second line.
    c.on_step_end(4, trials)
    assert len([ln for ln in lines(out) if ln.startswith("trial ")]) == 1


def test_status_lines_at_most_every_ten_seconds():
    c, out, clock = console()
    trials = [trial("a", "RUNNING")]
    for step in range(100):  # 0.5 s per step: 50 s in all
        c.on_step_begin(step, trials)
        c.on_step_end(step, trials)
        clock.now += 0.5
    status = [ln for ln in lines(out) if ln.startswith("[")]
    assert len(status) == 5  # at 0, 10, 20, 30, 40 s
    assert status[1].startswith("[0:00:10] 0/4 trials done (1 running, 3 pending,")


def test_errored_and_diverged_trials():
    c, out, clock = console()
    bad, nan, good = trial("bad", "RUNNING"), trial("nan", "RUNNING"), trial("good", "RUNNING")
    trials = [bad, nan, good]
    c.on_step_begin(0, trials)
    c.on_trial_result(1, trials, nan, {"training_iteration": 1, "val_accuracy": 0.95})
    c.on_trial_result(2, trials, nan, {"training_iteration": 2, "val_accuracy": float("nan"),
                                       "diverged": 1})
    c.on_trial_result(1, trials, good, {"training_iteration": 1, "val_accuracy": 0.8})
    nan.last_result = {"training_iteration": 2, "diverged": 1, "outcome": "diverged"}
    c.on_trial_complete(3, trials, nan)
    c.on_trial_error(3, trials, bad)
    # A diverged trial's earlier epochs never make the best.
    assert c.best() == ("good", 0.8)
    counts = c.counts()
    assert (counts["errored"], counts["diverged"], counts["done"]) == (1, 1, 2)
    error_line = next(ln for ln in lines(out) if ln.startswith("trial bad"))
    assert "errored" in error_line and error_line.endswith("(see /r/exp/train_bad/error.txt)")
    assert next(ln for ln in lines(out) if ln.startswith("trial nan")).split()[2] == "diverged"


def test_error_line_names_the_exception_and_error_txt(tmp_path):
    c, out, clock = console()
    folder = tmp_path / "train_x"
    folder.mkdir()
    (folder / "error.txt").write_text(
        "Failure # 1 (occurred at 2026-11-29_03-00-00)\n"
        "ray::ImplicitFunc.train() (pid=1, ip=1.2.3.4)\n"
        "  File \"x.py\", line 3, in train\n"
        "    raise ValueError('lr too high')\n"
        "ValueError: lr too high\n")
    x = trial("x", "RUNNING", folder=str(tmp_path))
    x.storage.trial_fs_path = str(folder)
    c.on_step_begin(0, [x])
    c.on_trial_error(1, [x], x)
    (line,) = [ln for ln in lines(out) if ln.startswith("trial x")]
    assert f"ValueError: lr too high (see {folder}/error.txt)" in line
    assert error_summary("") == ""


def test_resumed_search_counts_what_finished_before_without_lines():
    c, out, clock = console()
    done = trial("old", "TERMINATED", {"training_iteration": 4, "outcome": "completed"})
    done.run_metadata = SimpleNamespace(metric_analysis={"val_accuracy": {"max": 0.97}})
    pending = trial("new", "PENDING")
    c.on_step_begin(0, [done, pending])
    assert c.counts()["done"] == 1 and c.best() == ("old", 0.97)
    assert not [ln for ln in lines(out) if ln.startswith("trial ")]


def test_eta_from_the_pace_in_epochs():
    c, out, clock = console()
    a, b = trial("a", "RUNNING"), trial("b", "RUNNING")
    c.on_step_begin(0, [a, b])
    assert c.eta() is None  # nothing reported yet
    clock.now += 10
    c.on_trial_result(1, [a, b], a, {"training_iteration": 1, "val_accuracy": 0.5})
    c.on_trial_result(1, [a, b], b, {"training_iteration": 1, "val_accuracy": 0.5})
    # 2 epochs in 10 s; 4 trials x max_t 4 epochs = 16, 2 done: 14 left -> 70 s.
    assert c.eta() == 70.0
    a.last_result = {"training_iteration": 1, "outcome": "stopped_early"}
    c.on_trial_complete(2, [a, b], a)
    # A finished trial ran 1 epoch: 3 trials x 1 - 1 (b's) = 2 left -> 10 s.
    assert c.eta() == 10.0


def test_live_display_renders_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out, clock = Terminal(), Clock()
    c = ConsoleProgress("digits", "val_accuracy", "max", 2, stream=out, clock=clock)
    assert c.live
    c.setup()
    t = trial("a", "RUNNING")
    c.on_step_begin(0, [t])
    c.on_trial_result(1, [t], t, {"training_iteration": 1, "val_accuracy": 0.9})
    clock.now += 1.5
    c.on_step_end(0, [t])
    t.last_result = {"training_iteration": 1, "outcome": "completed"}
    c.on_trial_complete(1, [t], t)
    c.on_experiment_end([t])
    text = out.getvalue()
    assert "1/2 trials" in text and "best val_accuracy 0.9000 (a)" in text
    assert "trial a  completed" in text


class Watched(SimpleNamespace):
    """A trial whose results count the times they are read."""

    reads = 0

    @property
    def last_result(self):
        Watched.reads += 1
        return {}


def test_a_step_reads_no_results_of_trials_waiting_to_start():
    # Ray hands every trial to every step: a search of many pending trials must not cost
    # the driver a look at each of them per step (O(trials^2) over a search).
    c, out, clock = console(num_samples=500)
    waiting = [Watched(trial_id=f"t{i}", status="PENDING", error_file=None)
               for i in range(500)]
    c.on_step_begin(0, waiting)  # the first look may read them all (a resumed search)
    Watched.reads = 0
    for step in range(1, 50):
        c.on_step_begin(step, waiting)
        c.on_step_end(step, waiting)
    assert Watched.reads == 0
    assert c.counts()["pending"] == 500
    # a trial that ends without ever starting (a time budget) is still seen and counted
    waiting[0].status = "TERMINATED"
    c.on_step_end(50, waiting)
    assert c.counts()["done"] == 1 and Watched.reads == 1
