"""Training-time augmentation of uint8 cache batches: a seeded random resized crop and flip."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(
    images: torch.Tensor,
    generator: torch.Generator,
    crop_scale=(0.8, 1.0),
    horizontal_flip: bool = True,
    ratio=(3 / 4, 4 / 3),
) -> torch.Tensor:
    """Random resized crop + horizontal flip of a uint8 (B, H, W, 3) batch -> float (B, 3, H, W) in [0, 1].

    Per image: area fraction ~ U(crop_scale), aspect ratio log-uniform in ``ratio``, a uniform
    position inside the image, a flip with probability 1/2; then one bilinear resample back to (H, W).
    The parameters come from ``generator`` (on CPU, 4 numbers per image whatever the device), so a
    seed fixes them.
    """
    b, h, w, _ = images.shape
    u = torch.rand(b, 4, generator=generator, dtype=torch.float64)
    scale = crop_scale[0] + (crop_scale[1] - crop_scale[0]) * u[:, 0]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    crop_w = torch.sqrt(scale * aspect * h / w).clamp(max=1.0)  # fraction of the width
    crop_h = torch.sqrt(scale / aspect * w / h).clamp(max=1.0)
    cx = (u[:, 2] * (1 - crop_w) + crop_w / 2) * 2 - 1  # crop centre in [-1, 1]
    cy = (u[:, 3] * (1 - crop_h) + crop_h / 2) * 2 - 1
    sign = torch.ones(b, dtype=torch.float64)
    if horizontal_flip:
        sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0).double()
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = crop_w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = crop_h
    theta[:, 1, 2] = cy
    x = images.permute(0, 3, 1, 2).float() / 255.0
    grid = F.affine_grid(theta.to(x.device, torch.float32), [b, 3, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
