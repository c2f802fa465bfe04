"""How an image layer first looks: the file's DICOM display window, else a soft-tissue window for CT
(napari's default, the full value range, shows a head CT's brain as one flat grey between air and bone)."""
from __future__ import annotations

from ..data.normalize import apparent_modality

CT_SOFT_TISSUE = (-160.0, 240.0)  # level 40 HU, width 400 HU


def dicom_window(center: str, width: str) -> tuple[float, float] | None:
    """(low, high) from Window Center / Width tag values (the first of several), None if absent or unusable."""
    try:
        c, w = float(center.split("\\")[0]), float(width.split("\\")[0])
    except ValueError:
        return None
    return (c - w / 2, c + w / 2) if w >= 1 else None


def initial_contrast(item) -> tuple[float, float] | None:
    """Contrast limits for a new layer of ``item`` (an ImageData), or None for napari's own."""
    if item.kind != "image" or item.rgb:
        return None
    if item.metadata.get("window"):
        return tuple(float(v) for v in item.metadata["window"])
    if apparent_modality(item.data, item.metadata.get("modality")) == "CT":
        return CT_SOFT_TISSUE
    return None
