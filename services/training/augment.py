"""Batch augmentation for grey CT slices in plain torch (no torchvision).

Random affine (scale, rotation, shift, horizontal flip) through one ``grid_sample`` call,
then brightness/contrast/gamma jitter: the UCSD figures come from many scanners and papers,
so intensity jitter matters as much as geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    max_rotation_deg: float = 12.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    max_shift: float = 0.08
    hflip: bool = True
    brightness: float = 0.15
    contrast: float = 0.2
    gamma: float = 0.25


def augment_batch(
    x: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """x: (N, 1, H, W) uint8 or float in [0, 255] -> float in [0, 255], same shape."""
    x = x.float()
    n = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    angle = uniform(-config.max_rotation_deg, config.max_rotation_deg) * math.pi / 180
    scale = uniform(*config.scale_range)
    flip = torch.where(
        torch.rand(n, generator=generator) < (0.5 if config.hflip else 0.0), -1.0, 1.0
    )
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    theta[:, 0, 2] = uniform(-config.max_shift, config.max_shift) * 2
    theta[:, 1, 2] = uniform(-config.max_shift, config.max_shift) * 2
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    unit = (x / 255.0).clamp(0, 1)
    gamma = torch.exp(uniform(-config.gamma, config.gamma)).to(x.device).view(n, 1, 1, 1)
    unit = unit.pow(gamma)
    mean = unit.mean(dim=(1, 2, 3), keepdim=True)
    contrast = (1 + uniform(-config.contrast, config.contrast)).to(x.device).view(n, 1, 1, 1)
    brightness = uniform(-config.brightness, config.brightness).to(x.device).view(n, 1, 1, 1)
    unit = (unit - mean) * contrast + mean + brightness
    return (unit.clamp(0, 1) * 255.0).contiguous()
