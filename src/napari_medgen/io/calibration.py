"""A 2D file's pixel size: an ultrasound file gives it in its regions (Sequence of Ultrasound Regions: Physical
Delta X/Y in the units Physical Units X/Y Direction name), not in Pixel Spacing; a file that gives none (an X-ray
written with PixelSpacing 0, a PNG export) is read at 1 mm per pixel, with a note saying so."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Optional

import numpy as np

CM = 3  # Physical Units X/Y Direction code for cm (others: none, %, dB, seconds, Hz, ...)
SAME = 1e-6  # relative difference under which two regions' pixel sizes agree
NO_SPACING = " gives no pixel spacing, "  # in the note on a picture without a pixel size (a DICOM's names its tag)


def region_spacing(path) -> Optional[tuple[float, float]]:
    """The pixel size (x, y) in mm that the file's regions in cm give, when the file has no Pixel Spacing and
    those regions agree (one region, or the same deltas: a dual B-mode view); None otherwise (M-mode and Doppler
    regions, in seconds or cm/s, are not spatial and do not count)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "SequenceOfUltrasoundRegions" not in ds or _given(ds.get("PixelSpacing")):
            return None
        deltas = {(float(r.PhysicalDeltaX), float(r.PhysicalDeltaY)) for r in ds.SequenceOfUltrasoundRegions
                  if r.get("PhysicalUnitsXDirection") == CM and r.get("PhysicalUnitsYDirection") == CM}
    except (AttributeError, KeyError, ValueError, TypeError, OSError, InvalidDicomError):
        return None
    if not deltas:
        return None
    first = np.asarray(next(iter(deltas)))
    if first.min() <= 0 or any(not np.allclose(d, first, rtol=SAME, atol=0) for d in deltas):
        return None
    return float(first[0] * 10), float(first[1] * 10)


def calibrate(img, path) -> None:
    """Set a SimpleITK image read from ``path`` to its ultrasound regions' pixel size, when ITK found none
    (1 mm) and the regions give one (:func:`region_spacing`)."""
    spacing = img.GetSpacing()
    if not np.allclose(spacing[:2], 1.0):
        return
    xy = region_spacing(path)
    if xy is not None:
        img.SetSpacing(xy + tuple(spacing[2:]))


def _given(value) -> bool:
    """True for a Pixel Spacing with positive values (some files write 0\\0)."""
    try:
        return bool(value) and min(float(v) for v in value) > 0
    except (TypeError, ValueError):
        return False


def spacing_notes(img, name: str, dicom: bool = True) -> list:
    """A sentence when a file gives no pixel spacing (a DICOM's absent, or 0 as some X-rays write; a picture's),
    which ITK takes as 1 mm; none when a spacing came from somewhere (PixelSpacing, ImagerPixelSpacing, regions)."""
    if not np.allclose(img.GetSpacing()[:2], 1.0):
        return []
    given = img.GetMetaData("0028|0030").strip() if dicom and img.HasMetaDataKey("0028|0030") else ""
    if _given(given.split("\\")):
        return []
    said = f" (PixelSpacing {given.replace(chr(92), '/') or 'absent'})" if dicom else ""
    return [f"{name} gives no pixel spacing{said}, so 1 mm per pixel is assumed; its sizes in mm are not real."]


@contextmanager
def unscaled_said_once(noun: str, then: tuple, *, keep=None, share=list, stacklevel: int = 3):
    """Reading files inside: the reader's notes that a picture gives no pixel spacing are collected, other warnings
    passed on; after, the notes of the files ``keep`` takes (default all; ``share``: every process's names to one)
    are said once: a file's own sentence, or "N ``noun`` (first, ...) give no pixel spacing, ...", ending in
    ``then`` (for one file, for several)."""
    from .read import ImageReadWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if NO_SPACING not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    said = dict.fromkeys(str(w.message).split(NO_SPACING)[0] for w in caught if NO_SPACING in str(w.message))
    names = share([n for n in said if keep is None or keep(n)])
    if names:
        some = names[0] if len(names) == 1 else f"{len(names)} {noun} ({names[0]}, ...)"
        warnings.warn(ImageReadWarning(f"{some} give{'s' * (len(names) == 1)} no pixel spacing, so 1 mm per pixel is "
                                       f"assumed; {then[len(names) > 1]}"), stacklevel=stacklevel)
