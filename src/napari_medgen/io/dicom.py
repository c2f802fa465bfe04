"""Reading one DICOM series into a volume at its slices' true positions.

ITK stacks a series with one spacing, even when slices are missing, duplicated, sheared
or differently oriented.  :func:`read_series` measures each slice's position along the
slice normal, drops exact duplicates, refuses conflicting ones, resamples slices sheared
by a gantry tilt onto a rectangular grid (as dcm2niix does), places unevenly spaced
slices on an even grid at their true positions (a missing slice or two is interpolated
from its neighbours, longer gaps stay blank), builds the volume from the orientation
most images share when a few others (localisers) are mixed in, and gives images of many
orientations (projections) as a stack of 2D images; each change is a note.  A series of
one file reads as that file does (:func:`read_frames`: an enhanced multi-frame image's
frames go through the same steps, placed by their own positions).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .geometry import Geometry
from .calibration import calibrate
from ..errors import UserError

NOT_IMAGES = ("RTSTRUCT", "SEG", "RTPLAN", "RTDOSE", "SR", "PR", "KO")
TOLERANCE = 0.1  # a step more than 10 % off the usual one is a gap
MAX_INTERPOLATED = 2  # missing slices in a row filled from their neighbours; longer gaps stay blank
MAX_GRID = 8  # an even grid more than this many times the true slices (and over 256) is refused
SHEAR_TOLERANCE = 0.1  # in-plane slice offsets up to this fraction of a pixel are position noise, not a tilt
SAME_ORIENTATION = 1e-3  # largest difference between direction cosines of one orientation


class DicomSeriesError(UserError):
    """A DICOM series that does not form one volume."""


def read_series(files: "tuple[str, ...]", name: str):
    """``(image, array, geometry, notes, metadata)``; geometry is None when ITK's volume is right as read."""
    files = tuple(files)
    if len(files) == 1:  # ITK's series reader would make a multi-frame file a 2D image of vectors
        return read_frames(files[0], name)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        img = reader.Execute()
    except RuntimeError:
        info = _file_info(files)
        main = _main_orientation(files, [o for _, o in info])
        if main is not None:
            return _left_out(read_series(main, name), len(files) - len(main), len(main), name)
        sizes = Counter(s for s, _ in info if s)
        if len(sizes) > 1:
            parts = ", ".join(f"{s} in {n} file{'s' * (n > 1)}" for s, n in sizes.most_common())
            raise DicomSeriesError(f"{name}: the slices have different sizes ({parts}), so they are not one volume.") from None
        raise
    arr = sitk.GetArrayViewFromImage(img)
    as_read = (img, arr, None, [], {})
    if img.GetDimension() != 3 or arr.ndim != 3 or arr.shape[0] != len(files):
        return as_read
    points, orient = _vectors(reader, len(files), "0020|0032", 3), _vectors(reader, len(files), "0020|0037", 6)
    if orient is not None and np.abs(orient - orient[0]).max() > SAME_ORIENTATION:
        main = _main_orientation(files, list(orient))
        if main is not None:
            return _left_out(read_series(main, name), len(files) - len(main), len(main), name)
        return _stack(img, arr, reader, name)
    if points is None:
        return as_read
    return _place_slices(img, arr, points, name)


def read_frames(path, name: str):
    """One DICOM file as :func:`read_series` reads a series: the frames of an enhanced multi-frame image are
    placed by their own positions (GDCM stacks them as stored, and gives up its geometry when they are unsorted);
    an ultrasound image's pixel size comes from its regions when it gives no Pixel Spacing."""
    img = sitk.ReadImage(str(path))
    calibrate(img, path)
    arr = sitk.GetArrayViewFromImage(img)
    frames = _frame_geometry(path) if img.GetDimension() == 3 and arr.ndim == 3 and arr.shape[0] > 1 else None
    if frames is None or len(frames[0]) != arr.shape[0]:
        return img, arr, None, [], {}
    points, iop, pixel_xy = frames
    normal = np.cross(iop[:3], iop[3:])
    if np.dot(normal, np.asarray(img.GetDirection()).reshape(3, 3)[:, 2]) < 0:
        normal = -normal  # keep GDCM's sense (frames stored from head to feet stay so)
    img.SetSpacing((*pixel_xy, img.GetSpacing()[2]))
    img.SetDirection(tuple(np.column_stack([iop[:3], iop[3:], normal]).ravel()))
    return _place_slices(img, arr, points, name, always=True)


def _frame_geometry(path) -> "tuple | None":
    """An enhanced multi-frame file's frame positions (x, y, z), its one orientation and its pixel spacing (x, y)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    def item(frame, group: str, key: str):
        for where in (frame, shared):
            if group in where and key in where[group][0]:
                return np.asarray(where[group][0][key].value, float)
        raise KeyError(key)

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        frames = ds.PerFrameFunctionalGroupsSequence
        shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else {}
        points = np.array([item(f, "PlanePositionSequence", "ImagePositionPatient") for f in frames])
        iops = np.array([item(f, "PlaneOrientationSequence", "ImageOrientationPatient") for f in frames])
        spacing = item(frames[0], "PixelMeasuresSequence", "PixelSpacing")
    except (AttributeError, IndexError, KeyError, ValueError, TypeError, OSError, InvalidDicomError):
        return None
    if points.shape != (len(frames), 3) or iops.shape != (len(frames), 6) or spacing.shape != (2,):
        return None
    if np.abs(iops - iops[0]).max() > SAME_ORIENTATION:
        return None
    return points, iops[0], (float(spacing[1]), float(spacing[0]))


def _place_slices(img, arr, points, name, always: bool = False):
    """Slices of one orientation at ``points``: tilt undone, then sorted and evenly spaced (see the module)."""
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    notes = []
    degrees = shear_degrees(points, direction, img.GetSpacing()[:2])
    if degrees:
        arr, points = _unshear(arr, points, direction, img.GetSpacing()[:2])
        notes.append(f"{name}: the slices are sheared by a {degrees:.1f} degree gantry tilt, so they were resampled "
                     "onto a rectangular grid (as dcm2niix does).")
    return _regularise(img, arr, points, direction[:, 2], name, notes, always) or (img, arr, None, [], {})


def shear_degrees(points: np.ndarray, direction: np.ndarray, pixel_xy) -> float:
    """The tilt (degrees) of slices at ``points`` (x, y, z) whose positions move within the slice plane
    (columns of ``direction``: row, column, normal), or 0 when every offset is under
    :data:`SHEAR_TOLERANCE` of a pixel (``pixel_xy``: the pixel spacing in x, y)."""
    depth, offset = _split(points, direction[:, 2])
    if np.linalg.norm(offset, axis=1).max() <= SHEAR_TOLERANCE * min(pixel_xy):
        return 0.0
    lo, hi = np.argmin(depth), np.argmax(depth)
    along = depth[hi] - depth[lo]
    if along <= 0:  # all at one depth: duplicates or conflicts, not a tilt
        return 0.0
    return float(np.degrees(np.arctan(np.linalg.norm(offset[hi] - offset[lo]) / along)))


def _split(points: np.ndarray, normal: np.ndarray):
    """Each position's depth along the normal and its in-plane offset (x, y, z) from the shallowest slice."""
    depth = points @ normal
    rel = points - points[np.argmin(depth)]
    return depth, rel - np.outer(rel @ normal, normal)


def _unshear(arr: np.ndarray, points: np.ndarray, direction: np.ndarray, pixel_xy):
    """Each slice shifted (linear) by its in-plane offset onto the shallowest slice's rows and columns,
    with the positions it then has; integers are rounded back, pixels shifted in from outside get the minimum."""
    depth, offset = _split(points, direction[:, 2])
    shifts = np.column_stack([offset @ direction[:, 1] / pixel_xy[1], offset @ direction[:, 0] / pixel_xy[0]])
    shifts = np.round(shifts, 3)  # position noise of the stored decimals is no shift
    fill = float(arr.min())
    out = np.empty(arr.shape, dtype=arr.dtype)
    for k in range(arr.shape[0]):
        moved = ndimage.shift(arr[k].astype(np.float64), shifts[k], order=1, mode="grid-constant", cval=fill)
        out[k] = np.rint(moved) if arr.dtype.kind in "iu" else moved
    return out, points - offset


def _main_orientation(files: tuple, orients: list) -> "tuple | None":
    """The files of the orientation most images share, when it holds most of them and others differ; else None."""
    groups: list[tuple] = []
    for i, o in enumerate(orients):
        o = None if o is None else np.asarray(o, float)
        for rep, members in groups:
            if (o is None) == (rep is None) and (o is None or np.abs(o - rep).max() <= SAME_ORIENTATION):
                members.append(i)
                break
        else:
            groups.append((o, [i]))
    if len(groups) < 2:
        return None
    rep, best = max(groups, key=lambda g: len(g[1]))
    if rep is None or len(best) < 2 or 2 * len(best) <= len(files):
        return None
    return tuple(files[i] for i in best)


def _left_out(result, n: int, kept: int, name: str):
    """``result`` of the ``kept`` files of the main orientation, with a note on the ``n`` images left out."""
    img, arr, geo, notes, meta = result
    note = (f"{name}: {n} image{'s' * (n > 1)} with another orientation than the other {kept} "
            f"(localiser{'s' * (n > 1)}?) {'were' if n > 1 else 'was'} left out of the volume.")
    return img, arr, geo, [note] + notes, meta


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


def _regularise(img, arr, points, normal, name, notes, always=False):
    pos = (points - points[0]) @ normal
    order = np.argsort(pos, kind="stable")
    pos, arr, points = pos[order], arr[order], points[order]
    step = np.diff(pos)
    usual = float(np.median(step[step > 1e-3])) if (step > 1e-3).any() else 0.0
    dup = np.flatnonzero(step <= max(1e-3, 0.01 * usual))
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
        if not notes and not always and np.array_equal(order, np.arange(len(order))):
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


def _file_info(files) -> list:
    """Each file's slice size ("rows x columns", "" if unreadable) and orientation (None if absent)."""
    out = []
    for f in files:
        info = sitk.ImageFileReader()
        info.SetFileName(str(Path(f)))
        try:
            info.ReadImageInformation()
        except RuntimeError:
            out.append(("", None))
            continue
        try:
            orient = [float(v) for v in info.GetMetaData("0020|0037").split("\\")]
        except (RuntimeError, ValueError):
            orient = None
        out.append(("x".join(str(s) for s in info.GetSize()[:2][::-1]), orient if orient and len(orient) == 6 else None))
    return out
