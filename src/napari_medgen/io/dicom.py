"""Reading one DICOM series into a volume at its slices' true positions.

ITK stacks a series with one spacing, even when slices are missing, duplicated or
differently oriented.  :func:`read_series` measures each slice's position along the
slice normal, drops exact duplicates, refuses conflicting ones, places unevenly spaced
slices on an even grid at their true positions (a missing slice or two is interpolated
from its neighbours, longer gaps stay blank), and gives images of different
orientations (projections, localisers) as a stack of 2D images; each change is a note.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .geometry import Geometry
from ..errors import UserError

NOT_IMAGES = ("RTSTRUCT", "SEG", "RTPLAN", "RTDOSE", "SR", "PR", "KO")
TOLERANCE = 0.1  # a step more than 10 % off the usual one is a gap
MAX_INTERPOLATED = 2  # missing slices in a row filled from their neighbours; longer gaps stay blank
MAX_GRID = 8  # an even grid more than this many times the true slices (and over 256) is refused


class DicomSeriesError(UserError):
    """A DICOM series that does not form one volume."""


def read_series(files: "tuple[str, ...]", name: str):
    """``(image, array, geometry, notes, metadata)``; geometry is None when ITK's volume is right as read."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        img = reader.Execute()
    except RuntimeError:
        sizes = _slice_sizes(files)
        if len(sizes) > 1:
            parts = ", ".join(f"{s} in {n} file{'s' * (n > 1)}" for s, n in sizes.most_common())
            raise DicomSeriesError(f"{name}: the slices have different sizes ({parts}), so they are not one volume.") from None
        raise
    arr = sitk.GetArrayViewFromImage(img)
    as_read = (img, arr, None, [], {})
    if img.GetDimension() != 3 or arr.ndim != 3 or len(files) < 2 or arr.shape[0] != len(files):
        return as_read
    points, orient = _vectors(reader, len(files), "0020|0032", 3), _vectors(reader, len(files), "0020|0037", 6)
    if orient is not None and np.abs(orient - orient[0]).max() > 1e-3:
        return _stack(img, arr, reader, name)
    if points is None:
        return as_read
    normal = np.asarray(img.GetDirection()).reshape(3, 3)[:, 2]
    return _regularise(img, arr, points, normal, name) or as_read


def _vectors(reader, n: int, key: str, size: int) -> "np.ndarray | None":
    try:
        out = np.array([[float(v) for v in reader.GetMetaData(i, key).split("\\")] for i in range(n)])
    except (RuntimeError, ValueError):
        return None
    return out if out.shape == (n, size) else None


def _stack(img, arr, reader, name):
    """Images of different orientations: a stack of 2D images in instance order, not a volume."""
    try:
        order = np.argsort([int(reader.GetMetaData(i, "0020|0013")) for i in range(arr.shape[0])], kind="stable")
    except (RuntimeError, ValueError):
        order = np.arange(arr.shape[0])
    geo = Geometry(img.GetSpacing()[1::-1], (0.0, 0.0), np.eye(2))
    note = (f"{name}: its {arr.shape[0]} images have different orientations (projections or localisers?), "
            "so they are a stack of 2D images, not a volume.")
    return img, np.ascontiguousarray(arr[order]), geo, [note], {}


def _regularise(img, arr, points, normal, name):
    pos = (points - points[0]) @ normal
    order = np.argsort(pos, kind="stable")
    pos, arr, points = pos[order], arr[order], points[order]
    step = np.diff(pos)
    usual = float(np.median(step[step > 1e-3])) if (step > 1e-3).any() else 0.0
    dup = np.flatnonzero(step <= max(1e-3, 0.01 * usual))
    notes = []
    if dup.size:
        if any(not np.array_equal(arr[i], arr[i + 1]) for i in dup):
            raise DicomSeriesError(f"{name}: {dup.size} slices share a position with other slices but differ from them "
                                   "(several echoes, phases or time points in one series?), so they are not one volume.")
        keep = np.setdiff1d(np.arange(len(pos)), dup + 1)
        pos, arr, points = pos[keep], arr[keep], points[keep]
        notes.append(f"{name}: {dup.size} duplicated slice{'s' * (dup.size > 1)} (same position, same pixels) left out.")
    if len(pos) < 2 or usual <= 0:
        return (img, np.ascontiguousarray(arr), _geometry(img, points[0], usual or 1.0), notes, {}) if notes else None
    step = np.diff(pos)
    if np.abs(step - usual).max() <= TOLERANCE * usual:
        if not notes and np.array_equal(order, np.arange(len(order))):
            return None
        spacing = (pos[-1] - pos[0]) / (len(pos) - 1)
        return img, np.ascontiguousarray(arr), _geometry(img, points[0], spacing), notes, {}
    n = int(round((pos[-1] - pos[0]) / usual)) + 1
    if n > max(256, MAX_GRID * len(pos)):
        raise DicomSeriesError(f"{name}: its {len(pos)} slices are spread over {pos[-1] - pos[0]:.0f} mm in steps of "
                               f"{usual:.3g} mm with large gaps, too sparse to be one volume.")
    grid = np.linspace(pos[0], pos[-1], n)
    out, made, blank = _place(arr, pos, grid, usual)
    notes.append(f"{name}: slices are not evenly spaced (steps of {step.min():.3g} to {step.max():.3g} mm, usually "
                 f"{usual:.3g} mm: missing slices?); they were placed at their true positions on an even grid of {n}, "
                 f"{len(made)} slice{'s' * (len(made) != 1)} interpolated and {len(blank)} left blank.")
    meta = {"interpolated_slices": made, "blank_slices": blank}
    return img, out, _geometry(img, points[0], float(grid[1] - grid[0])), notes, meta


def _place(arr: np.ndarray, pos: np.ndarray, grid: np.ndarray, usual: float):
    """Each grid slice: the true slice at its position, else linear interpolation between its
    neighbours when at most :data:`MAX_INTERPOLATED` slices are missing there, else blank (the minimum)."""
    out = np.empty((len(grid),) + arr.shape[1:], dtype=arr.dtype)
    hi = np.clip(np.searchsorted(pos, grid, side="left"), 1, len(pos) - 1)
    lo = hi - 1
    made, blank, fill = [], [], arr.min()
    for k, g in enumerate(grid):
        near = lo[k] if g - pos[lo[k]] <= pos[hi[k]] - g else hi[k]
        if abs(g - pos[near]) <= TOLERANCE * usual:
            out[k] = arr[near]
        elif pos[hi[k]] - pos[lo[k]] <= (MAX_INTERPOLATED + 1.5) * usual:
            w = (g - pos[lo[k]]) / (pos[hi[k]] - pos[lo[k]])
            val = (1 - w) * arr[lo[k]].astype(np.float64) + w * arr[hi[k]]
            out[k] = np.rint(val) if arr.dtype.kind in "iu" else val
            made.append(k)
        else:
            out[k] = fill
            blank.append(k)
    return out, made, blank


def _geometry(img, origin_xyz, spacing_z: float) -> Geometry:
    geo = Geometry.from_sitk(img)
    return Geometry((float(spacing_z),) + geo.spacing[1:], tuple(origin_xyz[::-1]), geo.direction)


def _slice_sizes(files) -> Counter:
    sizes = Counter()
    for f in files:
        info = sitk.ImageFileReader()
        info.SetFileName(str(Path(f)))
        try:
            info.ReadImageInformation()
        except RuntimeError:
            continue
        sizes["x".join(str(s) for s in info.GetSize()[:2][::-1])] += 1
    return sizes
