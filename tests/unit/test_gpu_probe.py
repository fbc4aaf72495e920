"""`resources.gpu: auto` before the search: the file, the probed configuration, the probe's
processes (run here on the CPU), the decision on recorded GPU figures, `plan`'s line."""

import pytest

from raytune_suite.engine import gpu_probe
from raytune_suite.engine.gpu_auto import Measurement
from raytune_suite.engine.plan import plan_file
from raytune_suite.engine.runner import resolve_gpu
from raytune_suite.errors import SpecError
from raytune_suite.experiment import validate

GIB = 2**30


def spec_of(**over):
    raw = {"name": "g", "trainable": "classifier",
           "config": {"dataset": "digits", "model": "cnn", "epochs": 2},
           "search_space": {"lr": {"loguniform": [1e-4, 1e-2]}},
           "metric": "val_accuracy", "mode": "max",
           "resources": {"cpu": 1, "gpu": "auto"}}
    raw.update(over)
    return validate(raw)


@pytest.mark.parametrize("value", ["auto", "Auto", 0.25, 2])
def test_the_file_accepts_auto_and_numbers(value):
    assert spec_of(resources={"gpu": value}).resources.gpu == \
        ("auto" if isinstance(value, str) else value)


@pytest.mark.parametrize("value, says", [(-1, "must be >= 0"), ("lots", "or auto"),
                                         (1.5, "whole number"), (True, "or auto")])
def test_the_file_refuses_other_gpu_values(value, says):
    with pytest.raises(SpecError) as caught:
        spec_of(resources={"gpu": value})
    assert caught.value.field == "resources.gpu" and says in str(caught.value)


def test_the_probe_trains_the_largest_configuration():
    spec = spec_of(config={"dataset": "digits"}, search_space={
        "model": {"choice": ["cnn", "resnet18", "mlp"]},
        "batch_size": {"choice": [32, 256, 64]},
        "width": {"uniform": [0.25, 1.0]},
        "hidden": {"choice": [[64], [256, 128], [512]]},
        "lr": {"loguniform": [1e-4, 1e-2]},
        "epochs": {"qrandint": [2, 11, 3]}})
    config = gpu_probe.probe_config(spec)
    assert config["model"] == "resnet18" and config["batch_size"] == 256
    assert config["width"] == 1.0
    assert config["hidden"] == [256, 128]  # the product of the sizes: more weights than [512]
    assert config["lr"] == pytest.approx(1e-3)  # not a size: the centre
    assert config["dataset"] == "digits"  # the file's own config


def test_the_probe_measures_each_packing_in_its_own_processes():
    """The same processes, barrier and sums as on a GPU, on this CPU (no memory figure)."""
    config = {"dataset": "digits", "model": "mlp", "batch_size": 64}
    shapes = gpu_probe.data_shapes(config)
    assert shapes["input_shape"] == [64] and shapes["num_classes"] == 10
    out = gpu_probe.measure(config, shapes, device="cpu", packings=(2,), steps=5, warmup=1)
    assert [m.k for m in out["measurements"]] == [2]
    assert all(m.samples_per_s > 0 and m.peak_memory_bytes == 0 for m in out["measurements"])
    assert out["gpu_memory_bytes"] is None and out["device_name"] == "cpu"


def test_a_copy_that_fails_is_an_error_naming_it():
    shapes = {"n_train": 8, "n_val": 2, "n_test": 2, "input_shape": [4], "num_classes": 3}
    with pytest.raises(RuntimeError, match="probe copy failed: ValidationError: .* lr "):
        gpu_probe.measure({"dataset": "iris", "lr": -1}, shapes, device="cpu",
                          packings=(1,), steps=1, warmup=1)


H200 = {1: (48_385, 2.0), 2: (92_000, 2.0), 4: (171_000, 2.1), 8: (171_000, 2.1)}


def recorded(figures, total=139 * GIB):
    def probe_task(config, shapes, threads):
        return {"measurements": [Measurement(k, rate, int(gib * GIB)) if rate else
                                 Measurement(k, None, None)
                                 for k, (rate, gib) in figures.items()],
                "gpu_memory_bytes": total, "device_name": "NVIDIA H200", "seconds": 41.0}
    return probe_task


def test_with_a_gpu_the_recorded_figures_decide(monkeypatch):
    monkeypatch.setattr(gpu_probe, "_probe_task", recorded(H200))
    spec = spec_of()
    decision, record = gpu_probe.decide_for(spec, gpus=1, on_ray=False)
    assert decision.k == 4 and record["gpu"] == 0.25
    assert record["measurements"]["4"] == "171,000 samples/s, peak 2.10 GiB"
    assert "8 gains only 1.00x over 4" in record["line"]
    assert gpu_probe.resolved(spec, record["gpu"]).resources.gpu == 0.25


def test_when_one_trial_alone_does_not_fit_the_file_is_refused(monkeypatch):
    monkeypatch.setattr(gpu_probe, "_probe_task", recorded({1: (None, None)}))
    with pytest.raises(SpecError) as caught:
        gpu_probe.decide_for(spec_of(), gpus=1, on_ray=False)
    assert caught.value.field == "resources.gpu" and "does not fit" in str(caught.value)


def test_no_gpu_means_cpu_trials_and_a_users_trainable_gets_one_gpu_each():
    decision, record = gpu_probe.decide_for(spec_of(), gpus=0)
    assert decision.k == 0 and record == {
        "gpu": 0.0, "k": 0, "line": "gpu: auto -> no GPU in the Ray cluster: trials run on CPU"}
    users = spec_of(trainable="ray.tune.examples.pbt_function:pbt_function", config={},
                    metric="mean_accuracy")
    decision, record = gpu_probe.decide_for(users, gpus=2)
    assert decision.k == 1 and "not probed" in record["line"]


def test_a_resumed_search_keeps_its_decision(capsys):
    kept = {"gpu": 0.25, "k": 4, "line": "gpu: auto -> 4 trial(s) per GPU (gpu: 0.25)"}
    spec, record = resolve_gpu(spec_of(), kept=kept)
    assert spec.resources.gpu == 0.25 and record is kept
    assert "(decided when the search started)" in capsys.readouterr().out
    assert resolve_gpu(spec_of(resources={"gpu": 0.5})) == (spec_of(resources={"gpu": 0.5}),
                                                            None)


def test_plan_states_the_decision_on_this_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU, whatever the machine has
    path = tmp_path / "e.yaml"
    path.write_text("name: g\ntrainable: classifier\nconfig: {dataset: digits, epochs: 2}\n"
                    "search_space: {lr: {loguniform: [1.0e-4, 1.0e-2]}}\n"
                    "metric: val_accuracy\nmode: max\nsearch: {num_samples: 4}\n"
                    "resources: {cpu: 1, gpu: auto}\n")
    plan = plan_file(str(path), [])
    assert "gpu:          auto -> no GPU on this machine: trials run on CPU" in plan.lines()
    assert plan.to_dict()["gpu_auto"]["gpu"] == 0.0 and plan.concurrency == 4 or \
        plan.concurrency == plan.capacity[0]


def test_run_prints_the_decision_and_the_probes_figures(monkeypatch, capsys):
    import ray

    monkeypatch.setattr(gpu_probe, "_probe_task", recorded(H200))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    monkeypatch.setattr(ray, "get", lambda ref: ref)
    monkeypatch.setattr(ray, "remote", lambda **_: lambda f: type(
        "Remote", (), {"remote": staticmethod(f)}))
    spec, record = resolve_gpu(spec_of())
    assert spec.resources.gpu == 0.25
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("gpu: auto -> 4 trial(s) per GPU (gpu: 0.25)")
    assert out[1] == ("gpu: auto probe on NVIDIA H200 (41 s): 1 at once 48,385 samples/s, "
                      "peak 2.00 GiB; 2 at once 92,000 samples/s, peak 2.00 GiB; 4 at once "
                      "171,000 samples/s, peak 2.10 GiB; 8 at once 171,000 samples/s, peak "
                      "2.10 GiB")


def test_a_probe_that_fails_is_one_line_naming_the_field(monkeypatch):
    def broken(config, shapes, threads):
        raise RuntimeError("a gpu: auto probe copy failed: CUDA error: no kernel image\n...")

    monkeypatch.setattr(gpu_probe, "_probe_task", broken)
    with pytest.raises(SpecError) as caught:
        gpu_probe.decide_for(spec_of(), gpus=1, on_ray=False)
    message = str(caught.value)
    assert caught.value.field == "resources.gpu" and "\n" not in message
    assert "the probe failed (RuntimeError: a gpu: auto probe copy failed: CUDA error" in message
