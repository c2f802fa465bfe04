"""Image time series: 4D NIfTI, multi-frame (cine) DICOM, DICOM series with temporal positions, folders of frames.

Each becomes one :class:`~napari_medgen.io.read.ImageData` whose first axis is time:
``metadata["axis_labels"]`` is ("t", "z", "y", "x") or ("t", "y", "x") (napari shows
them on the sliders), ``metadata["time_step"]`` the time between frames and
``metadata["time_unit"]`` its unit.  :func:`write_time_series` writes it back as a
4D image (time as the fourth axis, its spacing the time step), so it reads back the same.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ..errors import UserError
from .geometry import Geometry
from .read import EXTENSIONS, ImageData, ImageReadError, _first_line, _looks_dicom, _stem, _tag, _walk_files
from .write import WRITE_EXTENSIONS

FRAME_EXTENSIONS = tuple(e for e in EXTENSIONS if e != ".dcm") + (".png", ".tif", ".tiff", ".jpg", ".jpeg")
MIN_FRAMES = 2
TEMPORAL_POSITION, TRIGGER_TIME, FRAME_TIME = "0020|0100", "0018|1060", "0018|1063"
POSITION, ORIENTATION, FRAMES = "0020|0032", "0020|0037", "0028|0008"


def is_time_series(metadata: Optional[dict], axis_labels=None) -> bool:
    """True for data whose first axis is time (by its axis labels or a stored time step)."""
    labels = tuple(axis_labels or (metadata or {}).get("axis_labels") or ())
    return (bool(labels) and labels[0] == "t") or "time_step" in (metadata or {})


def mark_time_series(item: ImageData, time_step: float, unit: str = "s") -> ImageData:
    """Label ``item``'s first axis as time (a single z slice of 2D frames is dropped)."""
    if item.data.ndim == 4 and item.data.shape[1] == 1:
        geo = item.geometry
        item.data = item.data[:, 0]
        item.geometry = Geometry(geo.spacing[1:], geo.origin[1:], geo.direction[1:, 1:])
    if item.data.ndim not in (3, 4) or item.data.ndim - 1 != item.geometry.ndim:
        raise ImageReadError(f"{item.name}: a time series has 2D or 3D frames (got shape {item.data.shape}).")
    item.kind = "image"
    item.metadata.update(axis_labels=("t",) + ("z", "y", "x")[4 - item.data.ndim:], time_step=float(time_step or 1.0), time_unit=unit)
    return item


def time_step(metadata: Optional[dict]) -> tuple[float, str]:
    """(time between frames, unit) stored with a time series; (1, "frame") when unknown."""
    md = metadata or {}
    return float(md.get("time_step", 1.0)), str(md.get("time_unit", "frame"))


def read_time_series(path: "str | os.PathLike") -> Optional[list[ImageData]]:
    """Time series at ``path`` (4D file, cine DICOM, temporal DICOM folder, folder of frames); None if none."""
    p = Path(path)
    if p.is_dir():
        return _temporal_dicom_folder(p) or _frames_folder(p)
    if _looks_dicom(p):
        item = _cine_dicom(p)
        return [item] if item is not None else None
    return None


def from_4d_image(img, item: ImageData) -> ImageData:
    """Mark an item read from a 4D SimpleITK image (NIfTI time spacing in seconds)."""
    return mark_time_series(item, img.GetSpacing()[3], "s")


# --- multi-frame (cine) DICOM -----------------------------------------------------------------
def _info(path: Path) -> Optional[sitk.ImageFileReader]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader


def _cine_dicom(path: Path) -> Optional[ImageData]:
    """A multi-frame DICOM whose frames are times (Frame Time or Frame Time Vector present)."""
    info = _info(path)
    if info is None or _number(_tag(info, FRAMES)) is None or _number(_tag(info, FRAMES)) < MIN_FRAMES:
        return None
    step = _number(_tag(info, FRAME_TIME))
    vector = _numbers(_tag(info, "0018|1065"))
    if step is None and len(vector) > 1:
        step = float(np.median(vector[1:]))
    if step is None:
        return None  # frames are slices, not times
    img = sitk.ReadImage(str(path))
    data = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() > 1:
        raise ImageReadError(f"{path.name}: colour cine loops are not supported; convert it to grey levels.")
    g3 = Geometry.from_sitk(img)  # (frame, y, x): the frame axis is time, not space
    geo = Geometry(g3.spacing[1:], g3.origin[1:], g3.direction[1:, 1:])
    meta = {"source": str(path), "modality": _tag(info, "0008|0060")}
    return mark_time_series(ImageData(data, geo, _stem(path), "image", meta), step / 1000.0, "s")


# --- DICOM series with temporal positions ------------------------------------------------------
def _temporal_dicom_folder(folder: Path) -> Optional[list[ImageData]]:
    files = [f for f in _walk_files(folder) if _looks_dicom(f)]
    groups: dict = defaultdict(list)  # series UID -> [(time key, position along the normal, file, trigger)]
    for f in files:
        info = _info(f)
        if info is None or (_number(_tag(info, FRAMES)) or 1) > 1:
            continue
        when = _tag(info, TEMPORAL_POSITION) or _tag(info, TRIGGER_TIME)
        if not when:
            continue
        groups[_tag(info, "0020|000e")].append((_number(when), _along_normal(info), str(f),
                                                _number(_tag(info, TRIGGER_TIME))))
    out = []
    for uid, entries in groups.items():
        times = sorted({e[0] for e in entries if e[0] is not None})
        if len(times) >= MIN_FRAMES:
            out.append(_stack_times(uid, entries, times, folder))
    return out or None


def _stack_times(uid: str, entries: list, times: list, folder: Path) -> ImageData:
    frames, triggers, geo = [], [], None
    for t in times:
        here = sorted((e for e in entries if e[0] == t), key=lambda e: e[1])
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([e[2] for e in here])
        try:
            img = reader.Execute()
        except RuntimeError as err:
            raise ImageReadError(f"{folder.name}: time point {t:g} cannot be read ({_first_line(err)}).") from None
        frames.append(sitk.GetArrayFromImage(img))
        triggers.append(np.nanmean([e[3] if e[3] is not None else np.nan for e in here]))
        geo = geo or Geometry.from_sitk(img)
    if len({f.shape for f in frames}) > 1:
        raise ImageReadError(f"{folder.name}: the time points have different numbers of slices "
                             f"({sorted({f.shape[0] for f in frames})}); the series is incomplete.")
    diffs = np.diff(np.asarray(triggers, float))
    step, unit = (float(np.nanmedian(diffs)) / 1000.0, "s") if np.isfinite(diffs).any() else (1.0, "frame")
    item = ImageData(np.stack(frames), geo, f"{folder.name} {uid[-8:]}".strip(), "image",
                     {"source": str(folder), "series_uid": uid, "n_files": len(entries)})
    return mark_time_series(item, step, unit)


def _along_normal(info) -> float:
    pos, ori = _numbers(_tag(info, POSITION)), _numbers(_tag(info, ORIENTATION))
    if len(pos) != 3:
        return 0.0
    normal = np.cross(ori[:3], ori[3:]) if len(ori) == 6 else np.array([0.0, 0.0, 1.0])
    return float(np.dot(pos, normal))


# --- a folder of frames -------------------------------------------------------------------------
def is_frames_folder(folder: "str | os.PathLike") -> bool:
    """A folder (no DICOM) with at least two image files: each file is one frame."""
    p = Path(folder)
    return p.is_dir() and len(_frame_files(p)) >= MIN_FRAMES


def _frame_files(folder: Path) -> list[Path]:
    files = [f for f in folder.iterdir() if f.is_file() and f.name.lower().endswith(FRAME_EXTENSIONS)
             and not f.name.startswith(".")]
    key = lambda f: [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", f.name)]
    return sorted(files, key=key)  # frame_2 before frame_10


def _frames_folder(folder: Path) -> Optional[list[ImageData]]:
    files = _frame_files(folder)
    if len(files) < MIN_FRAMES:
        return None
    frames, geo = [], None
    for f in files:
        try:
            img = sitk.ReadImage(str(f))
        except RuntimeError as err:
            raise ImageReadError(f"Frame {f.name} cannot be read ({_first_line(err)}).") from None
        if img.GetNumberOfComponentsPerPixel() > 1:
            img = sitk.VectorIndexSelectionCast(img, 0)
        arr = sitk.GetArrayFromImage(img)
        if frames and arr.shape != frames[0].shape:
            raise ImageReadError(f"Frame {f.name} has shape {arr.shape} but {files[0].name} has "
                                 f"{frames[0].shape}; all frames of a series must match.")
        frames.append(arr)
        geo = geo or Geometry.from_sitk(img)
    if frames[0].ndim == 3 and frames[0].shape[0] == 1:
        frames, geo = [f[0] for f in frames], Geometry(geo.spacing[1:], geo.origin[1:], geo.direction[1:, 1:])
    item = ImageData(np.stack(frames), geo, folder.name, "image", {"source": str(folder), "n_files": len(files)})
    return [mark_time_series(item, 1.0, "frame")]


# --- writing --------------------------------------------------------------------------------------
def write_time_series(path: "str | os.PathLike", data: np.ndarray, geometry: Optional[Geometry] = None,
                      step: float = 1.0, *, overwrite: bool = False) -> str:
    """Write (t, y, x) or (t, z, y, x) as a 4D image whose fourth spacing is the time step."""
    arr = np.asarray(data)
    if arr.ndim not in (3, 4):
        raise UserError(f"A time series is (t, y, x) or (t, z, y, x); got shape {arr.shape}.")
    geo = geometry or Geometry.identity(arr.ndim - 1)
    if geo.ndim != arr.ndim - 1:
        raise UserError(f"Cannot write {arr.ndim - 1}D frames with {geo.ndim}D geometry.")
    if arr.ndim == 3:  # 2D frames: one slice thick
        arr = arr[:, None]
        geo = Geometry((1.0,) + geo.spacing, (0.0,) + geo.origin,
                       np.block([[np.eye(1), np.zeros((1, 2))], [np.zeros((2, 1)), geo.direction]]))
    p = Path(path)
    if not str(p).lower().endswith(WRITE_EXTENSIONS):
        raise UserError(f"Cannot write {p.name}: use one of {', '.join(WRITE_EXTENSIONS)}.")
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} already exists; not overwriting it.")
    if arr.dtype == bool or arr.dtype == np.int64:
        arr = arr.astype(np.uint8 if arr.dtype == bool else np.int32)
    img = sitk.GetImageFromArray(arr, isVector=False)  # (x, y, z, t)
    direction = np.eye(4)
    direction[1:, 1:] = geo.direction
    Geometry((float(step),) + geo.spacing, (0.0,) + geo.origin, direction).apply_to_sitk(img)
    ext = next(e for e in sorted(WRITE_EXTENSIONS, key=len, reverse=True) if p.name.lower().endswith(e))
    if ext in (".mhd", ".nhdr"):
        raise UserError(f"Write time series to a single file ({', '.join(('.nii.gz', '.nii', '.nrrd', '.mha'))}).")
    tmp = p.with_name(f".{p.name[: -len(ext)]}.partial{ext}")
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        sitk.WriteImage(img, str(tmp), True)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return str(p)


def _number(text: str) -> Optional[float]:
    try:
        return float(text.split("\\")[0])
    except (ValueError, IndexError):
        return None


def _numbers(text: str) -> list:
    try:
        return [float(v) for v in text.split("\\") if v.strip()]
    except ValueError:
        return []
