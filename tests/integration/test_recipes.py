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
    "digits_adversarial": lambda d: ["config.epochs=2", "config.adversarial_steps=2",
                                     "search_space.width={grid: [0.25]}",
                                     "search_space.lr={grid: [3.0e-3]}"],
}
# Metrics a recipe's trials report beside the usual ones.
EXTRA_METRICS = {"digits_adversarial": ("val_robust_accuracy",)}


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
                   "train_loss", "val_loss", "samples_per_s", "epoch_seconds", "lr",
                   *EXTRA_METRICS.get(recipe, ())):
        assert f"metrics.{metric}" in trials, metric
    if spec.config.get("cv_folds"):
        assert "metrics.val_accuracy_std" in trials
    if "val_robust_accuracy" in EXTRA_METRICS.get(recipe, ()):
        from raytune_suite.report.html import write_report

        page = write_report(outcome.path).read_text()  # clean against robust, each trial
        assert 'id="robustness-table"' in page and page.count("<td>pgd, eps 0.3</td>") == 2


def test_distill_recipe_after_its_teacher(ray_local, in_tmp):
    """digits_teacher, then digits_distill as shipped (it names the teacher's experiment,
    whose best checkpoint validation finds), its student quantized to int8: every trial
    carries the teacher it learnt from and the compression objectives."""
    teacher_spec, raw = load_spec(EXPERIMENTS / "digits_teacher.yaml",
                                  SMOKE + ["config.epochs=2", "config.width=0.5"])
    teacher = run_experiment(teacher_spec, raw)
    assert teacher.errors == 0 and teacher.best.checkpoint
    spec, raw = load_spec(EXPERIMENTS / "digits_distill.yaml",
                          SMOKE + ["config.epochs=2", "config.quantize=int8"])
    assert spec.config["distill_from"] == teacher.best.checkpoint  # as `best` shows it
    outcome = run_experiment(spec, raw)
    assert outcome.errors == 0 and len(outcome.trials) == 2
    runs = mlflow_runs(in_tmp, spec.name)
    trials = runs[runs["tags.raytune_suite.role"] == "trial"]
    assert len(trials) == 2
    assert set(trials["params.distill_from"]) == {teacher.best.checkpoint}
    for metric in ("val_accuracy", "model_size_kb", "nonzero_params", "latency_ms",
                   "val_accuracy_uncompressed"):
        assert trials[f"metrics.{metric}"].notna().all(), metric
    # The student's results outlive its teacher: best and report read them without it.
    import shutil

    from raytune_suite.engine.runner import load_outcome
    from raytune_suite.report.html import write_report

    shutil.rmtree(teacher.path)
    assert load_outcome(outcome.path).best.trial_id == outcome.best.trial_id
    assert write_report(outcome.path).is_file()
