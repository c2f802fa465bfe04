"""Fill the slices between painted slices: shape-based interpolation of signed distances.

Each label's signed distance map (in mm, negative inside) on two consecutive painted slices
is blended linearly along the slice axis; a voxel takes the label whose blended distance is
most negative (Raya & Udupa 1990, the idea behind 3D Slicer's "fill between slices").  A
label present on only one of the two slices tapers to nothing at the other.  Slices painted
along several axes are each interpolated along their own axis; where two axes both fill a
voxel, a structure beats background, then the axis with more painted slices wins.  Nothing is extrapolated beyond the first or
last painted slice; :func:`extrapolate_ends` does that separately (sphere caps), for callers that
want a guess there.  Instant on a CPU (two distance transforms per label and painted slice).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .annotations import painted_planes
from ..io.read import ImageData, opened


def signed_distance(mask: np.ndarray, spacing=None) -> np.ndarray:
    """Signed distance (negative inside, positive outside) to the boundary of a 2D ``mask``."""
    m = np.asarray(mask, bool)
    if not m.any():
        return np.full(m.shape, np.inf, np.float32)
    outside = ndimage.distance_transform_edt(~m, sampling=spacing)
    inside = ndimage.distance_transform_edt(m, sampling=spacing)
    return (outside - inside).astype(np.float32)


def _blend(d0: np.ndarray, d1: np.ndarray, t: float) -> np.ndarray:
    """Blended distance at fraction ``t``; an empty end (inf) shrinks the other shape to nothing there."""
    if np.isinf(d0).all():
        d0 = np.full_like(d1, -float(d1.min()) + 1.0)
    if np.isinf(d1).all():
        d1 = np.full_like(d0, -float(d0.min()) + 1.0)
    return (1 - t) * d0 + t * d1


def interpolate_along(labels: np.ndarray, axis: int, index, spacing=None, check=None) -> tuple[np.ndarray, np.ndarray]:
    """Labels on the slices strictly between consecutive painted slices ``index`` along ``axis`` (background
    is a shape too: every voxel there gets an answer), and the distance of each voxel there to the nearest
    interpolated boundary (mm).  Returns ``(labels, margin)`` of ``labels``' shape; painted slices and
    slices beyond the first/last painted one are left 0 / inf.  ``check()`` (e.g. a job's) is called after each slice."""
    lab = np.moveaxis(np.asarray(labels), axis, 0)
    plane_spacing = None if spacing is None else [float(s) for i, s in enumerate(spacing) if i != axis]
    out = np.zeros(lab.shape, lab.dtype)
    margin = np.full(lab.shape, np.inf, np.float32)
    index = sorted(int(i) for i in index)
    for k0, k1 in zip(index[:-1], index[1:]):
        if k1 - k0 < 2:
            continue
        classes = sorted({0} | set(np.unique(lab[k0])) | set(np.unique(lab[k1])))
        dist = [(signed_distance(lab[k0] == c, plane_spacing), signed_distance(lab[k1] == c, plane_spacing))
                for c in classes]
        for k in range(k0 + 1, k1):
            t = (k - k0) / (k1 - k0)
            blended = np.stack([_blend(d0, d1, t) for d0, d1 in dist])
            best = blended.argmin(0)
            value = np.take_along_axis(blended, best[None], 0)[0]
            inside = value < 0
            out[k][inside] = np.asarray(classes, lab.dtype)[best[inside]]
            margin[k] = np.abs(value)
            if check is not None:
                check()
    return np.moveaxis(out, 0, axis), np.moveaxis(margin, 0, axis)


def interpolate_labels(labels, *, spacing=None, planes: dict | None = None, return_margin: bool = False, check=None):
    """New labels: the painted slices kept and the slices between them filled by shape-based
    interpolation.  ``labels``: an array (the result is an array), or an ImageData or its file (the
    result is an ImageData on its grid; ``spacing`` defaults to its own).  ``planes`` ({axis: slice
    indices}) defaults to the slices found painted along each axis
    (:func:`~napari_medgen.data.annotations.painted_planes`).
    With ``return_margin`` also the distance (mm) of each voxel to the nearest interpolated
    boundary (0 on painted slices' boundaries is not computed: inf there and where nothing was filled).
    ``labels`` is only read; ``check()`` (e.g. a job's, to cancel) is called after each filled slice."""
    item = opened(labels)
    lab = np.asarray(getattr(item, "data", item))
    geometry = getattr(item, "geometry", None)
    if spacing is None and geometry is not None:
        spacing = geometry.spacing[-lab.ndim:]
    planes = painted_planes(lab) if planes is None else planes
    out = lab.copy()
    margin = np.full(lab.shape, np.inf, np.float32)
    if lab.ndim == 3:
        known = np.zeros(lab.shape, bool)
        for axis, index in planes.items():
            sel = [slice(None)] * 3
            sel[axis] = np.asarray(index, int)
            known[tuple(sel)] = True
        structure = np.zeros(lab.shape, bool)  # filled with a label (not background) by an earlier axis
        for axis, index in sorted(planes.items(), key=lambda kv: -len(kv[1])):  # most painted axis first
            if len(index) < 2:
                continue
            fill, dist = interpolate_along(lab, axis, index, spacing, check)
            # an earlier axis's background gives way to this axis's structure (two empty painted ends say
            # nothing of a structure between them that slices along another axis show)
            covered = np.isfinite(dist) & ~known & ~structure & (~np.isfinite(margin) | (fill != 0))
            out[covered] = fill[covered]
            margin[covered] = dist[covered]
            structure |= covered & (fill != 0)
    if geometry is not None:
        out = ImageData(out, geometry, f"{item.name} interpolated", "labels", dict(item.metadata))
    return (out, margin) if return_margin else out


def interpolation_reliability(labels: np.ndarray, planes: dict, spacing=None) -> float | None:
    """How well interpolation predicts a painted slice it did not see: the mean foreground Dice of each
    inner painted slice re-made from its two painted neighbours (leave one slice out, at twice the
    usual gap, so a lower bound).  None with fewer than three painted slices along every axis."""
    lab = np.asarray(labels)
    scores = []
    for axis, index in planes.items():
        index = sorted(int(i) for i in index)
        moved = np.moveaxis(lab, axis, 0)
        for prev, k, nxt in zip(index[:-2], index[1:-1], index[2:]):
            sub = np.zeros((nxt - prev + 1,) + moved.shape[1:], lab.dtype)
            sub[0], sub[-1] = moved[prev], moved[nxt]
            sub_spacing = None if spacing is None else [spacing[axis]] + [s for i, s in enumerate(spacing) if i != axis]
            guess = interpolate_along(sub, 0, [0, len(sub) - 1], sub_spacing)[0][k - prev]
            truth = moved[k]
            both = (guess > 0).sum() + (truth > 0).sum()
            if both:
                scores.append(2 * ((guess == truth) & (truth > 0)).sum() / both)
    return float(np.mean(scores)) if scores else None


def _scaled(sd: np.ndarray, scale: float) -> np.ndarray:
    """The signed distance of the shape ``sd`` describes, scaled by ``scale`` about its centroid."""
    inside = sd < 0
    if scale <= 1e-3 or not inside.any():
        return np.full(sd.shape, np.inf, np.float32)
    centre = np.array(ndimage.center_of_mass(inside))[:, None, None]
    grid = np.indices(sd.shape, dtype=np.float32)
    coords = centre + (grid - centre) / scale
    return (scale * ndimage.map_coordinates(sd, coords, order=1, mode="nearest")).astype(np.float32)


def extrapolate_ends(labels: np.ndarray, axis: int, index, spacing=None, check=None):
    """Labels beyond the first and last painted slices ``index`` along ``axis``: each label's end slice
    shrunk about its centroid as the cross-section of a sphere fitted to the end slice and its painted
    neighbour (areas on two slices fix the centre and radius; one painted slice is taken as the
    widest; a shape that grows towards its end is taken as widest there), tapering to nothing where
    the sphere ends, and background beyond.  Returns ``(labels, margin)`` like :func:`interpolate_along`
    (filled only beyond the ends; past a sphere's end the margin is the distance past it); ``check()`` is called
    after each slice."""
    lab = np.moveaxis(np.asarray(labels), axis, 0)
    sp = [1.0] * lab.ndim if spacing is None else [float(s) for s in spacing]
    plane_spacing = [s for i, s in enumerate(sp) if i != axis]
    dz, pix = sp[axis], float(np.prod(plane_spacing))
    out = np.zeros(lab.shape, lab.dtype)
    margin = np.full(lab.shape, np.inf, np.float32)
    index = sorted(int(i) for i in index)
    if not index:
        return np.moveaxis(out, 0, axis), np.moveaxis(margin, 0, axis)
    for end, near, direction in ((index[-1], index[-2] if len(index) > 1 else None, 1),
                                 (index[0], index[1] if len(index) > 1 else None, -1)):
        for c in sorted(set(np.unique(lab[end])) - {0}):
            mask = lab[end] == c
            rho_e = np.sqrt(mask.sum() * pix / np.pi)
            u = 0.0  # the sphere's centre lies this far back from the end slice (mm)
            if near is not None:
                gap = abs(end - near) * dz
                rho_n2 = (lab[near] == c).sum() * pix / np.pi
                u = max(0.0, (gap ** 2 - rho_e ** 2 + rho_n2) / (2 * gap))
            radius = np.sqrt(rho_e ** 2 + u ** 2)
            sd = signed_distance(mask, plane_spacing)
            k = end + direction
            while 0 <= k < len(lab):
                h = abs(k - end) * dz
                if u + h >= radius:  # beyond the sphere: background, surer the farther
                    margin[k] = np.where(out[k] != 0, margin[k], np.minimum(margin[k], u + h - radius))
                    k += direction
                    continue
                scaled = _scaled(sd, np.sqrt(radius ** 2 - (u + h) ** 2) / rho_e)
                win = scaled < np.where(out[k] != 0, -margin[k], margin[k])
                out[k][win & (scaled < 0)] = c
                margin[k] = np.where(win, np.abs(scaled), margin[k])
                k += direction
                if check is not None:
                    check()
    return np.moveaxis(out, 0, axis), np.moveaxis(margin, 0, axis)
