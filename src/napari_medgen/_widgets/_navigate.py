"""Moving the viewer to a slice of one layer, whatever the other layers' extra leading axes (time, channels)."""
from __future__ import annotations

import numpy as np


def go_to_slice(viewer, layer, axis: int, index: int) -> None:
    """Show slice ``index`` along ``layer``'s data axis ``axis`` (through the middle of its other axes).

    napari right-aligns the layers' axes: with a 4D layer open, a volume's axis 0 is the viewer's axis 1.
    """
    point = np.asarray(layer.extent.data, float).mean(0)
    point[axis] = index
    world = np.asarray(layer.data_to_world(point), float)
    viewer.dims.set_point(viewer.dims.ndim - layer.ndim + axis, float(world[axis]))
