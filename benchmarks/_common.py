"""What the benchmarks share: the machine's description, the command, BENCHMARKS.md rows,
a Ray of their own, an MLflow store created before anything is timed, and the driver-side
clock of results.

Rows are appended to the end of their section's table, so BENCHMARKS.md reads as a log:
one line per real run, never rewritten. The file is replaced atomically, so an
interrupted run leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import glob
import json
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"

INTRO = """\
# Benchmarks

Measured figures behind the suite's claims about speed and memory. Each section is a log:
the scripts in `benchmarks/` append one row per real run (date, machine, exact command,
figures) and never rewrite older rows; `--smoke` runs only print. Each script runs both
sides of its comparison in one process, prints the ratio against its aim and says whether
the aim is met. "The suite" is always the product path: an experiment file checked by
`spec.validate` and run by `runner.run_experiment`.

- **P1 per-trial overhead** — N trials of a trainable that does no work (one
  `tune.report`, `benchmarks/_trivial.py`), so the wall time divided by N is what a trial
  costs on top of its work. Four sides, each timed from building the search to holding its
  results: raw Ray Tune with its defaults (a fresh worker process per trial), raw Ray Tune
  with `reuse_actors=True`, and the suite with MLflow off and on (SQLite, the product
  default, logging into an existing `mlflow.db`). The raw sides run in a plain `ray.init`,
  the suite in its own (`runner.init_ray`); every round starts fresh runtimes, each warmed
  up with 2 untimed trials, and each figure is the median over rounds. Aims: at least 10x
  less overhead per trial than Ray's defaults, and at most 1.05x that of raw Ray Tune with
  actor reuse. Reproduce with `uv run python benchmarks/overhead.py`.
- **P2 time to accuracy** — four ways to search the same task, side by side: the
  hand-written grid (3 values each of lr, batch size, weight decay, dropout, and SGD or
  Adam: 162 trials, FIFO, every trial its full budget, run by the suite), raw Ray Tune
  with its defaults (random search, FIFO, no actor reuse), Optuna (TPE + successive
  halving, 2 threads) and the suite's recommended setup (HyperOpt + ASHA, as
  `experiments/digits_practitioner.yaml` ships it), with the same CNN, data, epochs,
  machine and 2 trials at a time. Per seed: the wall-clock time from the start of each
  search until any trial first reports the target validation accuracy (start-up
  apart), every side's best validation accuracy when the fastest had finished, and the
  test accuracy of each side's best configuration. Figures are medians over 5 seeds.
  Aims: the target at least 3x sooner than the grid and no later than Optuna, and never
  a worse best accuracy at equal time. (Rows before 2026-11-29: the grid over lr x
  batch size only, against the suite.) Reproduce with
  `uv run python benchmarks/time_to_accuracy.py`.
- **P3 training throughput** — samples/s of one training epoch of the same CNN, data,
  batch size, augmentation and optimizer, written two ways: the loop of the PyTorch
  CIFAR-10 tutorials (torchvision dataset, per-sample PIL transforms, `DataLoader` with
  W workers) and the suite's `Trainer` (data normalised once into tensors, batches
  indexed from them, batched augmentation on the same device; channels_last + bf16 on a
  GPU). Reproduce with `uv run python benchmarks/throughput.py`.
- **Data held once per node** — two trials of the built-in `classifier` trainable running
  at the same time on one node, through the real runner (`run_experiment`), read the data
  set from Ray's object store instead of each holding a copy. The script samples every
  trial process's RSS, USS (memory only that process holds) and PSS (shared pages split
  among the processes mapping them), and the node total (sum of PSS over the driver and
  all of Ray's processes), in four cases: one trial on a tiny data set (the runtime a
  trial costs without data), one and two trials sharing a large data set, and a control
  in which two trials each load their own copy (showing what a copy looks like). All
  figures in MB (10^6 bytes); "(+n)" is a trial's USS above the runtime alone.
  Reproduce with `uv run python benchmarks/data_sharing.py`.
- **P4 memory per trial** — the node's peak memory with 1, 2 and 4 trials running at
  once, on a ~200 MB synthetic data set and on a 512-sample one (the trials' runtime
  without data): the sum of PSS over the driver and all of Ray's processes (every page
  counted once), and the sum of RSS (a shared page counted once per process mapping it).
  Aim: the data set is held once per node, so each extra trial adds under 25% of its
  size beyond the trial's own runtime. Reproduce with `uv run python benchmarks/memory.py`.
- **P5 GPU packing** (needs a CUDA GPU) — 1, 2, 4 and 8 trials sharing one GPU
  (`resources.gpu` 1, 0.5, 0.25, 0.125) on CIFAR-shaped synthetic data held on the
  device, with bf16 autocast and channels_last: aggregate training samples/s, the time
  until a trial first reaches a target accuracy, and one trial's samples/s as a share of
  the GPU's best aggregate. Aim: at least 3x the aggregate throughput at 0.125 as at 1.
  Reproduce with `uv run python benchmarks/gpu_packing.py`.
- **P6 bookkeeping at scale** — 1,000 short trials of the trivial trainable on a
  simulated 3-node cluster (`ray.cluster_utils.Cluster`), MLflow off and on: trials/s and
  results/s, the driver's RSS growth, the time the driver spends in MLflow calls and the
  requests per result, and the storage written per trial; the plan for 100 nodes that
  follows the table is built on those figures. Reproduce with
  `uv run python benchmarks/scale.py`.
"""


def add_repo_root_to_path() -> None:
    """Let a script run as ``python benchmarks/x.py`` import ``raytune_suite`` and ``tests``."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def child_env() -> dict:
    """The environment of a side a benchmark launches as a process of its own: this
    checkout importable, and Ray's uv-run runtime env off (as ``raytune_suite`` sets it)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cpu_name() -> str:
    """``platform.processor()``, which is often empty on Linux; then /proc/cpuinfo's name."""
    name = platform.processor()
    if name and name not in ("x86_64", "aarch64", "arm64", "i386"):
        return name
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name or platform.machine()


def machine(device_name: str) -> str:
    """e.g. ``AMD EPYC, 2 CPUs, 23 GiB, cpu (load 1.6)``: what the figures depend on."""
    parts = [cpu_name(), f"{os.cpu_count()} CPUs"]
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        parts.append(f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB")
    parts.append(device_name)
    if hasattr(os, "getloadavg"):
        # Other work on the machine skews the figures; the 1-minute load before the run says
        # how much there was.
        parts.append(f"load {os.getloadavg()[0]:.1f} at start")
    return ", ".join(parts)


def command() -> str:
    """The command as run, with the script's path relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO_ROOT)
    except ValueError:
        pass
    return shlex.join(["uv", "run", "python", str(script), *sys.argv[1:]])


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def append_row(heading: str, columns: Sequence[str], cells: Sequence[str],
               path: Path = BENCHMARKS_MD) -> None:
    """Append one table row to section ``## heading`` of ``path``.

    The file (with :data:`INTRO`), the section and its table header are created when
    missing. The row goes after the section's last table line.
    """
    lines, start, end = _section(heading, columns, cells, path)
    row = "| " + " | ".join(_cell(c) for c in cells) + " |"
    table = [i for i in range(start + 1, end) if lines[i].startswith("|")]
    if table:
        lines.insert(table[-1] + 1, row)
    else:
        header = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), row]
        at = end
        while at > start + 1 and not lines[at - 1].strip():
            at -= 1  # after the section's text, before the blank lines that close it
        lines[at:at] = ([""] if lines[at - 1].strip() else []) + header
    _write(path, lines)


def _section(heading: str, columns: Sequence[str], cells: Sequence[str],
             path: Path) -> tuple[list[str], int, int]:
    """The lines of ``path`` (:data:`INTRO` if missing) with section ``## heading`` in them
    (added at the end if missing), the index of its title and of the line after it."""
    if len(columns) != len(cells):
        raise ValueError(f"cells must match columns ({len(columns)}), got {len(cells)} cells")
    text = path.read_text() if path.exists() else INTRO
    lines = text.rstrip("\n").split("\n")
    title = f"## {heading}"
    if title not in lines:
        lines += ["", title, ""]
    start = lines.index(title)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    return lines, start, end


def _write(path: Path, lines: list[str]) -> None:
    """Replace ``path`` with ``lines`` at once (a temporary file renamed over it)."""
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def start_local_ray_only() -> None:
    """Make every ``ray.init()`` without an address, the runner's included, start a new
    local Ray instead of joining a cluster already running on this machine: Ray joins the
    one whose address ``ray start`` or a test's ``Cluster`` left in
    ``/tmp/ray/ray_current_cluster``, and other work's cluster skews the figures (and is
    shut down under the benchmark when that work ends)."""
    os.environ["RAY_ADDRESS"] = "local"


@contextlib.contextmanager
def working_directory(folder: str) -> Iterator[None]:
    """Run the block in ``folder``: with a SQLite store, MLflow keeps run artifacts in
    ``./mlruns`` of the working directory, which is no place for a benchmark's."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def verdict(met: bool) -> str:
    """How every script states an aim's outcome."""
    return "aim met" if met else "aim NOT met"


def create_mlflow_store(uri: str) -> float:
    """Create an MLflow store before anything is timed; the seconds that took.

    A new SQLite store runs MLflow's schema migrations once, seconds of work a user pays
    once per ``mlflow.db``. Timed runs then log into an existing store, as every run after
    a user's first does.
    """
    from mlflow.tracking import MlflowClient

    start = time.perf_counter()
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    return time.perf_counter() - start


@dataclasses.dataclass(frozen=True)
class SeenResult:
    """One trial result and when the driver wrote it (seconds after the watch started)."""

    seconds: float
    trial: str
    result: dict


class ResultWatcher(threading.Thread):
    """The driver-side wall clock of every result of one experiment.

    The driver appends each result to ``result.json`` as soon as it processes the result:
    the suite in the trial's folder under a local ``storage`` (``folder``), Ray Tune in
    its staging folder (``<session>/artifacts/<time>/<experiment>/driver_artifacts/<trial>/``),
    which it copies to ``storage`` only now and then. Reading
    the new lines of these files every ``interval`` seconds times each result to within
    ``interval``; the results' own ``timestamp`` has a resolution of one second. The
    experiment's name must be unique within the Ray session.
    """

    def __init__(self, experiment: str, interval: float = 0.1, folder: Optional[str] = None):
        super().__init__(daemon=True)
        self.experiment, self.interval = experiment, interval
        self.folder = folder  # the experiment's folder, where the suite writes result.json
        self.seen: list[SeenResult] = []
        self._read: dict[str, int] = {}  # result.json -> bytes consumed (whole lines only)
        self._stopped = threading.Event()
        self.t0 = 0.0

    def start(self) -> None:
        self.t0 = time.monotonic()
        super().start()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            self._poll()

    def stop(self) -> list[SeenResult]:
        """Stop watching, read what is left, and return every result seen, in order."""
        self._stopped.set()
        self.join()
        self._poll()
        return self.seen

    def _poll(self) -> None:
        from ray.train.constants import _get_ray_train_session_dir

        now = time.monotonic() - self.t0
        paths = []
        if self.experiment:  # "" watches ``folder`` only (a driver in another process)
            paths = glob.glob(os.path.join(glob.escape(_get_ray_train_session_dir()), "*",
                                           glob.escape(self.experiment), "driver_artifacts",
                                           "*", "result.json"))
        if self.folder:  # with local storage the suite writes there directly
            paths += glob.glob(os.path.join(glob.escape(self.folder), "*", "result.json"))
        for path in paths:
            done = self._read.get(path, 0)
            with open(path, "rb") as f:
                f.seek(done)
                chunk = f.read()
            complete = chunk[:chunk.rfind(b"\n") + 1]  # a line being written waits
            self._read[path] = done + len(complete)
            trial = os.path.basename(os.path.dirname(path))
            for line in complete.splitlines():
                if line.strip():
                    self.seen.append(SeenResult(now, trial, json.loads(line)))

    def first_reaching(self, metric: str, target: float) -> Optional[float]:
        """Seconds until some trial first reported ``metric >= target``; None if never."""
        return next((r.seconds for r in self.seen
                     if metric_number(r.result.get(metric)) >= target), None)

    def best_by(self, seconds: float, metric: str) -> Optional[float]:
        """The highest ``metric`` any trial had reported by ``seconds``; None before any."""
        values = [metric_number(r.result.get(metric)) for r in self.seen if r.seconds <= seconds]
        values = [v for v in values if v > float("-inf")]
        return max(values) if values else None


def metric_number(value) -> float:
    """A metric as a float; missing, non-numeric or NaN values never reach a target."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return float("-inf")
    return number if number == number else float("-inf")


def report_end(started: float, problems: list[str], smoke: bool) -> bool:
    """Print the run's total time and what kept it from measuring; whether to record a
    row (not for a smoke run, nor when anything went unmeasured)."""
    print(f"total {time.perf_counter() - started:.0f} s")
    for line in problems:
        print(f"NOT MEASURED: {line}")
    return not (smoke or problems)


def record(heading: str, columns: Sequence[str], cells: Sequence[str]) -> None:
    """Append the run's row to BENCHMARKS.md and say where it went."""
    append_row(heading, columns, cells)
    print(f"\nrecorded in {BENCHMARKS_MD}")


def append_row_to_table(heading: str, columns: Sequence[str], cells: Sequence[str], note: str,
                        path: Path = BENCHMARKS_MD) -> None:
    """Append one row to the table of section ``## heading`` whose header is ``columns``.

    For a benchmark whose columns changed: the rows already recorded keep their own table
    and stay readable. Without a table of these columns in the section, a new one starts
    after the section's last table line, introduced by ``note`` (one line saying what
    changed). The file and the section are created when missing, as by :func:`append_row`.
    """
    lines, start, end = _section(heading, columns, cells, path)
    header = "| " + " | ".join(_cell(c) for c in columns) + " |"
    row = "| " + " | ".join(_cell(c) for c in cells) + " |"
    if header in lines[start + 1:end]:
        at = lines.index(header, start + 1, end)
        while at + 1 < end and lines[at + 1].startswith("|"):
            at += 1  # the table's last row
        lines.insert(at + 1, row)
    else:
        table = [i for i in range(start + 1, end) if lines[i].startswith("|")]
        at = table[-1] + 1 if table else end
        while not table and at > start + 1 and not lines[at - 1].strip():
            at -= 1  # after the section's text, before the blank lines that close it
        block = [note, "", header, "|" + "---|" * len(columns), row]
        lines[at:at] = ([""] if lines[at - 1].strip() else []) + block
    while not lines[-1].strip():
        lines.pop()
    _write(path, lines)


def record_to_table(heading: str, columns: Sequence[str], cells: Sequence[str],
                    note: str) -> None:
    """:func:`record` into the section's table of these columns (see
    :func:`append_row_to_table`)."""
    append_row_to_table(heading, columns, cells, note)
    print(f"\nrecorded in {BENCHMARKS_MD}")
