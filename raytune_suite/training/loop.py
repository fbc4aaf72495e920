"""One epoch of training and evaluation on in-memory tensors.

Batches are indexed straight from the tensors (no DataLoader): for data that fits in
memory this avoids per-sample Python work and worker processes.
"""

from __future__ import annotations

import torch
from torch import nn


def make_optimizer(cfg, params) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam or AdamW as the config says."""
    opt = cfg.optimizer_config()
    lr = opt.lr or cfg.lr
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=opt.momentum, nesterov=opt.nesterov
                               and opt.momentum > 0, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=cfg.weight_decay)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, batch_size: int, generator: torch.Generator) -> float:
    """One pass over (x, y) in a random order; returns the mean training loss."""
    model.train()
    order = torch.randperm(len(y), generator=generator, device=x.device)
    total, seen = 0.0, 0
    for start in range(0, len(y), batch_size):
        idx = order[start:start + batch_size]
        xb, yb = x[idx], y[idx]
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(yb)
        seen += len(yb)
    return total / max(seen, 1)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        logits = model(xb)
        loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    n = max(len(y), 1)
    return loss_sum / n, correct / n
