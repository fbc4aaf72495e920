"""``resources.gpu: auto``: the probe that measures how many trials share a GPU well.

Before the search starts, on a node that will run trials (a Ray task holding one GPU),
the probe trains the largest configuration the search space allows (:func:`probe_config`:
the biggest model, width, hidden sizes and batch size; every other key at its centre)
alone and then as k = 2, 4, 8 copies at once, each copy its own process as a trial is.
Each copy warms up (``WARMUP_STEPS`` batches: the CUDA graphs are captured there), waits
until all are warm, then trains ``STEPS`` batches; the probe records the aggregate
samples/s of the k copies and the largest ``torch.cuda.max_memory_allocated`` among them.
The copies hold data of the search's own size on the GPU (random values, the real
shapes: speed and memory depend on the shapes, not on the values).

:func:`raytune_suite.engine.gpu_auto.decide` turns the figures into a packing; the probe
stops at the first k that the rule would not go past (out of memory, or too little gain).
No GPU in the cluster means CPU trials; a user's trainable is not probed (its step is
unknown to the suite) and gets one trial per GPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from raytune_suite.engine._machine import _merge, centre
from raytune_suite.engine.gpu_auto import PACKINGS, Decision, Measurement, decide
from raytune_suite.errors import SpecError, one_line
from raytune_suite.experiment import ExperimentSpec
from raytune_suite.experiment.space import Branch, Domain, SearchSpace

STEPS = 300  # timed batches per copy
WARMUP_STEPS = 20  # untimed batches per copy first (eager warm-up, graph capture)
TIMEOUT_S = 900  # one packing, all its copies
# Keys whose largest value is the largest trial (memory and time per step).
SIZE_KEYS = ("model", "batch_size", "width", "hidden", "image_size", "synthetic_shape",
             "synthetic_samples", "limit_train")
MODEL_SIZE = {"mlp": 0, "cnn": 1, "resnet18": 2, "resnet50": 3}


# ------------------------------------------------------------------ what is probed

def probe_config(spec: ExperimentSpec) -> dict[str, Any]:
    """The trial config the probe trains: the file's config with the searched size keys
    at their largest and every other searched key at the centre of its range."""
    searched = centre(spec.search_space)
    for key, domain in spec.search_space.entries:
        if key in SIZE_KEYS and isinstance(domain, Domain):
            searched[key] = _largest(key, domain)
    return _merge(dict(spec.config), searched)


def _largest(key: str, domain: Domain) -> Any:
    if domain.kind in ("choice", "grid"):
        options = [o for o in domain.args if not isinstance(o, Branch)]
        if not options:
            return centre(SearchSpace(((key, domain),)))[key]
        pick = max(options, key=lambda o: MODEL_SIZE.get(o, -1) if key == "model"
                   else _size(o))
        return list(pick) if isinstance(pick, tuple) else pick
    bounds = domain.bounds
    if bounds is None:  # normal: unbounded, its mean
        return centre(SearchSpace(((key, domain),)))[key]
    high = bounds[1]
    if domain.kind.startswith("q"):
        high = math.floor(high / domain.args[2] + 1e-9) * domain.args[2]
    return int(high) if "randint" in domain.kind else high


def _size(option: Any) -> float:
    if isinstance(option, (list, tuple)):
        return math.prod(option) if option else 0
    return option if isinstance(option, (int, float)) else 0


def data_shapes(config: dict[str, Any], data=None) -> dict[str, Any]:
    """The split sizes, sample shape and classes of the data ``config`` trains on: from
    the arrays the search shares (``data``), else read as a trial would (fold 0)."""
    if data is None:
        from raytune_suite.training.config import ClassifierConfig
        from raytune_suite.training.data import data_spec, load_arrays

        try:
            data = load_arrays(data_spec(ClassifierConfig.from_trial(config)))
        except (ValueError, FileNotFoundError) as e:
            raise SpecError("config.dataset", f"the gpu: auto probe could not load the data: "
                                              f"{e}", config.get("dataset")) from None
    return {"n_train": len(data.y_train), "n_val": len(data.y_val),
            "n_test": len(data.y_test), "input_shape": list(data.input_shape),
            "num_classes": data.num_classes}


# ------------------------------------------------------------------ measuring

def measure(config: dict[str, Any], shapes: dict[str, Any], device: str = "cuda",
            packings: tuple = PACKINGS, steps: int = STEPS, warmup: int = WARMUP_STEPS,
            threads: int = 1) -> dict[str, Any]:
    """Train ``config`` as 1, 2, 4, ... copies at once on ``device`` (this process's GPU:
    CUDA_VISIBLE_DEVICES decides which), ``threads`` torch threads each (a trial's
    ``resources.cpu``), and measure each packing.

    Returns:
        ``measurements`` (a list of :class:`Measurement`), ``gpu_memory_bytes`` (None on
        a CPU), ``device_name``, ``seconds`` (the whole probe).

    Raises:
        RuntimeError: a copy failed other than by running out of memory (its error).
    """
    started = time.perf_counter()
    measurements: list[Measurement] = []
    total, name = None, device
    for k in packings:
        m, info = measure_packing(k, config, shapes, device, steps, warmup, threads)
        measurements.append(m)
        if info:
            total, name = info
        if m.failed:
            break
        if total is not None:  # on a GPU: stop where the rule stops
            try:
                if decide(measurements, total).k < k:
                    break  # larger packings cannot change the decision
            except ValueError:  # one copy alone does not fit
                break
    return {"measurements": measurements, "gpu_memory_bytes": total, "device_name": name,
            "seconds": round(time.perf_counter() - started, 1)}


def measure_packing(k: int, config, shapes, device, steps, warmup, threads
                     ) -> tuple[Measurement, Optional[tuple]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory(prefix="gpu-probe-") as folder:
        jobs = [{"config": config, "shapes": shapes, "device": device, "steps": steps,
                 "warmup": warmup, "threads": threads, "folder": folder, "slot": slot}
                for slot in range(k)]
        procs = [subprocess.Popen([sys.executable, "-m", "raytune_suite.engine.gpu_probe",
                                   json.dumps(job)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
                 for job in jobs]
        deadline = time.monotonic() + TIMEOUT_S
        try:
            # All copies warm (or one ended early), then all start together.
            while len(list(Path(folder).glob("ready-*"))) < k and \
                    all(p.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(0.02)
            Path(folder, "go").touch()
            outputs = [p.communicate(timeout=max(1.0, deadline - time.monotonic()))
                       for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    results = []
    for p, (out, err) in zip(procs, outputs):
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"a gpu: auto probe copy exited {p.returncode}: "
                               f"{_last_line(err)}")
        results.append(json.loads(lines[-1]))
    if any("oom" in r for r in results):
        return Measurement(k, None, None), None
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"a gpu: auto probe copy failed: {errors[0]}")
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    rate = sum(r["samples"] for r in results) / span
    first = results[0]
    return (Measurement(k, rate, max(r["peak"] for r in results)),
            (first["total"], first["name"]) if first["total"] else None)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _copy(job: dict[str, Any]) -> dict[str, Any]:
    """One probe copy (its own process): warm up, wait for the others, train, report."""
    import torch

    from raytune_suite.training.config import ClassifierConfig
    from raytune_suite.training.loop import Trainer

    device = torch.device(job["device"])
    cuda = device.type == "cuda"
    folder = Path(job["folder"])
    torch.set_num_threads(job["threads"])
    try:
        torch.manual_seed(job["slot"])
        trainer = Trainer(ClassifierConfig.from_trial(job["config"]),
                          _random_data(job["shapes"], device), device)
        trainer.train_steps(job["warmup"])
        if cuda:
            torch.cuda.synchronize(device)
        (folder / f"ready-{job['slot']}").touch()
        while not (folder / "go").exists():
            time.sleep(0.001)
        start = time.time()
        samples = trainer.train_steps(job["steps"])
        if cuda:
            torch.cuda.synchronize(device)
        end = time.time()
    except torch.cuda.OutOfMemoryError as e:
        return {"oom": str(e).splitlines()[0][:200]}
    except Exception as e:  # noqa: BLE001 - reported to the probe, which raises it
        return {"error": " ".join(f"{type(e).__name__}: {e}".split())[:500]}
    finally:
        (folder / f"ready-{job['slot']}").touch()  # a failed copy does not hold the others
    props = torch.cuda.get_device_properties(device) if cuda else None
    return {"samples": samples, "start": start, "end": end,
            "peak": torch.cuda.max_memory_allocated(device) if cuda else 0,
            "total": props.total_memory if props else None,
            "name": props.name if props else "cpu"}


def _random_data(shapes: dict[str, Any], device):
    """Random tensors of the search's split sizes and sample shape on ``device``."""
    import torch

    from raytune_suite.training.data import Dataset

    shape, classes = tuple(shapes["input_shape"]), shapes["num_classes"]
    split = {}
    for name in ("train", "val", "test"):
        n = shapes[f"n_{name}"]
        split[f"x_{name}"] = torch.randn(n, *shape, device=device)
        split[f"y_{name}"] = torch.randint(0, classes, (n,), device=device)
    return Dataset(**split, num_classes=classes, input_shape=shape,
                   class_names=tuple(str(c) for c in range(classes)))


# ------------------------------------------------------------------ deciding

def _probe_task(config: dict[str, Any], shapes: Optional[dict[str, Any]],
                threads: int) -> dict[str, Any]:
    """Runs as a Ray task holding one GPU: shapes read there if the driver had no data."""
    return measure(config, shapes or data_shapes(config), threads=threads)


def decide_for(spec: ExperimentSpec, gpus: float, data=None,
               on_ray: bool = True) -> tuple[Decision, dict[str, Any]]:
    """What ``gpu: auto`` means for ``spec`` with ``gpus`` GPUs available, and the record
    of it (``line``, ``gpu``, ``k`` and, when probed, the figures) for the MLflow search
    run and the experiment's state. ``on_ray``: probe as a Ray task on one of the
    cluster's GPUs (Ray is up); else in this process's machine.

    Raises:
        SpecError: one copy of the largest configuration alone does not fit the GPU, or
            the probe failed (its error in one line).
    """
    probed: Optional[dict[str, Any]] = None
    if not gpus:
        decision = Decision(0, ["no GPU in the Ray cluster" if on_ray else
                                "no GPU on this machine"])
    elif spec.trainable != "classifier":
        decision = Decision(1, [f"{spec.trainable} is not the built-in classifier: not "
                                "probed, one trial per GPU"])
    else:
        config, threads = probe_config(spec), max(1, int(spec.resources.cpu))
        shapes = data_shapes(config, data) if data is not None else None
        try:
            if on_ray:
                import ray

                probed = ray.get(ray.remote(num_gpus=1, num_cpus=1)(_probe_task)
                                 .remote(config, shapes, threads))
            else:
                probed = _probe_task(config, shapes, threads)
        except SpecError:
            raise
        except Exception as e:  # noqa: BLE001 - said in one line, before anything is written
            cause = getattr(e, "cause", None) or e  # a Ray task's error: what it raised
            raise SpecError("resources.gpu", f"auto: the probe failed ({type(cause).__name__}: "
                                             f"{one_line(cause)}); "
                                             "give a number of GPUs per trial to run without "
                                             "it", "auto") from None
        try:
            decision = decide(probed["measurements"], probed["gpu_memory_bytes"])
        except ValueError as e:
            raise SpecError("resources.gpu", f"auto: {e} (the probe trained the largest "
                                             f"configuration: {_sizes(config)})", "auto") from None
    return decision, record(decision, probed)


def record(decision: Decision, probed: Optional[dict[str, Any]]) -> dict[str, Any]:
    """What is kept of a decision: in the state (``resume`` reuses it), on MLflow."""
    out: dict[str, Any] = {"gpu": decision.gpu, "k": decision.k, "line": decision.line()}
    if probed:
        out.update(device=probed["device_name"], seconds=probed["seconds"],
                   measurements={str(m.k): ("out of memory" if m.failed else
                                            f"{m.samples_per_s:,.0f} samples/s, peak "
                                            f"{m.peak_memory_bytes / 2**30:.2f} GiB")
                                 for m in probed["measurements"]})
    return out


def _sizes(config: dict[str, Any]) -> str:
    return ", ".join(f"{k} {config[k]}" for k in SIZE_KEYS if k in config)


def resolved(spec: ExperimentSpec, gpu: float) -> ExperimentSpec:
    """``spec`` with ``resources.gpu`` set to the decided share."""
    return spec.model_copy(update={"resources": spec.resources.model_copy(
        update={"gpu": gpu})})


if __name__ == "__main__":  # one probe copy: python -m raytune_suite.engine.gpu_probe JOB
    print(json.dumps(_copy(json.loads(sys.argv[1]))), flush=True)
