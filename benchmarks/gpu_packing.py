"""P5 GPU packing: 1, 2, 4 and 8 trials sharing one GPU. Needs a CUDA GPU.

For each packing g in (1, 0.5, 0.25, 0.125) the suite (``spec.validate`` +
``runner.run_experiment``, one embedded Ray runtime from ``runner.init_ray``, MLflow off)
runs n = 1/g trials at once with ``resources.gpu: g`` and ``min(1, CPUs / 8)`` CPUs each.
The n trials differ only in ``config.seed`` (a grid over seeds), so each does the same
work: the built-in ``classifier`` with the practitioners' CNN (width 1), CIFAR-shaped
synthetic data (3x32x32, 10 classes, loaded once by the runner, copied onto the GPU once
per trial process), batch size 128, SGD (lr 0.05, momentum 0.9), and the GPU defaults:
bf16 autocast and channels_last. Without a CUDA GPU the script prints
"no CUDA GPU: not measured" and exits 0 without recording anything.

Measured per packing:

- steady aggregate samples/s: the sum over the n trials of each trial's median training
  samples/s (``samples_per_s``, the training pass only) over those of its epochs after
  the first (which includes cuDNN's autotuning) that ran while all n trials were training
  (after every trial's first result, before any trial's last). The share of the run in
  which all n were training is printed as "together";
- wall aggregate: all samples trained / the run's wall time (start-up and validation
  included);
- time to target: from the call of ``run_experiment`` until some trial first reported
  val_accuracy >= the target (driver-side, ``_common.ResultWatcher``). The default target
  is 90% of the best val_accuracy the single unpacked trial reached;
- one trial's share of the GPU: a trial's median samples/s divided by the best steady
  aggregate of any packing.

Aim (issue 7): at least 3x the steady aggregate at 0.125 as at 1.

    uv run python benchmarks/gpu_packing.py                 # 50,000 samples; appends a row
    uv run python benchmarks/gpu_packing.py --target 0.5 --epochs 20
    uv run python benchmarks/gpu_packing.py --smoke         # 1 and 0.5, tiny; prints only
"""

from __future__ import annotations

import argparse
import dataclasses
import math
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

HEADING = "P5 GPU packing"
COLUMNS = ("date", "machine", "command", "setup", "steady aggregate samples/s by gpu share",
           "0.125 / 1 (aim >= 3x)", "wall aggregate samples/s", "time to target (s)",
           "one trial's share of the GPU")
PACKINGS = (1.0, 0.5, 0.25, 0.125)
METRIC = "val_accuracy"


@dataclasses.dataclass
class Packing:
    """One run: n = 1/gpu trials on one GPU, and their results as the driver saw them."""

    gpu: float
    seconds: float
    watcher: _common.ResultWatcher
    trials: int
    errors: int
    together_only: bool  # steady rates from epochs in which all n trials were training

    @property
    def n(self) -> int:
        return round(1 / self.gpu)

    def _times(self) -> dict[str, list[float]]:
        """Each trial's result times (seconds into the run), in epoch order."""
        times: dict[str, list[float]] = {}
        for seen in self.watcher.seen:
            times.setdefault(seen.trial, []).append(seen.seconds)
        return times

    def window(self) -> tuple[float, float]:
        """From the moment every trial had finished its first epoch (all were training)
        to the first moment one of them had finished (none was done before)."""
        times = self._times().values()
        return max(t[0] for t in times), min(t[-1] for t in times)

    def trial_rates(self) -> list[Optional[float]]:
        """Each trial's median training samples/s over its epochs after the first that ran
        inside :meth:`window` (so all n trials were training), or over all its epochs
        after the first if not ``self.together_only``; None for a trial with none."""
        start, end = self.window()
        per_trial: dict[str, list[float]] = {trial: [] for trial in self._times()}
        previous: dict[str, float] = {}
        for seen in self.watcher.seen:
            began = previous.get(seen.trial)  # the epoch ran from the previous result on
            previous[seen.trial] = seen.seconds
            if began is None:
                continue  # the first epoch includes cuDNN's autotuning
            if not self.together_only or (began >= start and seen.seconds <= end):
                per_trial[seen.trial].append(seen.result["samples_per_s"])
        return [statistics.median(r) if r else None for r in per_trial.values()]

    @property
    def steady(self) -> float:
        return sum(r for r in self.trial_rates() if r is not None)

    @property
    def one_trial(self) -> float:
        """One trial's samples/s: the median over the trials."""
        rates = [r for r in self.trial_rates() if r is not None]
        return statistics.median(rates) if rates else 0.0

    @property
    def wall(self) -> float:
        """Samples trained in all epochs of all trials / the run's wall time."""
        trained = sum(s.result["samples_per_s"] * s.result["epoch_seconds"]
                      for s in self.watcher.seen)
        return trained / self.seconds

    def together(self) -> float:
        """Share of the span of results during which all n trials were training."""
        start, end = self.window()
        times = self._times().values()
        whole = max(t[-1] for t in times) - min(t[0] for t in times)
        return max(0.0, end - start) / whole if whole > 0 else 0.0

    def time_to(self, target: float) -> float:
        reached = self.watcher.first_reaching(METRIC, target)
        return math.inf if reached is None else reached


def experiment(gpu: float, args: argparse.Namespace, storage: str, name: str) -> dict:
    n = round(1 / gpu)
    return {
        "name": name,
        "trainable": "classifier",
        "config": {"dataset": "synthetic", "synthetic_samples": args.samples,
                   "synthetic_shape": [3, 32, 32], "synthetic_classes": 10, "model": "cnn",
                   "width": 1.0, "batch_size": 128, "optimizer": "sgd", "lr": 0.05,
                   "momentum": 0.9, "epochs": args.epochs, "amp": True, "channels_last": True},
        "search_space": {"seed": {"grid": list(range(n))}},
        "metric": METRIC,
        "mode": "max",
        "search": {"algorithm": "grid", "max_concurrent": n},
        "resources": {"cpu": min(1.0, (os.cpu_count() or 1) / 8), "gpu": gpu},
        "storage": storage,
        "tracking": {"mlflow": {"enabled": False}},
    }


def run_packing(gpu: float, args: argparse.Namespace, storage: str,
                name: Optional[str] = None) -> Packing:
    from raytune_suite.engine.runner import run_experiment
    from raytune_suite.experiment import validate

    raw = experiment(gpu, args, storage, name or f"p5-gpu-packing-{round(1 / gpu)}")
    spec = validate(raw)
    print(f"\n=== gpu {gpu:g}: {round(1 / gpu)} trial(s) on one GPU", flush=True)
    watcher = _common.ResultWatcher(raw["name"], folder=spec.experiment_path)
    watcher.start()
    try:
        outcome = run_experiment(spec, raw, use_mlflow=False)
    finally:
        seconds = time.monotonic() - watcher.t0
        watcher.stop()
    return Packing(gpu, seconds, watcher, len(outcome.trials), outcome.errors,
                   together_only=not args.smoke)


def report(runs: list[Packing], target: float) -> dict[str, str]:
    """Print the table and the aim; the row's figure cells."""
    best = max(r.steady for r in runs)
    print(f"\n{'gpu':>6}{'trials':>7}{'steady agg/s':>14}{'wall agg/s':>12}{'one trial/s':>13}"
          f"{'share':>7}{'together':>10}{'to target':>11}")
    for r in runs:
        one = r.one_trial
        print(f"{r.gpu:>6g}{r.n:>7}{r.steady:>14,.0f}{r.wall:>12,.0f}{one:>13,.0f}"
              f"{one / best:>7.0%}{r.together():>10.0%}{_seconds(r.time_to(target)):>11}")
    first, last = runs[0], runs[-1]
    ratio = last.steady / first.steady
    ratio_text = (f"{ratio:.2f}x ({_common.verdict(ratio >= 3)}: >= 3x); wall aggregate "
                  f"{last.wall / first.wall:.2f}x")
    print(f"target val_accuracy {target:.3f}; gpu {last.gpu:g} / gpu {first.gpu:g}: {ratio_text}")
    return {
        "steady": _per_gpu(runs, lambda r: f"{r.steady:,.0f}"),
        "ratio": ratio_text,
        "wall": _per_gpu(runs, lambda r: f"{r.wall:,.0f}"),
        "ttt": f"target {target:.3f}; " + _per_gpu(runs, lambda r: _seconds(r.time_to(target))),
        "share": _per_gpu(runs, lambda r: f"{r.one_trial / best:.0%}"),
    }


def _per_gpu(runs: list[Packing], figure) -> str:
    """``1: a; 0.5: b; ...``: one figure per packing."""
    return "; ".join(f"{r.gpu:g}: {figure(r)}" for r in runs)


def _seconds(value: float) -> str:
    return "not reached" if math.isinf(value) else f"{value:.1f}"


def problems_of(runs: list[Packing], args: argparse.Namespace) -> list[str]:
    problems = []
    for r in runs:
        if r.errors or r.trials != r.n or len(r.watcher.seen) != r.n * args.epochs:
            problems.append(f"gpu {r.gpu:g}: {r.errors} errored, {r.trials} of {r.n} trials, "
                            f"{len(r.watcher.seen)} of {r.n * args.epochs} results seen")
        elif None in r.trial_rates():
            problems.append(f"gpu {r.gpu:g}: not every trial trained an epoch while all "
                            f"{r.n} were training (together {r.together():.0%} of the run); "
                            "raise --epochs")
    return problems


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=50000,
                   help="synthetic 3x32x32 samples (64%% train, 16%% validation)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--target", type=float, default=None,
                   help="val_accuracy to reach; default 90%% of the unpacked trial's best")
    p.add_argument("--smoke", action="store_true",
                   help="gpu 1 and 0.5, 2048 samples, 2 epochs, no warm-up: prints, records "
                        "nothing")
    args = p.parse_args(argv)
    if args.smoke:
        args.samples, args.epochs = 2048, 2
    if args.samples < 100 or args.epochs < 2:
        p.error(f"--samples must be >= 100 and --epochs >= 2 (the first epoch is a warm-up), "
                f"got {args.samples}, {args.epochs}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    import torch

    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: not measured")
        return 0
    import ray

    from raytune_suite.engine.runner import init_ray

    _common.start_local_ray_only()
    where = _common.machine(f"cuda ({torch.cuda.get_device_name(0)})")
    started = time.perf_counter()
    packings = PACKINGS[:2] if args.smoke else PACKINGS
    with tempfile.TemporaryDirectory(prefix="p5-gpu-packing-") as storage:
        init_ray(None)
        try:
            # Untimed: no measured run pays the driver's first imports or the runtime's
            # first use.
            if not args.smoke:
                warm_up = argparse.Namespace(**{**vars(args), "samples": 1024, "epochs": 1})
                run_packing(1.0, warm_up, storage, "p5-warm-up")
            runs = [run_packing(gpu, args, storage) for gpu in packings]
        finally:
            ray.shutdown()
    target = args.target or 0.9 * (runs[0].watcher.best_by(math.inf, METRIC) or 0.0)
    figures = report(runs, target)
    problems = problems_of(runs, args)
    if not _common.report_end(started, problems, args.smoke):
        return 1 if problems else 0
    cells = [_common.utc_now(), where, f"`{_common.command()}`",
             f"{args.samples} synthetic 3x32x32 samples on the device; CNN width 1, batch 128, "
             f"SGD lr 0.05, bf16 + channels_last; {args.epochs} epochs; trials differ in seed",
             figures["steady"], figures["ratio"], figures["wall"], figures["ttt"],
             figures["share"]]
    _common.record(HEADING, COLUMNS, cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
