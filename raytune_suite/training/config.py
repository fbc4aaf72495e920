"""Typed config of the built-in ``classifier`` trainable (no torch import here).

Every field is a hyperparameter a practitioner tunes by hand; any of them may be
searched in the experiment file. Unknown keys are rejected.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

Fraction = Annotated[float, Field(ge=0, lt=1)]
Positive = Annotated[float, Field(gt=0)]
DatasetName = Literal["digits", "iris", "wine", "breast_cancer", "cifar10", "mnist",
                      "fashion_mnist", "image_folder", "synthetic"]
IMAGE_MODELS = ("cnn", "resnet18", "resnet50")
TABULAR_DATASETS = ("iris", "wine", "breast_cancer")
# Keys that decide what data a trial sees: when none is searched, the runner loads the
# data once in the driver and shares it through Ray's object store.
DATA_KEYS = ("dataset", "data_root", "download", "image_size", "data_seed", "val_fraction",
             "test_fraction", "cv_folds", "limit_train", "synthetic_samples",
             "synthetic_shape", "synthetic_classes", "model")


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimizerConfig(_Cfg):
    """``optimizer: adam`` or, in a conditional space, ``{name: sgd, momentum: 0.9}``."""

    name: Literal["sgd", "adam", "adamw"] = "adam"
    momentum: Fraction = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    lr: Optional[Positive] = None  # overrides the top-level lr


class ClassifierConfig(_Cfg):
    # -- data
    dataset: DatasetName = "digits"
    data_root: Optional[str] = None  # cifar10/mnist/fashion_mnist/image_folder folder
    download: bool = False  # torchvision sets: fetch into data_root (needs internet)
    image_size: Annotated[int, Field(ge=8)] = 32  # image_folder resize
    data_seed: int = 0  # fixes the train/val/test split: every trial sees the same one
    val_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.2
    test_fraction: Annotated[float, Field(ge=0, lt=0.5)] = 0.2
    cv_folds: Annotated[int, Field(ge=0, le=20)] = 0  # k-fold CV on small tabular sets
    limit_train: Optional[Annotated[int, Field(gt=0)]] = None  # smoke runs
    synthetic_samples: Annotated[int, Field(gt=0)] = 2048
    synthetic_shape: list[int] = [3, 32, 32]
    synthetic_classes: Annotated[int, Field(ge=2)] = 10
    augment: Annotated[float, Field(ge=0, le=1)] = 0.0  # crop/flip/rotate strength (images)
    augment_flip: Optional[bool] = None  # None: on, except for digits/mnist/fashion_mnist
    # -- model
    model: Literal["mlp", "cnn", "resnet18", "resnet50"] = "mlp"
    hidden: Union[int, list[int]] = 64  # mlp hidden sizes
    activation: Literal["relu", "tanh", "gelu"] = "relu"
    width: Positive = 0.25  # cnn width multiplier on 64-128-512
    dropout: Fraction = 0.0
    pretrained_weights: Optional[str] = None  # resnet: a local torchvision state dict
    freeze_backbone: bool = False  # resnet: train only the new head
    # -- optimisation
    optimizer: Union[Literal["sgd", "adam", "adamw"], OptimizerConfig] = "adam"
    lr: Positive = 1e-3  # peak learning rate
    momentum: Fraction = 0.9  # sgd
    nesterov: bool = False  # sgd
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    batch_size: Annotated[int, Field(gt=0)] = 64
    epochs: Annotated[int, Field(gt=0)] = 10
    lr_schedule: Literal["none", "step", "exponential", "cosine", "onecycle"] = "none"
    lr_milestones: list[Annotated[int, Field(gt=0)]] = [10, 20, 30]  # step: epochs
    lr_gamma: Annotated[float, Field(gt=0, le=1)] = 0.1  # step: x gamma at each milestone;
    #                                                     exponential: x gamma every epoch
    warmup_epochs: Annotated[int, Field(ge=0)] = 0  # linear warm-up before the schedule
    label_smoothing: Fraction = 0.0
    grad_clip: Optional[Positive] = None  # max global gradient norm
    early_stopping_patience: Optional[Annotated[int, Field(gt=0)]] = None  # epochs
    early_stopping_min_delta: Annotated[float, Field(ge=0)] = 0.0  # on val_loss
    # -- compression, measured on a compressed copy at every epoch's evaluation (training
    #    goes on with the dense model). Leaving both unset (None) turns it off; any value,
    #    0 and none included, reports model_size_kb, nonzero_params and latency_ms, and the
    #    val_* metrics are then the compressed model's.
    prune_amount: Optional[Annotated[float, Field(ge=0, le=0.95)]] = None  # share of the
    #                            conv/linear weights zeroed by global magnitude pruning
    quantize: Optional[Literal["none", "int8"]] = None  # int8: dynamic quantization of the
    #                            linear layers (runs on CPU)
    # -- adversarial training: half of every batch perturbed within an L-infinity ball
    adversarial_eps: Annotated[float, Field(ge=0)] = 0.0  # radius in normalised input
    #                            units (the data are standardised: 0.1 ~ a tenth of a std); 0: off
    adversarial_method: Literal["fgsm", "pgd"] = "fgsm"
    adversarial_steps: Annotated[int, Field(ge=1)] = 7  # pgd: steps of 2.5 * eps / steps
    # -- knowledge distillation from a trained teacher (checkpoint folder, or a finished
    #    experiment whose best checkpoint the validation finds before Ray starts)
    distill_from: Optional[str] = None
    distill_temperature: Positive = 4.0  # softens both models' outputs in the KL term
    distill_alpha: Annotated[float, Field(ge=0, le=1)] = 0.5  # weight of the KL term
    #                            against (1 - alpha) x cross-entropy on the labels
    # -- speed (GPU only; ignored on CPU)
    amp: bool = True  # bf16 autocast
    channels_last: bool = True
    cuda_graphs: bool = True  # the training step replayed from CUDA graphs (cuda_graph.py);
    #                            false for a model that cannot be captured
    seed: int = 0  # weight init and shuffling of this trial

    @model_validator(mode="after")
    def _coherent(self) -> "ClassifierConfig":
        if self.model in IMAGE_MODELS and self.dataset in TABULAR_DATASETS:
            raise ValueError(f"model {self.model} needs image data; {self.dataset} is tabular "
                             "(use model: mlp)")
        if self.cv_folds == 1:
            raise ValueError("cv_folds must be 0 (off) or at least 2")
        if self.pretrained_weights and not self.model.startswith("resnet"):
            raise ValueError("pretrained_weights applies to resnet18/resnet50 only")
        if self.distill_from and self.cv_folds:
            raise ValueError("distill_from cannot be used with cv_folds: one teacher trained "
                             "on one split has seen every other fold's validation samples")
        return self

    def optimizer_config(self) -> OptimizerConfig:
        if isinstance(self.optimizer, OptimizerConfig):
            return self.optimizer
        return OptimizerConfig(name=self.optimizer, momentum=self.momentum,
                               nesterov=self.nesterov)

    @property
    def compressing(self) -> bool:
        """Whether compression is measured (prune_amount or quantize is set at all)."""
        return self.prune_amount is not None or self.quantize is not None

    @property
    def flip_images(self) -> bool:
        """Horizontal flips preserve the class of photos, not of digits or clothes."""
        if self.augment_flip is not None:
            return self.augment_flip
        return self.dataset not in ("digits", "mnist", "fashion_mnist")

    @property
    def base_lr(self) -> float:
        return self.optimizer_config().lr or self.lr

    @classmethod
    def from_trial(cls, config: dict[str, Any]) -> "ClassifierConfig":
        return cls.model_validate(_plain(config))


def _plain(value: Any) -> Any:
    """numpy scalars (as some searchers return) -> Python scalars."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
