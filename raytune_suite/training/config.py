"""Typed config of the built-in ``classifier`` trainable (no torch import here).

Every field is a hyperparameter a practitioner tunes by hand; any of them may be
searched in the experiment file. Unknown keys are rejected.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimizerConfig(_Cfg):
    """``optimizer: adam`` or, in a conditional space, ``{name: sgd, momentum: 0.9}``."""

    name: Literal["sgd", "adam", "adamw"] = "adam"
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    lr: Optional[Annotated[float, Field(gt=0)]] = None  # overrides the top-level lr


class ClassifierConfig(_Cfg):
    dataset: Literal["digits", "iris", "wine", "breast_cancer"] = "digits"
    data_seed: int = 0  # fixes the train/val/test split: every trial sees the same one
    val_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.2
    test_fraction: Annotated[float, Field(ge=0, lt=0.5)] = 0.2
    model: Literal["mlp", "cnn"] = "mlp"
    hidden: Union[int, list[int]] = 64  # mlp hidden sizes
    activation: Literal["relu", "tanh", "gelu"] = "relu"
    width: Annotated[float, Field(gt=0)] = 0.25  # cnn width multiplier on 64-128-512
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    optimizer: Union[Literal["sgd", "adam", "adamw"], OptimizerConfig] = "adam"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # sgd
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    batch_size: Annotated[int, Field(gt=0)] = 64
    epochs: Annotated[int, Field(gt=0)] = 10
    seed: int = 0  # weight init and shuffling of this trial

    def optimizer_config(self) -> OptimizerConfig:
        if isinstance(self.optimizer, OptimizerConfig):
            return self.optimizer
        return OptimizerConfig(name=self.optimizer, momentum=self.momentum)

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
