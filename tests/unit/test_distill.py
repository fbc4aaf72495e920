"""Knowledge distillation (training/distill.py) and the teacher's validation
(experiment/teacher.py), on CPU without Ray."""

import json
import math
import shutil

import pytest
import torch

from raytune_suite.errors import CheckpointError, SpecError
from raytune_suite.experiment import validate
from raytune_suite.experiment.teacher import best_checkpoint
from raytune_suite.training import checkpoint as ckpt
from raytune_suite.training.config import ClassifierConfig
from raytune_suite.training.data import DataSpec, load_dataset
from raytune_suite.training.distill import distillation_loss, load_teacher
from raytune_suite.training.loop import Trainer

DIGITS_CNN = {"dataset": "digits", "model": "cnn", "lr": 3e-3}


def train(epochs=1, **config) -> Trainer:
    """A digits CNN trained ``epochs`` epochs (0: built only)."""
    cfg = ClassifierConfig.model_validate({**DIGITS_CNN, "epochs": max(epochs, 2), **config})
    torch.manual_seed(0)
    trainer = Trainer(cfg, load_dataset(DataSpec("digits", image=True,
                                                 data_seed=cfg.data_seed)))
    for _ in range(epochs):
        trainer.run_epoch()
    return trainer


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A checkpoint folder of a wider CNN than the students, trained 2 epochs on digits."""
    folder = tmp_path_factory.mktemp("teacher")
    ckpt.save(folder, train(epochs=2, width=0.25).state_dict())
    return folder


def test_kd_loss_equals_a_hand_computation():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    teacher = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 0.0]])
    labels = torch.tensor([0, 2])
    T, alpha = 2.0, 0.7
    kl = ce = 0.0
    for s, t, y in zip(student.tolist(), teacher.tolist(), labels.tolist()):
        p_t = [math.exp(v / T) / sum(math.exp(u / T) for u in t) for v in t]
        p_s = [math.exp(v / T) / sum(math.exp(u / T) for u in s) for v in s]
        kl += sum(a * math.log(a / b) for a, b in zip(p_t, p_s))
        ce += -math.log(math.exp(s[y]) / sum(math.exp(u) for u in s))
    want = alpha * (kl / 2) * T * T + (1 - alpha) * (ce / 2)
    assert distillation_loss(student, teacher, labels, T, alpha).item() == \
        pytest.approx(want, rel=1e-6)
    # alpha 0 is plain cross-entropy; a student equal to its teacher has no KL term
    assert distillation_loss(student, teacher, labels, T, 0.0).item() == \
        pytest.approx(ce / 2, rel=1e-6)
    assert distillation_loss(teacher, teacher, labels, T, 1.0).item() == pytest.approx(0, abs=1e-6)


def test_teacher_loads_verified_frozen_and_in_eval_mode(teacher, tmp_path):
    model = load_teacher(teacher, (1, 8, 8), 10)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with pytest.raises(CheckpointError, match="does not fit"):
        load_teacher(teacher, (1, 8, 8), 3)
    broken = tmp_path / "broken"
    shutil.copytree(teacher, broken)
    with open(broken / "checkpoint.pt", "r+b") as f:
        f.seek(100)
        f.write(b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="digest"):
        load_teacher(broken, (1, 8, 8), 10)


@pytest.mark.parametrize("augment", [0.0, 0.5])
def test_student_trains_on_the_teachers_logits(teacher, augment):
    student = train(epochs=0, width=0.125, distill_from=str(teacher), augment=augment)
    data = student.data
    expected = student.predict(data.x_train, model=student.teacher)
    if augment:  # per batch on the augmented inputs, nothing cached
        assert student.teacher_logits is None
    else:
        assert torch.equal(student.teacher_logits, expected)
    assert student.teacher.state_dict()["head.4.bias"].shape == (10,)
    metrics = [student.run_epoch() for _ in range(2)]
    assert all(math.isfinite(m["train_loss"]) for m in metrics)
    assert augment or metrics[-1]["val_accuracy"] > 0.5
    # Only training loads a teacher (scoring a checkpoint does not).
    assert Trainer(student.cfg, data, train=False).teacher is None


def test_distillation_changes_training_and_alpha_zero_does_not(teacher):
    plain = train(epochs=1, width=0.125)
    kd = train(epochs=1, width=0.125, distill_from=str(teacher), distill_alpha=0.9)
    off = train(epochs=1, width=0.125, distill_from=str(teacher), distill_alpha=0.0)
    weights = [t.model.head[4].weight for t in (plain, kd, off)]
    assert torch.equal(weights[0], weights[2]) and not torch.equal(weights[0], weights[1])


# ------------------------------------------------------------------ validation


def spec(distill_from, tmp_path, **overrides):
    raw = {"name": "student", "trainable": "classifier",
           "config": {**DIGITS_CNN, "width": 0.125, "epochs": 2,
                      "distill_from": str(distill_from)},
           "search_space": {"distill_alpha": {"uniform": [0.1, 0.9]}},
           "metric": "val_accuracy", "mode": "max", "storage": str(tmp_path / "results")}
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        raw[section] = {**raw[section], field: value} if field else value
    for key in raw["search_space"]:  # a value is either fixed or searched
        raw["config"].pop(key, None)
    return raw


def fake_experiment(folder, teacher, trials):
    """An experiment folder as the engine leaves it: the file as run, and per trial its
    result.json rows and checkpoint folders (copies of the teacher's)."""
    folder.mkdir(parents=True)
    (folder / "raytune_suite.yaml").write_text("name: t\nmetric: [val_accuracy, model_size_kb]"
                                               "\nmode: [max, min]\n")
    for trial, rows in trials.items():
        (folder / trial).mkdir()
        with open(folder / trial / "result.json", "w") as f:
            for i, row in enumerate(rows):
                if row.pop("checkpoint", True):
                    row["checkpoint_dir_name"] = f"checkpoint_{i:06d}"
                    shutil.copytree(teacher, folder / trial / row["checkpoint_dir_name"])
                f.write(json.dumps(row) + "\n")
    return folder


def test_validation_resolves_a_checkpoint_folder_to_its_absolute_path(teacher, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(teacher.parent)
    checked = validate(spec(teacher.name, tmp_path))
    assert checked.config["distill_from"] == str(teacher.resolve())


def test_validation_picks_the_best_trials_best_retained_checkpoint(teacher, tmp_path):
    experiment = fake_experiment(tmp_path / "results" / "teacher", teacher, {
        "trial_a": [{"val_accuracy": 0.8}, {"val_accuracy": 0.9}],
        "trial_b": [{"val_accuracy": 0.7}, {"val_accuracy": 0.95},
                    {"val_accuracy": 0.93, "checkpoint": False}],
        "trial_c": [{"val_accuracy": 0.99}, {"val_accuracy": float("nan"), "diverged": 1}],
    })
    # trial_b's best epoch (0.95, the first metric of the list) beats trial_a's;
    # trial_c diverged: its earlier epochs do not count.
    assert best_checkpoint(experiment) == experiment / "trial_b" / "checkpoint_000001"
    checked = validate(spec("teacher", tmp_path))  # a name under the student's storage
    assert checked.config["distill_from"] == str(experiment / "trial_b" / "checkpoint_000001")
    shutil.rmtree(experiment / "trial_b" / "checkpoint_000001")  # rotated away
    assert best_checkpoint(experiment) == experiment / "trial_b" / "checkpoint_000000"


@pytest.mark.parametrize("change, field, words", [
    (lambda t, p: spec(p / "nowhere", p), "config.distill_from", "checkpoint folder"),
    (lambda t, p: spec(t, p, config__data_seed=1), "config.distill_from",
     "data_seed 1 (teacher: 0)"),
    (lambda t, p: spec(t, p, config__model="mlp"), "config.distill_from",
     "digits read as features"),
    (lambda t, p: spec(t, p, search_space={"data_seed": {"choice": [0, 1]}}),
     "search_space.data_seed", "cannot be searched"),
    (lambda t, p: spec(t, p, search_space={"model": {"choice": ["cnn", "mlp"]}}),
     "config.distill_from", "digits read as features"),
    (lambda t, p: spec(t, p, config__cv_folds=3), "config", "cv_folds"),
])
def test_validation_refuses_a_teacher_that_does_not_fit(teacher, tmp_path, change, field,
                                                        words):
    with pytest.raises(SpecError) as e:
        validate(change(teacher, tmp_path))
    assert e.value.field == field and words in str(e.value)


def test_a_searched_teacher_is_refused(teacher, tmp_path):
    raw = spec(teacher, tmp_path)
    raw["config"].pop("distill_from")
    raw["search_space"]["distill_from"] = {"choice": [str(teacher)]}
    with pytest.raises(SpecError) as e:
        validate(raw)
    assert e.value.field == "search_space.distill_from"


def test_an_experiment_without_checkpoints_is_refused(teacher, tmp_path):
    fake_experiment(tmp_path / "results" / "teacher", teacher,
                    {"trial_a": [{"val_accuracy": 0.9, "checkpoint": False}]})
    with pytest.raises(SpecError, match="has none"):
        validate(spec("teacher", tmp_path))
