"""What the trials will run on, for ``raytune-suite plan``: the CPUs and GPUs of this machine
(without starting Ray) or of a cluster, and (``--probe``) one epoch of one configuration
trained here as a trial would train it (the built-in ``Trainer``, no Ray)."""

from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
import time
from typing import Any

from raytune_suite.errors import SpecError
from raytune_suite.experiment import ExperimentSpec
from raytune_suite.experiment.space import Branch, Domain, SearchSpace


def local_capacity(spec: ExperimentSpec, count_gpus: bool = False
                   ) -> tuple[float, float, str]:
    """CPUs and GPUs embedded Ray would see here, without starting it or importing torch:
    ``os.cpu_count()``, and GPUs from CUDA_VISIBLE_DEVICES or ``nvidia-smi -L`` (asked
    only when the trials need GPUs, or ``count_gpus``)."""
    gpus = 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    elif (spec.resources.wants_gpu or count_gpus) and shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                    timeout=20).stdout
            gpus = sum(line.startswith("GPU ") for line in listed.splitlines())
        except (OSError, subprocess.SubprocessError):
            gpus = 0
    return float(os.cpu_count() or 1), float(gpus), "this machine"


def cluster_capacity(address: str) -> tuple[float, float, str]:
    """The CPUs and GPUs of the cluster at ``address`` (connects, reads, disconnects)."""
    import ray

    from raytune_suite.engine.tuner import init_ray

    init_ray(address, log_to_driver=False)
    try:
        total = ray.cluster_resources()
    finally:
        ray.shutdown()
    return float(total.get("CPU", 0)), float(total.get("GPU", 0)), f"the cluster at {address}"


def centre(space: SearchSpace) -> dict[str, Any]:
    """The configuration at the centre of a search space: the middle option of a choice
    or grid (a branch with its own entries centred), the midpoint of a range (geometric
    on a log scale, rounded to q or to an integer as the domain does), a normal's mean.
    One configuration, the same on every run, and typical of the space's epoch time."""
    return {k: centre(v) if isinstance(v, SearchSpace) else _value(v) for k, v in space.entries}


def _value(domain: Domain) -> Any:
    a, kind = domain.args, domain.kind
    if kind in ("choice", "grid"):
        option = a[len(a) // 2]
        if isinstance(option, Branch):
            return _branch(option)
        return list(option) if isinstance(option, tuple) else option
    if kind in ("normal", "qnormal"):
        x = a[0]
    else:
        low, high = domain.bounds
        x = math.sqrt(low * high) if "log" in kind else (low + high) / 2
    if kind.startswith("q"):
        x = round(x / a[2]) * a[2]
    return int(round(x)) if "randint" in kind else x


def _branch(branch: Branch) -> dict[str, Any]:
    return {k: _value(v) if isinstance(v, Domain) else _branch(v) if isinstance(v, Branch)
            else (list(v) if isinstance(v, tuple) else v) for k, v in branch.items}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out


def probe_epoch(spec: ExperimentSpec) -> dict[str, Any]:
    """Train one epoch (and validate, as every trial epoch does) of the centre of the
    space, with ``resources.cpu`` torch threads, on a GPU when the file asks for one and
    this machine has one, the data loaded as a trial loads it (k-fold: every fold).

    Returns:
        ``config`` (the searched values probed), ``device``, ``threads``, and seconds:
        ``data_s`` (loading the data), ``worker_s`` (once per worker process: the first
        model and optimizer), ``setup_s`` (model and optimizer, as every trial builds
        them), ``epoch_s`` (one epoch, train and validate) and ``checkpoint_s``
        (serialising the trial's state, in memory).

    Raises:
        SpecError: when the data cannot be loaded here (as ``run`` would).
    """
    import torch

    from raytune_suite.training.config import ClassifierConfig

    searched = centre(spec.search_space)
    cfg = ClassifierConfig.from_trial(_merge(dict(spec.config), searched))
    threads, before = max(1, int(spec.resources.cpu)), torch.get_num_threads()
    device = torch.device("cuda", 0) if spec.resources.wants_gpu and torch.cuda.is_available() \
        else torch.device("cpu")
    torch.set_num_threads(threads)  # as a trial does; this process's own count comes back
    try:
        seconds = _time_one_epoch(cfg, device)
    finally:
        torch.set_num_threads(before)
    return {"config": searched, "device": str(device), "threads": threads, **seconds}


def _time_one_epoch(cfg, device) -> dict[str, float]:
    import torch

    from raytune_suite.training.data import data_spec, load_dataset
    from raytune_suite.training.loop import Trainer

    t0 = time.perf_counter()
    try:
        data = [load_dataset(data_spec(cfg, fold), device) for fold in range(cfg.cv_folds or 1)]
    except (ValueError, FileNotFoundError) as e:
        raise SpecError("config.data_root" if cfg.data_root else "config.dataset",
                        f"data could not be loaded for --probe: {e}",
                        cfg.data_root or cfg.dataset) from None
    t1 = time.perf_counter()
    Trainer(cfg, data[0], device)  # once per worker process: torch's first optimizer
    t2 = time.perf_counter()  # imports torch._dynamo (seconds); a reused worker has it
    trainers = [Trainer(cfg, d, device) for d in data]
    t3 = time.perf_counter()
    for trainer in trainers:
        trainer.run_epoch()  # its validation reads a loss with .item(): the GPU has synced
    t4 = time.perf_counter()
    buffer = io.BytesIO()  # what a checkpoint serialises, kept in memory: nothing written
    torch.save([t.state_dict() for t in trainers], buffer)
    t5 = time.perf_counter()
    return {"data_s": round(t1 - t0, 3), "worker_s": round(t2 - t1, 3),
            "setup_s": round(t3 - t2, 3), "epoch_s": round(t4 - t3, 3),
            "checkpoint_s": round(t5 - t4, 3)}
