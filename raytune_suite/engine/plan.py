"""What a search will cost, before it starts. Starts no search and writes nothing; without
``--address`` it starts no Ray either. Why each number is what it is:

- **trials**: ``num_samples`` x the grid, as Ray Tune's variant generator makes them.
- **epochs** (in the scheduler's ``time_attr``; ``training_iteration`` = epochs), as
  ``low``/``expected``/``high``: FIFO trains every trial to its end (``max_t``,
  ``stop.training_iteration``, or the classifier's own ``epochs``); ASHA, HyperBand and
  PBT as :mod:`raytune_suite.engine._rungs` counts them, under the assumptions stated
  there. A user's trainable has epochs only where the file fixes them.
- **concurrency**: min(trials, ``max_concurrent``, CPUs // ``resources.cpu``, GPUs //
  ``resources.gpu``), with this machine's CPUs and GPUs or a cluster's.
- **gpu: auto**: what the search would decide (:mod:`raytune_suite.engine.gpu_probe`): no
  GPU means CPU trials; with GPUs the probe runs (here, or with ``--address`` as a Ray
  task on one of the cluster's GPUs) and its packing sets the concurrency.
- **seconds** (``--probe``): one epoch of the centre of the space timed here
  (:mod:`raytune_suite.engine._machine`), scaled by the epochs and the concurrency, plus
  the fixed costs measured in BENCHMARKS.md; CPU- and GPU-hours from the same seconds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from raytune_suite.engine._epochs import count_trials, estimate_epochs, stop_notes, unit
from raytune_suite.engine._machine import cluster_capacity, local_capacity
from raytune_suite.experiment import ExperimentSpec

# Launch to the first result of `raytune-suite run` with embedded Ray, MLflow off: the
# quickstart in BENCHMARKS.md P7 (2026-11-29 16:38 row). A fixed cost per search.
STARTUP_S = 9.5
# The suite's wall-clock per trial of a trainable that does no work, MLflow off, 2 at a
# time: BENCHMARKS.md P1 (2026-11-29 13:43 row).
PER_TRIAL_S = 0.066


@dataclass
class Plan:
    """A search's cost; ``low``/``expected``/``high`` None when the trainable decides."""

    name: str
    trials: int
    scheduler: str
    unit: str  # "epochs", or the scheduler's time_attr
    low: Optional[float] = None
    expected: Optional[float] = None
    high: Optional[float] = None
    concurrency: Optional[int] = None
    capacity: Optional[tuple] = None  # (CPUs, GPUs, where) the trials run on
    rungs: list = field(default_factory=list)
    halving: Optional[float] = None
    notes: list = field(default_factory=list)
    probe: Optional[dict] = None
    seconds: Optional[dict] = None
    cpu_hours: Optional[float] = None
    gpu_hours: Optional[float] = None
    gpu_auto: Optional[dict] = None  # gpu: auto's decision (gpu_probe.record)

    def to_dict(self) -> dict[str, Any]:
        cpus, gpus, where = self.capacity or (None, None, None)
        return {"name": self.name, "trials": self.trials, "scheduler": self.scheduler,
                "unit": self.unit, "epochs": {"low": _num(self.low),
                                              "expected": _num(self.expected),
                                              "high": _num(self.high)},
                "concurrency": self.concurrency, "seconds": self.seconds,
                "cpu_hours": self.cpu_hours, "gpu_hours": self.gpu_hours,
                "rungs": [{"at": m, "reach": round(r, 1)} for m, r in self.rungs],
                "successive_halving": _num(self.halving),
                "capacity": {"cpus": cpus, "gpus": gpus, "where": where},
                "probe": self.probe, "gpu_auto": self.gpu_auto, "notes": self.notes}

    def span(self) -> str:
        if self.expected is None:
            return "unknown"
        return f"{self.low:.0f}..{self.high:.0f} (expected {self.expected:.0f})"

    def summary(self) -> str:
        """The one line ``run`` prints before the search starts."""
        at_once = "" if self.concurrency is None else f", {self.concurrency} at a time" \
            if self.concurrency else f", none fits {self.capacity[2]}"
        return f"plan: {self.trials} trials, {self.unit} {self.span()}{at_once}"

    def lines(self) -> list[str]:
        """What ``raytune-suite plan`` prints."""
        out = [f"{self.name}: {self.trials} trials, {self.scheduler} scheduler"]
        epochs = self.span()
        if self.rungs:
            epochs += (f"; rungs at {', '.join(f'{m:g}' for m, _ in self.rungs)} reached by "
                       f"{', '.join(f'{r:.3g}' for _, r in self.rungs)} trials")
        if self.halving is not None:
            epochs += f"; synchronous successive halving: {self.halving:.0f}"
        out.append(f"{self.unit + ':':<14}{epochs}")
        if self.gpu_auto:
            a = self.gpu_auto
            out.append(f"gpu:          {a['line'].removeprefix('gpu: ')}")
            for k, figures in a.get("measurements", {}).items():
                out.append(f"              {k} at once: {figures}")
        if self.capacity:
            cpus, gpus, where = self.capacity
            out.append(f"concurrency:  {self.concurrency} at a time ({where}: {cpus:g} CPUs, "
                       f"{gpus:g} GPUs)")
        if self.probe:
            p = self.probe
            shown = ", ".join(f"{k}={_show(v)}" for k, v in p["config"].items())
            out.append(f"probe:        {p['epoch_s']:.3g} s an epoch on {p['device']} "
                       f"({p['threads']} torch threads), set-up {p['setup_s']:.3g} s, "
                       f"checkpoint {p['checkpoint_s']:.3g} s; {shown or '-'}")
        if self.seconds:
            w = self.seconds["wall"]
            start = self.seconds["startup"]
            out.append(f"wall-clock:   about {_duration(w['expected'])} ({_duration(w['low'])}"
                       f" .. {_duration(w['high'])})" + (f", {start:g} s of it starting "
                                                         "embedded Ray (BENCHMARKS.md P7)"
                                                         if start else ""))
            out.append(f"compute:      {self.cpu_hours:.3g} CPU-hours, {self.gpu_hours:.3g} "
                       "GPU-hours")
        return out + [f"note: {n}" for n in self.notes]


def _num(x: Optional[float]):
    return None if x is None else (int(x) if float(x).is_integer() else round(x, 1))


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else \
        f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def concurrency(spec: ExperimentSpec, trials: int, cpus: float, gpus: float) -> int:
    """min(trials, max_concurrent, CPUs // resources.cpu, GPUs // resources.gpu)."""
    fits = [trials, math.floor(cpus / spec.resources.cpu + 1e-9)]
    if spec.search.max_concurrent:
        fits.append(spec.search.max_concurrent)
    share = spec.resources.gpu_share(gpus)
    if share > 0:
        fits.append(math.floor(gpus / share + 1e-9))
    return max(0, min(fits))


# ------------------------------------------------------------------ the plan


def make_plan(spec: ExperimentSpec, capacity: Optional[tuple] = None,
              trials: Optional[int] = None) -> Plan:
    """The plan of ``spec`` on ``capacity`` ((CPUs, GPUs, where), None: unknown);
    ``trials`` replaces the file's count (to compare with a search that ran that many)."""
    n = count_trials(spec) if trials is None else trials
    plan = Plan(spec.name, n, spec.scheduler.type, unit(spec))
    if capacity:
        plan.capacity, plan.concurrency = capacity, concurrency(spec, n, *capacity[:2])
        if plan.concurrency == 0 and n:
            plan.notes.append(f"no trial fits {capacity[2]}: each needs {spec.resources.cpu:g}"
                              f" CPUs and {spec.resources.gpu_share(capacity[1]):g} GPUs")
    est = estimate_epochs(spec, n, plan.concurrency, plan.notes)
    if est is not None:
        plan.low, plan.expected, plan.high = est.low, est.expected, est.high
        plan.rungs, plan.halving = est.rungs, est.halving
    stop_notes(spec, plan.notes)
    return plan


def add_probe(plan: Plan, spec: ExperimentSpec, embedded: bool = True) -> None:
    """Time one epoch of the centre of the space here (:mod:`engine._machine`) and derive
    the wall-clock, with every slot busy: Ray's start-up (embedded only, P7) + trials x
    the suite's overhead per trial (P1) + (epochs x (epoch + checkpoint / checkpoint.every)
    + trials x set-up) / concurrency, all probed seconds; CPU- and GPU-hours: the trials'
    own seconds x ``resources``."""
    if spec.trainable != "classifier":
        plan.notes.append(f"--probe measures only the built-in classifier trainable, not "
                          f"{spec.trainable}: the plan has no seconds")
        return
    from raytune_suite.engine._machine import probe_epoch

    p = plan.probe = probe_epoch(spec)
    if spec.resources.wants_gpu and p["device"] == "cpu":
        plan.notes.append("probed on this machine's CPU: no GPU here, the trials' GPUs "
                          "will be faster")
    if plan.expected is None or not plan.concurrency:
        return
    epoch = p["epoch_s"] + p["checkpoint_s"] / spec.checkpoint.every
    fixed = (STARTUP_S if embedded else 0.0) + plan.trials * PER_TRIAL_S
    work = {k: e * epoch + plan.trials * p["setup_s"] for k, e in
            (("low", plan.low), ("expected", plan.expected), ("high", plan.high))}
    plan.seconds = {"epoch": round(epoch, 4), "startup": STARTUP_S if embedded else 0.0,
                    "per_trial": PER_TRIAL_S,
                    "wall": {k: round(fixed + w / plan.concurrency, 1)
                             for k, w in work.items()}}
    plan.cpu_hours = float(f"{work['expected'] * spec.resources.cpu / 3600:.3g}")
    gpu = spec.resources.gpu_share(plan.capacity[1] if plan.capacity else 0)
    plan.gpu_hours = float(f"{work['expected'] * gpu / 3600:.3g}")
    if spec.stop.time_budget_s and plan.seconds["wall"]["expected"] > spec.stop.time_budget_s:
        plan.notes.append(f"the time budget ({spec.stop.time_budget_s:g} s) ends the search "
                          "before the expected wall-clock: fewer epochs")


def plan_file(path: str, overrides: list[str], address: Optional[str] = None,
              probe: bool = False) -> Plan:
    """``raytune-suite plan``: check the file as ``validate`` does, then plan it."""
    from raytune_suite.engine.registry import check
    from raytune_suite.experiment import load_spec

    spec, _ = load_spec(path, overrides)
    check(spec)
    capacity = cluster_capacity(address) if address else local_capacity(spec, count_gpus=True)
    gpu_auto = None
    if spec.resources.auto_gpu:
        spec, gpu_auto = _decide_gpu(spec, capacity[1], address)
    plan = make_plan(spec, capacity)
    plan.gpu_auto = gpu_auto
    if probe:
        add_probe(plan, spec, embedded=not address)
    return plan


def _decide_gpu(spec: ExperimentSpec, gpus: float, address: Optional[str]):
    """``gpu: auto`` as ``run`` would decide it: the probe on this machine's GPU, or
    (``address``) as a Ray task on the cluster's; none without a GPU."""
    from raytune_suite.engine import gpu_probe

    probing = gpus and spec.trainable == "classifier"
    if not (probing and address):  # on_ray: where it would probe, and the words for none
        _, record = gpu_probe.decide_for(spec, gpus, on_ray=bool(address))
        return gpu_probe.resolved(spec, record["gpu"]), record
    import ray

    from raytune_suite.engine.tuner import init_ray

    init_ray(address, log_to_driver=False)
    try:
        _, record = gpu_probe.decide_for(spec, gpus)
    finally:
        ray.shutdown()
    return gpu_probe.resolved(spec, record["gpu"]), record


# ------------------------------------------------------------------ after the search


def epochs_trained(path: str) -> int:
    """Results the experiment's trials reported: the rows of each trial's result.json.
    Each is an epoch trained: a PBT exploit's jump in training_iteration is no row, an
    epoch trained again after a restore is one."""
    import pyarrow.fs

    from raytune_suite.engine import storage

    if "://" in path:
        fs, root = pyarrow.fs.FileSystem.from_uri(path)
    else:
        fs, root = pyarrow.fs.LocalFileSystem(), os.path.abspath(path)
    return sum(len([line for line in storage.read_text(fs, f"{root}/{name}/result.json")
                    .splitlines() if line.strip()])
               for name in storage.list_folders(fs, root) if not name.startswith("."))


def outcome_line(outcome, resumed: bool = False) -> str:
    """The epochs a finished search trained, against the plan for the trials it ran, on
    the Ray it ran on (still connected) or else this machine."""
    import sys

    try:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            total = ray.cluster_resources()
            capacity = (total.get("CPU", 0), total.get("GPU", 0), "the Ray it ran on")
        else:
            capacity = local_capacity(outcome.spec)
        plan = make_plan(outcome.spec, capacity, trials=len(outcome.trials))
        return comparison(plan, epochs_trained(outcome.path), resumed)
    except Exception as e:  # noqa: BLE001 - the search's own results matter more
        return f"epochs:  not compared with the plan ({type(e).__name__}: {e})"


def comparison(plan: Plan, trained: int, resumed: bool = False) -> str:
    """The line that ends a search: epochs trained against the plan."""
    scope = " over all its sessions" if resumed else ""
    if plan.expected is None or plan.unit != "epochs":
        return f"epochs:  {trained} trained{scope} (the plan has no epochs to compare)"
    where = "in range" if plan.low <= trained <= plan.high else "outside the range"
    off = (trained - plan.expected) / plan.expected if plan.expected else 0.0
    uninterrupted = ", planned without the interruption" if resumed else ""
    return (f"epochs:  {trained} trained{scope}, plan {plan.low:.0f}..{plan.high:.0f} for "
            f"{plan.trials} trials (expected {plan.expected:.0f}: {off:+.0%}, {where}"
            f"{uninterrupted})")


__all__ = ["Plan", "make_plan", "plan_file", "add_probe", "count_trials", "concurrency",
           "local_capacity", "cluster_capacity", "epochs_trained", "comparison",
           "outcome_line"]
