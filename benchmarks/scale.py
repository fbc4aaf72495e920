"""P6 bookkeeping at scale: 1,000 short trials on a simulated 3-node cluster, the suite
side by side with raw Ray Tune.

A ``ray.cluster_utils.Cluster`` on this machine: a head and 2 worker nodes, each with
``--node-cpus`` logical CPUs (4). On that one cluster, in one process and in this order:
raw Ray Tune with actor reuse (``tune.Tuner(trivial, tune_config=TuneConfig(num_samples=N,
reuse_actors=True))``, Ray's own result files and nothing else), then the suite
(``spec.validate`` + ``runner.run_experiment(address=...)``) with MLflow off and on
(SQLite, logging into a store created before the timing starts). Every side runs N trials
of ``_trivial:trivial`` (R results each, no work, 1 CPU per trial, so 3 x 4 at a time;
the suite: random search, FIFO, storage a local folder that every simulated node sees,
``storage_shared: true``), after an untimed warm-up run of one trial per CPU (the
driver's first imports, the cluster's first use). The trials do no work, so everything
measured is the driver's bookkeeping:

- throughput: trials/s and results/s over the whole run (N / wall, N x R / wall);
- driver memory: this process's RSS (``/proc/self/status`` VmRSS) every 0.5 s, with the
  number of trials started so far (trial folders in Ray's driver staging folder): at the
  start, at the end, the peak, and the growth per 1,000 trials (least-squares slope over
  the second half of the run, after start-up);
- MLflow: every ``MlflowClient`` method the driver calls is wrapped, for the run, in a
  timer (the behaviour is unchanged; nested calls count once): requests per trial (to
  create and end its run) and per result (``log_batch``), and which thread made them:
  the writer process (``tracking._writer_process``, which reports its own counts when it
  stops) during the search, or the driver process before and after it;
- storage: bytes under the experiment folder per trial, and the size of Tune's experiment
  state file (``experiment_state-*.json``, rewritten whole at every snapshot) per trial.

On 2 physical cores the 12 simulated CPUs, Ray's processes and the driver share the same
cores, so the figures are lower bounds of what one driver sustains. The plan for 100
nodes in BENCHMARKS.md is built on these figures.

    uv run python benchmarks/scale.py                    # 1,000 trials x 3 results; appends a row
    uv run python benchmarks/scale.py --trials 3000 --node-cpus 8
    uv run python benchmarks/scale.py --smoke            # 12 trials, raw and MLflow on; prints only
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import glob
import inspect
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (a sibling module: this file runs as a script)

_common.add_repo_root_to_path()

import raytune_suite  # noqa: E402,F401  (sets RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 before Ray loads)

HEADING = "P6 bookkeeping at scale, side by side with raw Ray Tune"
COLUMNS = ("date", "machine", "command", "setup", "raw Ray Tune, reuse_actors=True: "
           "trials/s, results/s", "suite, MLflow off: trials/s, results/s",
           "suite, MLflow on: trials/s, results/s", "suite MLflow on / raw (aim >= 1x)",
           "driver RSS (MB): start, end, peak; growth per trial (aim < 0.2 MB)",
           "MLflow requests", "storage per trial")
MB = 1e6
NODES = 3
RAW, SUITE_OFF, SUITE_ON = "raw Ray Tune, reuse", "suite, MLflow off", "suite, MLflow on"
WRITER_LOGGER = "raytune_suite.tracking._writer_process"  # reports the child's requests


def vm_rss() -> int:
    """This process's resident memory in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class DriverSampler(threading.Thread):
    """(seconds, trials started, driver RSS) every ``interval`` seconds."""

    def __init__(self, experiment: str, interval: float = 0.5):
        super().__init__(daemon=True)
        self.experiment, self.interval = experiment, interval
        self.stopped = threading.Event()
        self.samples: list[tuple[float, int, int]] = []

    def run(self) -> None:
        start = time.monotonic()
        while True:
            self.samples.append((time.monotonic() - start, self.trials_started(), vm_rss()))
            if self.stopped.wait(self.interval):
                return

    def trials_started(self) -> int:
        from ray.train.constants import _get_ray_train_session_dir

        try:
            root = _get_ray_train_session_dir()
        except Exception:  # noqa: BLE001 - before the driver has connected
            return 0
        return len(glob.glob(os.path.join(glob.escape(root), "*", glob.escape(self.experiment),
                                          "driver_artifacts", "*", "")))

    def growth_per_1000(self) -> Optional[float]:
        """Bytes of RSS per 1,000 trials started, over the second half of the run."""
        late = [(n, rss) for _, n, rss in self.samples[len(self.samples) // 2:]]
        if len({n for n, _ in late}) < 3:
            return None
        slope, _ = statistics.linear_regression([n for n, _ in late], [r for _, r in late])
        return slope * 1000


@dataclasses.dataclass
class MlflowCalls:
    """Calls to MlflowClient's methods and the seconds spent in them."""

    calls: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    seconds: float = 0.0
    driver_calls: int = 0  # made by the driver process itself (not the writer process)
    driver_seconds: float = 0.0

    @contextlib.contextmanager
    def timing(self) -> Iterator["MlflowCalls"]:
        """Wrap every public ``MlflowClient`` method in this process for the duration of
        the block, and add what the writer process reports when it stops."""
        from mlflow.tracking import MlflowClient

        depth = threading.local()
        originals = {name: fn for name, fn in vars(MlflowClient).items()
                     if inspect.isfunction(fn) and not name.startswith("_")}

        def timed(name, fn):
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                outer = not getattr(depth, "inside", False)
                depth.inside = True
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    if outer:
                        depth.inside = False
                        took = time.perf_counter() - start
                        self.seconds += took
                        self.calls[name] += 1
                        self.driver_calls += 1
                        self.driver_seconds += took
            return wrapper

        calls = self

        class WriterReport(logging.Handler):  # ProcessWriter.close logs the child's counts
            def emit(self, record):
                if hasattr(record, "requests"):
                    calls.calls.update(record.requests)
                    calls.seconds += record.seconds

        report = WriterReport(logging.DEBUG)
        writer_log = logging.getLogger(WRITER_LOGGER)
        level = writer_log.level
        writer_log.addHandler(report)
        writer_log.setLevel(logging.DEBUG)
        for name, fn in originals.items():
            setattr(MlflowClient, name, timed(name, fn))
        try:
            yield self
        finally:
            for name, fn in originals.items():
                setattr(MlflowClient, name, fn)
            writer_log.removeHandler(report)
            writer_log.setLevel(level)


@dataclasses.dataclass
class Run:
    """One run (raw Ray Tune, or the suite) on the cluster."""

    side: str
    trials: int
    results: int
    errors: int
    seconds: float
    sampler: DriverSampler
    mlflow_calls: MlflowCalls
    storage_bytes: int
    state_bytes: int

    @property
    def label(self) -> str:
        return self.side

    @property
    def mlflow(self) -> bool:
        return self.side == SUITE_ON


def experiment(name: str, trials: int, reports: int, storage: str, mlflow_uri: str,
               mlflow: bool) -> dict:
    return {
        "name": name,
        "trainable": "_trivial:trivial",
        "config": {"reports": reports},
        "search_space": {"x": {"uniform": [0.0, 1.0]}},
        "metric": "score",
        "mode": "max",
        "search": {"algorithm": "random", "num_samples": trials, "seed": 0},
        "resources": {"cpu": 1},
        "storage": storage,
        "storage_shared": True,  # one machine: the local folder is seen by every node
        "tracking": {"mlflow": {"enabled": mlflow, "tracking_uri": mlflow_uri}},
    }


def run_once(name: str, trials: int, reports: int, address: str, storage: str,
             mlflow_uri: str, mlflow: bool) -> Run:
    """Run the suite against the cluster, sampling the driver and timing MLflow."""
    import ray

    from raytune_suite.engine.runner import run_experiment
    from raytune_suite.experiment import validate

    raw = experiment(name, trials, reports, storage, mlflow_uri, mlflow)
    spec = validate(raw)
    print(f"\n=== {name}: {trials} trials, MLflow {'on' if mlflow else 'off'}", flush=True)
    sampler = DriverSampler(raw["name"])
    calls = MlflowCalls()
    side = SUITE_ON if mlflow else SUITE_OFF
    sampler.start()
    start = time.perf_counter()
    try:
        with calls.timing():
            outcome = run_experiment(spec, raw, address=address, use_mlflow=mlflow)
        seconds = time.perf_counter() - start
    finally:
        sampler.stopped.set()
        sampler.join()
        ray.shutdown()
    path = Path(outcome.path)
    files = [p for p in path.rglob("*") if p.is_file()]
    state = [p for p in files if p.name.startswith("experiment_state")]
    return Run(side, len(outcome.trials), sum(t.epochs for t in outcome.trials),
               outcome.errors, seconds, sampler, calls, sum(p.stat().st_size for p in files),
               max((p.stat().st_size for p in state), default=0))


def run_raw(name: str, trials: int, reports: int, address: str, storage: str) -> Run:
    """Raw Ray Tune with actor reuse on the cluster: the trainable, a param space,
    ``reuse_actors=True``, Ray's own result files and nothing else."""
    import ray
    from ray import tune

    from _trivial import trivial

    print(f"\n=== {name}: {trials} trials, raw Ray Tune with reuse_actors=True", flush=True)
    sampler = DriverSampler(name)
    ray.init(address=address, logging_level="WARNING")
    sampler.start()
    start = time.perf_counter()
    try:
        grid = tune.Tuner(
            trivial, param_space={"x": tune.uniform(0, 1), "reports": reports},
            tune_config=tune.TuneConfig(num_samples=trials, reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0)).fit()
        seconds = time.perf_counter() - start
    finally:
        sampler.stopped.set()
        sampler.join()
        ray.shutdown()
    files = [p for p in Path(storage, name).rglob("*") if p.is_file()]
    state = [p for p in files if p.name.startswith("experiment_state")]
    results = sum(int((r.metrics or {}).get("training_iteration", 0)) for r in grid)
    return Run(RAW, len(grid), results, grid.num_errors, seconds, sampler, MlflowCalls(),
               sum(p.stat().st_size for p in files),
               max((p.stat().st_size for p in state), default=0))


def _mb(n: float) -> str:
    return f"{n / MB:,.0f}"


def memory_text(run: Run) -> str:
    rss = [r for _, _, r in run.sampler.samples]
    growth = run.sampler.growth_per_1000()
    growth_text = "n/a (too few samples)" if growth is None else f"{growth / MB:+,.1f} MB"
    per_trial = "" if growth is None else \
        f" = {growth / 1000 / MB:.3f} MB per trial ({_common.verdict(growth / 1000 < 0.2 * MB)})"
    return (f"{_mb(rss[0])}, {_mb(rss[-1])}, {_mb(max(rss))}; growth per 1,000 trials "
            f"{growth_text}{per_trial}")


def mlflow_text(run: Run) -> str:
    calls = run.mlflow_calls
    total = sum(calls.calls.values())
    if not total:
        return "none"
    top = ", ".join(f"{name} {n}" for name, n in calls.calls.most_common(8))
    fixed = calls.calls["create_run"] + calls.calls["set_terminated"] + calls.calls["update_run"]
    writer = total - calls.driver_calls
    return (f"{total} requests ({top}) = {total / run.trials:.2f} per trial: "
            f"{fixed / run.trials:.2f} to create and end a run, "
            f"{calls.calls['log_batch'] / run.results:.2f} log_batch per result; "
            f"{writer} in the writer process ({calls.seconds - calls.driver_seconds:.1f} s = "
            f"{(calls.seconds - calls.driver_seconds) / run.seconds:.0%} of the run), "
            f"{calls.driver_calls} in the driver ({calls.driver_seconds:.1f} s, "
            "before and after the search)")


def print_report(runs: list[Run]) -> None:
    for run in runs:
        print(f"\n{run.label}: {run.trials} trials, {run.results} results, {run.errors} errored "
              f"in {run.seconds:.1f} s = {run.trials / run.seconds:.1f} trials/s, "
              f"{run.results / run.seconds:.1f} results/s")
        print(f"  driver RSS (MB): start, end, peak {memory_text(run)}")
        print(f"  MLflow: {mlflow_text(run)}")
        print(f"  storage: {run.storage_bytes / run.trials / 1e3:,.1f} kB per trial; "
              f"experiment state {run.state_bytes / 1e3:,.0f} kB = "
              f"{run.state_bytes / run.trials / 1e3:.2f} kB per trial")
    by = {r.side: r for r in runs}
    if SUITE_ON in by and RAW in by:
        print(f"\nsuite with MLflow on vs raw Ray Tune with reuse: {vs_raw(by)}")


def rate(run: Run) -> str:
    return f"{run.trials / run.seconds:.1f}, {run.results / run.seconds:.1f} ({run.seconds:.0f} s)"


def vs_raw(by: dict) -> str:
    ratio = (by[SUITE_ON].trials / by[SUITE_ON].seconds) / (by[RAW].trials / by[RAW].seconds)
    return f"{ratio:.2f}x the trials/s ({_common.verdict(ratio >= 1)}: >= 1x)"


def start_cluster(node_cpus: int):
    """Head + 2 workers on this machine, each with ``node_cpus`` logical CPUs."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": node_cpus})
    try:
        for _ in range(NODES - 1):
            cluster.add_node(num_cpus=node_cpus)
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def run_on_cluster(args: argparse.Namespace, storage: str, mlflow_uri: str) -> list[Run]:
    """Start the cluster, warm it up (untimed, one trial per CPU: no measured run pays the
    driver's first imports or the cluster's first use), run the measured runs, stop it."""
    cluster = start_cluster(args.node_cpus)
    try:
        if not args.smoke:
            run_once("p6-warm-up", NODES * args.node_cpus, 1, cluster.address, storage,
                     mlflow_uri, True)
        runs = [run_raw("p6-raw-ray-tune", args.trials, args.reports, cluster.address,
                        storage)]
        for mlflow in ((True,) if args.smoke else (False, True)):
            runs.append(run_once(f"p6-scale-mlflow-{'on' if mlflow else 'off'}", args.trials,
                                 args.reports, cluster.address, storage, mlflow_uri, mlflow))
        return runs
    finally:
        cluster.shutdown()


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--reports", type=int, default=3, help="results each trial reports")
    p.add_argument("--node-cpus", type=int, default=4, help="logical CPUs of each node")
    p.add_argument("--smoke", action="store_true",
                   help="12 trials, 1 CPU per node, raw Ray Tune and the suite with MLflow "
                        "on, no warm-up: checks that it runs, prints, records nothing")
    args = p.parse_args(argv)
    if args.smoke:
        args.trials, args.node_cpus = 12, 1
    for name in ("trials", "reports", "node_cpus"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    where = _common.machine("cpu")  # before the run: its load figure
    started = time.perf_counter()
    with (tempfile.TemporaryDirectory(prefix="p6-scale-") as tmp,
          _common.working_directory(tmp)):
        mlflow_uri = f"sqlite:///{tmp}/mlflow.db"
        store_seconds = _common.create_mlflow_store(mlflow_uri)
        print(f"{NODES} nodes x {args.node_cpus} logical CPUs on {os.cpu_count()} CPUs; "
              f"{args.trials} trials x {args.reports} results; MLflow store created in "
              f"{store_seconds:.1f} s (not part of any run)", flush=True)
        # The Cluster writes its address where every ray.init() on this machine looks
        # for one (``<RAY_TMPDIR>/ray/ray_current_cluster``); a private folder keeps other
        # work's embedded Ray from joining this cluster.
        os.environ["RAY_TMPDIR"] = tmp
        # The nodes' workers import _trivial for raw Ray Tune's side too (the suite ships
        # the trainable's folder itself): they inherit the raylets' environment.
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH"))
            if p)
        runs = run_on_cluster(args, tmp, mlflow_uri)
    print_report(runs)
    problems = [f"{r.label}: {r.errors} errored, {r.trials} of {args.trials} trials, "
                f"{r.results} of {args.trials * args.reports} results"
                for r in runs if r.errors or r.trials != args.trials
                or r.results != args.trials * args.reports]
    if not _common.report_end(started, problems, args.smoke):
        return 1 if problems else 0
    by = {r.side: r for r in runs}
    raw, off, on = by[RAW], by[SUITE_OFF], by[SUITE_ON]
    cells = [_common.utc_now(), where, f"`{_common.command()}`",
             f"{NODES} simulated nodes x {args.node_cpus} CPUs ({NODES * args.node_cpus} "
             f"trials at once); {args.trials} trials x {args.reports} results, no work; "
             "one process, one cluster, sides in this order; storage a local folder; "
             "MLflow SQLite",
             rate(raw), rate(off), rate(on), vs_raw(by),
             f"raw: {memory_text(raw)}; off: {memory_text(off)}; on: {memory_text(on)}",
             mlflow_text(on),
             f"{on.storage_bytes / on.trials / 1e3:,.1f} kB (MLflow on); experiment state "
             f"{on.state_bytes / on.trials / 1e3:.2f} kB per trial"]
    _common.record(HEADING, COLUMNS, cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
