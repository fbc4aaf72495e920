"""Whatever `raytune-suite validate` accepts runs: every searcher x scheduler pair, with a
user's checkpointing trainable, either validates and runs to the end with no errored
trial, or is refused before anything starts (exit 2)."""

import itertools
import textwrap

import pytest
import yaml

from raytune_suite.cli import main

TOY = textwrap.dedent('''
    import json, os, tempfile
    from ray import tune

    def train(config):
        start = 0
        restored = tune.get_checkpoint()
        if restored:
            with restored.as_directory() as folder:
                start = json.load(open(os.path.join(folder, "s.json")))["step"]
        for step in range(start + 1, 5):
            with tempfile.TemporaryDirectory() as folder:
                json.dump({"step": step}, open(os.path.join(folder, "s.json"), "w"))
                tune.report({"score": config["x"] * step + config["b"]},
                            checkpoint=tune.Checkpoint.from_directory(folder))
''')
SCHEDULERS = {
    "fifo": {"type": "fifo", "max_t": 4},
    "asha": {"type": "asha", "max_t": 4, "grace_period": 1, "reduction_factor": 2},
    "hyperband": {"type": "hyperband", "max_t": 4, "reduction_factor": 2},
    "pbt": {"type": "pbt", "max_t": 4, "perturbation_interval": 2},
}
REFUSED = {("hyperopt", "pbt"), ("optuna", "pbt")}  # PBT explores by itself


@pytest.mark.parametrize("searcher, scheduler",
                         list(itertools.product(["grid", "random", "hyperopt", "optuna"],
                                                           SCHEDULERS)))
def test_every_pair_validate_accepts_runs(searcher, scheduler, ray_local, in_tmp,
                                          monkeypatch, capsys):
    (in_tmp / "toy.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(in_tmp))
    x = {"uniform": [0, 1]} if searcher in ("hyperopt", "optuna") else {"choice": [0.2, 0.8]}
    (in_tmp / "exp.yaml").write_text(yaml.safe_dump({
        "name": f"{searcher}-{scheduler}", "trainable": "toy:train",
        "search_space": {"x": x, "b": {"choice": [0, 1]}}, "metric": "score", "mode": "max",
        "search": {"algorithm": searcher, "num_samples": 1 if searcher == "grid" else 3,
                   "max_concurrent": 2},
        "scheduler": SCHEDULERS[scheduler], "tracking": {"mlflow": {"enabled": False}}}))
    verdict = main(["validate", "exp.yaml"])
    if (searcher, scheduler) in REFUSED:
        assert verdict == 2 and not (in_tmp / "ray_results").exists()
        return
    assert verdict == 0
    assert main(["run", "exp.yaml"]) == 0
    out = capsys.readouterr().out
    trials = 4 if searcher == "grid" else 3
    assert f"{searcher}-{scheduler}: {trials} trials, 0 errored" in out, out[-2000:]
