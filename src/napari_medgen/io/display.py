"""How an image layer first looks: the file's DICOM display window, else a soft-tissue window for CT
(napari's default, the full value range, shows a head CT's brain as one flat grey between air and bone)."""
from __future__ import annotations

import numpy as np

from ..data.normalize import apparent_modality

CT_SOFT_TISSUE = (-160.0, 240.0)  # level 40 HU, width 400 HU


def dicom_window(tag) -> tuple[float, float] | None:
    """(low, high) from Window Center / Width (the first of several) for the values as read, None if absent or
    unusable; ``tag("gggg|eeee")`` gives a tag's value ("" if absent).

    ITK reads a MONOCHROME1 image (0 = white) inverted, ``v`` as ``mirror - v`` (bone bright, as MONOCHROME2),
    while the window is given for ``v``: it is mirrored too."""
    try:
        c, w = float(tag("0028|1050").split("\\")[0]), float(tag("0028|1051").split("\\")[0])
    except ValueError:
        return None
    if w < 1:
        return None
    if tag("0028|0004").upper() != "MONOCHROME1":
        return (c - w / 2, c + w / 2)
    try:
        bits, signed = int(tag("0028|0101") or 16), tag("0028|0103") == "1"
        slope, intercept = float(tag("0028|1053") or 1), float(tag("0028|1052") or 0)
    except ValueError:
        return None
    mirror = slope * (-1 if signed else 2 ** bits - 1) + 2 * intercept  # lowest + highest stored value, rescaled
    return (mirror - c - w / 2, mirror - c + w / 2)


def initial_contrast(item) -> tuple[float, float] | None:
    """Contrast limits for a new layer of ``item`` (an ImageData), or None for napari's own."""
    if item.kind != "image" or item.rgb:
        return None
    if item.metadata.get("window"):
        return tuple(float(v) for v in item.metadata["window"])
    if apparent_modality(item.data, item.metadata.get("modality")) == "CT":
        return CT_SOFT_TISSUE
    return None


def eight_bit_colour(data: np.ndarray) -> tuple[np.ndarray, bool]:
    """Colour pixels of wider unsigned integers (a 16-bit RGB or palette DICOM) as 8-bit colour, as every other
    colour image is read (napari shows 8 bits per channel; a 16-bit palette holds 8-bit colours times 257), and
    whether that kept every value (False: rounded)."""
    if data.dtype == np.uint8 or data.dtype.kind != "u":
        return data, True
    top = float(np.iinfo(data.dtype).max)
    scaled = np.rint(data.astype(np.float64) * (255.0 / top)).astype(np.uint8)
    return scaled, bool(np.array_equal(np.rint(scaled * (top / 255.0)), data))
