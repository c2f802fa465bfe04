"""Training patches sampled around the pixels the user painted.

Every patch is centred (up to a random offset) on a known pixel, so no patch is
all unknown; with probability ``class_balance`` the pixel is drawn from a class
chosen uniformly first, so small structures are seen as often as big ones.
"""
from __future__ import annotations

import numpy as np

from .annotations import IGNORE
from ..errors import UserError


def patch_size_for(shape: tuple, max_size: int = 128, multiple: int = 16) -> tuple:
    """A 2D patch no larger than ``max_size`` that covers small slices, rounded up to ``multiple``."""
    return tuple(int(min(max_size, -(-int(s) // multiple) * multiple)) for s in shape)


class PatchSampler:
    """Random (image, target) patches from (n, H, W) slices and targets."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, patch_size: tuple,
                 class_balance: float = 0.7, seed: int | None = None):
        self.patch = tuple(int(p) for p in patch_size)
        pad = [(0, 0)] + [(0, max(0, p - s)) for p, s in zip(self.patch, images.shape[1:])]
        fill = float(np.min(images)) if images.size else 0.0
        self.images = np.pad(np.asarray(images, np.float32), pad, constant_values=fill)
        self.targets = np.pad(np.asarray(targets, np.int64), pad, constant_values=IGNORE)
        flat = self.targets.ravel()
        self.known = np.flatnonzero(flat != IGNORE)
        if self.known.size == 0:
            raise UserError("There are no painted pixels to sample training patches from.")
        self.by_class = {int(c): np.flatnonzero(flat == c) for c in np.unique(flat[self.known])}
        self.class_balance = class_balance
        self.rng = np.random.default_rng(seed)

    def _centre(self) -> tuple:
        if self.rng.random() < self.class_balance:
            pool = self.by_class[self.rng.choice(list(self.by_class))]
        else:
            pool = self.known
        return np.unravel_index(pool[self.rng.integers(pool.size)], self.targets.shape)

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` patches: images (B, 1, h, w) float32 and targets (B, 1, h, w) int64."""
        xs, ys = [], []
        for _ in range(batch_size):
            k, cy, cx = self._centre()
            corner = []
            for c, p, n in zip((cy, cx), self.patch, self.targets.shape[1:]):
                corner.append(int(np.clip(c - self.rng.integers(p), 0, n - p)))
            window = (k, slice(corner[0], corner[0] + self.patch[0]), slice(corner[1], corner[1] + self.patch[1]))
            xs.append(self.images[window])
            ys.append(self.targets[window])
        return np.stack(xs)[:, None], np.stack(ys)[:, None]
