"""npe2 reader: NIfTI, NRRD, MetaImage, DICOM files and DICOM series folders, and 2D pictures (PNG, JPEG, TIFF)
when the user picks this reader for them (napari's own reader opens them too, so napari asks which)."""
from __future__ import annotations

import os
import warnings

from napari.utils.notifications import show_warning

from .data.orientation import in_world_order
from .io.read import ImageReadError, ImageReadWarning, is_supported, read_path
from .naming import PICTURES


def get_reader(path):
    """Return a reader for supported paths, else None so napari can try other readers."""
    paths = path if isinstance(path, list) else [path]
    if not all(isinstance(p, (str, os.PathLike)) and (is_supported(p) or str(p).lower().endswith(PICTURES))
               for p in paths):
        return None
    return read_layers


def read_layers(path) -> list:
    """Read each path into LayerData tuples; an unreadable file raises one clear sentence."""
    paths = path if isinstance(path, list) else [path]
    layers = []
    for p in paths:
        with warnings.catch_warnings(record=True) as caught:  # skipped series, regularised slices
            warnings.simplefilter("always", ImageReadWarning)
            items = read_path(p)
        for w in caught:
            if issubclass(w.category, ImageReadWarning):
                show_warning(str(w.message))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        for item in items:
            if item.data.ndim > item.geometry.ndim + (1 if item.rgb else 0) and "time_step" not in item.metadata:
                show_warning(f"{item.name}: {item.data.ndim}D data, the leading axis is shown as a slider.")
            layers.append(in_world_order(item).layer_data())  # a sagittal-first volume shown axial-first
    return layers


__all__ = ["get_reader", "read_layers", "ImageReadError"]
