"""Knowledge distillation (Hinton et al., 2015): a student trains on a teacher's softened
outputs as well as on the labels.

The teacher is a checkpoint folder of the ``classifier`` trainable (``config.distill_from``;
an experiment's best checkpoint is found by :mod:`raytune_suite.experiment.teacher` before
Ray starts). It is read with :func:`checkpoint.load` (digest checked, ``weights_only``),
rebuilt from its own config, and runs in eval mode on the student's device. Its logits on
the training split are computed once per trial when batches are not augmented, else per
batch on the same augmented inputs as the student. With adversarial training the teacher
sees the clean inputs (as in adversarially robust distillation, Goldblum et al., 2020).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from raytune_suite.training import checkpoint as ckpt
from raytune_suite.training.config import ClassifierConfig
from raytune_suite.training.models import build_model


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """``alpha * KL(teacher || student at T) * T^2 + (1 - alpha) * cross-entropy``.

    The KL term compares the two softmaxes at temperature ``T`` (mean over the batch); the
    ``T^2`` keeps its gradients on the scale of the cross-entropy's as ``T`` changes.

    Args:
        student: the student's logits, (batch, classes).
        teacher: the teacher's logits for the same inputs.
        labels: class indices.
        temperature: ``T > 0``.
        alpha: weight of the KL term, 0 to 1.
        label_smoothing: of the cross-entropy term (the config's).
    """
    t = temperature
    soft = nn.functional.kl_div(nn.functional.log_softmax(student.float() / t, dim=1),
                                nn.functional.log_softmax(teacher.float() / t, dim=1),
                                reduction="batchmean", log_target=True)
    hard = nn.functional.cross_entropy(student, labels, label_smoothing=label_smoothing)
    return alpha * soft * t * t + (1 - alpha) * hard


def load_teacher(path: str | Path, input_shape: tuple[int, ...], num_classes: int,
                 device: torch.device | str = "cpu") -> nn.Module:
    """The teacher model a checkpoint folder holds, in eval mode on ``device``, frozen.

    Raises:
        CheckpointError: missing, corrupt, or not fitting ``input_shape``/``num_classes``;
            the message names the folder.
    """
    state = ckpt.load(path)
    # Its weights replace any pretrained ones: do not read that file (it may be gone).
    cfg = ClassifierConfig.model_validate({**state["config"], "pretrained_weights": None})
    model = build_model(cfg, input_shape, num_classes)
    ckpt.load_into(state, model)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
