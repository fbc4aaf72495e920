"""Top-K ensembles (training/ensemble.py) on checkpoints of tiny models built here, with
answers known in advance: a model whose weights are all zero but its last bias predicts the
same probabilities for every sample, so its test accuracy is the share of the test split's
samples in the class it predicts. No Ray."""

import json
import math

import numpy as np
import pytest
import torch

from raytune_suite.engine.results import TrialSummary
from raytune_suite.errors import SpecError
from raytune_suite.experiment import validate
from raytune_suite.report import data as rd
from raytune_suite.report.html import render
from raytune_suite.training import checkpoint as ckpt
from raytune_suite.training.config import ClassifierConfig
from raytune_suite.training.data import data_spec, load_dataset
from raytune_suite.training.ensemble import (ENSEMBLES_FILE, ensemble_scores, pick_members,
                                             read_ensembles, record_ensemble)
from raytune_suite.training.evaluate import evaluate_checkpoint
from raytune_suite.training.models import build_model

# wine: 3 classes of unequal size, so predicting each class gives a different accuracy
BASE = {"dataset": "wine", "model": "mlp", "hidden": [8]}


def _save(folder, cfg: ClassifierConfig, model) -> str:
    state = {"model": model.state_dict(), "optimizer": {}, "epoch": 1,
             "config": cfg.model_dump()}
    return str(ckpt.save(folder, state))


def _constant(folder, probs, **overrides) -> str:
    """A checkpoint whose model gives every sample the probabilities ``probs``."""
    cfg = ClassifierConfig(**{**BASE, **overrides})
    data = load_dataset(data_spec(cfg))
    model = build_model(cfg, data.input_shape, data.num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.net[-1].bias.copy_(torch.tensor(probs).log())  # softmax(log p) = p
    return _save(folder, cfg, model)


def _random(folder, seed: int, **overrides) -> str:
    """A checkpoint of a randomly initialised model (its predictions vary per sample)."""
    cfg = ClassifierConfig(**{**BASE, **overrides})
    data = load_dataset(data_spec(cfg))
    torch.manual_seed(seed)
    return _save(folder, cfg, build_model(cfg, data.input_shape, data.num_classes))


def _test_labels(**overrides) -> np.ndarray:
    return load_dataset(data_spec(ClassifierConfig(**{**BASE, **overrides}))).y_test.numpy()


def _constant_scores(y: np.ndarray, cls: int) -> tuple[float, float]:
    """Accuracy and macro F1 of predicting ``cls`` for every sample: precision is the
    class's share, recall 1, and the other classes' F1 is 0."""
    share = float(np.mean(y == cls))
    return share, 2 * share / (share + 1) / len(np.unique(y))


CASES = {
    # each member alone is wrong on class 1; their average is right there
    "average right where each is wrong": ([[0.5, 0.45, 0.05], [0.05, 0.45, 0.5]], [0, 2], 1),
    # two of three vote for class 1, the mean of the probabilities says class 0
    "a mean, not a vote": ([[0.35, 0.6, 0.05], [0.35, 0.6, 0.05], [0.98, 0.01, 0.01]],
                           [1, 1, 0], 0),
    # averaging logits (a geometric mean) would say class 1: a near-zero probability
    # vetoes class 0; the mean of the probabilities says class 0
    "probabilities, not logits": ([[0.98, 0.02, 1e-6], [1e-6, 0.5, 0.5 - 1e-6]], [0, 1], 0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ensemble_predicts_the_class_of_the_mean_probabilities(tmp_path, case):
    members_probs, member_classes, ensemble_class = CASES[case]
    members = [(f"t{i}", _constant(tmp_path / f"t{i}", p)) for i, p in enumerate(members_probs)]
    y = _test_labels()
    result = ensemble_scores(members)
    assert result["k"] == len(members) and result["test_samples"] == len(y)
    for row, cls in zip(result["members"], member_classes):
        assert (row["test_accuracy"], row["test_f1_macro"]) == pytest.approx(
            _constant_scores(y, cls))
    assert result["single"] == {"trial_id": "t0", **{k: result["members"][0][k] for k in
                                                     ("test_accuracy", "test_f1_macro")}}
    expected = _constant_scores(y, ensemble_class)
    assert (result["ensemble"]["test_accuracy"],
            result["ensemble"]["test_f1_macro"]) == pytest.approx(expected)
    # the classes' shares differ, so a wrong class could not give the same score
    others = {_constant_scores(y, c)[0] for c in range(3) if c != ensemble_class}
    assert expected[0] not in others


def test_scores_match_evaluate_and_an_independent_computation(tmp_path):
    """On models whose predictions vary per sample: the single best scores as
    ``best --evaluate`` does, the ensemble as numpy + scikit-learn compute it."""
    from sklearn.metrics import accuracy_score, f1_score

    paths = [_random(tmp_path / f"r{s}", s) for s in range(3)]
    result = ensemble_scores([(f"r{s}", p) for s, p in enumerate(paths)])
    single = evaluate_checkpoint(paths[0])
    assert result["single"]["test_accuracy"] == single["test_accuracy"]
    assert result["single"]["test_f1_macro"] == single["test_f1_macro"]

    cfg = ClassifierConfig(**BASE)
    data = load_dataset(data_spec(cfg))
    probs = []
    for path in paths:
        model = build_model(cfg, data.input_shape, data.num_classes)
        model.load_state_dict(torch.load(f"{path}/checkpoint.pt", weights_only=True)["model"])
        with torch.no_grad():
            probs.append(torch.softmax(model.eval()(data.x_test), 1).numpy())
    pred = np.mean(probs, axis=0).argmax(1)
    y = data.y_test.numpy()
    assert result["ensemble"]["test_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert result["ensemble"]["test_f1_macro"] == pytest.approx(
        f1_score(y, pred, average="macro", zero_division=0))
    # the members predict differently: the ensemble is not just one of them
    assert len({tuple(p.argmax(1)) for p in probs}) == 3


@pytest.mark.parametrize("key, value", [("data_seed", 1), ("test_fraction", 0.3),
                                        ("dataset", "iris")])
def test_members_must_share_one_test_split(tmp_path, key, value):
    a = _constant(tmp_path / "a", [0.5, 0.3, 0.2])
    b = _constant(tmp_path / "b", [0.5, 0.3, 0.2], **{key: value})
    with pytest.raises(SpecError) as err:
        ensemble_scores([("a", a), ("b", b)])
    assert err.value.field == "--ensemble"
    assert f"must share one test split, but their config.{key} differs" in err.value.rule
    assert err.value.value == {"a": BASE.get(key, getattr(ClassifierConfig(), key)),
                               "b": value}


def test_members_may_differ_in_how_they_trained(tmp_path):
    """val_fraction changes a member's normalisation statistics, hidden its model: each is
    scored on the same test samples, as it was trained to see them."""
    a = _constant(tmp_path / "a", [0.2, 0.7, 0.1])
    b = _random(tmp_path / "b", 0, val_fraction=0.3, hidden=[16, 4], limit_train=50)
    result = ensemble_scores([("a", a), ("b", b)])
    assert result["members"][0]["test_accuracy"] == pytest.approx(
        _constant_scores(_test_labels(), 1)[0])
    assert result["members"][1]["test_accuracy"] == evaluate_checkpoint(b)["test_accuracy"]


def test_no_test_split_is_an_error(tmp_path):
    a = _constant(tmp_path / "a", [0.5, 0.3, 0.2], test_fraction=0)
    b = _constant(tmp_path / "b", [0.2, 0.3, 0.5], test_fraction=0)
    with pytest.raises(SpecError, match="needs a test split"):
        ensemble_scores([("a", a), ("b", b)])


def _trial(tid, best, checkpoint="ckpt"):
    return TrialSummary(tid, {"lr": 0.1}, best, 3, "TERMINATED", checkpoint and
                        f"/x/{tid}/{checkpoint}")


def test_pick_members_takes_the_k_best_that_can_be_scored():
    trials = [_trial("a", 0.9), _trial("b", 0.8, None), _trial("c", 0.7), _trial("d", 0.6),
              _trial("e", None)]
    assert [t.trial_id for t in pick_members(trials, 3, "val_accuracy")] == ["a", "c", "d"]
    with pytest.raises(SpecError, match="K must be at most 3, the trials with a finite "
                                        "val_accuracy and a checkpoint, got 4"):
        pick_members(trials, 4, "val_accuracy")
    for k in (1, 0, -2):
        with pytest.raises(SpecError, match="K must be at least 2"):
            pick_members(trials, k, "val_accuracy")


def _record(k, acc=0.9, ids=None):
    ids = ids or [f"t{i}" for i in range(k)]
    members = [{"trial_id": t, "checkpoint": f"/x/{t}/ckpt", "test_accuracy": 0.8,
                "test_f1_macro": 0.7, "value": 0.9 - i / 100} for i, t in enumerate(ids)]
    return {"k": k, "test_samples": 36, "members": members, "metric": "val_accuracy",
            "single": {"trial_id": ids[0], "test_accuracy": 0.8, "test_f1_macro": 0.7},
            "ensemble": {"test_accuracy": acc, "test_f1_macro": acc - 0.05}}


def test_record_keeps_the_latest_result_per_k(tmp_path):
    assert read_ensembles(tmp_path) == []
    record_ensemble(tmp_path, _record(3, 0.91))
    record_ensemble(tmp_path, _record(2, 0.92))
    path = record_ensemble(tmp_path, _record(3, 0.95))
    assert path == tmp_path / ENSEMBLES_FILE and not path.name.endswith((".json", ".pkl"))
    records = read_ensembles(tmp_path)
    assert [(r["k"], r["ensemble"]["test_accuracy"]) for r in records] == [(2, 0.92),
                                                                           (3, 0.95)]
    assert all(math.isfinite(r["time"]) for r in records)
    assert [json.loads(line)["k"] for line in path.read_text().splitlines()] == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == [ENSEMBLES_FILE]


def test_report_shows_single_best_and_each_ensemble(tmp_path):
    spec = validate({"name": "ens", "trainable": "classifier", "metric": "val_accuracy",
                     "mode": "max", "config": {"dataset": "wine", "epochs": 3},
                     "search_space": {"lr": {"loguniform": [1e-4, 1e-1]}}})
    trials = [_trial(f"t{i}", 0.9 - i / 100) for i in range(4)]
    histories = {t.trial_id: [{"training_iteration": 1, "val_accuracy": t.best}]
                 for t in trials}
    data = rd.ReportData(path=tmp_path, spec=spec, spec_text="name: ens\n", trials=trials,
                         histories=histories, params=list(spec.search_space.leaves()),
                         ensembles=[_record(2, 0.93), _record(3, 0.87)])
    page = render(data)
    table = page[page.index('id="ensemble-table"'):page.index("</table>",
                                                           page.index('id="ensemble-table"'))]
    assert "<td>single best</td><td>t0</td><td>0.8000</td>" in table
    assert "<td>ensemble of 2</td><td>t0, t1</td><td>0.9300</td><td>+0.1300</td>" in table
    assert "<td>ensemble of 3</td><td>t0, t1, t2</td><td>0.8700</td><td>+0.0700</td>" in table
    assert "Out of date" not in page
    # a search that went on since: the top 3 are other trials now
    data.trials = [_trial("t9", 0.99), *trials]
    page = render(data)
    assert "ensemble of 2 (out of date)" in page
    assert "Out of date: the leaderboard's top 2, 3 are no longer those trials" in page
