"""Reading NIfTI, NRRD, MetaImage and DICOM (files and series folders) via SimpleITK."""
from __future__ import annotations

import gzip
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .calibration import spacing_notes, unscaled_said_once
from .dicom import NOT_IMAGES, DicomSeriesError, read_frames, read_series
from .display import dicom_window, eight_bit_colour, initial_contrast
from .geometry import Geometry
from .header import nifti_header, voxel_bytes
from .nifti_shear import is_nifti2, is_shear_error, read_sheared, sform_sheared
from .nifti_slice import vector_slice_geometry
from ..errors import UserError
from ..naming import EXTENSIONS, LABEL_NAME, PICTURES, distinct, image_stem

sitk.ProcessObject_SetGlobalWarningDisplay(False)
MAX_LABELS = 128  # values of an 8-bit file named as labels (TotalSegmentator: 117 classes); a scan has more levels
MAX_REGIONS = 1000  # values of a wider file named as labels: atlases have hundreds (FreeSurfer's Destrieux: 191)


class ImageReadError(UserError):
    """A file or folder that cannot be read as a medical image."""


class ImageReadWarning(UserWarning):
    """Something the reader changed or left out (skipped series, regularised slices): one sentence."""


@dataclass
class ImageData:
    """A voxel array in napari (z, y, x) order with its geometry."""

    data: np.ndarray
    geometry: Geometry
    name: str = "image"
    kind: str = "image"  # "image" or "labels"
    metadata: dict = field(default_factory=dict)
    rgb: bool = False

    def layer_data(self) -> tuple:
        """The napari LayerData tuple ``(data, kwargs, layer_type)``."""
        kwargs = {"name": self.name, "metadata": dict(self.metadata, geometry=self.geometry.to_dict()),
                  **self.geometry.layer_kwargs(self.data.ndim - (1 if self.rgb else 0))}
        if self.rgb:
            kwargs["rgb"] = True
        if self.metadata.get("axis_labels"):  # e.g. ("t", "z", "y", "x") for a time series
            kwargs["axis_labels"] = tuple(self.metadata["axis_labels"])
        elif np.ndim(self.data) == 3 and self.geometry.ndim == 3:  # napari's slider would read "-3"
            kwargs["axis_labels"] = ("z", "y", "x")
        window = initial_contrast(self)
        if window is not None:
            kwargs["contrast_limits"] = window
        names = self.metadata.get("class_names")
        if self.kind == "labels" and names:  # the status bar then names the class under the cursor
            kwargs["features"] = {"index": list(range(len(names))), "class": list(names)}
        return (self.data, kwargs, self.kind)


def is_supported(path: "str | os.PathLike") -> bool:
    """True for files with a known extension, DICOM files of any name (IM0001) and folders that contain DICOM files."""
    p = Path(path)
    if p.is_dir():
        from .timeseries import has_image_files
        return any(_looks_dicom(f) for f in _walk_files(p, limit=200)) or has_image_files(p)
    return str(p).lower().endswith(EXTENSIONS) or _looks_dicom(p)


def read_path(path: "str | os.PathLike") -> list[ImageData]:
    """Read a file or a folder; a folder gives one item per time series (cine file, DICOM series whose slice
    positions repeat over time, two or more 2D pictures of one size), other DICOM series and image file in it,
    then its DICOM SEG objects as Labels on their source series' grid, each under a name of its own."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p} does not exist.")
    from .timeseries import dicom_headers, read_time_series
    if p.is_file():
        if _looks_dicom(p) and _is_seg(p):
            return [_read_seg(p, [])]
        return read_time_series(p) or [read_image(p)]
    headers = dicom_headers(p)  # each DICOM header read once, for the SEG objects, the time series and the series
    segs = [f for f, info in headers.items() if _is_seg(f, info)]
    if not segs:
        return _named_apart(_read_folder(p, headers, required=True))
    with warnings.catch_warnings():  # the SEG series it skips are read below
        warnings.filterwarnings("ignore", "Skipped a DICOM series .*SEG objects", ImageReadWarning)
        images = _read_folder(p, headers, required=False)  # a folder may hold only SEG objects
    return _named_apart(images + _read_segs(p, segs, images))


def _named_apart(items: list[ImageData]) -> list[ImageData]:
    """A folder's items under distinct names (layers, and the batch verbs' outputs, are named by them): a name
    several share gets its series number, else its folder's name, else the end of its series UID."""
    hints = [[f"series {it.metadata['series_number']}" if it.metadata.get("series_number") else "",
              Path(str(it.metadata.get("source", ""))).name, str(it.metadata.get("series_uid") or "")[-8:]]
             for it in items]
    for item, name in zip(items, distinct([it.name for it in items], hints)):
        item.name = name
    return items


def _read_folder(p: Path, headers: dict, required: bool) -> list[ImageData]:
    """A folder's time series, DICOM series and volume files (``headers``: its DICOM files' headers); one sentence
    when it holds none and ``required``."""
    from .timeseries import read_time_series, split_image_files
    frames, singles = split_image_files(p)
    series = read_time_series(p, frames, headers) or []
    volumes = _read_files(singles)
    taken = {it.metadata.get("series_uid") for it in series} - {None}
    if not headers and (series or volumes):
        return series + volumes
    return series + _read_dicom_folder(p, headers, skip=taken, required=required and not (series or volumes)) + volumes


def _read_files(files: list[Path]) -> list[ImageData]:
    """Each of a folder's own image files; that its pictures give no pixel spacing is said once for them all."""
    with unscaled_said_once("pictures", ("its sizes in mm are not real.", "their sizes in mm are not real."),
                            stacklevel=6):
        return [read_image(f) for f in files]


def _is_seg(f: Path, info=None) -> bool:
    """True for a DICOM SEG object, told by its header (``info``, a SimpleITK file reader) when ITK read it."""
    from ..pacs.files import SEG_SOP_CLASS, is_seg_file
    if info is None:
        return is_seg_file(f)
    return _tag(info, "0008|0060") == "SEG" or _tag(info, "0008|0016") == SEG_SOP_CLASS


def _read_seg(f: Path, images: list[ImageData]) -> ImageData:
    from ..pacs.seg import read_seg_file
    return read_seg_file(f, images)


def _read_segs(p: Path, segs: list[Path], images: list[ImageData]) -> list[ImageData]:
    """The folder ``p``'s SEG objects as Labels; an unreadable one is skipped with a warning, as a bad series is."""
    out, skipped = [], []
    for f in segs:
        try:
            out.append(_read_seg(f, images))
        except (UserError, OSError, ValueError) as err:
            skipped.append(f"{f.relative_to(p)}: {_first_line(err)}")
    if not (images or out):
        raise ImageReadError(f"{p} holds no readable DICOM image series, and its SEG cannot be read ({skipped[0]}).")
    for line in skipped:
        warnings.warn(ImageReadWarning(f"Skipped the DICOM SEG {line}"), stacklevel=3)
    return out


def opened(item):
    """``item`` read from its file or DICOM folder when it is a path (str or PathLike), else ``item`` itself:
    every function that takes an image also takes its file."""
    return read_image(item) if isinstance(item, (str, os.PathLike)) else item


def read_image(path: "str | os.PathLike") -> ImageData:
    """Read one image file (NIfTI, NRRD, MetaImage, single DICOM) or a folder holding one DICOM series,
    keeping dtype and geometry."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p} does not exist.")
    if p.is_dir():
        items = read_path(p)
        if len(items) > 1:
            names = ", ".join(f"'{it.name}'" for it in items[:4]) + (", ..." if len(items) > 4 else "")
            raise ImageReadError(f"{p} holds {len(items)} series ({names}); give the folder of one of them.")
        return items[0]
    head = b""
    try:
        decompressed = _check_gzip(p)
        _check_size(p, decompressed)
        head = nifti_header(p, decompressed)
        if _looks_dicom(p):  # an enhanced multi-frame's frames by their own positions
            img, arr, geo, notes, extra = read_frames(p, _stem(p))
        else:
            img, arr, geo, notes, extra = _read_file(p, head), None, None, [], {}
    except (RuntimeError, OSError, EOFError) as err:
        if is_nifti2(head):
            raise ImageReadError(f"{p.name} is a NIfTI-2 file, which this reader cannot open; save it as NIfTI-1 "
                                 "(e.g. with nibabel) first.") from None
        raise ImageReadError(f"Cannot read {p.name}: the file is corrupt, truncated or not an image "
                             f"({_first_line(err)}).") from None
    meta = {"source": str(p), "modality": _tag(img, "0008|0060"), "window": _window(img), **extra}
    if geo is None and (_looks_dicom(p) or p.name.lower().endswith(PICTURES)):  # enhanced: spacing per frame
        notes = notes + spacing_notes(img, p.name, _looks_dicom(p))
    item = _with_notes(_to_image_data(img, _stem(p), meta, _looks_dicom(p)), arr, geo, notes)
    volume = vector_slice_geometry(head) if img.GetDimension() == 2 and img.GetNumberOfComponentsPerPixel() > 1 else None
    if volume is not None:  # a NIfTI colour slice, which ITK reads 2D: the one-slice volume it is, placed below
        item.data, item.geometry = np.expand_dims(item.data, 0 if item.rgb else 1), volume
    if img.GetDimension() == 4:  # (t, z, y, x): label the time axis, keep the time step
        from .timeseries import from_4d_image
        return from_4d_image(img, item)
    return _one_slice(item)


def _read_file(p: Path, head: bytes) -> sitk.Image:
    """SimpleITK's reading of ``p``; a NIfTI file (``head``: its header bytes, b"" for other files) with a
    sheared sform (which ITK refuses, or reads by its qform) on a rectangular grid, with a warning."""
    try:
        img = sitk.ReadImage(str(p))
        if not sform_sheared(head):
            return img
    except RuntimeError as err:
        if not (head and is_shear_error(err)):
            raise
    try:
        img, note = read_sheared(p)
    except ValueError as err:  # skewed in-plane axes: one sentence
        raise ImageReadError(str(err)) from None
    warnings.warn(ImageReadWarning(note), stacklevel=4)
    return img


def _to_image_data(img, name: str, meta: dict, dicom: bool = False) -> ImageData:
    """``img`` as an ImageData; colour is RGB(A) of 8 bits, as is a ``dicom`` file's colour of 16 or 32 bits."""
    ncomp = img.GetNumberOfComponentsPerPixel()
    data = sitk.GetArrayFromImage(img)
    ndim = img.GetDimension()
    rgb = False
    if ncomp > 1:
        if ncomp in (3, 4) and dicom and data.dtype.kind == "u" and data.dtype != np.uint8:
            data, kept = eight_bit_colour(data)
            if not kept:
                warnings.warn(ImageReadWarning(f"{name}: its {8 * img.GetSizeOfPixelComponent()}-bit colour is "
                                               "shown as 8-bit colour (values rounded)."), stacklevel=3)
        if ncomp in (3, 4) and data.dtype == np.uint8:
            rgb = True
        else:  # vector image: channels first, shown as an extra leading axis
            data = np.moveaxis(data, -1, 0)
    if ndim == 4:  # (t, z, y, x): geometry of the spatial part only
        geo = Geometry(img.GetSpacing()[2::-1], img.GetOrigin()[2::-1],
                       np.asarray(img.GetDirection()).reshape(4, 4)[:3, :3][::-1, ::-1])
    else:
        geo = Geometry.from_sitk(img)
    kind = "labels" if (not rgb and _label_like(data, name)) else "image"
    return ImageData(data, geo, name, kind, meta, rgb)


def _one_slice(item: ImageData) -> ImageData:
    """A volume of one voxel along a spatial axis (any axis, any orientation: a single DICOM slice, a sagittal
    NIfTI slice) as 2D data, the other two axes in their stored order, whose geometry keeps its place in space."""
    geo = item.geometry
    lead = np.ndim(item.data) - geo.ndim - int(item.rgb)  # a vector image's channels come first
    if geo.ndim != 3 or lead not in (0, 1):
        return item
    ones = [a for a, n in enumerate(np.shape(item.data)[lead:lead + 3]) if n == 1]
    if ones:
        item.data = np.ascontiguousarray(np.take(item.data, 0, axis=lead + ones[0]))
        item.geometry = Geometry.of_slice(geo, ones[0])
    return item


def _label_like(data: np.ndarray, name: str) -> bool:
    if not np.issubdtype(data.dtype, np.integer):
        return False
    if data.dtype.itemsize > 2 and not LABEL_NAME.search(name):
        return False
    sample = data.ravel()[:: max(1, data.size // 200_000)]
    if sample.min() < 0:
        return False
    values = np.unique(sample)
    if LABEL_NAME.search(name):
        return values.size <= (MAX_LABELS if data.dtype.itemsize == 1 else MAX_REGIONS)
    return values.size <= 8  # a scan of 8 or 16 bits has far more grey levels


def _read_dicom_folder(folder: Path, files, skip=(), required: bool = True) -> list[ImageData]:
    """One item per DICOM series in ``folder`` (and below; ``files``: its DICOM files), but those of UIDs in
    ``skip`` (read already); one sentence when there is none and ``required``."""
    dirs = sorted({f.parent for f in files})
    out: list[ImageData] = []
    skipped: list[str] = []
    for d in dirs:
        series = [(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), sid), sid)
                  for sid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)) or () if sid not in skip]
        for files, sid in sorted(series, key=lambda fs: min(fs[0])):  # in the order of their files' names
            try:
                out.append(_read_series(files, sid))
            except (RuntimeError, ImageReadError, DicomSeriesError) as err:
                skipped.append(f"{Path(files[0]).parent.name}: {_first_line(err)}")
    if not out and required:
        why = "; ".join(x.rstrip(".") for x in skipped) if skipped else "no image series found (only non-image objects such as RT-STRUCT or SEG?)"
        raise ImageReadError(f"{folder} holds no readable DICOM image series: {why}.")
    for line in skipped:
        warnings.warn(ImageReadWarning(f"Skipped a DICOM series in {line}"), stacklevel=4)
    return out


def _read_series(files: tuple, sid: str) -> ImageData:
    info = sitk.ImageFileReader()
    info.SetFileName(files[0])
    info.LoadPrivateTagsOn()
    info.ReadImageInformation()
    modality = _tag(info, "0008|0060")
    if modality in NOT_IMAGES:
        raise ImageReadError(f"{modality} objects are not images")
    number, given = _tag(info, "0020|0011"), _tag(info, "0008|103e")
    desc = given or f"{modality or 'DICOM'} series {number or sid[-12:]}"  # "CT series 3", as the scanner lists it
    name = desc if given or len(files) > 1 else _stem(files[0])  # an X-ray or US file: named as a volume file is
    img, arr, geo, notes, extra = read_series(files, name)
    meta = {"source": str(Path(files[0]).parent), "first_file": str(min(files)), "modality": modality,
            "series_uid": sid, "series_number": number, "series_description": desc, "n_files": len(files),
            "window": _window(info), **extra}
    item = _one_slice(_with_notes(_to_image_data(img, name, meta, dicom=True), arr, geo, notes))
    item.kind = "image"
    return item


def _with_notes(item: ImageData, arr, geo, notes: list) -> ImageData:
    """``item`` with the DICOM reader's corrected array and geometry (when not None) and its notes, each a warning."""
    if geo is not None:  # slices regularised (true positions, tilt undone) or a stack of differently oriented images
        item.data, item.geometry = np.ascontiguousarray(arr), geo
    if notes:
        item.metadata["reader_notes"] = notes
    for note in notes:
        warnings.warn(ImageReadWarning(note), stacklevel=5)
    return item


def _check_size(p: Path, decompressed) -> None:
    """Refuse a file shorter than its header says, before anything is allocated."""
    try:
        sizes = voxel_bytes(p, decompressed)
    except (RuntimeError, OSError, ValueError):
        return  # SimpleITK's reading then gives its own reason
    if sizes is not None and sizes[1] < sizes[0]:
        raise ImageReadError(f"Cannot read {p.name}: the file is truncated (its header announces {sizes[0]:,} bytes "
                             f"of voxels, the file holds {max(sizes[1], 0):,}).")


def _check_gzip(p: Path) -> "tuple[int, bytes] | None":
    """ITK reads a truncated .gz silently (zero-filled); a full decompression pass catches it.

    Returns the decompressed length and first bytes (the header), or None for other files."""
    if p.suffix.lower() != ".gz":
        return None
    with gzip.open(p, "rb") as fh:
        head = fh.read(1024)
        total = len(head)
        while chunk := fh.read(1 << 24):
            total += len(chunk)
    return total, head


def _walk_files(folder: Path, limit: int | None = None):
    n = 0
    for root, dirs, names in os.walk(folder):
        dirs.sort()  # one order on every file system
        for name in sorted(names):
            yield Path(root) / name
            n += 1
            if limit and n >= limit:
                return


def _looks_dicom(f: Path) -> bool:
    """A .dcm file, or a file named without extension (IM0001, as CD and PACS exports name them) or by a UID
    (1.2.840.113619.2.55.3.12) with the DICOM preamble."""
    if f.suffix.lower() == ".dcm":
        return True
    if (f.suffix and not f.suffix[1:].isdigit()) or not f.is_file():
        return False
    try:
        with open(f, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _tag(obj, key: str) -> str:
    """A DICOM tag ("gggg|eeee") of a SimpleITK image or file reader, stripped; "" if absent."""
    return obj.GetMetaData(key).strip() if obj.HasMetaDataKey(key) else ""


def _window(obj) -> tuple[float, float] | None:
    """The display window of a SimpleITK image's or file reader's DICOM tags, for its values as read."""
    return dicom_window(lambda key: _tag(obj, key))


def _stem(p: Path) -> str:
    """The file's name less its image extension (:func:`naming.image_stem`, the one rule)."""
    return image_stem(Path(p).name)


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    msg = lines[-1] if lines else type(err).__name__
    return msg[:200]
