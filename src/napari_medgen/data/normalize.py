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
PADDING_BELOW = -1100.0  # HU: -1024 air minus a margin; scanners pad outside the scan circle with -2000/-3024/-32768
AIR_HU = -1000.0
MRI_DEFAULT = {"kind": "percentile", "lower": 0.5, "upper": 99.5}


def resolve(spec: dict | None, image: np.ndarray | None = None, modality: str = "") -> dict:
    """Turn ``auto`` (or None) into a concrete spec: a CT window for CT (named by ``modality`` or
    recognised by its Hounsfield value range, whatever the dtype), percentiles otherwise."""
    spec = dict(spec or {"kind": "auto"})
    if spec["kind"] != "auto":
        return spec
    if apparent_modality(image, modality) == "CT":
        return dict(CT_WINDOW)
    return dict(MRI_DEFAULT)


def normalize(image: np.ndarray, spec: dict | None = None, modality: str = "", clip: bool = True,
              box: tuple | None = None) -> np.ndarray:
    """Return a float32 copy of ``image`` normalised by ``spec`` (NaN/Inf become the image minimum);
    ``clip=False`` keeps what lies beyond a window or percentile range (below 0, above 1).  ``box`` (a tuple
    of slices): only that part, computed alone (its statistics still from the whole image)."""
    spec = resolve(spec, image, modality)
    arr = np.asarray(image)
    if box is not None and (spec["kind"] == "zscore" or (arr.dtype.kind == "f" and not np.isfinite(arr).all())):
        return normalize(arr, spec, clip=clip)[box]  # z-scores and the NaN fill take the whole image
    img = np.array(arr if box is None else arr[box], dtype=np.float32)  # our own copy: changed in place below
    finite = np.isfinite(img)
    if not finite.all():
        img = np.where(finite, img, np.min(img[finite]) if finite.any() else 0.0).astype(np.float32)
    whole = img if box is None else arr
    if spec["kind"] == "window" and float(spec["low"]) > PADDING_BELOW:
        pad = img < PADDING_BELOW
        if pad.any() and looks_like_hounsfield(whole):
            img = np.where(pad, np.float32(AIR_HU), img)  # a CT's outside-the-scan padding is air
    if spec["kind"] == "zscore":
        fg = img > img.min()
        vals = img[fg] if fg.any() else img
        return ((img - vals.mean()) / max(float(vals.std()), 1e-6)).astype(np.float32)
    lo, hi = intensity_window(whole, spec)
    if hi <= lo:
        return np.zeros_like(img)
    if clip:
        np.clip(img, lo, hi, out=img)
    img -= lo
    img /= hi - lo
    return img


def intensity_window(image: np.ndarray, spec: dict) -> tuple[float, float]:
    """The (low, high) intensities a ``window`` or ``percentile`` spec maps to [0, 1] for ``image``."""
    kind = spec["kind"]
    if kind == "window":
        return float(spec["low"]), float(spec["high"])
    if kind == "percentile":
        img = np.asarray(image)
        sample = img.ravel()[:: max(1, img.size // 1_000_000)].astype(np.float32)  # the same for any dtype
        if looks_like_hounsfield(sample):
            sample = sample[sample >= PADDING_BELOW]  # a CT's outside-the-scan padding is no intensity of its own
        lo, hi = np.percentile(sample, [spec.get("lower", 0.5), spec.get("upper", 99.5)])
        return float(lo), float(hi)
    raise UserError(f"Unknown normalisation '{kind}'.")


def window_spec(low: float, high: float) -> dict:
    """A fixed ``window`` spec from LOW HIGH a user typed; one sentence when they are reversed."""
    if not float(high) > float(low):
        raise UserError(f"The window needs LOW below HIGH (got {low:g} {high:g}).")
    return {"kind": "window", "low": float(low), "high": float(high)}


def structure_window(image: np.ndarray, mask: np.ndarray, ring: int = 5, min_width: float = 100.0) -> dict:
    """A fixed ``window`` spec that spans a painted structure (``mask``) and its surroundings (a ring of
    ``ring`` voxels), widened by a quarter on each side: a CT soft-tissue lesion gets a soft-tissue
    window instead of -1000..1000 HU, where its contrast would be a few hundredths."""
    from scipy import ndimage

    img = np.asarray(image)
    inside = np.asarray(mask, bool)
    around = ndimage.binary_dilation(inside, iterations=ring) & ~inside
    values = [img[m] for m in (inside, around) if m.any()]
    lo = min(float(np.percentile(v, 2)) for v in values)
    hi = max(float(np.percentile(v, 98)) for v in values)
    pad = max(0.25 * (hi - lo), (min_width - (hi - lo)) / 2)
    return {"kind": "window", "low": lo - pad, "high": hi + pad}


def modality_of(image) -> str:
    """The modality an image's metadata names (napari layer or ImageData ``metadata``, DICOM tag 0008|0060), else ""."""
    meta = getattr(image, "metadata", None) or {}
    for key in ("modality", "Modality", "0008|0060"):
        if isinstance(meta.get(key), str) and meta[key].strip():
            return meta[key].strip().upper()
    return ""


def apparent_modality(image, modality: str = "") -> str:
    """The one rule for "which modality is this image" (display window, normalisation, model fit): "CT" when
    named so or when ``image``'s values look like Hounsfield units (:func:`looks_like_hounsfield`), whatever the
    name (a CT exported as "OT" or "SC"), else the named ``modality`` (upper-cased), else ""."""
    named = str(modality or "").upper()
    if named == "CT" or (image is not None and looks_like_hounsfield(image)):
        return "CT"
    return named


def looks_like_hounsfield(image: np.ndarray) -> bool:
    """CT in Hounsfield units, whatever the dtype: air or lung (-1100..-800 HU) in at least 1 % of the
    scan, bone and metal below a few thousand; values below :data:`PADDING_BELOW` (the -2000/-3024/-32768
    a scanner writes outside its scan circle) are left out."""
    arr = np.asarray(image)
    if arr.dtype.kind not in "if" or arr.size == 0:
        return False
    sample = arr.ravel()[:: max(1, arr.size // 200_000)].astype(np.float32)
    sample = sample[np.isfinite(sample) & (sample >= PADDING_BELOW)]
    if sample.size < 100:
        return False
    p1, p99 = np.percentile(sample, [1, 99])
    air = float(np.mean(sample < -800))
    return bool(-1100 <= p1 <= -500 and -200 < p99 < 4000 and air >= 0.01)
