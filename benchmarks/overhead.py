"""P1 per-trial overhead: the suite against raw Ray Tune, on trials that do no work.

Every side runs the same N trials of ``_trivial:trivial`` (one ``tune.report`` and
return; 1 CPU each, so as many at a time as the machine has CPUs) and is timed from
building the search to holding its results. The trials do no work, so wall time / N is
the overhead a trial costs:

- raw Ray Tune, defaults: ``tune.Tuner(trivial, param_space=..., tune_config=
  TuneConfig(num_samples=N))``, which starts a fresh worker process for every trial;
- raw Ray Tune, ``reuse_actors=True``: the same, with each worker running trial after trial;
- the suite, MLflow off and on: an experiment file (random search, FIFO) checked by
  ``spec.validate`` and run by ``runner.run_experiment``. MLflow on is the product
  default (SQLite); it logs into an ``mlflow.db`` created before the timing starts, as
  every run after a user's first does (creating it is timed once and printed).

The raw sides run in a plain ``ray.init(include_dashboard=False)``; the suite's in the
suite's own ``runner.init_ray`` (which adds a worker set-up hook). Each round starts a
fresh runtime for each, runs its sides in a rotating order and shuts it down. Before
anything is timed, each runtime's idle workers are up and it has run 2 untimed trials,
so no side pays one-time costs (the driver's first imports, a runtime's first use).
Figures are medians over rounds. ``RAY_ENABLE_UV_RUN_RUNTIME_ENV=0`` (set by importing
raytune_suite) applies to every side, so no side builds a virtualenv per worker.

Aims (issue 7): at least 10x less overhead per trial than Ray's defaults, and at most
1.05x that of raw Ray Tune with actor reuse. Both are checked for MLflow off and on.

    uv run python benchmarks/overhead.py                 # 32 trials, 3 rounds; appends a row
    uv run python benchmarks/overhead.py --trials 64 --rounds 5
    uv run python benchmarks/overhead.py --smoke         # 4 trials, 1 round, no warm-up; prints
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (a sibling module: this file runs as a script)

_common.add_repo_root_to_path()

import raytune_suite  # noqa: E402,F401  (sets RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 before Ray loads)

HEADING = "P1 per-trial overhead"
COLUMNS = ("date", "machine", "command", "setup", "overhead per trial (ms)",
           "Ray defaults / suite (aim >= 10x)", "suite / raw reuse (aim <= 1.05x)")
RAW_DEFAULTS = "raw Ray Tune, defaults"
RAW_REUSE = "raw Ray Tune, reuse_actors=True"
SUITE_OFF = "suite, MLflow off"
SUITE_ON = "suite, MLflow on (SQLite)"
SUITES = (SUITE_OFF, SUITE_ON)


@dataclasses.dataclass
class Run:
    """One timed run of one side."""

    side: str
    seconds: float
    trials: int  # trials that reported
    workers: int  # distinct worker processes the trials ran in
    errors: int


def start_runtime(suite: bool) -> None:
    """A fresh Ray runtime, the suite's or a plain one, with its idle workers up."""
    import ray

    from raytune_suite.engine.runner import init_ray

    if suite:
        init_ray(None)
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)

    @ray.remote(num_cpus=1)
    def ready() -> int:
        return os.getpid()

    cpus = int(ray.cluster_resources()["CPU"])
    ray.get([ready.remote() for _ in range(cpus)])


def reported(experiment: Path) -> tuple[int, int]:
    """(trials that reported, distinct worker pids) from the results in storage."""
    pids, trials = set(), 0
    for result in experiment.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        trials += bool(rows)
        pids.update(row["pid"] for row in rows)
    return trials, len(pids)


def run_raw(side: str, trials: int, reports: int, storage: str, name: str) -> Run:
    """Raw Ray Tune: the trainable, a param space, TuneConfig's defaults (or reuse)."""
    from ray import tune

    from _trivial import trivial

    start = time.perf_counter()
    tuner = tune.Tuner(
        trivial, param_space={"x": tune.uniform(0, 1), "reports": reports},
        tune_config=tune.TuneConfig(num_samples=trials, reuse_actors=side == RAW_REUSE),
        run_config=tune.RunConfig(name=name, storage_path=storage))
    grid = tuner.fit()
    seconds = time.perf_counter() - start
    done, workers = reported(Path(storage, name))
    return Run(side, seconds, done, workers, grid.num_errors)


def run_suite(side: str, trials: int, reports: int, storage: str, name: str,
              mlflow_uri: str) -> Run:
    """The suite: an experiment file through ``spec.validate`` and ``run_experiment``."""
    from raytune_suite.engine.runner import run_experiment
    from raytune_suite.experiment import validate

    mlflow = side == SUITE_ON
    raw = {
        "name": name,
        "trainable": "_trivial:trivial",
        "config": {"reports": reports},
        "search_space": {"x": {"uniform": [0.0, 1.0]}},
        "metric": "score",
        "mode": "max",
        "search": {"algorithm": "random", "num_samples": trials, "seed": 0},
        "resources": {"cpu": 1},
        "storage": storage,
        "tracking": {"mlflow": {"enabled": mlflow, "tracking_uri": mlflow_uri}},
    }
    spec = validate(raw)
    start = time.perf_counter()
    outcome = run_experiment(spec, raw, use_mlflow=mlflow)
    seconds = time.perf_counter() - start
    done, workers = reported(Path(outcome.path))
    return Run(side, seconds, done, workers, outcome.errors)


def run_side(side: str, trials: int, args: argparse.Namespace, storage: str, name: str,
             mlflow_uri: str) -> Run:
    if side in SUITES:
        return run_suite(side, trials, args.reports, storage, name, mlflow_uri)
    return run_raw(side, trials, args.reports, storage, name)


def run_rounds(args: argparse.Namespace, storage: str, mlflow_uri: str) -> list[Run]:
    """Every side once per round, raw and suite runtimes alternating which goes first.

    Each runtime first runs 2 untimed trials of its last side (not with --smoke), so that
    no timed side pays one-time costs: the driver's first imports, the runtime's first use.
    """
    import ray

    runs: list[Run] = []
    for round_ in range(args.rounds):
        groups = [(False, [RAW_DEFAULTS, RAW_REUSE]), (True, [SUITE_OFF, SUITE_ON])]
        for suite, sides in groups[round_ % 2:] + groups[:round_ % 2]:
            start_runtime(suite)
            try:
                if not args.smoke:
                    run_side(sides[-1], 2, args, storage, f"p1-warm-up-{round_}-{int(suite)}",
                             mlflow_uri)
                for side in sides[round_ % 2:] + sides[:round_ % 2]:
                    name = f"p1-{side.split(',')[0].replace(' ', '-')}-{len(runs)}"
                    print(f"\n=== round {round_ + 1}: {side}, {args.trials} trials", flush=True)
                    run = run_side(side, args.trials, args, storage, name, mlflow_uri)
                    print(f"=== {side}: {run.seconds:.2f} s, {run.workers} worker(s)",
                          flush=True)
                    runs.append(run)
            finally:
                ray.shutdown()
    return runs


def overhead_ms(runs: list[Run], side: str, trials: int) -> float:
    """Median over rounds of wall time / trials (the trials do no work), in ms."""
    return statistics.median(r.seconds for r in runs if r.side == side) / trials * 1000


def report(runs: list[Run], args: argparse.Namespace) -> tuple[dict[str, float], list[str]]:
    """Print the table and the aims; (overhead per side in ms, problems)."""
    sides = (RAW_DEFAULTS, RAW_REUSE, *SUITES)
    overhead = {side: overhead_ms(runs, side, args.trials) for side in sides}
    print(f"\n{'side':<34}{'seconds per round':<26}{'overhead/trial':>16}{'workers':>9}")
    for side in sides:
        mine = [r for r in runs if r.side == side]
        print(f"{side:<34}{', '.join(f'{r.seconds:.2f}' for r in mine):<26}"
              f"{overhead[side]:>13.0f} ms{max(r.workers for r in mine):>9}")
    mlflow_cost = overhead[SUITE_ON] - overhead[SUITE_OFF]
    print(f"MLflow (SQLite) adds {mlflow_cost:.0f} ms per trial "
          f"({args.reports} result(s) per trial)")
    for suite in SUITES:
        print(f"{suite}: {vs_defaults(overhead, suite)} less overhead per trial than Ray's "
              f"defaults; {vs_reuse(overhead, suite)} that of raw Ray Tune with actor reuse")
    problems = [f"{r.side}: {r.errors} errored, {r.trials} of {args.trials} trials reported"
                for r in runs if r.errors or r.trials != args.trials]
    return overhead, problems


def vs_defaults(overhead: dict[str, float], suite: str) -> str:
    ratio = overhead[RAW_DEFAULTS] / overhead[suite]
    return f"{ratio:.1f}x ({_common.verdict(ratio >= 10)}: >= 10x)"


def vs_reuse(overhead: dict[str, float], suite: str) -> str:
    ratio = overhead[suite] / overhead[RAW_REUSE]
    return f"{ratio:.2f}x ({_common.verdict(ratio <= 1.05)}: <= 1.05x)"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=32, help="trials per run (N)")
    p.add_argument("--reports", type=int, default=1, help="results each trial reports")
    p.add_argument("--rounds", type=int, default=3,
                   help="runs of every side; figures are medians over rounds")
    p.add_argument("--smoke", action="store_true",
                   help="4 trials, 1 round, no warm-up: checks that it runs, prints, "
                        "records nothing")
    args = p.parse_args(argv)
    if args.smoke:
        args.trials, args.rounds = 4, 1
    for name in ("trials", "reports", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    _common.start_local_ray_only()
    where = _common.machine("cpu")  # before the run: its load figure
    import ray.cloudpickle

    import _trivial

    # What spec.validate does for the suite's sides; the raw sides may run first.
    ray.cloudpickle.register_pickle_by_value(_trivial)
    started = time.perf_counter()
    with (tempfile.TemporaryDirectory(prefix="p1-overhead-") as tmp,
          _common.working_directory(tmp)):
        mlflow_uri = f"sqlite:///{tmp}/mlflow.db"
        store_seconds = _common.create_mlflow_store(mlflow_uri)
        print(f"{args.trials} trials per run, {args.rounds} round(s), {os.cpu_count()} CPUs; "
              f"MLflow store created in {store_seconds:.1f} s (not part of any run)", flush=True)
        runs = run_rounds(args, tmp, mlflow_uri)
    overhead, problems = report(runs, args)
    if not _common.report_end(started, problems, args.smoke):
        return 1 if problems else 0
    cells = [_common.utc_now(), where, f"`{_common.command()}`",
             f"{args.trials} trials x {args.reports} report(s), 1 CPU each, {os.cpu_count()} "
             f"CPUs; median of {args.rounds} round(s), fresh runtimes each round; new "
             f"MLflow store {store_seconds:.1f} s (once, untimed)",
             "; ".join(f"{side} {overhead[side]:,.0f}" for side in overhead),
             "; ".join(f"{s}: {vs_defaults(overhead, s)}" for s in SUITES),
             "; ".join(f"{s}: {vs_reuse(overhead, s)}" for s in SUITES)]
    _common.record(HEADING, COLUMNS, cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
