"""Intensity normalisation, stored in every model config and applied identically at inference.

Specs are small dicts so they serialise into a checkpoint's JSON config:

- ``{"kind": "percentile", "lower": 0.5, "upper": 99.5}``: clip to those
  percentiles of the image (MRI, X-ray: arbitrary units differ per scanner) and scale to [0, 1].
- ``{"kind": "window", "low": -1000, "high": 1000}``: a fixed window, e.g. CT in Hounsfield units.
- ``{"kind": "zscore"}``: zero mean and unit variance over the foreground (nnU-Net's MRI choice).
- ``{"kind": "auto"}``: resolved once per image by :func:`resolve` from its modality.
"""
from __future__ import annotations

import numpy as np
from ..errors import UserError

CT_WINDOW = {"kind": "window", "low": -1000.0, "high": 1000.0}
MRI_DEFAULT = {"kind": "percentile", "lower": 0.5, "upper": 99.5}


def resolve(spec: dict | None, image: np.ndarray | None = None, modality: str = "") -> dict:
    """Turn ``auto`` (or None) into a concrete spec: a CT window for CT, percentiles otherwise."""
    spec = dict(spec or {"kind": "auto"})
    if spec["kind"] != "auto":
        return spec
    if modality.upper() == "CT" or (image is not None and _looks_like_hounsfield(image)):
        return dict(CT_WINDOW)
    return dict(MRI_DEFAULT)


def normalize(image: np.ndarray, spec: dict | None = None, modality: str = "") -> np.ndarray:
    """Return a float32 copy of ``image`` normalised by ``spec`` (NaN/Inf become the image minimum)."""
    spec = resolve(spec, image, modality)
    img = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(img)
    if not finite.all():
        img = np.where(finite, img, np.min(img[finite]) if finite.any() else 0.0).astype(np.float32)
    if spec["kind"] == "zscore":
        fg = img > img.min()
        vals = img[fg] if fg.any() else img
        return ((img - vals.mean()) / max(float(vals.std()), 1e-6)).astype(np.float32)
    lo, hi = intensity_window(img, spec)
    if hi <= lo:
        return np.zeros_like(img)
    return ((np.clip(img, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def intensity_window(image: np.ndarray, spec: dict) -> tuple[float, float]:
    """The (low, high) intensities a ``window`` or ``percentile`` spec maps to [0, 1] for ``image``."""
    kind = spec["kind"]
    if kind == "window":
        return float(spec["low"]), float(spec["high"])
    if kind == "percentile":
        img = np.asarray(image)
        sample = img.ravel()[:: max(1, img.size // 1_000_000)]
        lo, hi = np.percentile(sample, [spec.get("lower", 0.5), spec.get("upper", 99.5)])
        return float(lo), float(hi)
    raise UserError(f"Unknown normalisation '{kind}'.")


def _looks_like_hounsfield(image: np.ndarray) -> bool:
    sample = np.asarray(image).ravel()[:: max(1, np.asarray(image).size // 200_000)]
    return np.issubdtype(sample.dtype, np.signedinteger) and np.percentile(sample, 1) <= -500
