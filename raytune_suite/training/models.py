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
    if cfg.model.startswith("resnet"):
        if len(input_shape) != 3:
            raise ValueError(f"model {cfg.model} needs image data, got samples of shape "
                             f"{input_shape}")
        return build_resnet(cfg.model, input_shape, num_classes, cfg.pretrained_weights,
                            cfg.freeze_backbone, cfg.dropout)
    if cfg.model == "cnn":
        if len(input_shape) != 3:
            raise ValueError(f"model cnn needs image data, got samples of shape {input_shape}")
        return CNN(input_shape, num_classes, width=cfg.width, dropout=cfg.dropout)
    hidden = [cfg.hidden] if isinstance(cfg.hidden, int) else list(cfg.hidden)
    return MLP(math.prod(input_shape), hidden, num_classes, cfg.dropout, cfg.activation)


def build_resnet(arch: str, input_shape: tuple[int, int, int], num_classes: int,
                 pretrained_weights: str | None = None, freeze_backbone: bool = False,
                 dropout: float = 0.0) -> nn.Module:
    """torchvision ResNet-18/50 for fine-tuning, adapted to the data.

    - ``pretrained_weights``: a local torchvision ImageNet state dict (never downloaded),
      loaded with ``weights_only=True`` before the head is replaced.
    - Head: a new ``fc`` for ``num_classes`` (after optional dropout).
    - Small inputs (< 64 px, e.g. CIFAR's 32x32): conv1 stride 1 and no max-pool, so the
      feature map is not shrunk to 1x1; the pretrained 7x7 kernel is kept.
    - Other channel counts (grey images): conv1's RGB kernel is spread over the channels.
    - ``freeze_backbone``: only the new head trains.
    """
    import torchvision

    from raytune_suite.errors import CheckpointError, one_line

    factory = {"resnet18": torchvision.models.resnet18,
               "resnet50": torchvision.models.resnet50}[arch]
    model = factory(weights=None)
    if pretrained_weights:
        try:
            state = torch.load(pretrained_weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except FileNotFoundError:
            raise CheckpointError(f"pretrained_weights {pretrained_weights}: no such file") \
                from None
        except Exception as e:  # noqa: BLE001 - any failure means unusable weights
            raise CheckpointError(f"pretrained_weights {pretrained_weights} do not fit "
                                  f"{arch}: {one_line(e)}") from None
    channels, height, width = input_shape
    if channels != 3:
        old = model.conv1
        model.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
        with torch.no_grad():  # spread the RGB kernel evenly over the new channels
            kernel = old.weight.sum(dim=1, keepdim=True) / channels
            model.conv1.weight.copy_(kernel.repeat(1, channels, 1, 1))
    if min(height, width) < 64:
        model.conv1.stride = (1, 1)
        model.maxpool = nn.Identity()
    if freeze_backbone:
        for p in model.parameters():
            p.requires_grad_(False)
    in_features = model.fc.in_features
    model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
    return model
