"""P4 memory per trial: the node's peak memory with 1, 2 and 4 trials running at once.

Each case is one run of the real suite (``spec.validate`` + ``runner.run_experiment``,
embedded Ray started by the runner, MLflow off, a fresh runtime and storage folder per
case): k trials of the built-in ``classifier`` (an MLP, hidden 64) with
``max_concurrent: k``, all on one synthetic data set of 3x32x32 float32 samples, which
the runner loads once in the driver and hands to the trials through Ray's object store.
Every trial asks for 1/4 of the machine's CPUs, so each case has the same threads per
trial and 4 trials fit at once. Meanwhile the driver and all its descendants (Ray's
processes, the trials) are sampled every 0.2 s from ``/proc/<pid>/smaps_rollup``, with
``data_sharing.py``'s readers:

- node PSS: the sum of PSS over those processes, which counts every page once (a page
  shared by n processes adds 1/n to each). This is the node's memory.
- node RSS sum: the sum of RSS, which counts a shared page once per process mapping it:
  k trials reading one copy of the data in shared memory show it k times here.

Both are the peaks over the samples in which a trial was running. A trial process costs
hundreds of MB before it holds any data (torch, Ray, the model), so every k also runs on
a 512-sample data set (the runtime without data), and:

- data on the node at k = node PSS (large data, k) - node PSS (512 samples, k): one copy
  of the data set if it is held once per node, k copies if every trial held its own;
- data added per extra trial = (data on the node at k - at 1) / (k - 1).

Aim (issue 7): the data set is held once per node, each extra trial adding under 25% of
its size. The aim is about the data, so it is checked on "data added per extra trial".
The raw increase of node PSS per extra trial is printed too: it also holds the trial's
own runtime, which no data layout can remove.

    uv run python benchmarks/memory.py                  # 16384 samples = 201 MB; appends a row
    uv run python benchmarks/memory.py --samples 65536  # ~800 MB
    uv run python benchmarks/memory.py --smoke          # tiny, 1 and 2 trials; prints only
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (a sibling module: this file runs as a script)
from data_sharing import (MB, RUNTIME_SAMPLES, SHAPE, TRIAL_MARKERS,  # noqa: E402
                          descendants, read_memory, read_title)

HEADING = "P4 memory per trial"
COLUMNS = ("date", "machine", "command", "setup", "node PSS peak, large data (MB)",
           "node PSS peak, runtime only (MB)", "data on the node (x data set)",
           "data added per extra trial (aim < 25%)", "node PSS per extra trial, raw",
           "node RSS sum peak, large data (MB)")
CONCURRENCY = (1, 2, 4)


class NodeSampler(threading.Thread):
    """Peaks of the node's PSS and RSS sums while trials run, and how many ran at once."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval = interval
        self.stopped = threading.Event()
        self.pss_peak = self.rss_peak = 0
        self.most_running = 0
        self.seconds_at_most = 0.0  # time with ``most_running`` trials seen at once

    def run(self) -> None:
        driver = os.getpid()
        while not self.stopped.wait(self.interval):
            pss = rss = running = 0
            for pid in [driver, *descendants(driver)]:
                try:
                    title = read_title(pid)
                    memory = read_memory(pid)
                except (OSError, KeyError):
                    continue  # exited (or became a zombie) between listing and reading
                pss, rss = pss + memory.pss, rss + memory.rss
                running += any(marker in title for marker in TRIAL_MARKERS)
            if running:
                self.pss_peak, self.rss_peak = max(self.pss_peak, pss), max(self.rss_peak, rss)
            if running > self.most_running:
                self.most_running, self.seconds_at_most = running, 0.0
            if running == self.most_running:
                self.seconds_at_most += self.interval


@dataclasses.dataclass
class Case:
    """One run: k trials on a data set of ``samples`` samples, and what was sampled."""

    trials: int
    samples: int
    sampler: NodeSampler
    seconds: float
    errors: int


def experiment(storage: str, samples: int, trials: int, epochs: int) -> dict:
    """The experiment file (as a mapping) of one case."""
    return {
        "name": f"p4-memory-{trials}x{samples}",
        "trainable": "classifier",
        "config": {"dataset": "synthetic", "synthetic_samples": samples,
                   "synthetic_shape": list(SHAPE), "synthetic_classes": 10,
                   "model": "mlp", "hidden": 64, "epochs": epochs},
        # lr is searched so the trials differ as in a real search; it is not a data key,
        # so the runner shares one data set.
        "search_space": {"lr": {"loguniform": [1e-4, 1e-2]}},
        "metric": "val_accuracy",
        "mode": "max",
        "search": {"num_samples": trials, "max_concurrent": trials, "seed": 0},
        "resources": {"cpu": (os.cpu_count() or 1) / max(CONCURRENCY)},
        "storage": storage,
        "tracking": {"mlflow": {"enabled": False}},
    }


def run_case(trials: int, samples: int, epochs: int) -> Case:
    """Run the suite in a fresh Ray runtime and storage folder, sampling the node."""
    import ray

    from raytune_suite.engine.runner import run_experiment
    from raytune_suite.experiment import validate

    print(f"\n=== {trials} trial(s) at once, {samples} samples", flush=True)
    with tempfile.TemporaryDirectory(prefix="p4-memory-") as storage:
        raw = experiment(storage, samples, trials, epochs)
        spec = validate(raw)
        sampler = NodeSampler()
        sampler.start()
        start = time.perf_counter()
        try:
            outcome = run_experiment(spec, raw, use_mlflow=False)
        finally:
            sampler.stopped.set()
            sampler.join()
            ray.shutdown()
        return Case(trials, samples, sampler, time.perf_counter() - start, outcome.errors)


def _mb(n: float) -> str:
    return f"{n / MB:,.0f}"


def derive(large: dict[int, Case], runtime: dict[int, Case], data_bytes: int) -> dict:
    """The figures the aim is about, from the cases' peaks (bytes, or fractions)."""
    ks = sorted(large)
    raw = {k: (large[k].sampler.pss_peak - large[1].sampler.pss_peak) / (k - 1)
           for k in ks if k > 1}
    if not runtime:
        return {"raw": raw}
    held = {k: large[k].sampler.pss_peak - runtime[k].sampler.pss_peak for k in ks}
    added = {k: (held[k] - held[1]) / (k - 1) for k in ks if k > 1}
    return {"raw": raw, "held": held, "added": added}


def print_report(large: dict[int, Case], runtime: dict[int, Case], figures: dict,
                 data_bytes: int) -> None:
    print(f"\n{'case':<34}{'node PSS':>10}{'node RSS sum':>14}{'at once':>9}{'for':>8}"
          f"{'run':>7}")
    for label, cases in (("large data", large), (f"{RUNTIME_SAMPLES} samples (runtime)",
                                                 runtime)):
        for k, case in sorted(cases.items()):
            s = case.sampler
            print(f"{label + f', {k} trial(s)':<34}{_mb(s.pss_peak):>10}{_mb(s.rss_peak):>14}"
                  f"{s.most_running:>9}{s.seconds_at_most:>7.1f}s{case.seconds:>6.0f}s")
    print(f"data set {_mb(data_bytes)} MB; figures in MB (10^6 bytes), peaks while trials ran")
    for k, extra in figures["raw"].items():
        print(f"{k} trials: node PSS per extra trial, raw {_mb(extra)} MB "
              f"({extra / data_bytes:.0%} of the data set; includes the trial's runtime)")
    for k, held in figures.get("held", {}).items():
        print(f"{k} trial(s): data on the node {_mb(held)} MB = {held / data_bytes:.2f}x "
              "the data set")
    for k, added in figures.get("added", {}).items():
        print(f"{k} trials: data added per extra trial {_mb(added)} MB = "
              f"{added / data_bytes:+.0%} of the data set "
              f"({_common.verdict(added < data_bytes / 4)}: < 25%)")


def _per_k(values: dict, fmt) -> str:
    """``1: a; 2: b; 4: c``: one figure per number of trials at once."""
    return "; ".join(f"{k}: {fmt(v)}" for k, v in values.items())


def problems_of(cases: list[Case]) -> list[str]:
    return [f"{c.trials} trial(s), {c.samples} samples: {c.errors} errored, at most "
            f"{c.sampler.most_running} of {c.trials} trial processes seen at once"
            for c in cases if c.errors or c.sampler.most_running != c.trials]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=16384,
                   help="synthetic samples of 3x32x32 float32 (12 KiB each; 16384 = 201 MB)")
    p.add_argument("--epochs", type=int, default=4,
                   help="per trial: long enough for all trials of a case to run at once")
    p.add_argument("--smoke", action="store_true",
                   help=f"{RUNTIME_SAMPLES * 2} samples, 1 epoch, 1 and 2 trials, no runtime "
                        "cases: checks that it runs, prints, records nothing")
    args = p.parse_args(argv)
    if args.smoke:
        args.samples, args.epochs = RUNTIME_SAMPLES * 2, 1
    if args.samples < 100:
        p.error(f"--samples must be >= 100 (a stratified split of 10 classes), got {args.samples}")
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    _common.start_local_ray_only()
    where = _common.machine("cpu")  # before the run: its load figure
    data_bytes = args.samples * math.prod(SHAPE) * 4
    concurrency = (1, 2) if args.smoke else CONCURRENCY
    print(f"{args.samples} samples = {_mb(data_bytes)} MB of float32 data, {args.epochs} "
          f"epoch(s) per trial; {os.cpu_count()} CPUs", flush=True)
    started = time.perf_counter()
    large = {k: run_case(k, args.samples, args.epochs) for k in concurrency}
    runtime = ({} if args.smoke else
               {k: run_case(k, RUNTIME_SAMPLES, args.epochs) for k in concurrency})
    figures = derive(large, runtime, data_bytes)
    print_report(large, runtime, figures, data_bytes)
    problems = problems_of([*large.values(), *runtime.values()])
    if not _common.report_end(started, problems, args.smoke):
        return 1 if problems else 0
    cells = [_common.utc_now(), where, f"`{_common.command()}`",
             f"{args.samples} x {'x'.join(map(str, SHAPE))} float32 = {_mb(data_bytes)} MB; "
             f"mlp hidden 64, {args.epochs} epochs, {(os.cpu_count() or 1) / 4:g} CPU/trial",
             _per_k({k: c.sampler.pss_peak for k, c in large.items()}, _mb),
             _per_k({k: c.sampler.pss_peak for k, c in runtime.items()}, _mb),
             _per_k(figures["held"], lambda v: f"{v / data_bytes:.2f}x"),
             _per_k(figures["added"], lambda v: f"{_mb(v)} MB = {v / data_bytes:+.0%} "
                                               f"({_common.verdict(v < data_bytes / 4)})"),
             _per_k(figures["raw"], lambda v: f"{_mb(v)} MB"),
             _per_k({k: c.sampler.rss_peak for k, c in large.items()}, _mb)]
    _common.record(HEADING, COLUMNS, cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
