"""Simulated multi-node clusters (ray.cluster_utils.Cluster, logical GPUs)."""

import json
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest

from raytune_suite.errors import SpecError
from raytune_suite.engine.runner import run_experiment
from raytune_suite.experiment import validate

PROBE = textwrap.dedent('''
    import os, time
    import ray
    from ray import tune

    def probe(config):
        """Reports where it ran and which GPU Ray gave it, and holds it: until `together`
        trials have started on that GPU or all `trials` have started (or `wait_s`
        passed), then for `hold_s` more. So trials Ray lets share a GPU overlap even when
        their worker processes start seconds apart (a loaded machine); trials it does
        not let share one are never held together."""
        ctx = ray.get_runtime_context()
        start = time.time()
        gpu = ctx.get_node_id() + "-" + ",".join(str(g) for g in ray.get_gpu_ids())
        mine = os.path.join(config["started_dir"], gpu)
        os.makedirs(mine, exist_ok=True)
        open(os.path.join(mine, tune.get_context().get_trial_id()), "w").close()
        while (len(os.listdir(mine)) < config["together"]
               and sum(len(f) for _, _, f in os.walk(config["started_dir"])) < config["trials"]
               and time.time() < start + config["wait_s"]):
            time.sleep(0.05)
        time.sleep(config["hold_s"])
        tune.report({"score": config["x"], "start": start, "end": time.time(),
                     "node_id": ctx.get_node_id(),
                     "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
                     "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")})
''')


_GPU_CLUSTER = {}  # the cluster of `gpu_cluster` while it is up


def _close_gpu_cluster() -> None:
    import ray

    ray.shutdown()
    if _GPU_CLUSTER:
        _GPU_CLUSTER.pop("cluster").shutdown()


@pytest.fixture(scope="module")
def gpu_cluster():
    """Head with no CPUs (drives only) + 2 workers, each 4 CPUs and 1 logical GPU.

    Started once for the tests that only run trials on it (starting a cluster costs ~10
    s); each test connects its own driver. Shut down at the end of the module, or
    before a test that builds a cluster of its own."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # no embedded runtime beside it
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=4, num_gpus=1) for _ in range(2)]
    _GPU_CLUSTER["cluster"] = cluster
    yield cluster, workers
    _close_gpu_cluster()


@pytest.fixture
def two_gpu_workers(gpu_cluster, tmp_path, monkeypatch):
    """The shared cluster of `gpu_cluster`, with a driver of this test's own, started in
    its tmp_path (where the trainable's module is: Ray gives workers the driver's
    working directory) and disconnected at the end."""
    import ray

    cluster, workers = gpu_cluster
    (tmp_path / "probes.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    ray.shutdown()
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    yield cluster, workers
    ray.shutdown()


def _spec(**extra):
    return validate({
        "name": "packing", "trainable": "probes:probe",
        # 1/0.25 = 4 trials may share a GPU
        "config": {"together": 4, "trials": 12, "wait_s": 120.0, "hold_s": 0.5,
                   "started_dir": str(Path("started").resolve())},
        "search_space": {"x": {"uniform": [0, 1]}},
        "metric": "score", "mode": "max",
        "search": {"num_samples": 12, "seed": 0},
        "resources": {"cpu": 0.5, "gpu": 0.25},
        "storage_shared": True,  # one machine: the local path is seen by every node
        "tracking": {"mlflow": {"enabled": False}},
        **extra,
    })


def test_fractional_gpus_pack_and_spread(two_gpu_workers):
    cluster, workers = two_gpu_workers
    outcome = run_experiment(_spec(), {"name": "packing"})
    assert outcome.errors == 0 and len(outcome.trials) == 12
    rows = [json.loads(next(open(d / "result.json")))
            for d in Path(outcome.path).glob("probe_*")]
    assert len(rows) == 12
    worker_ids = {w.node_id for w in workers}
    assert {r["node_id"] for r in rows} == worker_ids  # trials on both workers
    for r in rows:
        assert r["gpu_ids"] == r["cuda_visible_devices"] != ""  # Ray set the device
    # At no moment do more than 1/0.25 = 4 trials share one GPU.
    per_gpu = defaultdict(list)
    for r in rows:
        per_gpu[(r["node_id"], r["gpu_ids"])].append((r["start"], r["end"]))
    peak = 0
    for spans in per_gpu.values():
        for t, _ in spans:
            peak = max(peak, sum(s <= t < e for s, e in spans))
    assert peak == 4, f"expected 4 trials packed on a GPU at once, saw {peak}"


def test_local_storage_refused_on_multinode(two_gpu_workers):
    spec = _spec(storage_shared=False, search={"num_samples": 1})
    with pytest.raises(SpecError, match=r"^storage: with 3 nodes.*s3://"):
        run_experiment(spec, {"name": "packing"})
    assert not Path("ray_results").exists()


@pytest.fixture
def two_cpu_workers(no_ray, tmp_path, monkeypatch):
    """Head with no CPUs + 2 workers of 2 CPUs; node deaths are noticed within ~3 s."""
    import ray
    from ray.cluster_utils import Cluster

    _close_gpu_cluster()  # this test kills a node: a cluster of its own, alone
    monkeypatch.chdir(tmp_path)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "_system_config": {"health_check_initial_delay_ms": 0,
                                          "health_check_period_ms": 1000,
                                          "health_check_failure_threshold": 3}})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def test_worker_node_loss_moves_trials_and_loses_nothing(two_cpu_workers, tmp_path):
    import threading
    import time

    from helpers import mlflow_runs

    cluster, workers = two_cpu_workers
    keep, epochs = 2, 10
    spec = validate({
        "name": "nodeloss", "trainable": "classifier",
        "config": {"dataset": "digits", "model": "cnn", "width": 0.5, "epochs": epochs},
        "search_space": {"lr": {"grid": [0.002, 0.005, 0.01, 0.02]}},
        "metric": "val_accuracy", "mode": "max",
        "search": {"algorithm": "grid", "max_concurrent": 4},
        "scheduler": {"type": "fifo", "max_t": epochs},
        "checkpoint": {"every": 1, "keep": keep},
        "failure": {"max_failures": 3},
        "storage_shared": True,  # one machine: the local path is seen by every node
    })
    outcome = {}
    driver = threading.Thread(
        target=lambda: outcome.update(result=run_experiment(spec, {"name": "nodeloss"})))
    driver.start()

    def epochs_done():
        return {p.parent.name: sum(1 for _ in p.open())
                for p in Path("ray_results/nodeloss").glob("*/result.json")}

    deadline = time.monotonic() + 300
    # All 4 trials have reported (a trial's result.json starts with its first result)
    # and some trial has passed epoch 3.
    while len(done := epochs_done()) < 4 or max(done.values()) < 4:
        assert driver.is_alive() and time.monotonic() < deadline
        time.sleep(0.1)
    at_loss = epochs_done()
    assert min(at_loss.values(), default=0) < epochs and len(at_loss) == 4
    cluster.remove_node(workers[0], allow_graceful=False)  # the node dies
    cluster.add_node(num_cpus=2)  # and a fresh one joins
    driver.join(timeout=400)
    assert not driver.is_alive()

    result = outcome["result"]
    assert result.errors == 0 and len(result.trials) == 4
    assert {t.status for t in result.trials} == {"TERMINATED"}
    assert {t.epochs for t in result.trials} == {epochs}
    finals = {p.parent.name: [json.loads(line) for line in p.open()][-1]
              for p in Path(result.path).glob("*/result.json")}
    assert {r["training_iteration"] for r in finals.values()} == {epochs}
    # The trials of the lost node resumed from their checkpoints on another node.
    moved = {name: r for name, r in finals.items()
             if r["iterations_since_restore"] < r["training_iteration"]}
    assert moved, finals
    for name in moved:
        rows = [json.loads(line) for line in (Path(result.path) / name / "result.json").open()]
        restores = [r["restored_from_epoch"] for r in rows if "restored_from_epoch" in r]
        assert restores and min(restores) >= 1, rows
    # Each trial keeps exactly `keep` checkpoints.
    for trial_dir in Path(result.path).glob("train_classifier_*"):
        assert len(list(trial_dir.glob("checkpoint_*"))) == keep, trial_dir
    # MLflow (logged by the driver): one finished run per trial despite the retries.
    runs = mlflow_runs(tmp_path, "nodeloss")
    trials = runs[runs["tags.raytune_suite.role"] == "trial"]
    assert len(trials) == 4 and set(trials["status"]) == {"FINISHED"}
    assert set(trials["metrics.epochs_trained"]) == {float(epochs)}
