"""Layers in and out: napari layers as arrays/ImageData, results as layers, and a row of controls.

:func:`show_result` is the one place a result becomes a layer: it adds an Image or Labels
layer on the result's geometry, or, when a layer with the same output key is still in the
viewer, replaces that layer's data (its place in the layer list, opacity and visibility
stay; an image's contrast limits follow the new data).  Widgets never call ``viewer.add_image``/``add_labels`` for their outputs.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtWidgets import QHBoxLayout, QSpinBox, QWidget

from ..io import Geometry, ImageData

OUTPUT_KEY = "napari_medgen_output"  # metadata key naming which output a layer holds


def layer_array(layer) -> np.ndarray:
    """The layer's full-resolution data as a numpy array (the first level of a multiscale layer)."""
    return np.asarray(layer.data[0] if layer.multiscale else layer.data)


def layer_image(layer) -> ImageData:
    """The layer's data with the geometry of its scale/translate/affine."""
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
    style = {}
    if class_names is not None:
        meta["class_names"] = list(class_names)
        style["features"] = {"class": list(class_names)}
    if colormap is not None:
        style["colormap"] = DirectLabelColormap(color_dict=colormap) if isinstance(colormap, dict) else colormap
    place = geometry.layer_kwargs(np.ndim(data)) if geometry is not None else {}
    old = find_output(viewer, key)
    if old is not None and (old._type_string != kind or old.ndim != np.ndim(data)):
        index = viewer.layers.index(old)
        viewer.layers.remove(old)
        new = _add(viewer, kind, data, name, meta, {**place, **style, **layer_kwargs})
        viewer.layers.move(viewer.layers.index(new), index)
        return new
    if old is None:
        return _add(viewer, kind, data, name, meta, {**place, **style, **layer_kwargs})
    old.data = data
    for attr, value in place.items():
        setattr(old, attr, value)
    for attr, value in style.items():
        setattr(old, attr, value)
    old.metadata.update(meta)
    if kind == "image" and getattr(data, "dtype", None) != bool:
        old.reset_contrast_limits()
    return old


def _add(viewer, kind: str, data, name: str, metadata: dict, kwargs: dict):
    add = viewer.add_labels if kind == "labels" else viewer.add_image
    return add(data, name=name, metadata=metadata, **kwargs)


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
