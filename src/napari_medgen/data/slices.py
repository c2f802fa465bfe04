"""Moving between volumes and 2D slices along any axis."""
from __future__ import annotations

import numpy as np


def evenly_spread(n: int, k: int) -> np.ndarray:
    """At most ``k`` indices of ``range(n)``, evenly spread, the first and the last included."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def take_slices(volume: np.ndarray, axis: int = 0, index=None) -> np.ndarray:
    """Slices of ``volume`` along ``axis`` stacked first: shape (n, H, W). A 2D image gives (1, H, W)."""
    vol = np.asarray(volume)
    if vol.ndim == 2:
        return vol[None]
    moved = np.moveaxis(vol, axis, 0)
    return moved if index is None else moved[np.asarray(index)]


def put_slices(stack: np.ndarray, axis: int = 0, ndim: int = 3) -> np.ndarray:
    """Inverse of :func:`take_slices` for a full stack: (n, ..., H, W) back to volume order.

    Extra leading dims (e.g. channels) are kept first: (n, C, H, W) becomes (C, *volume_shape).
    """
    st = np.asarray(stack)
    if ndim == 2:
        return st[0]
    extra = st.ndim - 3
    st = np.moveaxis(st, 0, extra) if extra else st  # (C, n, H, W)
    return np.moveaxis(st, extra, extra + axis)


def informative_slices(volume: np.ndarray, axis: int = 0, min_fraction: float = 0.05,
                       mask: np.ndarray | None = None) -> np.ndarray:
    """Indices of slices whose foreground (``mask``, else above the image's 10th percentile) covers
    at least ``min_fraction`` of the slice: skips empty slices at the volume's ends."""
    vol = np.asarray(volume, dtype=np.float32)
    fg = np.asarray(mask, bool) if mask is not None else vol > np.percentile(vol, 10)
    stack = take_slices(fg, axis)
    frac = stack.reshape(stack.shape[0], -1).mean(axis=1)
    return np.flatnonzero(frac >= min_fraction)


def mask_box(mask: np.ndarray, axis: int = 0, margin: int = 4) -> tuple[slice, ...]:
    """Index of the in-plane bounding box of ``mask`` over all its slices along ``axis`` (every slice kept),
    widened by ``margin`` pixels: the part of a volume a masked model looks at. The whole array if it is empty."""
    m = np.asarray(mask, bool)
    idx = [slice(None)] * m.ndim
    if not m.any():
        return tuple(idx)
    for ax in (k for k in range(m.ndim) if m.ndim == 2 or k != axis):
        hit = np.flatnonzero(m.any(axis=tuple(k for k in range(m.ndim) if k != ax)))
        idx[ax] = slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + margin + 1, m.shape[ax]))
    return tuple(idx)


def fit_to_size(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop or zero-pad the last two axes of ``stack`` to ``size``."""
    out = np.zeros(stack.shape[:-2] + tuple(size), dtype=stack.dtype)
    src, dst = [], []
    for have, want in zip(stack.shape[-2:], size):
        if have >= want:
            s = (have - want) // 2
            src.append(slice(s, s + want)); dst.append(slice(0, want))
        else:
            d = (want - have) // 2
            src.append(slice(0, have)); dst.append(slice(d, d + have))
    out[(..., *dst)] = stack[(..., *src)]
    return out
