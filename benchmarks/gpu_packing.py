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

Aim (issue 7): at least 3x the steady aggregate at 0.125 as at 1. ``gpu: auto`` (issue
16): after the fixed packings, the same runtime runs the suite's probe as ``run`` does (a Ray
task holding the GPU, :mod:`raytune_suite.engine.gpu_probe`) and the row shows its choice and
the steady aggregate of that packing against the best fixed one (aim >= 95%).

``--trainer-processes`` needs no Ray or MLflow (a GPU machine with torch, numpy and
pydantic): the suite's ``Trainer`` runs as k processes at once on one GPU for k = 1, 2, 4, 8,
which is what Ray's ``gpu: 1/k`` does physically, with CUDA graphs off and on, each process
training ``--steps`` batches after 20 warm-up ones, started together; then the ``gpu: auto``
probe decides. Aims (issue 16): one trial (graphs on) >= 120,000 samples/s on an H200; the
aggregate at the auto choice >= 95% of the best fixed packing.

    uv run python benchmarks/gpu_packing.py                 # 50,000 samples; appends a row
    uv run python benchmarks/gpu_packing.py --target 0.5 --epochs 20
    uv run python benchmarks/gpu_packing.py --smoke         # 1 and 0.5, tiny; prints only
    python benchmarks/gpu_packing.py --trainer-processes    # no Ray; appends a row
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
           "one trial's share of the GPU", "gpu: auto (aim >= 95% of the best)")
PROCESS_COLUMNS = ("date", "machine", "command", "setup",
                   "aggregate samples/s by trials per GPU, eager steps",
                   "the same, CUDA graphs", "one trial, graphs (aim >= 120,000)",
                   "gpu: auto's choice and its aggregate (aim >= 95% of the best)")
PROCESS_NOTE = ("`--trainer-processes` rows: the `Trainer` as k processes on one GPU, no Ray "
                "(issue 16: CUDA graphs and `gpu: auto`).")
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
    p.add_argument("--trainer-processes", action="store_true",
                   help="no Ray: the Trainer as k processes on one GPU, graphs off and on")
    p.add_argument("--steps", type=int, default=1500,
                   help="--trainer-processes: timed batches per process")
    p.add_argument("--smoke", action="store_true",
                   help="gpu 1 and 0.5, 2048 samples, 2 epochs, no warm-up: prints, records "
                        "nothing")
    args = p.parse_args(argv)
    if args.smoke:
        args.samples, args.epochs, args.steps = 2048, 2, 30
    if args.samples < 100 or args.epochs < 2:
        p.error(f"--samples must be >= 100 and --epochs >= 2 (the first epoch is a warm-up), "
                f"got {args.samples}, {args.epochs}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    import torch

    args = parse_args(argv)
    if args.trainer_processes and args.smoke:  # checks the script anywhere, on CPU too
        return main_processes(args, "cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        print("no CUDA GPU: not measured")
        return 0
    if args.trainer_processes:
        return main_processes(args)
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
            auto = auto_choice(args, storage)
        finally:
            ray.shutdown()
    target = args.target or 0.9 * (runs[0].watcher.best_by(math.inf, METRIC) or 0.0)
    figures = report(runs, target)
    figures["auto"] = auto_against_fixed(auto, runs)
    print(f"gpu: auto: {figures['auto']}")
    problems = problems_of(runs, args)
    if not _common.report_end(started, problems, args.smoke):
        return 1 if problems else 0
    cells = [_common.utc_now(), where, f"`{_common.command()}`",
             f"{args.samples} synthetic 3x32x32 samples on the device; CNN width 1, batch 128, "
             f"SGD lr 0.05, bf16 + channels_last; {args.epochs} epochs; trials differ in seed",
             figures["steady"], figures["ratio"], figures["wall"], figures["ttt"],
             figures["share"], figures["auto"]]
    _common.record_to_table(HEADING, COLUMNS, cells,
                            "Rows with the `gpu: auto` column (issue 16).")
    return 0


def auto_choice(args: argparse.Namespace, storage: str) -> dict:
    """What ``gpu: auto`` decides for this benchmark's search, the way ``run`` decides it:
    the probe as a Ray task holding the GPU (Ray is up)."""
    from raytune_suite.engine import gpu_probe
    from raytune_suite.experiment import validate

    raw = experiment(1.0, args, storage, "p5-gpu-auto")
    raw["resources"]["gpu"] = "auto"
    _, record = gpu_probe.decide_for(validate(raw), gpus=1)
    print(record["line"], record.get("measurements"), flush=True)
    return record


def auto_against_fixed(record: dict, runs: list[Packing]) -> str:
    """The auto choice and the steady aggregate of that packing against the best."""
    best = max(r.steady for r in runs)
    chosen = [r for r in runs if r.gpu == record["gpu"]]
    if not chosen:
        return f"chose gpu {record['gpu']:g} ({record['line']}): not among the packings run"
    share = chosen[0].steady / best
    return (f"chose gpu {record['gpu']:g} ({record['k']} per GPU): {chosen[0].steady:,.0f} "
            f"samples/s, {share:.0%} of the best ({_common.verdict(share >= 0.95)}); probe "
            f"{record.get('seconds', 0):g} s")


def main_processes(args: argparse.Namespace, device: str = "cuda") -> int:
    """``--trainer-processes``: packings as processes of the ``Trainer``, no Ray (with
    ``--smoke`` also on a CPU, to check the script: no memory figures there)."""
    import torch

    from raytune_suite.engine import gpu_auto, gpu_probe

    where = _common.machine(f"cuda ({torch.cuda.get_device_name(0)})" if device == "cuda"
                            else "cpu")
    started = time.perf_counter()
    config = experiment(1.0, args, "", "p5")["config"]
    shapes = gpu_probe.data_shapes(config)
    packings = PACKINGS[:2] if args.smoke else PACKINGS
    rates: dict[tuple[bool, int], Optional[float]] = {}
    for graphs in (False, True):
        for gpu in packings:
            k = round(1 / gpu)
            m, _ = gpu_probe.measure_packing(k, {**config, "cuda_graphs": graphs}, shapes,
                                             device, args.steps, gpu_probe.WARMUP_STEPS, 1)
            rates[graphs, k] = m.samples_per_s
            peak = "out of memory" if m.failed else \
                f"{m.samples_per_s:,.0f} samples/s, peak {m.peak_memory_bytes / 2**30:.2f} GiB"
            print(f"graphs {'on' if graphs else 'off'}, {k} process(es): {peak}", flush=True)
    probe = gpu_probe.measure({**config, "cuda_graphs": True}, shapes, device,
                              packings=tuple(round(1 / g) for g in packings),
                              steps=args.steps if args.smoke else gpu_probe.STEPS)
    decision = gpu_auto.decide(probe["measurements"], probe["gpu_memory_bytes"])
    print(decision.line(), f"(probe {probe['seconds']:g} s)")
    on = {k: r for (graphs, k), r in rates.items() if graphs and r}
    best = max(on.values())
    share = (on.get(decision.k) or 0.0) / best
    one = on.get(1, 0.0)

    def per_k(graphs: bool) -> str:
        return "; ".join(f"{k}: " + (f"{r:,.0f}" if r else "out of memory")
                         for (g, k), r in rates.items() if g == graphs)

    cells = [_common.utc_now(), where, f"`{_common.command()}`",
             f"Trainer processes, no Ray; {shapes['n_train']} synthetic 3x32x32 samples on the "
             f"device; CNN width 1, batch 128, SGD lr 0.05, bf16 + channels_last; "
             f"{args.steps} timed batches per process after {gpu_probe.WARMUP_STEPS}",
             per_k(False), per_k(True),
             f"{one:,.0f} ({_common.verdict(one >= 120_000)}); graphs / eager "
             f"{one / rates[False, 1]:.2f}x" if rates.get((False, 1)) else f"{one:,.0f}",
             f"{decision.k} per GPU: {on.get(decision.k, 0):,.0f}, {share:.0%} of the best "
             f"({_common.verdict(share >= 0.95)}); probe {probe['seconds']:g} s"]
    print("\n".join(f"{c}: {v}" for c, v in zip(PROCESS_COLUMNS[3:], cells[3:])))
    if not _common.report_end(started, [], args.smoke):
        return 0
    _common.record_to_table(HEADING, PROCESS_COLUMNS, cells, PROCESS_NOTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
