"""Batch augmentation with torch ops (no torchvision): flip, small rotation/scale, colour jitter.

Applied to the training split only. Input and output: [N, 3, H, W] floats in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = images.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.rand(n, *shape, generator=generator) * (high - low) + low

    flip = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip.view(n, 1, 1, 1), images.flip(3), images)
    angle = uniform(-10, 10) * math.pi / 180
    scale = uniform(0.9, 1.1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, padding_mode="reflection", align_corners=False)
    brightness = uniform(0.8, 1.2, 1, 1, 1)
    contrast = uniform(0.8, 1.2, 1, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * contrast + mean * brightness
    saturation = uniform(0.7, 1.3, 1, 1, 1)
    grey = images.mean(dim=1, keepdim=True)
    images = grey + (images - grey) * saturation
    return images.clamp(0, 1)
