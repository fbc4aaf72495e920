"""The shipped recipes, smoke-sized, on data written in the real on-disk formats (what
PBT exploits do to a trial is tested in test_pbt.py)."""


import pytest
import torch

from formats import write_cifar10, write_image_folder, write_mnist
from helpers import EXPERIMENTS, mlflow_runs
from raytune_suite.engine.runner import run_experiment
from raytune_suite.experiment import load_spec

SMOKE = ["search.num_samples=2", "search.max_concurrent=2", "resources.cpu=1",
         "resources.gpu=0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root / "cifar", n_train_per_batch=60, n_test=50, seed=0)
    write_mnist(root / "mnist", n_train=300, n_test=60, seed=0, kind="MNIST")
    write_image_folder(root / "images", classes=["cats", "dogs"], per_class=24,
                       size_range=(40, 90), seed=0)
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), root / "resnet18.pth")
    return root


RECIPES = {
    "cifar10_asha": lambda d: ["config.data_root=" + str(d / "cifar"), "config.epochs=2",
                               "scheduler.max_t=2", "scheduler.grace_period=1",
                               "config.width=0.25", "config.limit_train=200"],
    "cifar10_asha on mnist": lambda d: ["config.dataset=mnist",
                                        "config.data_root=" + str(d / "mnist"),
                                        "config.epochs=2", "scheduler.max_t=2",
                                        "scheduler.grace_period=1", "config.width=0.25"],
    "cifar10_pbt": lambda d: ["config.data_root=" + str(d / "cifar"), "config.epochs=2",
                              "scheduler.max_t=2", "config.width=0.25",
                              "config.limit_train=200"],
    "resnet_finetune": lambda d: ["config.data_root=" + str(d / "images"),
                                  "config.pretrained_weights=" + str(d / "resnet18.pth"),
                                  "config.image_size=32", "config.epochs=1",
                                  "scheduler.max_t=1", "scheduler.grace_period=1"],
    "iris_mlp_hyperopt": lambda d: ["config.epochs=3", "scheduler.max_t=3"],
    "digits_pbt": lambda d: ["config.epochs=4", "scheduler.max_t=4"],
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_smoke(recipe, data_dir, ray_local, in_tmp):
    file = EXPERIMENTS / f"{recipe.split()[0]}.yaml"
    spec, raw = load_spec(file, SMOKE + RECIPES[recipe](data_dir) +
                          [f"name={recipe.replace(' ', '-')}"])
    outcome = run_experiment(spec, raw)
    assert outcome.errors == 0 and len(outcome.trials) == 2
    assert outcome.best is not None and 0 <= outcome.best.best <= 1
    runs = mlflow_runs(in_tmp, spec.name)
    trials = runs[runs["tags.raytune_suite.role"] == "trial"]
    assert len(trials) == 2
    for metric in ("val_accuracy", "val_f1_macro", "val_precision", "val_recall",
                   "train_loss", "val_loss", "samples_per_s", "epoch_seconds", "lr"):
        assert f"metrics.{metric}" in trials, metric
    if spec.config.get("cv_folds"):
        assert "metrics.val_accuracy_std" in trials
