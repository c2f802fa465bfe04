"""Finding DICOM SEG files and the headers of their source series on disk (pydicom only, fast)."""
from __future__ import annotations

import os
from pathlib import Path

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


def _dicom_files(folder: Path):
    for root, _dirs, names in os.walk(folder):
        for name in sorted(names):
            f = Path(root) / name
            if f.suffix.lower() == ".dcm" or not f.suffix:
                yield f


def find_seg_files(path: "str | os.PathLike") -> list[Path]:
    """The SEG files at ``path`` (a file, or a folder searched recursively)."""
    p = Path(path)
    if p.is_file():
        return [p] if is_seg_file(p) else []
    return [f for f in _dicom_files(p) if is_seg_file(f)]


def headers_in(folder: "str | os.PathLike", series_uid: str) -> list[pydicom.Dataset]:
    """Headers (no pixels) of the instances of ``series_uid`` in ``folder`` (searched recursively)."""
    out = []
    for f in _dicom_files(Path(folder)):
        ds = _header(f, ["SeriesInstanceUID"])
        if ds is not None and str(getattr(ds, "SeriesInstanceUID", "")) == series_uid:
            full = _header(f, None)
            if full is not None:
                out.append(full)
    return out
