"""Adversarial examples on normalised inputs: FGSM and PGD in an L-infinity ball.

``eps`` is in the units of the model's inputs, which the data module standardises (per
channel for images, per feature for tables): ``eps = 0.1`` moves each value by at most a
tenth of its standard deviation. Perturbed inputs are not clipped to a pixel range: after
standardisation the valid range differs per channel and data set, and the budget is what
the ball bounds.

Training (:meth:`Trainer.train_epoch`) perturbs the second half of every shuffled batch and
keeps the first half clean: Goodfellow et al.'s (2015) objective ``0.5 * clean loss + 0.5 *
adversarial loss``, which keeps clean accuracy that training on perturbed inputs alone
(Madry et al., 2018) gives up, at the same number of optimizer steps and samples per step
as without the attack, for the price of attacking half a batch.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

Forward = Callable[[torch.Tensor], torch.Tensor]  # inputs -> logits


def _input_gradient(forward: Forward, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(cross-entropy)/d(inputs), without touching any parameter's ``.grad``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = nn.functional.cross_entropy(forward(x).float(), y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(forward: Forward, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method: one step of size ``eps`` up the loss's sign gradient."""
    return (x + eps * _input_gradient(forward, x, y).sign()).detach()


def pgd(forward: Forward, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
        generator: Optional[torch.Generator] = None,
        step_size: Optional[float] = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al.): a uniform random start in the ball, then
    ``steps`` sign-gradient steps of ``step_size`` (default ``2.5 * eps / steps``), each
    projected back into the ball."""
    step = 2.5 * eps / steps if step_size is None else step_size
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    delta = (2 * noise - 1) * eps
    for _ in range(steps):
        grad = _input_gradient(forward, x + delta, y)
        delta = (delta + step * grad.sign()).clamp(-eps, eps)
    return (x + delta).detach()


def perturb(forward: Forward, x: torch.Tensor, y: torch.Tensor, method: str, eps: float,
            steps: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Adversarial versions of ``x`` by ``method`` (``fgsm`` or ``pgd``)."""
    if method == "fgsm":
        return fgsm(forward, x, y, eps)
    if method == "pgd":
        return pgd(forward, x, y, eps, steps, generator)
    raise ValueError(f"method must be fgsm or pgd, got {method!r}")


def robust_accuracy(forward: Forward, x: torch.Tensor, y: torch.Tensor, method: str,
                    eps: float, steps: int = 1, seed: int = 0,
                    batch_size: int = 1024) -> float:
    """Accuracy on adversarial versions of (x, y), each sample attacked on its own label.

    PGD's random starts come from a generator seeded with ``seed`` afresh at each call:
    the same weights always get the same score, and training's RNG is left alone.
    The caller puts the model in eval mode.
    """
    if len(y) == 0:
        return float("nan")
    generator = torch.Generator(device=x.device).manual_seed(seed)
    correct = 0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        adv = perturb(forward, xb, yb, method, eps, steps, generator)
        with torch.no_grad():
            correct += int((forward(adv).argmax(1) == yb).sum())
    return correct / len(y)
