"""``raytune-suite best --evaluate --ensemble K`` on a finished search (the session's
``small_classifier_search``, copied so that its folder stays as it was): the members are
the K best trials by the metric, the scores printed are the ones numpy and scikit-learn
compute from their checkpoints, and the experiment's report shows them."""

import json
import shutil

import numpy as np
import pytest
import torch

from raytune_suite.cli import main
from raytune_suite.engine.state import update_state
from raytune_suite.report.html import REPORT_FILE, write_report
from raytune_suite.training import checkpoint as ckpt
from raytune_suite.training.config import ClassifierConfig
from raytune_suite.training.data import data_spec, load_dataset
from raytune_suite.training.ensemble import ENSEMBLES_FILE
from raytune_suite.training.models import build_model


@pytest.fixture
def experiment(small_classifier_search, tmp_path):
    """A copy of the finished search's folder, with MLflow off (the copy's report must not
    reach the fixture's MLflow run)."""
    _, outcome = small_classifier_search
    copy = tmp_path / "small"
    shutil.copytree(outcome.path, copy)
    update_state(copy, tracking_uri=None, parent_run_id=None)
    return copy, outcome


def _independent_scores(checkpoints):
    """Each model's softmax on its test split, averaged: (accuracy, macro F1) by sklearn."""
    from sklearn.metrics import accuracy_score, f1_score

    probs = []
    for path in checkpoints:
        state = ckpt.load(path)
        cfg = ClassifierConfig.model_validate(state["config"])
        data = load_dataset(data_spec(cfg))
        model = build_model(cfg, data.input_shape, data.num_classes)
        model.load_state_dict(state["model"])
        with torch.no_grad():
            probs.append(torch.softmax(model.eval()(data.x_test), 1).numpy())
    y = data.y_test.numpy()

    def scores(p):
        pred = p.argmax(1)
        return accuracy_score(y, pred), f1_score(y, pred, average="macro", zero_division=0)

    return scores(probs[0]), scores(np.mean(probs, axis=0)), len(y)


def test_best_ensemble_scores_the_top_k_and_the_report_shows_them(experiment, capsys):
    folder, outcome = experiment
    ranked = sorted((t for t in outcome.trials if t.best is not None and t.checkpoint),
                    key=lambda t: -t.best)
    assert len(ranked) == 4  # the known ordering: by val_accuracy, best first

    assert main(["best", str(folder), "--evaluate", "--ensemble", "3", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    ens = payload["ensemble"]
    top3 = [t.trial_id for t in ranked[:3]]
    assert [m["trial_id"] for m in ens["members"]] == top3
    assert [m["value"] for m in ens["members"]] == [t.best for t in ranked[:3]]
    checkpoints = [m["checkpoint"] for m in ens["members"]]
    assert all(c.startswith(str(folder)) for c in checkpoints)
    single, mean, samples = _independent_scores(checkpoints)
    assert ens["test_samples"] == samples
    assert (ens["single"]["test_accuracy"], ens["single"]["test_f1_macro"]) == \
        pytest.approx(single)
    assert (ens["ensemble"]["test_accuracy"], ens["ensemble"]["test_f1_macro"]) == \
        pytest.approx(mean)
    # the single best is what --evaluate scored
    assert ens["single"]["test_accuracy"] == payload["test"]["test_accuracy"]
    assert ens["saved"] == str(folder / ENSEMBLES_FILE) and ens["report"] is None
    assert not (folder / REPORT_FILE).exists()  # no report before: none written

    # With a report in the folder, it is written again and shows both ensembles.
    write_report(folder)
    assert main(["best", str(folder), "--evaluate", "--ensemble", "2"]) == 0
    out = capsys.readouterr().out
    _, mean2, _ = _independent_scores(checkpoints[:2])
    assert f"single best ({top3[0]}): accuracy {single[0]:.4f}, macro F1 {single[1]:.4f}" in out
    assert f"ensemble of 2: accuracy {mean2[0]:.4f}" in out
    assert f"report:  {folder / REPORT_FILE}" in out
    page = (folder / REPORT_FILE).read_text()
    assert f"<td>ensemble of 2</td><td>{', '.join(top3[:2])}</td><td>{mean2[0]:.4f}</td>" \
        in page
    assert f"<td>ensemble of 3</td><td>{', '.join(top3)}</td><td>{mean[0]:.4f}</td>" in page
    assert f"<td>single best</td><td>{top3[0]}</td><td>{single[0]:.4f}</td>" in page

    # K beyond the trials that can be scored: one line, exit 2, nothing written.
    before = (folder / ENSEMBLES_FILE).read_text()
    assert main(["best", str(folder), "--evaluate", "--ensemble", "5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == ("error: --ensemble: K must be at most 4, the trials with a "
                                    "finite val_accuracy and a checkpoint, got 5")
    assert (folder / ENSEMBLES_FILE).read_text() == before
