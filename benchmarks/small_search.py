"""P7 small search: the quickstart's task through the suite and through Optuna, side by
side, timed from process start.

A user's first search is small and runs on one machine, where the in-process peer is
Optuna. Each side runs the quickstart's task (``experiments/quickstart.yaml``: digits,
the suite's CNN at width 0.25, its search space, 20 trials of up to 15 epochs, 2 at a
time, 1 CPU each) as a whole process started the way its user starts it:

- the suite: ``raytune-suite run experiments/quickstart.yaml --set search.seed=S``
  (HyperOpt TPE + ASHA, as the file says) with MLflow off (``--no-mlflow``) and on
  (SQLite, into an ``mlflow.db`` created before anything is timed);
- Optuna: a script with ``TPESampler(seed=S, n_startup_trials=8)`` (the file's
  ``n_initial_points``) and ``SuccessiveHalvingPruner(min_resource=2,
  reduction_factor=3)`` (the file's ASHA), ``n_jobs=2`` threads of 1 torch thread each,
  training the same ``training.loop.Trainer`` on the same data split, the same space.

For each run: seconds from launching the process to its first epoch result, to the
first result with ``val_accuracy >= target``, and to its exit. The suite's results are
read from its ``result.json`` files as the driver writes them (every 0.1 s), Optuna's
from the lines its script prints with the same machine-wide monotonic clock. Figures
are medians over seeds.

Aims (issue 18): the suite with MLflow off reaches the target at most 1.5x later than
Optuna; its first result at most 15 s after start; the whole quickstart at most 25 s.

    uv run python benchmarks/small_search.py            # 3 seeds, target 0.975
    uv run python benchmarks/small_search.py --smoke    # 1 seed, 4 trials x 3 epochs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (a sibling module: this file runs as a script)

HEADING = "P7 small search: the quickstart against Optuna"
COLUMNS = ("date", "machine", "command", "setup", "first result (s): suite off, on, Optuna",
           "time to target (s): suite off, on, Optuna", "all done (s): suite off, on, Optuna",
           "best val_accuracy: suite off, on, Optuna",
           "suite / Optuna, time to target (aim <= 1.5x)", "aims: first <= 15 s, all <= 25 s")
QUICKSTART = _common.REPO_ROOT / "experiments" / "quickstart.yaml"
OFF, ON, OPTUNA = "suite, MLflow off", "suite, MLflow on (SQLite)", "Optuna"
SIDES = (OFF, ON, OPTUNA)

OPTUNA_SCRIPT = textwrap.dedent("""
    import json, sys, threading, time
    import yaml
    seed, trials, epochs, jobs, file = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                        int(sys.argv[4]), sys.argv[5])
    import optuna
    import torch
    from raytune_suite.training.config import ClassifierConfig
    from raytune_suite.training.data import load_arrays, to_device
    from raytune_suite.training.loop import Trainer
    from raytune_suite.training.data import data_spec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)  # one core per trial, as the suite gives each trial 1 CPU
    base = {**yaml.safe_load(open(file))["config"], "epochs": epochs}
    data = to_device(load_arrays(data_spec(ClassifierConfig.from_trial(base))), "cpu")
    printing = threading.Lock()  # n_jobs threads print; one line must not split another

    def emit(row):
        with printing:
            print(json.dumps(row), flush=True)

    def objective(trial):
        name = trial.suggest_categorical("optimizer", ["adam", "sgd"])
        optimizer = {"name": name}
        if name == "sgd":
            optimizer["momentum"] = trial.suggest_float("momentum", 0.8, 0.99)
            optimizer["nesterov"] = trial.suggest_categorical("nesterov", [True, False])
        cfg = ClassifierConfig.from_trial({
            **base, "optimizer": optimizer,
            "lr": trial.suggest_float("lr", 1e-4, 3e-2, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True)})
        trainer = Trainer(cfg, data, "cpu")
        best = 0.0
        while not trainer.finished:
            value = trainer.run_epoch()["val_accuracy"]
            best = max(best, value)
            emit({"t": time.monotonic(), "val_accuracy": value})
            trial.report(value, trainer.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=8),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=3))
    study.optimize(objective, n_trials=trials, n_jobs=jobs)
""")


@dataclass
class Run:
    side: str
    seed: int
    first: Optional[float]  # seconds from launch to the first epoch result
    target: Optional[float]  # ... to the first result reaching the target
    total: float  # ... to the process's exit
    best: Optional[float]
    results: int


def _launch(cmd: list[str], cwd: str) -> tuple[subprocess.Popen, float]:
    return subprocess.Popen(cmd, cwd=cwd, env=_common.child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True), time.monotonic()


def _finish(proc: subprocess.Popen, cmd: list[str]) -> tuple[str, float]:
    out, _ = proc.communicate()
    ended = time.monotonic()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited {proc.returncode}:\n{out[-3000:]}")
    return out, ended


def run_suite(side: str, seed: int, args, tmp: str, uri: str) -> Run:
    name = f"small-{'on' if side == ON else 'off'}-{seed}"
    storage = os.path.join(tmp, "results")
    cmd = [sys.executable, "-m", "raytune_suite.cli", "run", str(QUICKSTART),
           "--set", f"name={name}", "--set", f"storage={storage}",
           "--set", f"search.seed={seed}", "--set", f"search.num_samples={args.trials}",
           "--set", f"config.epochs={args.epochs}", "--set", f"scheduler.max_t={args.epochs}"]
    cmd += ["--set", f"tracking.mlflow.tracking_uri={uri}"] if side == ON else ["--no-mlflow"]
    watcher = _common.ResultWatcher("", folder=os.path.join(storage, name))
    watcher.start()  # its clock starts here, with the launch
    proc, launched = _launch(cmd, tmp)
    _, ended = _finish(proc, cmd)
    seen = watcher.stop()
    values = [r.result.get(args.metric) for r in seen]
    values = [v for v in values if isinstance(v, (int, float))]
    return Run(side, seed, seen[0].seconds if seen else None,
               watcher.first_reaching(args.metric, args.target), ended - launched,
               max(values) if values else None, len(seen))


def run_optuna(seed: int, args, tmp: str) -> Run:
    script = Path(tmp, "optuna_side.py")
    script.write_text(OPTUNA_SCRIPT)
    cmd = [sys.executable, str(script), str(seed), str(args.trials), str(args.epochs),
           str(args.concurrency), str(QUICKSTART)]
    proc, launched = _launch(cmd, tmp)
    out, ended = _finish(proc, cmd)
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    first = rows[0]["t"] - launched if rows else None
    target = next((r["t"] - launched for r in rows if r["val_accuracy"] >= args.target), None)
    return Run(OPTUNA, seed, first, target, ended - launched,
               max((r["val_accuracy"] for r in rows), default=None), len(rows))


def _median(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _s(value: Optional[float]) -> str:
    return "never" if value is None else f"{value:.1f}"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--concurrency", type=int, default=2, help="the file's max_concurrent")
    p.add_argument("--target", type=float, default=0.975)
    p.add_argument("--metric", default="val_accuracy")
    p.add_argument("--smoke", action="store_true", help="1 seed, 4 trials x 3 epochs; prints")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.trials, args.epochs, args.target = 1, 4, 3, 0.5
    where = _common.machine("cpu")
    started = time.perf_counter()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="p7-small-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        store = _common.create_mlflow_store(uri)
        for seed in range(args.seeds):
            order = SIDES[seed % 3:] + SIDES[:seed % 3]  # each side goes first once
            for side in order:
                run = (run_optuna(seed, args, tmp) if side == OPTUNA
                       else run_suite(side, seed, args, tmp, uri))
                runs.append(run)
                print(f"seed {seed}: {side}: first result {_s(run.first)} s, "
                      f"{args.metric} >= {args.target} at {_s(run.target)} s, all done "
                      f"{run.total:.1f} s; best {run.best}; {run.results} results", flush=True)
    med = {side: {k: _median([getattr(r, k) for r in runs if r.side == side])
                  for k in ("first", "target", "total", "best")} for side in SIDES}
    problems = [f"{r.side}, seed {r.seed}: no result" for r in runs if not r.results]
    for side in SIDES:
        m = med[side]
        print(f"{side}: median first result {_s(m['first'])} s, target {_s(m['target'])} s, "
              f"all done {_s(m['total'])} s, best {m['best']}")
    ratio = (med[OFF]["target"] / med[OPTUNA]["target"]
             if med[OFF]["target"] and med[OPTUNA]["target"] else None)
    verdict = (f"{ratio:.2f}x ({_common.verdict(ratio <= 1.5)}: <= 1.5x)" if ratio
               else "not measured: a side never reached the target")
    first_ok = med[OFF]["first"] is not None and med[OFF]["first"] <= 15
    total_ok = med[OFF]["total"] <= 25
    aims = (f"first result {_s(med[OFF]['first'])} s ({_common.verdict(first_ok)}: <= 15 s); "
            f"all done {_s(med[OFF]['total'])} s ({_common.verdict(total_ok)}: <= 25 s)")
    print(f"suite (MLflow off) / Optuna, median time to {args.metric} >= {args.target}: "
          f"{verdict}")
    print(f"suite (MLflow off): {aims}")
    if not _common.report_end(started, problems, args.smoke):
        return 1 if problems else 0

    def cells(key: str, fmt=_s) -> str:
        return ", ".join(fmt(med[side][key]) for side in SIDES)

    _common.record(HEADING, COLUMNS, [
        _common.utc_now(), where, f"`{_common.command()}`",
        f"quickstart task: {args.trials} trials x <= {args.epochs} epochs, {args.concurrency} "
        f"at a time, 1 CPU each; {args.seeds} seeds, medians; target {args.metric} >= "
        f"{args.target}; whole processes from launch; MLflow store created first "
        f"({store:.1f} s, untimed)",
        cells("first"), cells("target"), cells("total"),
        cells("best", lambda v: "-" if v is None else f"{v:.3f}"), verdict, aims])
    return 0


if __name__ == "__main__":
    sys.exit(main())
