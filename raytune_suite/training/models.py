"""Models: an MLP for tabular data and the CNN practitioners start from."""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], num_classes: int,
                 dropout: float = 0.0, activation: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(nn.Flatten(), *layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """conv 64 -> pool -> conv 128 -> pool -> fc 512 -> dropout -> classes (x ``width``)."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int,
                 width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        c1, c2, fc = (max(1, round(n * width)) for n in (64, 128, 512))
        channels, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = c2 * math.floor(h / 4) * math.floor(w / 4)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, fc), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(fc, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(cfg, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The model a :class:`ClassifierConfig` describes."""
    if cfg.model == "cnn":
        if len(input_shape) != 3:
            raise ValueError(f"model cnn needs image data, got samples of shape {input_shape}")
        return CNN(input_shape, num_classes, width=cfg.width, dropout=cfg.dropout)
    hidden = [cfg.hidden] if isinstance(cfg.hidden, int) else list(cfg.hidden)
    return MLP(math.prod(input_shape), hidden, num_classes, cfg.dropout, cfg.activation)
