"""Training patches sampled around the voxels the user painted, with neighbouring slices as context.

Every patch is centred (up to a random offset) on a known pixel, so no patch is all
unknown.  Centres are drawn from a class chosen uniformly first (small structures are
seen as often as big ones), from the boundary between classes (where the few-shot
errors are), or from any known pixel (far background, so the network learns where the
structure is *not*); the first two prefer the region of interest when one is given.
The input of a patch is the slice and ``context`` neighbours on each side (2.5D).
"""
from __future__ import annotations

import numpy as np

from .annotations import IGNORE
from ..errors import UserError


def patch_size_for(shape: tuple, max_size: int = 128, multiple: int = 16) -> tuple:
    """A 2D patch no larger than ``max_size`` that covers small slices, rounded up to ``multiple``."""
    return tuple(int(min(max_size, -(-int(s) // multiple) * multiple)) for s in shape)


def context_stack(volume: np.ndarray, k: int, context: int) -> np.ndarray:
    """Slice ``k`` of a (N, H, W) volume with ``context`` neighbours on each side: (2c+1, H, W), edges repeated."""
    idx = np.clip(np.arange(k - context, k + context + 1), 0, len(volume) - 1)
    return volume[idx]


def boundary_pixels(targets: np.ndarray) -> np.ndarray:
    """Known pixels of (n, H, W) targets with a known in-plane neighbour of another class."""
    t = np.asarray(targets)
    known = t != IGNORE
    edge = np.zeros(t.shape, bool)
    for axis in (1, 2):
        for shift in (1, -1):
            other = np.roll(t, shift, axis)
            edge |= known & (other != IGNORE) & (other != t)
    return edge


class PaintedPatchSampler:
    """Random (image, target) patches from a (N, H, W) volume and targets on some of its slices."""

    def __init__(self, volume: np.ndarray, targets: np.ndarray, indices, patch_size: tuple, *, context: int = 0,
                 roi: tuple | None = None, class_share: float = 0.5, boundary_share: float = 0.25,
                 seed: int | None = None):
        self.patch = tuple(int(p) for p in patch_size)
        pad = [(0, 0)] + [(0, max(0, p - s)) for p, s in zip(self.patch, volume.shape[1:])]
        fill = float(np.min(volume)) if volume.size else 0.0
        self.volume = np.pad(np.asarray(volume, np.float32), pad, constant_values=fill) if any(
            p[1] for p in pad) else np.asarray(volume, np.float32)
        self.targets = np.pad(np.asarray(targets, np.int32), pad, constant_values=IGNORE)
        self.indices = np.asarray(indices, int)
        self.context = int(context)
        flat = self.targets.ravel()
        self.known = np.flatnonzero(flat != IGNORE)
        if self.known.size == 0:
            raise UserError("There are no painted pixels to sample training patches from.")
        inside = self._inside(roi)
        self.by_class = {}
        for c in np.unique(flat[self.known]):
            pool = np.flatnonzero((flat == c) & inside)
            self.by_class[int(c)] = pool if pool.size else np.flatnonzero(flat == c)
        edge = np.flatnonzero(boundary_pixels(self.targets).ravel() & inside)
        self.edge = edge if edge.size else self.known
        self.shares = (class_share, class_share + boundary_share)
        self.rng = np.random.default_rng(seed)

    def _inside(self, roi) -> np.ndarray:
        """Flat mask of the in-plane region of interest ((y0, y1, x0, x1), None: everywhere)."""
        mask = np.zeros(self.targets.shape[1:], bool)
        if roi is None:
            mask[:] = True
        else:
            mask[roi[0]:roi[1], roi[2]:roi[3]] = True
        return np.broadcast_to(mask, self.targets.shape).ravel()

    def _centre(self) -> tuple:
        r = self.rng.random()
        if r < self.shares[0]:
            pool = self.by_class[list(self.by_class)[self.rng.integers(len(self.by_class))]]
        elif r < self.shares[1]:
            pool = self.edge
        else:
            pool = self.known
        return np.unravel_index(pool[self.rng.integers(pool.size)], self.targets.shape)

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` patches: images (B, 2c+1, h, w) float32 and targets (B, 1, h, w) int64."""
        xs, ys = [], []
        for _ in range(batch_size):
            i, cy, cx = self._centre()
            corner = [int(np.clip(c - self.rng.integers(p), 0, n - p))
                      for c, p, n in zip((cy, cx), self.patch, self.targets.shape[1:])]
            ys_, xs_ = slice(corner[0], corner[0] + self.patch[0]), slice(corner[1], corner[1] + self.patch[1])
            xs.append(context_stack(self.volume, self.indices[i], self.context)[:, ys_, xs_])
            ys.append(self.targets[i, ys_, xs_])
        return np.stack(xs), np.stack(ys)[:, None].astype(np.int64)


def roi_box(mask: np.ndarray, margin) -> tuple:
    """Bounding box ((lo, hi) per axis) of ``mask`` grown by ``margin`` voxels per axis, inside the array."""
    box = []
    for axis in range(mask.ndim):  # one projection per axis: no list of every voxel's coordinates
        hit = np.flatnonzero(mask.any(axis=tuple(i for i in range(mask.ndim) if i != axis)))
        if not hit.size:
            raise ValueError("roi_box of an empty mask")
        box.append((hit[0], hit[-1] + 1))
    return grown(tuple(box), margin, mask.shape)


def grown(box: tuple, margin, shape) -> tuple:
    """``box`` ((lo, hi) per axis) grown by ``margin`` voxels per axis, inside an array of ``shape``."""
    margin = np.broadcast_to(np.asarray(margin, int), (len(box),))
    return tuple((int(max(0, lo - m)), int(min(n, hi + m))) for (lo, hi), m, n in zip(box, margin, shape))

