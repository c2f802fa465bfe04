"""Layers in and out: napari layers as arrays/ImageData, results as layers, and a row of controls.

:func:`show_result` is the one place a result becomes a layer: it adds an Image or Labels
layer on the result's geometry, or, when a layer with the same output key is still in the
viewer, replaces that layer's data (its place in the layer list, opacity, visibility and an image's colormap
stay; an image's contrast limits follow the new data).  A labels output the user has painted on since
it was written is never replaced: it becomes the user's layer and the result goes to a new one.
Widgets never call ``viewer.add_image``/``add_labels`` for their outputs; :func:`set_output` writes a
live preview or a re-thresholded mask into one.
"""
from __future__ import annotations

import zlib
from typing import Optional

import numpy as np
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QHBoxLayout, QSpinBox, QWidget

from ..io import Geometry, ImageData

OUTPUT_KEY = "napari_medgen_output"  # metadata key naming which output a layer holds
WRITTEN = "napari_medgen_written"  # metadata key: checksum of the labels the plugin last wrote there


def layer_array(layer) -> np.ndarray:
    """The layer's full-resolution data as a numpy array (the first level of a multiscale layer)."""
    return np.asarray(layer.data[0] if layer.multiscale else layer.data)


def layer_image(layer) -> ImageData:
    """The layer's data with the geometry of its scale/translate/affine (a slice's place in 3D: its metadata)."""
    return ImageData(layer_array(layer), Geometry.from_layer(layer), layer.name,
                     metadata=dict(layer.metadata), rgb=getattr(layer, "rgb", False))


def find_output(viewer, key: str):
    """The layer in ``viewer`` that holds output ``key``, or None."""
    for layer in viewer.layers:
        if layer.metadata.get(OUTPUT_KEY) == key:
            return layer
    return None


def show_result(viewer, data, geometry=None, *, name: str, kind: str = "image", key: Optional[str] = None,
                source=None, colormap=None, class_names: Optional[list] = None, metadata: Optional[dict] = None,
                **layer_kwargs):
    """Add or replace the output layer ``key`` (default: ``name``) and return it.

    ``data`` is an array (napari order) or an :class:`ImageData`; the layer's geometry is
    ``geometry``, else the ImageData's, else that of the ``source`` layer (the input the result
    was computed from).  ``kind`` is "image" or "labels".  ``colormap``: a napari colormap name
    for images, ``{value: color}`` for labels; ``class_names`` become the labels' ``class``
    feature and ``metadata["class_names"]``.  Other keyword arguments (opacity, blending, ...)
    apply only when the layer is first added.
    """
    if isinstance(data, ImageData):
        geometry = geometry or data.geometry
        metadata = {**data.metadata, **(metadata or {})}
        data = data.data
    if geometry is None and source is not None:
        geometry = Geometry.from_layer(source)
    if kind not in ("image", "labels"):
        raise ValueError(f"kind must be 'image' or 'labels', not {kind!r}")
    key = key or name
    meta = {**(metadata or {}), OUTPUT_KEY: key}
    if geometry is not None:  # with a slice's place in 3D, which scale/translate/affine cannot say
        meta["geometry"] = geometry.to_dict()
    style = {}
    if class_names is not None:
        meta["class_names"] = list(class_names)
        style["features"] = {"class": list(class_names)}
    if colormap is not None:
        style["colormap"] = DirectLabelColormap(color_dict=colormap) if isinstance(colormap, dict) else colormap
    place = geometry.layer_kwargs(np.ndim(data)) if geometry is not None else {}
    old = find_output(viewer, key)
    if old is not None and edited(old):
        for k in (OUTPUT_KEY, WRITTEN):
            old.metadata.pop(k, None)
        new = _add(viewer, kind, data, name, meta, {**place, **style, **layer_kwargs})
        show_info(f"'{old.name}' was edited, so it is kept as it is; the new result is '{new.name}'.")
        return new
    if old is not None and (old._type_string != kind or old.ndim != np.ndim(data)):
        index = viewer.layers.index(old)
        viewer.layers.remove(old)
        new = _add(viewer, kind, data, name, meta, {**place, **style, **layer_kwargs})
        viewer.layers.move(viewer.layers.index(new), index)
        return new
    if old is None:
        return _add(viewer, kind, data, name, meta, {**place, **style, **layer_kwargs})
    old.metadata.update(meta)
    set_output(old, data)
    for attr, value in place.items():
        setattr(old, attr, value)
    for attr, value in style.items():
        if not (attr == "colormap" and kind == "image"):  # an image keeps the colormap the user chose
            setattr(old, attr, value)
    if kind == "image" and getattr(data, "dtype", None) != bool:
        old.reset_contrast_limits()
    return old


def set_output(layer, data) -> None:
    """Write ``data`` into an output layer, remembered as the plugin's own (not an edit by the user)."""
    layer.data = data
    if layer._type_string == "labels":
        layer.metadata[WRITTEN] = _checksum(layer.data)


def _checksum(data) -> int:
    return zlib.crc32(np.ascontiguousarray(data))


def edited(layer) -> bool:
    """Whether the user has changed a labels output since the plugin wrote it."""
    written = layer.metadata.get(WRITTEN)
    return written is not None and _checksum(layer_array(layer)) != written


def _add(viewer, kind: str, data, name: str, metadata: dict, kwargs: dict):
    add = viewer.add_labels if kind == "labels" else viewer.add_image
    layer = add(data, name=name, metadata=metadata, **kwargs)
    if kind == "labels":
        layer.metadata[WRITTEN] = _checksum(layer.data)
    return layer


def row(*widgets) -> QWidget:
    """Widgets side by side, without margins (for a form row)."""
    w = QWidget()
    lay = QHBoxLayout(w)
    lay.setContentsMargins(0, 0, 0, 0)
    for x in widgets:
        lay.addWidget(x)
    return w


def spin(lo: int, hi: int, value: int, tip: str = "") -> QSpinBox:
    """An integer box with its range, start value and tooltip."""
    s = QSpinBox()
    s.setRange(lo, hi)
    s.setValue(value)
    s.setToolTip(tip)
    return s


def budget_boxes(steps: int = 300, seconds: int = 180) -> tuple[QSpinBox, QSpinBox]:
    """A training budget as two boxes, "N steps" and "at most S s": training ends at whichever comes first."""
    step_box = spin(1, 100_000, steps, "Training budget in optimizer steps.")
    step_box.setSuffix(" steps")
    time_box = spin(1, 36_000, seconds, "Training stops at this wall time if the steps are not done by then "
                    "(a laptop CPU makes fewer steps per second than a GPU).")
    time_box.setPrefix("at most ")
    time_box.setSuffix(" s")
    return step_box, time_box
