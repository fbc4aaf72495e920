"""Batched image augmentation on the tensor's own device: no PIL, no per-sample loop.

Every random draw comes from the caller's ``torch.Generator`` (on the same device as the
batch), so a trial that seeds its generator sees the same augmented batches again, and a
resumed trial continues the same stream once the generator's state is restored.
Empty space (padding, rotated-in corners) is filled with zeros, which for normalised data
is the training mean.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, *, generator: torch.Generator, crop_padding: int = 0,
            flip: bool = False, max_rotation_deg: float = 0.0,
            max_translate: float = 0.0) -> torch.Tensor:
    """Randomly crop, flip, rotate and translate every sample of a batch independently.

    Args:
        x: images (N, C, H, W); never modified.
        generator: source of all randomness, on ``x``'s device.
        crop_padding: pad by this many zero pixels per side and crop back to H x W at a
            random offset: the content shifts by up to ``crop_padding`` pixels per axis.
        flip: mirror each sample left-right with probability 0.5.
        max_rotation_deg: rotate each sample by an angle uniform in +-this many degrees.
        max_translate: shift each sample by up to this fraction of its width and height
            (bilinear, unlike the whole-pixel shifts of ``crop_padding``).

    Returns:
        A new tensor of the same shape, dtype and device.
    """
    _check(x, generator, crop_padding, max_rotation_deg, max_translate)
    out = x
    if crop_padding:
        out = _random_crop(out, crop_padding, generator)
    if flip:
        out = _random_flip(out, generator)
    if max_rotation_deg or max_translate:
        out = _random_affine(out, max_rotation_deg, max_translate, generator)
    return x.clone() if out is x else out


def augment_strength(x: torch.Tensor, strength: float, generator: torch.Generator,
                     flip: bool = True) -> torch.Tensor:
    """:func:`augment` with one searchable knob: 0 = none, 1 = the strongest preset.

    ``strength`` s sets crop_padding = round(4 s) pixels, flip on (unless ``flip`` is
    False: a mirrored digit is not the same digit), rotation up to 15 s degrees and
    translation up to 0.1 s of the image size.

    Args:
        x: images (N, C, H, W); never modified.
        strength: in [0, 1]; 0 returns ``x`` itself and draws nothing from ``generator``.
        generator: source of all randomness, on ``x``'s device.
    """
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must satisfy 0 <= strength <= 1, got {strength!r}")
    if strength == 0:
        return x
    return augment(x, generator=generator, crop_padding=round(4 * strength), flip=flip,
                   max_rotation_deg=15 * strength, max_translate=0.1 * strength)


def _check(x: torch.Tensor, generator: torch.Generator, crop_padding: int,
           max_rotation_deg: float, max_translate: float) -> None:
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got shape {tuple(x.shape)}")
    if generator.device.type != x.device.type:
        raise ValueError(f"generator must be on x's device ({x.device}), got {generator.device}")
    if not isinstance(crop_padding, int) or crop_padding < 0:
        raise ValueError(f"crop_padding must be an int >= 0, got {crop_padding!r}")
    if max_rotation_deg < 0:
        raise ValueError(f"max_rotation_deg must be >= 0, got {max_rotation_deg!r}")
    if max_translate < 0:
        raise ValueError(f"max_translate must be >= 0, got {max_translate!r}")
    if (max_rotation_deg or max_translate) and not x.is_floating_point():
        raise ValueError(f"rotation and translation need floating-point images, got {x.dtype}")


def _uniform(n: int, generator: torch.Generator, device: torch.device, *shape: int) -> torch.Tensor:
    """Uniform in [-1, 1), shape (n, *shape)."""
    return torch.rand(n, *shape, generator=generator, device=device) * 2 - 1


def _random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    n, _, height, width = x.shape
    padded = F.pad(x, (padding,) * 4)
    # Offsets 0..2*padding into the padded image: a shift of -padding..padding pixels.
    dy, dx = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=x.device)
    rows = dy[:, None, None] + torch.arange(height, device=x.device)[None, :, None]
    cols = dx[:, None, None] + torch.arange(width, device=x.device)[None, None, :]
    samples = torch.arange(n, device=x.device)[:, None, None]
    # Channels last, so one advanced index over (sample, row, column) picks whole pixels.
    crops = padded.permute(0, 2, 3, 1)[samples, rows, cols]  # (N, H, W, C)
    return crops.permute(0, 3, 1, 2).contiguous()


def _random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _random_affine(x: torch.Tensor, max_rotation_deg: float, max_translate: float,
                   generator: torch.Generator) -> torch.Tensor:
    n, _, height, width = x.shape
    angle = _uniform(n, generator, x.device) * math.radians(max_rotation_deg)
    # affine_grid works in coordinates spanning [-1, 1], i.e. 2 per image width/height.
    shift = _uniform(n, generator, x.device, 2) * (2 * max_translate)
    cos, sin = angle.cos(), angle.sin()
    # The aspect terms make it a rotation in pixels, not in [-1, 1]^2 (same for square images).
    aspect = height / width
    theta = torch.stack([
        torch.stack([cos, -sin * aspect, shift[:, 0]], dim=1),
        torch.stack([sin / aspect, cos, shift[:, 1]], dim=1),
    ], dim=1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
