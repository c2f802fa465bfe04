"""A volume stored in another orientation than a model's training data (a sagittal 3D T1 against a model
trained on axially stored scans): the permutation and flips of its array axes (no resampling) that store it
as the model's data were stored, and the way back for the results."""
from __future__ import annotations

from itertools import permutations
from typing import Optional

import numpy as np

from ..io.geometry import Geometry
from ..io.read import ImageData

Turn = tuple  # (perm, flips): array axes taken in ``perm`` order, then those with ``flips`` reversed


def reorientation(direction, target) -> Optional[Turn]:
    """How to store a volume whose array axes point along the columns of ``direction`` (napari order) as one
    whose axes point along ``target``'s; None when it already is (each axis within 45 degrees of its target)."""
    d, t = np.asarray(direction, float), np.asarray(target, float)
    if d.shape != (3, 3) or t.shape != (3, 3):
        return None
    dots = t.T @ d  # dots[i, j]: target axis i against stored axis j
    perm = max(permutations(range(3)), key=lambda p: sum(abs(dots[i, p[i]]) for i in range(3)))
    flips = tuple(bool(dots[i, perm[i]] < 0) for i in range(3))
    if perm == (0, 1, 2) and not any(flips):
        return None
    return perm, flips


def turn(arr: np.ndarray, how: Turn, lead: int = 0) -> np.ndarray:
    """``arr``'s spatial axes (after ``lead`` leading ones, e.g. channels) stored as :func:`reorientation` says."""
    perm, flips = how
    out = np.transpose(arr, tuple(range(lead)) + tuple(lead + p for p in perm))
    return np.flip(out, tuple(lead + i for i, f in enumerate(flips) if f))


def turn_back(arr: np.ndarray, how: Turn, lead: int = 0) -> np.ndarray:
    """The inverse of :func:`turn`: results on the reoriented array back on the original one."""
    perm, flips = how
    out = np.flip(arr, tuple(lead + i for i, f in enumerate(flips) if f))
    return np.ascontiguousarray(np.transpose(out, tuple(range(lead)) + tuple(lead + int(i) for i in np.argsort(perm))))


def turned_direction(direction, how: Turn) -> np.ndarray:
    """The direction matrix of the reoriented volume."""
    perm, flips = how
    d = np.asarray(direction, float)[:, list(perm)]
    return d * np.where(flips, -1.0, 1.0)[None, :]


def turned(image: ImageData, how: Turn) -> ImageData:
    """``image`` stored as :func:`reorientation` says (a view; leading time or channel axes stay first), with the
    geometry that says so: every voxel keeps its place in the patient."""
    geo, (perm, flips) = image.geometry, how
    lead = np.ndim(image.data) - geo.ndim
    corner = [0] * 3
    for i, p in enumerate(perm):
        corner[p] = np.shape(image.data)[lead + p] - 1 if flips[i] else 0
    moved = Geometry(tuple(geo.spacing[p] for p in perm), tuple(geo.index_to_world(corner)),
                     turned_direction(geo.direction, how))
    return ImageData(turn(image.data, how, lead=lead), moved, image.name, image.kind, dict(image.metadata))


def turn_each(arrays: list, hows: list) -> list:
    """Companions of turned volumes (voxel arrays, masks, None) turned the same way, each contiguous."""
    return [a if a is None or h is None else np.ascontiguousarray(turn(a, h)) for a, h in zip(arrays, hows)]


def stored_direction(image) -> Optional[np.ndarray]:
    """The direction of a 3D ImageData's array axes, or None when unknown: an array, or napari's defaults
    (unit spacing, zero origin, identity direction: a layer made from a bare array says nothing of it)."""
    if not isinstance(image, ImageData) or image.geometry.ndim != 3 or np.ndim(image.data) != 3:
        return None
    geo = image.geometry
    if np.allclose(geo.direction, np.eye(3)) and np.allclose(geo.spacing, 1) and np.allclose(geo.origin, 0):
        return None
    return geo.direction


def as_stored_like(image, orientation) -> Optional[Turn]:
    """How to store a 3D ImageData as volumes of ``orientation`` were (None: it already is, or unknown)."""
    direction = stored_direction(image)
    if orientation is None or direction is None:
        return None
    return reorientation(direction, orientation)


def plane_turn(image, orientation) -> Optional[Turn]:
    """How to store a 3D ImageData for a 2D model trained on slices of volumes of ``orientation`` when its axes
    are stored in another order (a sagittal volume for an axial model), or None.  Axes in the model's order
    but reversed are left as they are: the models are trained with flips."""
    how = as_stored_like(image, orientation)
    return how if how is not None and how[0] != (0, 1, 2) else None


def index_back(how: Turn, shape, axis: int, indices) -> tuple[int, list]:
    """Slice ``indices`` along ``axis`` of a turned array as (axis, indices) of the original, of ``shape``."""
    p, n = how[0][axis], shape[how[0][axis]]
    return int(p), sorted(int(n - 1 - i if how[1][axis] else i) for i in indices)


def box_back(how: Turn, shape, box) -> list:
    """A box ((lo, hi) per axis) in a turned array as the same box in the original, of ``shape``."""
    out = [None] * 3
    for i, (lo, hi) in enumerate(box):
        n = shape[how[0][i]]
        out[how[0][i]] = (int(n - hi), int(n - lo)) if how[1][i] else (int(lo), int(hi))
    return tuple(out)


def stored_alike(items: list, orientation) -> tuple[list, list]:
    """``items`` (ImageData or arrays) each stored as ``orientation`` says, and the turn each took (None: as
    it was), for their companions (:func:`turn_each`)."""
    hows = [as_stored_like(item, orientation) for item in items]
    return [item if how is None else turned(item, how) for item, how in zip(items, hows)], hows


def world_order(direction) -> Optional[Turn]:
    """The permutation (no flips) that puts array axes whose directions are ``direction``'s columns in the order
    of the world axes they run along; None when they already are."""
    how = reorientation(direction, np.eye(3))
    return None if how is None or how[0] == (0, 1, 2) else (how[0], (False, False, False))


def in_world_order(item: ImageData) -> ImageData:
    """``item`` with its spatial axes permuted into the order of the world axes they run along (a view; flips and
    obliquity stay in the geometry).  napari slices a layer in 2D by inverting the displayed block of its affine,
    which a permutation leaves singular: a sagittal-first volume could not be shown."""
    if item.geometry.ndim != 3 or item.rgb or np.ndim(item.data) < 3:
        return item
    how = world_order(item.geometry.direction)
    return item if how is None else turned(item, how)
