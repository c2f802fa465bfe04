"""Augmentation for learning from a few painted slices (MONAI dictionary transforms).

Flips, a small rotation/scale, a mild elastic deformation and intensity jitter
(scale, shift, gamma, noise); with neighbouring slices as channels (2.5D), the slice
order is reversed at random (a flip across the slice axis).  Labels are resampled nearest-neighbour and shifted
by one while transformed, so pixels that come from outside the patch become
``IGNORE`` (unknown), never background.
"""
from __future__ import annotations

import numpy as np
from monai import transforms as mt

from .annotations import IGNORE


def few_shot_transform(seed: int | None = None) -> mt.Compose:
    """The random transform applied to each ``{"image": (1,h,w), "label": (1,h,w)}`` sample."""
    keys = ("image", "label")
    geo = {"mode": ("bilinear", "nearest"), "padding_mode": ("border", "zeros")}
    t = mt.Compose([
        mt.RandFlipd(keys, prob=0.5, spatial_axis=0),
        mt.RandFlipd(keys, prob=0.5, spatial_axis=1),
        mt.RandAffined(keys, prob=0.5, rotate_range=0.26, scale_range=0.15, **geo),
        mt.Rand2DElasticd(keys, prob=0.2, spacing=(24, 24), magnitude_range=(0.5, 1.5), **geo),
        mt.RandScaleIntensityd("image", factors=0.15, prob=0.5),
        mt.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        mt.RandAdjustContrastd("image", gamma=(0.75, 1.4), prob=0.3),
        mt.RandGaussianNoised("image", std=0.03, prob=0.2),
    ])
    t.set_random_state(seed=seed)
    return t


def augment_batch(transform: mt.Compose, images: np.ndarray, targets: np.ndarray,
                  rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``transform`` to each sample of a (B, C, h, w) batch (C: the slice and its neighbours);
    returns new arrays."""
    xs, ys = [], []
    for x, y in zip(images, targets):
        if rng is not None and len(x) > 1 and rng.random() < 0.5:
            x = x[::-1].copy()
        out = transform({"image": x, "label": (y - IGNORE).astype(np.float32)})
        xs.append(np.asarray(out["image"], np.float32))
        ys.append(np.rint(np.asarray(out["label"])).astype(np.int64) + IGNORE)
    return np.stack(xs), np.stack(ys)
