"""Augmentation for learning from a few painted slices, on a whole batch at once (torch).

Flips, a small rotation/scale (one ``affine_grid`` + ``grid_sample`` for the batch), intensity
jitter (scale, shift, gamma, noise); with neighbouring slices as channels (2.5D), the slice
order is reversed at random (a flip across the slice axis).  Labels are resampled
nearest-neighbour and shifted by one while transformed, so pixels that come from outside
the patch become ``IGNORE`` (unknown), never background.  Batched because per-sample
dictionary transforms cost more than the training step itself on small patches.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .annotations import IGNORE


def augment_batch(images, targets, rng: np.random.Generator, *, rotate: float = 0.26, scale: float = 0.15,
                  affine_prob: float = 0.5, intensity: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly transformed copies of a batch: images (B, C, h, w) float32 and targets (B, 1, h, w) int64."""
    x = torch.as_tensor(np.asarray(images, np.float32)).clone()
    y = torch.as_tensor(np.asarray(targets, np.int64)).clone()
    b = len(x)

    def pick(p: float) -> torch.Tensor:
        return torch.as_tensor(rng.random(b) < p)

    for dim in (2, 3):
        m = pick(0.5)
        x[m], y[m] = x[m].flip(dim), y[m].flip(dim)
    if x.shape[1] > 1:
        m = pick(0.5)
        x[m] = x[m].flip(1)
    m = rng.random(b) < affine_prob
    if m.any():
        angle = np.where(m, rng.uniform(-rotate, rotate, b), 0.0)
        zoom = np.where(m, rng.uniform(1 - scale, 1 + scale, b), 1.0)
        cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
        theta = torch.as_tensor(np.stack([np.stack([cos, -sin, np.zeros(b)], 1), np.stack([sin, cos, np.zeros(b)], 1)],
                                         1), dtype=torch.float32)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        shifted = F.grid_sample((y - IGNORE).float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        y = shifted.round().long() + IGNORE
    if intensity:
        shape = (b, 1, 1, 1)
        x = x * torch.as_tensor(np.where(rng.random(b) < 0.5, rng.uniform(0.85, 1.15, b), 1.0),
                                dtype=torch.float32).view(shape)
        x = x + torch.as_tensor(np.where(rng.random(b) < 0.5, rng.uniform(-0.1, 0.1, b), 0.0),
                                dtype=torch.float32).view(shape)
        g = pick(0.3)
        if g.any():
            lo = x[g].amin((1, 2, 3), keepdim=True)
            span = (x[g].amax((1, 2, 3), keepdim=True) - lo).clamp(min=1e-6)
            gamma = torch.as_tensor(np.exp(rng.uniform(math.log(0.75), math.log(1.4), int(g.sum()))),
                                    dtype=torch.float32).view(-1, 1, 1, 1)
            x[g] = ((x[g] - lo) / span).clamp(0, 1) ** gamma * span + lo
        n = pick(0.2)
        if n.any():
            x[n] = x[n] + 0.03 * torch.randn_like(x[n])
    return x.contiguous(), y.contiguous()
