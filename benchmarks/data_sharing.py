"""Data held once per node: concurrent trials read the data set from Ray's object store.

The runner loads the built-in trainable's data set once in the driver and passes it to
every trial with ``tune.with_parameters``: it lies in the node's object store (shared
memory) once, and each trial wraps those pages as tensors without copying them. This
script runs the real suite (``spec.validate`` + ``runner.run_experiment``, embedded Ray,
MLflow off, a fresh Ray runtime and storage folder per case) and meanwhile samples, every
0.2 s, the driver and all its descendants from Linux's ``/proc/<pid>/smaps_rollup`` (what
``psutil.Process.memory_full_info`` reads; psutil is not a dependency of the suite):

- USS: memory only that process holds. A trial with its own copy of the data set holds
  that copy in its USS; a trial reading the object store's pages does not.
- PSS: USS plus each shared page divided by the number of processes mapping it.
- node total: the peak sum of PSS over the driver and its descendants (Ray's processes,
  the trials), which counts every page once.

A trial process costs hundreds of MB before it holds any data (torch, Ray, sklearn), so
the cases are:

1. runtime alone: one trial on a 512-sample data set, the baseline of a trial's USS;
2. 1 trial, shared, on the large data set;
3. 2 concurrent trials, shared: each trial's USS stays near the baseline (well under the
   data set's size above it), and the second trial adds about its runtime to the node
   total, not the data set again; the two trials' sampling windows must overlap;
4. control: 2 concurrent trials that each load their own copy (a data key is searched,
   so the runner does not share): their USS rises by the data set's size, which shows
   the measurement would see a copy.

    uv run python benchmarks/data_sharing.py            # ~200 MB of data; appends a row
    uv run python benchmarks/data_sharing.py --samples 65536      # ~800 MB
    uv run python benchmarks/data_sharing.py --smoke    # tiny; checks it runs, prints only
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (a sibling module: this file runs as a script)

_common.add_repo_root_to_path()

import raytune_suite  # noqa: E402,F401  (sets RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 before Ray loads)

HEADING = "Data held once per node"
COLUMNS = ("date", "machine", "command", "data set", "trial runtime alone (MB)",
           "1 trial, shared (MB; + = above runtime)", "2 concurrent trials, shared (MB)",
           "second trial adds", "control: 2 trials, each its own copy (MB)")
SHAPE = (3, 32, 32)
TRIAL_MARKERS = ("ray::ImplicitFunc", "train_classifier")
MB = 1e6
RUNTIME_SAMPLES = 512  # a data set far smaller than a trial's own runtime (torch, Ray)


@dataclasses.dataclass(frozen=True)
class Memory:
    """One reading of a process, in bytes (the fields of psutil's ``memory_full_info``)."""

    rss: int  # resident pages, shared or not
    uss: int  # private pages: freed if the process exited
    pss: int  # private pages + each shared page / number of processes mapping it


def read_memory(pid: int) -> Memory:
    """RSS, USS and PSS of ``pid`` from ``/proc/<pid>/smaps_rollup`` (Linux >= 4.14)."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                fields[name] = int(value.split()[0]) * 1024
    return Memory(rss=fields["Rss"], pss=fields["Pss"],
                  uss=fields["Private_Clean"] + fields["Private_Dirty"]
                  + fields.get("Private_Hugetlb", 0))


def read_title(pid: int) -> str:
    """The command line, which Ray workers overwrite with their task (``ray::...``)."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace").strip()


def descendants(root: int) -> list[int]:
    """Every process below ``root`` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # exited while listing
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


@dataclasses.dataclass
class ProcessPeak:
    """Peaks of one trial process over the samples in which it ran a trial."""

    pid: int
    title: str
    first: float
    last: float
    rss: int = 0
    uss: int = 0
    pss: int = 0


class MemorySampler(threading.Thread):
    """Samples the driver and its descendants every ``interval`` seconds until stopped."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval = interval
        self.stopped = threading.Event()
        self.trials: dict[int, ProcessPeak] = {}
        self.node_pss_peak = 0
        self.driver_uss_peak = 0  # this process: the runner, its data set as loaded
        self.samples = 0
        self.samples_with_two = 0  # samples in which two trial processes were running
        self.store_used: Optional[int] = None  # object store bytes, read once mid-run
        self.store_attempts, self.store_error = 0, ""

    def run(self) -> None:
        driver = os.getpid()
        while not self.stopped.wait(self.interval):
            now = time.monotonic()
            node_pss, running = 0, 0
            for pid in [driver, *descendants(driver)]:
                try:
                    title = read_title(pid)
                    memory = read_memory(pid)
                except (OSError, KeyError):
                    continue  # exited (or became a zombie) between listing and reading
                node_pss += memory.pss
                if pid == driver:
                    self.driver_uss_peak = max(self.driver_uss_peak, memory.uss)
                if any(marker in title for marker in TRIAL_MARKERS):
                    running += 1
                    self._record(pid, title, now, memory)
            self.samples += 1
            self.samples_with_two += running >= 2
            if running:
                self.node_pss_peak = max(self.node_pss_peak, node_pss)
                if self.store_used is None and self.store_attempts < 5:
                    self.store_attempts += 1
                    self.store_used, self.store_error = object_store_used()

    def _record(self, pid: int, title: str, now: float, memory: Memory) -> None:
        peak = self.trials.setdefault(pid, ProcessPeak(pid, title, now, now))
        peak.last = now
        peak.rss = max(peak.rss, memory.rss)
        peak.uss = max(peak.uss, memory.uss)
        peak.pss = max(peak.pss, memory.pss)

    def overlap_seconds(self) -> float:
        """How long the first two trial processes were both seen running."""
        windows = sorted((p.first, p.last) for p in self.trials.values())[:2]
        if len(windows) < 2:
            return 0.0
        return max(0.0, min(windows[0][1], windows[1][1]) - max(windows[0][0], windows[1][0]))


def object_store_used() -> tuple[Optional[int], str]:
    """Bytes in this node's object store, from Ray's memory summary; else None and why."""
    try:
        import ray
        from ray._private.internal_api import memory_summary

        # This runtime's address: without one, Ray asks the cluster started last on the
        # machine, which may be another user's.
        text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    except Exception as e:  # noqa: BLE001 - a private API: the figure is optional
        return None, f"{type(e).__name__}: {e}"[:200]
    match = re.search(r"Plasma memory usage (\d+) MiB", text)
    if not match:
        return None, f"unexpected memory summary: {text.strip()[:200]!r}"
    return int(match.group(1)) * 2**20, ""


@dataclasses.dataclass
class Case:
    """One run of the suite and what the sampler saw."""

    label: str
    trials: int
    samples: int
    shared: bool  # the runner shares one data set; else each trial loads its own
    sampler: MemorySampler
    seconds: float
    errors: int

    @property
    def peaks(self) -> list[ProcessPeak]:
        return sorted(self.sampler.trials.values(), key=lambda p: p.first)

    @property
    def max_uss(self) -> int:
        return max((p.uss for p in self.peaks), default=0)

    @property
    def node_pss(self) -> int:
        return self.sampler.node_pss_peak


def experiment(name: str, storage: str, samples: int, epochs: int, trials: int,
               shared: bool = True) -> dict:
    """The experiment file (as a mapping) of one case."""
    # lr is searched so the trials differ as in a real search; it is not a data key, so
    # the runner still shares one data set. Searching data_seed (a data key, over one
    # value) makes the runner leave the loading to each trial: the control case.
    space = {"lr": {"loguniform": [1e-4, 1e-2]}}
    if not shared:
        space["data_seed"] = {"choice": [0]}
    return {
        "name": name,
        "trainable": "classifier",
        "config": {"dataset": "synthetic", "synthetic_samples": samples,
                   "synthetic_shape": list(SHAPE), "synthetic_classes": 10,
                   "model": "mlp", "hidden": 64, "epochs": epochs},
        "search_space": space,
        "metric": "val_accuracy",
        "mode": "max",
        "search": {"num_samples": trials, "max_concurrent": trials, "seed": 0},
        "resources": {"cpu": 1},
        "storage": storage,
        "tracking": {"mlflow": {"enabled": False}},
    }


def run_case(label: str, trials: int, samples: int, epochs: int, shared: bool = True) -> Case:
    """Run the suite in a fresh Ray runtime and a fresh storage folder, sampling memory."""
    import ray

    from raytune_suite.engine.runner import run_experiment
    from raytune_suite.experiment import validate

    print(f"\n=== {label}: {trials} trial(s), {samples} samples, "
          f"{'shared' if shared else 'loaded by each trial'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="data-sharing-") as storage:
        raw = experiment(f"data-sharing-{trials}", storage, samples, epochs, trials, shared)
        spec = validate(raw)
        sampler = MemorySampler()
        sampler.start()
        start = time.perf_counter()
        try:
            outcome = run_experiment(spec, raw, use_mlflow=False)
        finally:
            sampler.stopped.set()
            sampler.join()
            ray.shutdown()
        return Case(label, trials, samples, shared, sampler, time.perf_counter() - start,
                    outcome.errors)


def _mb(n: int) -> str:
    return f"{n / MB:,.0f}"


def print_report(cases: list[Case], data_bytes: int, runtime: Optional[Case]) -> None:
    print(f"\n{'case':<26}{'pid':>8}{'USS MB':>9}{'USS-runtime':>13}{'PSS MB':>9}{'RSS MB':>9}"
          "  seen running (s)")
    for case in cases:
        t0 = min((p.first for p in case.peaks), default=0.0)
        for peak in case.peaks:
            above = _mb(peak.uss - runtime.max_uss) if runtime else "-"
            print(f"{case.label:<26}{peak.pid:>8}{_mb(peak.uss):>9}{above:>13}"
                  f"{_mb(peak.pss):>9}{_mb(peak.rss):>9}  {peak.first - t0:5.1f}-"
                  f"{peak.last - t0:5.1f}")
        store = case.sampler.store_used
        store_text = (f"{_mb(store)} MB" if store is not None
                      else f"n/a ({case.sampler.store_error or 'not read'})")
        line = (f"{'':<26}node total PSS peak {_mb(case.node_pss)} MB (driver USS peak "
                f"{_mb(case.sampler.driver_uss_peak)} MB); object store {store_text}; "
                f"{case.seconds:.0f} s; {case.errors} errored")
        if case.trials > 1:
            line += (f"; both running {case.sampler.overlap_seconds():.1f} s "
                     f"({case.sampler.samples_with_two} of {case.sampler.samples} samples)")
        print(line)
    print(f"data set: {_mb(data_bytes)} MB", end="")
    if runtime:
        print(f"; USS-runtime: peak USS minus that of the same trial on a {RUNTIME_SAMPLES}-"
              "sample data set (torch, Ray, the model: no data)", end="")
    print()


def summary(case: Case, data_bytes: int, runtime: Case) -> str:
    """One table cell: per-trial peaks, and the node total."""
    trials = ", ".join(f"USS {_mb(p.uss)} ({(p.uss - runtime.max_uss) / MB:+,.0f}) PSS {_mb(p.pss)}"
                       for p in case.peaks)
    text = f"{trials}; node PSS {_mb(case.node_pss)}"
    if case.trials > 1:
        text += f"; both running {case.sampler.overlap_seconds():.1f} s"
    return text


def check(cases: list[Case], data_bytes: int, runtime: Optional[Case]) -> list[str]:
    """What the figures must show; each failure as one line.

    "Well below" is a quarter of the data set: a copy would add all of it.
    """
    problems = []
    for case in cases:
        if case.errors or len(case.peaks) != case.trials:
            problems.append(f"{case.label}: {case.errors} errored, {len(case.peaks)} of "
                            f"{case.trials} trial processes seen")
        if case.trials > 1 and case.sampler.overlap_seconds() <= 0:
            problems.append(f"{case.label}: the trials never ran at the same time")
        if runtime is None or case is runtime:
            continue
        for peak in case.peaks:
            extra = peak.uss - runtime.max_uss
            if case.shared and extra >= data_bytes / 4:
                problems.append(f"{case.label}: trial process {peak.pid} holds {_mb(extra)} MB "
                                f"more than the runtime alone (data set {_mb(data_bytes)} MB)")
            if not case.shared and extra < data_bytes * 3 / 4:
                problems.append(f"{case.label}: trial process {peak.pid} holds only "
                                f"{_mb(extra)} MB more than the runtime alone although it "
                                "loaded its own copy: the measurement misses copies")
    return problems


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=16384,
                   help="synthetic samples of 3x32x32 float32 (12 KiB each; 16384 = 201 MB)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--no-control", action="store_true",
                   help="skip the control case (2 trials that each load their own copy)")
    p.add_argument("--smoke", action="store_true",
                   help=f"{RUNTIME_SAMPLES} samples, 1 epoch, 2 shared trials only; checks "
                        "that it runs, prints, records nothing")
    args = p.parse_args(argv)
    if args.smoke:
        args.samples, args.epochs = RUNTIME_SAMPLES, 1
    if args.samples < 100:
        p.error(f"--samples must be >= 100 (a stratified split of 10 classes), got {args.samples}")
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    where = _common.machine("cpu")  # before the run: its load figure
    data_bytes = args.samples * math.prod(SHAPE) * 4
    print(f"{args.samples} samples = {_mb(data_bytes)} MB of float32 data, {args.epochs} "
          f"epoch(s) per trial; {os.cpu_count()} CPUs", flush=True)
    started = time.perf_counter()
    if args.smoke:
        runtime = None
        cases = [run_case("2 trials, shared", 2, args.samples, args.epochs)]
    else:
        runtime = run_case("runtime alone (512 samp.)", 1, RUNTIME_SAMPLES, args.epochs)
        cases = [runtime,
                 run_case("1 trial, shared", 1, args.samples, args.epochs),
                 run_case("2 trials, shared", 2, args.samples, args.epochs)]
        if not args.no_control:
            cases.append(run_case("control: own copy each", 2, args.samples, args.epochs,
                                  shared=False))
    print_report(cases, data_bytes, runtime)
    problems = check(cases, data_bytes, runtime)
    if runtime is not None:
        one, two = cases[1], cases[2]
        extra = two.node_pss - one.node_pss
        beyond = extra - runtime.max_uss
        added = (f"{_mb(extra)} MB node PSS = one trial's runtime ({_mb(runtime.max_uss)} MB USS) "
                 f"{'+' if beyond >= 0 else '-'} {_mb(abs(beyond))} MB "
                 f"({beyond / data_bytes:+.0%} of the data set)")
        print(f"the second trial adds {added}")
        if beyond >= data_bytes / 4:
            problems.append(f"the second trial adds {_mb(beyond)} MB beyond its runtime to the "
                            f"node total (data set {_mb(data_bytes)} MB)")
    print(f"total {time.perf_counter() - started:.0f} s")
    for line in problems:
        print(f"NOT SHOWN: {line}")
    if args.smoke or any("errored" in line for line in problems):
        return 1 if problems else 0
    cells = [_common.utc_now(), where, f"`{_common.command()}`",
             f"{args.samples} x {'x'.join(map(str, SHAPE))} float32 = {_mb(data_bytes)} MB; "
             f"mlp hidden 64, {args.epochs} epochs, 1 CPU/trial",
             f"USS {_mb(runtime.max_uss)} PSS {_mb(max(p.pss for p in runtime.peaks))}; "
             f"node PSS {_mb(runtime.node_pss)}",
             summary(cases[1], data_bytes, runtime), summary(cases[2], data_bytes, runtime),
             added,
             summary(cases[3], data_bytes, runtime) if len(cases) > 3 else "skipped"]
    if problems:
        cells[-1] += "; NOT SHOWN: " + "; ".join(problems)
    _common.append_row(HEADING, COLUMNS, cells)
    print(f"\nrecorded in {_common.BENCHMARKS_MD}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
