"""DICOM Segmentation objects (highdicom): Labels -> SEG referencing its source series, and SEG -> Labels.

A SEG is written with every frame of every segment (``omit_empty_frames=False``),
references the source series (ReferencedSeriesSequence) and each source instance
(per-frame DerivationImageSequence), as viewers such as OHIF need to overlay it.
It is read back onto the grid of its source series when that is known, else onto
the grid its own frames span.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Optional, Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from ..atomic import replacing
from ..data.orientation import reorientation, turned
from ..errors import UserError
from ..io.dicom import shear_degrees
from ..io.geometry import Geometry
from ..io.read import ImageData
from .codes import segment_codes
from .files import headers_in

_FLIP = np.eye(3)[::-1]  # napari (z, y, x) world order <-> DICOM patient (x, y, z)


class SegError(UserError):
    """Labels that cannot become a DICOM SEG, or a SEG that cannot be read onto its grid."""


def geometry_to_affine(geometry: Geometry) -> np.ndarray:
    """highdicom's affine (array index (slice, row, column) -> patient mm) of a napari geometry."""
    aff = np.eye(4)
    aff[:3, :3] = _FLIP @ geometry.direction @ np.diag(geometry.spacing)
    aff[:3, 3] = _FLIP @ np.asarray(geometry.origin)
    return aff


def affine_to_geometry(affine: np.ndarray) -> Geometry:
    """The napari geometry of a highdicom affine."""
    lin = _FLIP @ np.asarray(affine)[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    return Geometry(spacing, _FLIP @ np.asarray(affine)[:3, 3], lin / spacing)


def series_grid(datasets: Sequence[pydicom.Dataset]) -> tuple[list, tuple, Geometry]:
    """Instances of one image series sorted along the slice normal, and the (shape, geometry) they span."""
    if not datasets:
        raise SegError("The source series has no instances.")
    first = datasets[0]
    try:
        iop = np.asarray(first.ImageOrientationPatient, float)
        row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
        normal = np.cross(iop[:3], iop[3:])
        order = sorted(datasets, key=lambda d: float(np.dot(np.asarray(d.ImagePositionPatient, float), normal)))
    except AttributeError:
        raise SegError("The source series lacks the position, orientation or spacing a SEG needs "
                       "(not a cross-sectional image series).") from None
    depth = np.array([np.dot(np.asarray(d.ImagePositionPatient, float), normal) for d in order])
    steps = np.diff(depth)
    dz = float(np.median(steps)) if steps.size else float(getattr(first, "SliceThickness", 1.0) or 1.0)
    if steps.size and (dz <= 0 or np.abs(steps - dz).max() > 0.01 * dz + 1e-3):
        raise SegError("The source series has missing, duplicated or irregularly spaced slices; "
                       "a SEG needs a regular grid.")
    sitk_dir = np.column_stack([iop[:3], iop[3:], normal])  # columns: x (column), y (row), z (slice) axes
    tilt = shear_degrees(np.array([d.ImagePositionPatient for d in order], float), sitk_dir, (col_spacing, row_spacing))
    if tilt:  # the reader resamples such slices onto a rectangular grid, which a SEG's frames cannot follow
        raise SegError(f"The source series has a {tilt:.1f} degree gantry tilt (sheared slices, read resampled onto "
                       "a rectangular grid), so its labels cannot be exchanged as a DICOM SEG; save them as NIfTI.")
    geo = Geometry((dz, row_spacing, col_spacing), np.asarray(order[0].ImagePositionPatient, float)[::-1],
                   sitk_dir[::-1, ::-1])
    return order, (len(order), int(first.Rows), int(first.Columns)), geo


def labels_to_seg(labels: np.ndarray, geometry: Geometry, source: Sequence[pydicom.Dataset],
                  class_names: Optional[Sequence[str]] = None, algorithm: str = "napari-medgen",
                  algorithm_version: str = "", description: str = "") -> hd.seg.Segmentation:
    """A DICOM SEG of integer ``labels`` (value k = segment k) on the grid of the ``source`` series."""
    from .. import __version__

    ordered, shape, grid = series_grid(source)
    labels = np.asarray(labels)
    how = reorientation(geometry.direction, grid.direction) if labels.ndim == 3 == geometry.ndim else None
    back = None if how is None else turned(ImageData(labels, geometry), how)
    if back is not None and back.data.shape == shape and grid.same_grid(back.geometry):
        labels, geometry = np.ascontiguousarray(back.data), back.geometry  # the series shown in another axis order
    if labels.shape != shape or not grid.same_grid(geometry):
        differs = grid_difference(labels.shape, geometry, shape, grid)
        raise SegError(f"The labels are not on the grid of the source series (labels vs series: {differs}); "
                       f"segment that series (or resample the labels onto it) first.")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise SegError("Labels must be non-negative integers (0 = background).")
    n = int(labels.max())
    if n == 0:
        raise SegError("The labels are empty: there is no segment to send.")
    names = list(class_names or [])
    if names and len(names) <= n:  # more names than values is fine: a class may be absent from this image
        given = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise SegError(f"The labels go up to {n} but {len(names)} class names were given (one per value, "
                       f"background 0 first: {given}); give {n + 1} names.")
    algo = hd.AlgorithmIdentificationSequence(name=algorithm, family=codes.cid7162.ArtificialIntelligence,
                                              version=algorithm_version or __version__)
    segments = []
    for k in range(1, n + 1):
        name = (names[k] if names else "") or f"Segment {k}"
        category, kind = segment_codes(name)
        segments.append(hd.seg.SegmentDescription(
            segment_number=k, segment_label=name[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo))
    src = ordered[0]
    try:
        return hd.seg.Segmentation(
            source_images=ordered, pixel_array=labels.astype(np.uint8 if n < 256 else np.uint16),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
            series_instance_uid=hd.UID(), series_number=int(getattr(src, "SeriesNumber", 0) or 0) + 1000,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="napari-medgen",
            manufacturer_model_name=algorithm[:64], software_versions=__version__, device_serial_number="0",
            series_description=(description or f"{algorithm} segmentation")[:64],
            content_label="SEGMENTATION", content_description=f"{algorithm} {algo[0].AlgorithmVersion}"[:64],
            omit_empty_frames=False)
    except (ValueError, TypeError, AttributeError) as err:
        raise SegError(f"Cannot build a DICOM SEG from the source series: {err}") from None


def grid_difference(shape_a: tuple, a: Geometry, shape_b: tuple, b: Geometry, atol: float = 1e-3) -> str:
    """What differs between two voxel grids, with the values (napari z, y, x order), e.g. for an error."""
    def fmt(values) -> str:
        return "(" + ", ".join(f"{round(float(v), 3):g}" for v in values) + ")"

    if len(shape_a) != len(shape_b) or a.ndim != b.ndim:
        return f"{len(shape_a)}D shape {tuple(shape_a)} vs {len(shape_b)}D {tuple(shape_b)}"
    out = [f"shape {tuple(shape_a)} vs {tuple(shape_b)}"] if tuple(shape_a) != tuple(shape_b) else []
    if not np.allclose(a.spacing, b.spacing, atol=atol):
        out.append(f"spacing (z, y, x) {fmt(a.spacing)} vs {fmt(b.spacing)} mm")
    if not np.allclose(a.origin, b.origin, atol=atol):
        out.append(f"origin (z, y, x) {fmt(a.origin)} vs {fmt(b.origin)} mm")
    if not np.allclose(a.direction, b.direction, atol=atol):
        cosines = np.clip(np.sum(np.asarray(a.direction) * np.asarray(b.direction), axis=0), -1.0, 1.0)
        turned = [f"{axis} by {np.degrees(np.arccos(c)):.1f} deg" for axis, c in zip("zyx"[-a.ndim:], cosines)
                  if not np.isclose(c, 1.0, atol=1e-9)]
        out.append("orientation: axis " + ", ".join(turned) if turned else "orientation")
    return "; ".join(out) or "the same grid"


def write_seg(path: "str | os.PathLike", seg: pydicom.Dataset, overwrite: bool = False) -> str:
    """Write a SEG (or any dataset) atomically; refuses to overwrite unless asked."""
    with replacing(path, overwrite) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return str(Path(path))


def referenced_series(ds: pydicom.Dataset) -> Optional[str]:
    """The SeriesInstanceUID a SEG was derived from (first ReferencedSeriesSequence item), if any."""
    seq = getattr(ds, "ReferencedSeriesSequence", None)
    return str(seq[0].SeriesInstanceUID) if seq else None


def referenced_instances(ds: pydicom.Dataset) -> list[str]:
    """The SOP Instance UIDs of the source images a SEG names in its first ReferencedSeriesSequence item."""
    seq = getattr(ds, "ReferencedSeriesSequence", None)
    items = (getattr(seq[0], "ReferencedInstanceSequence", None) or []) if seq else []
    return [str(i.ReferencedSOPInstanceUID) for i in items]


def read_seg(ds: pydicom.Dataset, grid: Optional[tuple] = None, source: str = "") -> ImageData:
    """A SEG as a Labels ImageData; ``grid`` = (shape, Geometry) of its source series when known."""
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        fractional = seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
        vol = seg.get_volume(combine_segments=not fractional, relabel=False, skip_overlap_checks=True)
        if fractional:  # probabilities or occupancies per segment: a voxel goes to its likeliest segment >= 0.5
            prob = np.asarray(vol.array, float)
            best = np.asarray(seg.segment_numbers)[prob.argmax(-1)]
            vol = vol.with_array(np.where(prob.max(-1) >= 0.5, best, 0), channels={})
    except (ValueError, AttributeError, KeyError, RuntimeError, struct.error) as err:  # struct: a truncated file
        raise SegError(f"Cannot read the DICOM SEG{f' {source}' if source else ''}: {err}") from None
    vol = vol.ensure_handedness("LEFT_HANDED", flip_axis=0)  # slices along row x column, as ITK reads series
    geometry = affine_to_geometry(vol.affine)
    if grid is not None:
        shape, geometry = grid
        target = hd.VolumeGeometry(geometry_to_affine(geometry), shape, vol.coordinate_system,
                                   frame_of_reference_uid=vol.frame_of_reference_uid)
        try:
            vol = vol.match_geometry(target, tol=1e-3)
        except RuntimeError:
            raise SegError("The DICOM SEG does not lie on the voxel grid of its source series.") from None
    data = np.asarray(vol.array)
    numbers = list(seg.segment_numbers)
    names = ["background"] + [""] * max(numbers, default=0)
    for k in numbers:
        names[k] = str(seg.get_segment_description(k).segment_label)
    meta = {"source": source, "modality": "SEG", "series_uid": str(ds.SeriesInstanceUID),
            "referenced_series_uid": referenced_series(ds), "class_names": names}
    name = str(getattr(ds, "SeriesDescription", "") or "segmentation")
    return ImageData(data.astype(np.uint8 if len(names) <= 256 else np.uint16), geometry, name, "labels", meta)


def read_seg_file(path: "str | os.PathLike", images: Sequence[ImageData] = ()) -> ImageData:
    """Read a SEG file onto the grid of its source series (among ``images``, or beside the file)."""
    ds = pydicom.dcmread(path)
    ref = referenced_series(ds)
    src = next((im for im in images if ref and im.metadata.get("series_uid") == ref
                and im.geometry.ndim == 3 and im.data.ndim == 3), None)
    grid = (src.data.shape, src.geometry) if src is not None else None
    if grid is None and ref:  # the source images below the SEG's folder give its grid without reading pixels
        wanted = set(referenced_instances(ds))  # one file per UID: copies are ignored, the walk stops early
        headers = headers_in(Path(path).parent, ref, wanted)
        if len(headers) > 1 and wanted <= {str(h.SOPInstanceUID) for h in headers}:  # else the SEG's own grid
            _, shape, geometry = series_grid(headers)
            grid = (shape, geometry)
    return read_seg(ds, grid, source=str(path))
