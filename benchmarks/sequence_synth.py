"""Synthetic time series on real anatomy (axial slices of the packaged MNI152 T1), for bench_sequence.py.

- :func:`kinetics_set`: a lesion inserted into a real slice enhances after contrast
  and then rises on (persistent), levels off (plateau) or washes out, as in breast
  DCE-MRI (late change > +10 %, within +-7 %, < -10 % of the peak; the 7-10 % gap is
  left out like a reader's grey zone); the brain enhances a little too; Rician noise,
  one-pixel motion, 8-12 frames over the same 6 minutes.
- :func:`cine_set`: a dark blood pool with a bright wall (echo-like contrast) pasted
  over a real slice contracts and relaxes over 1-1.5 cardiac cycles (cycle 12-20
  frames, random start phase, 1-1.5 cycles + 2 frames); ejection fraction from the volume of an
  ellipsoid of revolution (long axis a, short axis b: V ~ a b^2); speckle
  (multiplicative Rayleigh) plus Gaussian noise, a little translation.

Slices for training and for testing come from different z ranges of the brain.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_medgen.sample_data import brain_t1, brain_tissue

TRAIN_Z, TEST_Z = (28, 52), (56, 72)
KINETIC_CLASSES = ("persistent", "plateau", "washout")


def _slices(zr):
    t1 = brain_t1().data.astype(np.float32)
    brain = brain_tissue().data > 0
    return t1[zr[0]:zr[1]], brain[zr[0]:zr[1]]


def _ellipse(shape, cy, cx, ry, rx, angle=0.0):
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    u, v = (yy - cy) * c + (xx - cx) * s, -(yy - cy) * s + (xx - cx) * c
    return (u / ry) ** 2 + (v / rx) ** 2


def _shift(img, rng, px=1.0):
    return ndi.shift(img, rng.uniform(-px, px, 2), order=1, mode="nearest")


def kinetics_set(n: int, split: str = "train", seed: int = 0, crop: int = 64):
    """(sequences (t, crop, crop), labels, lesion masks) of contrast-enhancement kinetics."""
    rng = np.random.default_rng(seed)
    t1, brain = _slices(TRAIN_Z if split == "train" else TEST_Z)
    seqs, labels, masks = [], [], []
    for i in range(n):
        z = rng.integers(len(t1))
        ys, xs = np.nonzero(ndi.binary_erosion(brain[z], iterations=10))
        k = rng.integers(len(ys))
        cy, cx = ys[k], xs[k]
        y0 = int(np.clip(cy - crop // 2, 0, t1.shape[1] - crop))
        x0 = int(np.clip(cx - crop // 2, 0, t1.shape[2] - crop))
        img = t1[z, y0:y0 + crop, x0:x0 + crop]
        tissue = brain[z, y0:y0 + crop, x0:x0 + crop]
        ly, lx = cy - y0, cx - x0
        ry, rx = rng.uniform(3, 7, 2)
        d = _ellipse(img.shape, ly, lx, ry, rx, rng.uniform(0, np.pi))
        lesion = np.clip(1.5 - d, 0, 1) * (1 + 0.3 * ndi.gaussian_filter(rng.normal(size=img.shape), 1.5))
        label = i % 3
        late = {0: rng.uniform(0.12, 0.35), 1: rng.uniform(-0.07, 0.07), 2: rng.uniform(-0.35, -0.12)}[label]
        nt = int(rng.integers(8, 13))
        times = np.linspace(0, 6.0, nt)  # minutes
        tp = rng.uniform(1.2, 2.2)  # time of the early peak
        peak = rng.uniform(0.6, 2.0)
        early = peak * (1 - np.exp(-3 * times / tp)) / (1 - np.exp(-3))
        curve = np.where(times <= tp, early * (times > 0.05),
                         peak * (1 + late * (times - tp) / (6.0 - tp)))
        bg = rng.uniform(0.03, 0.15) * np.clip(times / 3, 0, 1)
        base = img.mean() * rng.uniform(0.8, 1.2)
        sigma = rng.uniform(0.03, 0.08) * base
        frames = []
        for c, b in zip(curve, bg):
            f = img * (1 + b * tissue) + base * c * lesion
            f = _shift(f, rng)
            f = np.hypot(f + rng.normal(0, sigma, f.shape), rng.normal(0, sigma, f.shape))  # Rician
            frames.append(f)
        seqs.append(np.stack(frames).astype(np.float32))
        labels.append(KINETIC_CLASSES[label])
        masks.append(ndi.binary_dilation(d <= 1.0, iterations=2))
    return seqs, labels, masks


def cine_set(n: int, split: str = "train", seed: int = 0, crop: int = 64):
    """(sequences (t, crop, crop), ejection fractions in 0..1) of a contracting blood pool."""
    rng = np.random.default_rng(seed)
    t1, brain = _slices(TRAIN_Z if split == "train" else TEST_Z)
    seqs, efs = [], []
    for _ in range(n):
        z = rng.integers(len(t1))
        y0 = int(rng.integers(0, t1.shape[1] - crop))
        x0 = int(rng.integers(0, t1.shape[2] - crop))
        img = t1[z, y0:y0 + crop, x0:x0 + crop] / 1000.0
        ef = rng.uniform(0.2, 0.75)
        sa = (1 - ef) ** 0.2  # long axis shortens less than the short axes
        sb = np.sqrt((1 - ef) / sa)
        a0, b0 = rng.uniform(12, 18), rng.uniform(7, 11)
        wall = rng.uniform(2.5, 4.0)
        period = rng.uniform(12, 20)
        nt = int(period * rng.uniform(1.0, 1.5)) + 2
        phase = rng.uniform(0, 2 * np.pi)
        cy, cx = crop / 2 + rng.uniform(-4, 4, 2)
        angle = rng.uniform(-0.6, 0.6)
        pool_i, wall_i = rng.uniform(0.05, 0.2), rng.uniform(0.8, 1.2)
        frames, vols = [], []
        for t in range(nt):
            c = 0.5 * (1 - np.cos(2 * np.pi * t / period + phase))  # 0 at end-diastole, 1 at end-systole
            a, b = a0 * (1 - c * (1 - sa)), b0 * (1 - c * (1 - sb))
            vols.append(a * b * b)
            w = wall * (1 + 0.5 * c)
            d_in = _ellipse(img.shape, cy, cx, a, b, angle)
            d_out = _ellipse(img.shape, cy, cx, a + w, b + w, angle)
            pool = np.clip((1 - d_in) * 4 + 0.5, 0, 1)
            myo = np.clip((1 - d_out) * 4 + 0.5, 0, 1) - pool
            f = img * (1 - myo - pool) * 0.6 + wall_i * myo + pool_i * pool
            f = _shift(f, rng, 0.7)
            f = f * rng.rayleigh(0.8, f.shape) + rng.normal(0, 0.03, f.shape)
            frames.append(ndi.gaussian_filter(f, 0.6))
        seqs.append(np.stack(frames).astype(np.float32))
        efs.append(float(1 - min(vols) / max(vols)))  # as sampled: ED and ES frames may fall between frames
    return seqs, efs
