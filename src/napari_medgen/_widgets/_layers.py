"""Reading napari layers into arrays and ImageData, and laying out a row of controls."""
from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QHBoxLayout, QWidget

from ..io import Geometry, ImageData


def layer_array(layer) -> np.ndarray:
    """The layer's full-resolution data as a numpy array (the first level of a multiscale layer)."""
    return np.asarray(layer.data[0] if layer.multiscale else layer.data)


def layer_image(layer) -> ImageData:
    """The layer's data with the geometry of its scale/translate/affine."""
    return ImageData(layer_array(layer), Geometry.from_layer(layer), layer.name,
                     metadata=dict(layer.metadata), rgb=getattr(layer, "rgb", False))


def row(*widgets) -> QWidget:
    """Widgets side by side, without margins (for a form row)."""
    w = QWidget()
    lay = QHBoxLayout(w)
    lay.setContentsMargins(0, 0, 0, 0)
    for x in widgets:
        lay.addWidget(x)
    return w
