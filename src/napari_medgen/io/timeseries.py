"""Image time series: 4D NIfTI, multi-frame (cine) DICOM, DICOM series with temporal positions, folders of frames.

Each becomes one :class:`~napari_medgen.io.read.ImageData` whose first axis is time:
``metadata["axis_labels"]`` is ("t", "z", "y", "x") or ("t", "y", "x") (napari shows
them on the sliders), ``metadata["time_step"]`` the time between frames and
``metadata["time_unit"]`` its unit.  :func:`write_time_series` writes it back as a
4D image (time as the fourth axis, its spacing the time step), so it reads back the same.
Colour frames are read as their grey levels (luminance), with a warning: the time-series
models take one value per pixel.
"""
from __future__ import annotations

import os
import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ..atomic import in_users_names, replacing
from ..errors import UserError
from .geometry import Geometry
from .calibration import calibrate
from ..naming import LABEL_NAME, PICTURES
from .read import (EXTENSIONS, ImageData, ImageReadError, ImageReadWarning, _first_line, _looks_dicom,
                   _stem, _tag, _walk_files, _window)
from .write import WRITE_EXTENSIONS, check_writable, storable

RASTER_EXTENSIONS = PICTURES  # 2D formats: frames in a folder, unless named as labels
VOLUME_EXTENSIONS = tuple(e for e in EXTENSIONS if e != ".dcm")  # frames only when numbered alike, of one size
MIN_FRAMES = 2
TEMPORAL_POSITION, TRIGGER_TIME, FRAME_TIME = "0020|0100", "0018|1060", "0018|1063"
POSITION, ORIENTATION, FRAMES = "0020|0032", "0020|0037", "0028|0008"
US_VOLUME = "1.2.840.10008.5.1.4.1.1.6.2"  # Enhanced US Volume: its frames are slices
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 weights of R, G, B


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


def read_time_series(path: "str | os.PathLike", frames: Optional[list] = None,
                     headers: Optional[dict] = None) -> Optional[list[ImageData]]:
    """The time series at ``path`` (4D files aside: read_image reads them), None if none: a cine DICOM file; in a
    folder, its cine files and DICOM series whose positions repeat over time (``metadata["series_uid"]`` says
    which) and its own frames as one series.  ``frames`` (see :func:`split_image_files`) and ``headers`` (see
    :func:`dicom_headers`): what the caller has read of the folder already, when it has."""
    p = Path(path)
    if p.is_dir():
        frames = split_image_files(p)[0] if frames is None else frames
        headers = dicom_headers(p) if headers is None else headers
        return (_temporal_dicom_folder(p, headers) + _frames_series(p, frames)) or None
    if _looks_dicom(p):
        item = _cine_dicom(p, _info(p))
        return [item] if item is not None else None
    return None


def from_4d_image(img, item: ImageData) -> ImageData:
    """Mark an item read from a 4D SimpleITK image (NIfTI time spacing in seconds)."""
    return mark_time_series(item, img.GetSpacing()[3], "s")


def _grey(arr: np.ndarray, name: str, channels: int) -> np.ndarray:
    """Colour pixels (last axis R, G, B[, A]) as their luminance, in the same dtype."""
    if channels not in (3, 4):
        raise ImageReadError(f"{name} has {channels} values per pixel; frames are grey or colour (RGB).")
    grey = arr[..., :3].astype(np.float32) @ LUMA
    return np.rint(grey).astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else grey


def _say_grey(name: str) -> None:
    warnings.warn(ImageReadWarning(f"{name}: colour frames are read as their grey levels (luminance); the "
                                   "time-series models take one value per pixel."), stacklevel=4)


# --- multi-frame (cine) DICOM -----------------------------------------------------------------
def dicom_headers(folder: Path) -> dict:
    """Each DICOM file below ``folder`` with its header (a SimpleITK file reader after ReadImageInformation; None
    when ITK cannot read it): read once for every pass over the folder (SEG objects, time series, series)."""
    return {f: _info(f) for f in _walk_files(folder) if _looks_dicom(f)}


def _info(path: Path) -> Optional[sitk.ImageFileReader]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader


def _cine_dicom(path: Path, info) -> Optional[ImageData]:
    """A multi-frame DICOM whose frames are times: Frame Time or Frame Time Vector present, or an ultrasound
    multi-frame image (a loop; an enhanced US volume's frames are slices), then a step of one frame."""
    if info is None or (_number(_tag(info, FRAMES)) or 1) < MIN_FRAMES:
        return None
    step = _number(_tag(info, FRAME_TIME))
    vector = _numbers(_tag(info, "0018|1065"))
    if step is None and len(vector) > 1:
        step = float(np.median(vector[1:]))
    loop = _tag(info, "0008|0060") == "US" and _tag(info, "0008|0016") != US_VOLUME
    if step is None and not loop:
        return None  # frames are slices, not times
    img = sitk.ReadImage(str(path))
    calibrate(img, path)
    data = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() > 1:
        data = _grey(data, path.name, img.GetNumberOfComponentsPerPixel())
        _say_grey(path.name)
    g3 = Geometry.from_sitk(img)  # (frame, y, x): the frame axis is time, not space
    geo = Geometry(g3.spacing[1:], g3.origin[1:], g3.direction[1:, 1:])
    meta = {"source": str(path), "modality": _tag(info, "0008|0060"), "series_uid": _tag(info, "0020|000e"),
            "window": _window(info)}  # for the values as read (a MONOCHROME1 file's mirrored)
    item = ImageData(data, geo, _stem(path), "image", meta)
    return mark_time_series(item, *((step / 1000.0, "s") if step is not None else (1.0, "frame")))


# --- DICOM series with temporal positions ------------------------------------------------------
def _temporal_dicom_folder(folder: Path, headers: dict) -> list[ImageData]:
    """The folder's cine files and its series whose slice positions repeat over time (``headers``: its DICOM files'
    headers, see :func:`dicom_headers`)."""
    out, names, windows = [], {}, {}
    groups = defaultdict(list)  # series UID -> [(time, position, along normal, file, trigger)]
    for f, info in headers.items():
        if info is None:
            continue
        if (_number(_tag(info, FRAMES)) or 1) > 1:
            cine = _cine_dicom(f, info)
            out += [cine] if cine is not None else []
            continue
        when = _number(_tag(info, TEMPORAL_POSITION) or _tag(info, TRIGGER_TIME))
        if when is None:
            continue
        uid = _tag(info, "0020|000e")
        names[uid] = _tag(info, "0008|103e") or f"{folder.name} {uid[-8:]}".strip()
        windows.setdefault(uid, _window(info))
        groups[uid].append((when, tuple(np.round(_numbers(_tag(info, POSITION)), 2)), _along_normal(info), str(f),
                            _number(_tag(info, TRIGGER_TIME))))
    for uid, entries in groups.items():
        frames = _time_points(entries, folder)
        if frames is not None:
            out.append(_stack_times(uid, names[uid], frames, folder, len(entries), windows[uid]))
    return out


def _time_points(entries: list, folder: Path) -> Optional[list]:
    """The entries of each time point (sorted along the slice normal) when every slice position is seen at the
    same number (two or more) of distinct times; None when each position has one time (a volume whose slices
    were acquired one after another, a repeated slice or two among them) or repeats a time (not a time series)."""
    at = defaultdict(list)
    for e in entries:
        at[e[1]].append(e)
    counts = {len(v) for v in at.values()}
    if min(counts) < MIN_FRAMES or any(len({e[0] for e in v}) < len(v) for v in at.values()):
        return None
    if len(counts) > 1:
        raise ImageReadError(f"{folder.name}: the slice positions have different numbers of time points "
                             f"({sorted(counts)}); the series is incomplete.")
    columns = [sorted(v) for v in at.values()]
    return [sorted((c[k] for c in columns), key=lambda e: e[2]) for k in range(counts.pop())]


def _stack_times(uid: str, name: str, time_points: list, folder: Path, n_files: int, window) -> ImageData:
    frames, triggers, geo = [], [], None
    for here in time_points:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([e[3] for e in here])
        try:
            img = reader.Execute()
        except RuntimeError as err:
            raise ImageReadError(f"{folder.name}: time point {here[0][0]:g} cannot be read ({_first_line(err)}).") from None
        frames.append(sitk.GetArrayFromImage(img))
        known = [e[4] for e in here if e[4] is not None]
        triggers.append(np.mean(known) if known else np.nan)
        geo = geo or Geometry.from_sitk(img)
    diffs = np.diff(np.asarray(triggers, float))
    step, unit = (float(np.nanmedian(diffs)) / 1000.0, "s") if np.isfinite(diffs).any() else (1.0, "frame")
    first = min(e[3] for here in time_points for e in here)
    meta = {"source": str(folder), "first_file": str(first), "series_uid": uid, "n_files": n_files, "window": window}
    item = ImageData(np.stack(frames), geo, name, "image", meta)
    return mark_time_series(item, step, unit)


def _along_normal(info) -> float:
    pos, ori = _numbers(_tag(info, POSITION)), _numbers(_tag(info, ORIENTATION))
    if len(pos) != 3:
        return 0.0
    normal = np.cross(ori[:3], ori[3:]) if len(ori) == 6 else np.array([0.0, 0.0, 1.0])
    return float(np.dot(pos, normal))


# --- a folder's own image files: 2D frames and volumes ---------------------------------------------
def has_image_files(folder: "str | os.PathLike") -> bool:
    """A folder whose own files open: two or more 2D images (frames of one time series) or volume files."""
    p = Path(folder)
    if not p.is_dir():
        return False
    names = [f.name.lower() for f in _image_files(p)]
    return any(n.endswith(VOLUME_EXTENSIONS) for n in names) or sum(n.endswith(RASTER_EXTENSIONS) for n in names) >= MIN_FRAMES


def split_image_files(folder: "str | os.PathLike") -> tuple[list[Path], list[Path]]:
    """The folder's own image files as (the frames of its one time series, [] when none; the files that open one
    layer each: volumes, and 2D files too few to be frames), each header read once."""
    files = _image_files(Path(folder))
    frames = _frame_files(files)
    frames = frames if len(frames) >= MIN_FRAMES else []
    return frames, [f for f in files if f not in frames]


def _image_files(folder: Path) -> list[Path]:
    files = [f for f in folder.iterdir() if f.is_file() and f.name.lower().endswith(VOLUME_EXTENSIONS + RASTER_EXTENSIONS)
             and not f.name.startswith(".")]
    key = lambda f: [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", f.name)]
    return sorted(files, key=key)  # frame_2 before frame_10


def _frame_files(files: list[Path]) -> list[Path]:
    """The frames of one time series among a folder's image files: its 2D raster images (two or more) when they
    are of one size, else its volume files when they are two or more images of one size named alike but for
    numbers (visit_1, visit_2: a 4D CT stored one file per time point), none named as labels; [] otherwise (a case
    with its label map, the contrasts of a case such as t1/t2/flair, a dataset of cases or of X-ray exports)."""
    rasters = [f for f in files if f.name.lower().endswith(RASTER_EXTENSIONS) and not LABEL_NAME.search(f.name)]
    if len(rasters) >= MIN_FRAMES and len({_size(f) for f in rasters}) == 1:
        return rasters
    volumes = [f for f in files if f not in rasters]
    if len(volumes) < MIN_FRAMES or not _numbered_alike(volumes) or any(LABEL_NAME.search(f.name) for f in volumes):
        return []  # decided by the names, before any header is read
    sizes = {_size(f) for f in volumes}
    return volumes if len(sizes) == 1 and None not in sizes else []


def _numbered_alike(files: list[Path]) -> bool:
    """True when the names differ only in numbers (visit_1, visit_2), and not in a T1/T2-style contrast number."""
    parts = [re.split(r"(\d+)", f.name.lower()) for f in files]  # text, number, text, ...
    if len({len(p) for p in parts}) != 1:
        return False
    for i, column in enumerate(zip(*parts)):
        if len(set(column)) > 1 and (i % 2 == 0 or parts[0][i - 1].endswith("t")):
            return False
    return True


def _size(f: Path) -> Optional[tuple]:
    info = _info(f)
    return None if info is None else tuple(info.GetSize())  # None: read_image then says what is wrong with it


def _frames_series(folder: Path, files: list[Path]) -> list[ImageData]:
    """The folder's frames ``files`` (see :func:`split_image_files`) as one time series; [] for none."""
    if len(files) < MIN_FRAMES:
        return []
    frames, geo, colour = [], None, False
    for f in files:
        try:
            img = sitk.ReadImage(str(f))
        except RuntimeError as err:
            raise ImageReadError(f"Frame {f.name} cannot be read ({_first_line(err)}).") from None
        arr = sitk.GetArrayFromImage(img)
        if img.GetNumberOfComponentsPerPixel() > 1:
            arr, colour = _grey(arr, f"Frame {f.name}", img.GetNumberOfComponentsPerPixel()), True
        if frames and arr.shape != frames[0].shape:
            raise ImageReadError(f"Frame {f.name} has shape {arr.shape} but {files[0].name} has "
                                 f"{frames[0].shape}; all frames of a series must match.")
        frames.append(arr)
        geo = geo or Geometry.from_sitk(img)
    if colour:
        _say_grey(folder.name)
    if frames[0].ndim == 3 and frames[0].shape[0] == 1:
        frames, geo = [f[0] for f in frames], Geometry(geo.spacing[1:], geo.origin[1:], geo.direction[1:, 1:])
    item = ImageData(np.stack(frames), geo, folder.name, "image", {"source": str(folder), "n_files": len(files)})
    return [mark_time_series(item, 1.0, "frame")]


# --- writing --------------------------------------------------------------------------------------
def write_time_series(path: "str | os.PathLike", data: np.ndarray, geometry: Optional[Geometry] = None,
                      step: float = 1.0, *, overwrite: bool = False) -> str:
    """Write (t, y, x) or (t, z, y, x) as a 4D image whose fourth spacing is the time step."""
    p = Path(path).expanduser()
    ext = next((e for e in sorted(WRITE_EXTENSIONS, key=len, reverse=True) if p.name.lower().endswith(e)), None)
    if ext is None or ext in (".mhd", ".nhdr"):
        raise UserError(f"Cannot write {p.name}: write a time series to a single file (.nii.gz, .nii, .nrrd, .mha).")
    arr = np.asarray(data)
    if arr.ndim not in (3, 4):
        raise UserError(f"A time series is (t, y, x) or (t, z, y, x); got shape {arr.shape}.")
    arr = storable(arr, p.name)
    geo = geometry or Geometry.identity(arr.ndim - 1)
    if geo.ndim != arr.ndim - 1:
        raise UserError(f"Cannot write {arr.ndim - 1}D frames with {geo.ndim}D geometry.")
    check_writable(p, overwrite)
    if arr.ndim == 3:  # 2D frames: one slice thick
        arr = arr[:, None]
        geo = Geometry((1.0,) + geo.spacing, (0.0,) + geo.origin,
                       np.block([[np.eye(1), np.zeros((1, 2))], [np.zeros((2, 1)), geo.direction]]))
    if arr.dtype == np.int64:
        arr = arr.astype(np.int32)
    img = sitk.GetImageFromArray(arr, isVector=False)  # (x, y, z, t)
    direction = np.eye(4)
    direction[1:, 1:] = geo.direction
    Geometry((float(step),) + geo.spacing, (0.0,) + geo.origin, direction).apply_to_sitk(img)
    try:
        with replacing(p) as tmp:  # check_writable refused an existing file
            sitk.WriteImage(img, str(tmp), True)
    except (OSError, RuntimeError) as err:
        raise UserError(f"Cannot write {p}: {in_users_names(_first_line(err), p)}") from None
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
