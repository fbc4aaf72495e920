"""P1 marginal cost of a trial, as whole processes: the suite with MLflow on against raw
Ray Tune with actor reuse.

Every run is a whole process, started as a user starts it, on trials that do no work
(``_trivial:trivial``, R results each, 1 CPU per trial):

- raw Ray Tune: a script doing ``ray.init()`` and ``tune.Tuner(trivial, tune_config=
  TuneConfig(num_samples=N, reuse_actors=True)).fit()``; Ray's own result files, no
  other logging;
- the suite: ``raytune-suite run FILE`` (random search, FIFO) with MLflow on (SQLite,
  the product default), logging into an ``mlflow.db`` created before anything is timed.

Each side runs N = 16 and N = 64 trials; the marginal cost of a trial is
(wall(64) - wall(16)) / 48: what one more trial costs once the fixed costs (imports,
``ray.init``, the end-of-run report) are paid. Rounds alternate which side goes first;
figures are medians over rounds. The same difference is also taken of the CPU time the
whole machine spent during each run (every process: the driver, Ray's, the workers, the
MLflow writer; ``/proc/stat``, so nothing else should run meanwhile). On 2 cores a
process's wall time swings by seconds from run to run, far more than 48 trials of no
work add; the CPU a run costs swings much less. After the timing, every suite run's
MLflow experiment is checked: one finished run per trial, each with R values of the
metric.

Aim (issue 13): the suite's marginal cost at most 1.05x raw Ray Tune's.

    uv run python benchmarks/marginal.py                # 16 and 64 trials x 3, 3 rounds
    uv run python benchmarks/marginal.py --smoke        # 2 and 4 trials, 1 round; prints
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (a sibling module: this file runs as a script)

HEADING = "P1 marginal cost per trial (whole processes)"
COLUMNS = ("date", "machine", "command", "setup", "wall (s): raw Ray Tune reuse",
           "wall (s): suite, MLflow on", "marginal ms per trial: raw, suite",
           "suite / raw (aim <= 1.05x)", "machine CPU s per run: raw; suite",
           "marginal CPU ms per trial: raw, suite; suite / raw", "MLflow runs")
TABLE_NOTE = ("From 2026-11-30 on, each run's CPU time too: what the whole machine spent "
              "during the run (all processes), and the marginal CPU cost per trial from it.")
HERE = Path(__file__).resolve().parent
RAW, SUITE = "raw Ray Tune, reuse_actors=True", "suite, MLflow on (SQLite)"

RAW_SCRIPT = textwrap.dedent("""
    import sys
    import ray
    from ray import tune
    from _trivial import trivial

    n, reports, name, storage = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    ray.init(include_dashboard=False)
    tune.Tuner(trivial, param_space={"x": tune.uniform(0, 1), "reports": reports},
               tune_config=tune.TuneConfig(num_samples=n, reuse_actors=True),
               run_config=tune.RunConfig(name=name, storage_path=storage)).fit()
""")

EXPERIMENT = textwrap.dedent("""
    name: {name}
    trainable: _trivial:trivial
    config: {{reports: {reports}}}
    search_space:
      x: {{uniform: [0.0, 1.0]}}
    metric: score
    mode: max
    search: {{algorithm: random, num_samples: {n}, seed: 0}}
    resources: {{cpu: 1}}
    storage: {storage}
    tracking: {{mlflow: {{tracking_uri: "{uri}"}}}}
""")


def env() -> dict:
    paths = [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p),
                RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, every
    process: user, nice, system, interrupts), from ``/proc/stat``; NaN elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return math.nan
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # guest time is counted in user already
    return busy / os.sysconf("SC_CLK_TCK")


def timed(cmd: list[str], cwd: str) -> tuple[float, float]:
    """(wall seconds, machine CPU seconds) of a whole process, start to exit."""
    cpu, start = machine_cpu_s(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    time.sleep(1.0)  # Ray's processes end just after the driver; count their last CPU
    cpu = machine_cpu_s() - cpu
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}")
    return seconds, cpu


def run_side(side: str, n: int, reports: int, tmp: str, uri: str,
             tag: str) -> tuple[float, float]:
    name = f"m-{'raw' if side == RAW else 'suite'}-{n}-{tag}"
    if side == RAW:
        script = Path(tmp, "raw_side.py")
        script.write_text(RAW_SCRIPT)
        return timed([sys.executable, str(script), str(n), str(reports), name, tmp], tmp)
    file = Path(tmp, f"{name}.yaml")
    file.write_text(EXPERIMENT.format(name=name, reports=reports, n=n, storage=tmp, uri=uri))
    return timed([sys.executable, "-m", "raytune_suite.cli", "run", str(file)], tmp)


def check_mlflow(uri: str, names: list[tuple[str, int]], reports: int) -> list[str]:
    """Problems with the suite runs' MLflow records: one finished run per trial, each
    with ``reports`` values of the metric."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    problems = []
    for name, n in names:
        experiment = client.get_experiment_by_name(name)
        runs = client.search_runs([experiment.experiment_id], max_results=10000)
        trials = [r for r in runs if r.data.tags.get("raytune_suite.role") == "trial"]
        ids = {r.data.tags.get("ray.trial_id") for r in trials}
        if len(trials) != n or len(ids) != n:
            problems.append(f"{name}: {len(trials)} trial runs for {n} trials")
        for run in trials:
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "score"))
            if steps != list(range(1, reports + 1)) or run.info.status != "FINISHED":
                problems.append(f"{name}: run {run.info.run_name} {run.info.status}, "
                                f"score steps {steps}")
    return problems


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", type=int, default=16)
    p.add_argument("--large", type=int, default=64)
    p.add_argument("--reports", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="2 and 4 trials, 1 round; prints")
    args = p.parse_args(argv)
    if args.smoke:
        args.small, args.large, args.rounds = 2, 4, 1
    if not 0 < args.small < args.large:
        p.error("need 0 < --small < --large")
    _common.start_local_ray_only()
    where = _common.machine("cpu")
    started = time.perf_counter()
    walls: dict[tuple[str, int], list[float]] = {}
    cpus: dict[tuple[str, int], list[float]] = {}
    suite_runs: list[tuple[str, int]] = []
    with tempfile.TemporaryDirectory(prefix="p1-marginal-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        store = _common.create_mlflow_store(uri)
        for r in range(args.rounds):
            sides = [RAW, SUITE] if r % 2 == 0 else [SUITE, RAW]
            for n in (args.small, args.large):
                for side in sides:
                    seconds, cpu = run_side(side, n, args.reports, tmp, uri, f"r{r}")
                    walls.setdefault((side, n), []).append(seconds)
                    cpus.setdefault((side, n), []).append(cpu)
                    if side == SUITE:
                        suite_runs.append((f"m-suite-{n}-r{r}", n))
                    print(f"round {r + 1}: {side}, {n} trials: {seconds:.2f} s, machine CPU "
                          f"{cpu:.1f} s", flush=True)
        problems = check_mlflow(uri, suite_runs, args.reports)
    def per_trial(figures: dict) -> tuple[dict, dict]:
        """Medians over rounds by (side, trials), and each side's marginal ms per trial."""
        median = {k: statistics.median(v) for k, v in figures.items()}
        return median, {side: (median[side, args.large] - median[side, args.small])
                        / (args.large - args.small) * 1000 for side in (RAW, SUITE)}

    median, marginal = per_trial(walls)
    cpu_median, cpu_marginal = per_trial(cpus)
    for side in (RAW, SUITE):
        if marginal[side] <= 0:
            problems.append(f"{side}: the marginal cost came out {marginal[side]:.0f} ms; "
                            "the machine was too busy to tell")
    ratio = marginal[SUITE] / marginal[RAW] if min(marginal.values()) > 0 else float("nan")
    cpu_ratio = (cpu_marginal[SUITE] / cpu_marginal[RAW] if min(cpu_marginal.values()) > 0
                 else float("nan"))
    for side in (RAW, SUITE):
        print(f"{side}: {args.small} trials {median[side, args.small]:.2f} s, {args.large} "
              f"trials {median[side, args.large]:.2f} s; marginal {marginal[side]:.0f} ms "
              f"per trial; machine CPU {cpu_median[side, args.small]:.1f} and "
              f"{cpu_median[side, args.large]:.1f} s, marginal {cpu_marginal[side]:.0f} ms "
              "per trial")
    verdict = f"{ratio:.2f}x ({_common.verdict(ratio <= 1.05)}: <= 1.05x)"
    print(f"suite / raw, marginal cost per trial: {verdict}")
    print(f"suite / raw, marginal machine CPU per trial: {cpu_ratio:.2f}x")
    mlflow_text = (f"{len(suite_runs)} suite runs: every trial one finished run with "
                   f"{args.reports} values of the metric" if not problems
                   else "; ".join(problems[:5]))
    print(f"MLflow: {mlflow_text}")
    if not _common.report_end(started, problems, args.smoke):
        return 1 if problems else 0

    def walls_text(side: str, figures: dict = walls) -> str:
        return "; ".join(f"{n} trials: " + ", ".join(f"{s:.1f}" for s in figures[side, n])
                         for n in (args.small, args.large))

    cells = [_common.utc_now(), where, f"`{_common.command()}`",
             f"{args.small} and {args.large} trials x {args.reports} results, no work, 1 CPU "
             f"each, {os.cpu_count()} CPUs; whole processes, {args.rounds} rounds; MLflow "
             f"store created first ({store:.1f} s, untimed)",
             walls_text(RAW), walls_text(SUITE),
             f"{marginal[RAW]:.0f}, {marginal[SUITE]:.0f}", verdict,
             f"raw: {walls_text(RAW, cpus)}; suite: {walls_text(SUITE, cpus)}",
             f"{cpu_marginal[RAW]:.0f}, {cpu_marginal[SUITE]:.0f}; {cpu_ratio:.2f}x",
             mlflow_text]
    _common.record_to_table(HEADING, COLUMNS, cells, TABLE_NOTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
