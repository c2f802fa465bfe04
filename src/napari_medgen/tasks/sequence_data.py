"""Image time series as network input: checks, one intensity window per sequence, region crop, resize.

A sequence is ``(t, y, x)`` or ``(t, z, y, x)``.  Intensities are scaled with one
window for the whole sequence (never per frame), so enhancement and washout stay
visible to the model.  A region (a mask of one frame's shape, or of the whole
sequence's) restricts the model's view to the region's bounding box and the
per-frame signal to the region's mean intensity.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..io.read import opened

MIN_FRAMES = 2
REGION_MARGIN = 0.25  # of the region's extent, on each side


class SequenceInputError(UserError):
    """A sequence, target or region that cannot be used."""


def check_sequence(seq, name: str = "the sequence", spatial_dims: Optional[int] = None) -> np.ndarray:
    """The sequence as a float32 array (t, y, x) or (t, z, y, x); one sentence when it cannot be one."""
    seq = opened(seq)
    arr = np.asarray(getattr(seq, "data", seq))
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise SequenceInputError(f"{name} is not a numeric array (got {arr.dtype}).")
    if arr.ndim not in (3, 4):
        raise SequenceInputError(f"{name} has shape {arr.shape}; a time series is (t, y, x) or (t, z, y, x).")
    if spatial_dims is not None and arr.ndim - 1 != spatial_dims:
        raise SequenceInputError(f"{name} has {arr.ndim - 1}D frames but the model was trained on "
                                 f"{spatial_dims}D frames.")
    if arr.shape[0] < MIN_FRAMES:
        raise SequenceInputError(f"{name} has {arr.shape[0]} frame; a time series needs at least {MIN_FRAMES}.")
    if min(arr.shape[1:]) < 4:
        raise SequenceInputError(f"{name} has frames of shape {arr.shape[1:]}; each side needs at least 4 pixels.")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise SequenceInputError(f"{name} contains NaN or infinite values.")
    return arr


def check_region(region, seq: np.ndarray, name: str = "the region") -> Optional[np.ndarray]:
    """A boolean mask of one frame's shape (a per-frame mask is united over time); None stays None."""
    if region is None:
        return None
    region = opened(region)
    mask = np.asarray(getattr(region, "data", region)) != 0
    if mask.shape == seq.shape:
        mask = mask.any(0)
    if mask.shape != seq.shape[1:]:
        raise SequenceInputError(f"{name} has shape {mask.shape} but the frames are {seq.shape[1:]}.")
    if not mask.any():
        raise SequenceInputError(f"{name} is empty; draw the region or leave it out.")
    return mask


def window(seq: np.ndarray, region: Optional[np.ndarray] = None) -> tuple[float, float]:
    """One intensity window (1st, 99.5th percentile) for the whole sequence, inside the region's box if any."""
    sample = seq[(slice(None),) + _box(region, seq.shape[1:])] if region is not None else seq
    sample = sample.ravel()[:: max(1, sample.size // 500_000)]
    lo, hi = np.percentile(sample, [1.0, 99.5])
    return float(lo), float(max(hi - lo, 1e-6))


def _box(region: np.ndarray, shape) -> tuple:
    """Slices of the region's bounding box with a margin, inside ``shape``."""
    idx = np.nonzero(region)
    out = []
    for ax, n in zip(idx, shape):
        lo, hi = int(ax.min()), int(ax.max()) + 1
        m = max(2, int(round(REGION_MARGIN * (hi - lo))))
        out.append(slice(max(0, lo - m), min(n, hi + m)))
    return tuple(out)


def prepare(seq, size: Sequence[int], region=None, name: str = "the sequence") -> np.ndarray:
    """Network input (t, *size): the region's box (or whole frame), windowed, resized with area averaging."""
    arr = check_sequence(seq, name, len(size))
    mask = check_region(region, arr, f"the region of {name}")
    if mask is not None:
        arr = arr[(slice(None),) + _box(mask, arr.shape[1:])]
    lo, scale = window(arr)
    x = torch.from_numpy(np.ascontiguousarray((arr - lo) / scale))[:, None]
    mode = "area" if all(s >= t for s, t in zip(arr.shape[1:], size)) else ("bilinear" if len(size) == 2
                                                                            else "trilinear")
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(x, size=tuple(size), mode=mode, **kw)[:, 0].numpy()


def signal(seq, region=None) -> np.ndarray:
    """Mean intensity per frame, inside the region when given (the curve radiologists read)."""
    arr = check_sequence(seq)
    mask = check_region(region, arr)
    if mask is None:
        return arr.reshape(len(arr), -1).mean(1)
    return arr[:, mask].mean(1)


def default_size(spatial_dims: int) -> list:
    return [64, 64] if spatial_dims == 2 else [32, 32, 32]


def encode_targets(targets: Sequence, kind: str, n: int) -> tuple[np.ndarray, list, Optional[list]]:
    """(encoded targets, class names, (offset, scale)) for ``kind`` "classification" or "regression"."""
    if kind not in ("classification", "regression"):
        raise SequenceInputError(f"Unknown task '{kind}'; use 'classification' or 'regression'.")
    targets = list(targets)
    if len(targets) != n:
        raise SequenceInputError(f"Got {len(targets)} targets for {n} sequences; give one target per sequence.")
    if kind == "classification":
        classes = sorted({str(t) for t in targets})
        if len(classes) < 2:
            raise SequenceInputError("All targets are the same class; classification needs at least two classes.")
        return np.array([classes.index(str(t)) for t in targets], np.int64), classes, None
    try:
        y = np.asarray(targets, np.float64)
    except (TypeError, ValueError):
        raise SequenceInputError("Regression targets must be numbers (one per sequence).") from None
    if y.ndim != 1 or not np.isfinite(y).all():
        raise SequenceInputError("Regression targets must be finite numbers, one per sequence.")
    offset, scale = float(y.mean()), float(y.std() or 1.0)
    return ((y - offset) / scale).astype(np.float32), [], [offset, scale]


def pad_batch(frames: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (t_i, *S) arrays to (B, T, *S) with zeros; returns the batch and the lengths."""
    lengths = torch.tensor([len(f) for f in frames])
    out = torch.zeros((len(frames), int(lengths.max())) + frames[0].shape[1:])
    for i, f in enumerate(frames):
        out[i, :len(f)] = torch.as_tensor(f)
    return out, lengths
