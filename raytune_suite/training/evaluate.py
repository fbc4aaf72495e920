"""Test-set evaluation of a saved checkpoint (``raytune-suite best --evaluate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raytune_suite.training import checkpoint as ckpt
from raytune_suite.training.config import ClassifierConfig


def evaluate_checkpoint(path: str | Path) -> dict[str, Any]:
    """Rebuild the model a checkpoint describes and score it on the held-out test split
    (compressed as the trial's ``prune_amount`` and ``quantize`` say, when it set them).

    The split is the one the trial trained with (the checkpoint records its config and
    data seed), so the test samples were never seen in training or model selection.

    Returns:
        ``test_accuracy``, ``test_f1_macro``, ``test_samples`` and ``report`` (sklearn's
        classification report, per class).
    """
    from sklearn.metrics import classification_report

    from raytune_suite.training.data import data_spec, load_dataset
    from raytune_suite.training.loop import Trainer

    state = ckpt.load(path)
    cfg = ClassifierConfig.model_validate(state["config"])
    data = load_dataset(data_spec(cfg))
    if len(data.y_test) == 0:
        raise ValueError(f"checkpoint {path}: its data set has no test split "
                         "(test_fraction: 0)")
    trainer = Trainer(cfg, data, train=False)
    ckpt.load_into(state, trainer.model)
    model = None  # the trained model, as its val_* metrics were measured
    if cfg.compressing:  # they were measured on its compressed copy: score that one
        from raytune_suite.training.compress import compressed_copy

        model = compressed_copy(trainer.model, cfg.prune_amount or 0.0, cfg.quantize or "none")
    logits = trainer.predict(data.x_test, model=model)
    pred = logits.argmax(1).cpu().numpy()
    metrics = trainer.evaluate(data.x_test, data.y_test, model=model)
    names = list(data.class_names) or [str(i) for i in range(data.num_classes)]
    report = classification_report(data.y_test.cpu().numpy(), pred, labels=range(len(names)),
                                   target_names=names, digits=4, zero_division=0)
    return {"test_accuracy": metrics["accuracy"], "test_f1_macro": metrics["f1_macro"],
            "test_samples": len(data.y_test), "report": report}
