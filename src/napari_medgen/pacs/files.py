"""Finding DICOM SEG files and the headers of their source series on disk (pydicom only, fast)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Collection

import pydicom

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _header(path: Path, tags: list) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
    except Exception:  # not DICOM: pydicom raises many kinds of errors
        return None


def is_seg_file(path: "str | os.PathLike") -> bool:
    """True for a DICOM file holding a Segmentation object."""
    ds = _header(Path(path), ["SOPClassUID", "Modality"])
    return ds is not None and (str(getattr(ds, "SOPClassUID", "")) == SEG_SOP_CLASS
                               or getattr(ds, "Modality", "") == "SEG")


def _dicom_folders(folder: Path):
    """Each folder below ``folder`` with its DICOM-looking files, in a stable order."""
    for root, dirs, names in os.walk(folder):
        dirs.sort()  # the same copy of a duplicated file wins every time
        yield [Path(root) / n for n in sorted(names) if Path(n).suffix.lower() == ".dcm" or not Path(n).suffix]


def _dicom_files(folder: Path):
    for files in _dicom_folders(folder):
        yield from files


def find_seg_files(path: "str | os.PathLike") -> list[Path]:
    """The SEG files at ``path`` (a file, or a folder searched recursively)."""
    p = Path(path)
    if p.is_file():
        return [p] if is_seg_file(p) else []
    return [f for f in _dicom_files(p) if is_seg_file(f)]


def headers_in(folder: "str | os.PathLike", series_uid: str,
               instance_uids: Collection[str] = ()) -> list[pydicom.Dataset]:
    """Headers (no pixels) of the instances of ``series_uid`` below ``folder``, one per SOP Instance UID
    (further copies are ignored).  With ``instance_uids`` (those a SEG names) the walk stops after the
    folder where the last of them is found; that folder's other instances of the series are kept."""
    wanted = set(instance_uids)
    found: dict[str, pydicom.Dataset] = {}
    for files in _dicom_folders(Path(folder)):
        for f in files:
            ds = _header(f, ["SeriesInstanceUID", "SOPInstanceUID"])
            uid = str(getattr(ds, "SOPInstanceUID", ""))
            if ds is None or uid in found or str(getattr(ds, "SeriesInstanceUID", "")) != series_uid:
                continue
            full = _header(f, None)
            if full is not None:
                found[uid] = full
        if wanted and wanted <= found.keys():
            break
    return list(found.values())
