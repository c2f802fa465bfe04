"""npe2 writers: Image and Labels layers to NIfTI / NRRD / MetaImage with their geometry."""
from __future__ import annotations

import numpy as np

from .io.geometry import Geometry
from .io.timeseries import is_time_series, time_step, write_time_series
from .io.write import write_image


def write_single(path: str, data, meta: dict) -> list[str]:
    """Write one layer; napari has already asked the user before overwriting."""
    data = np.asarray(data)
    aff = meta.get("affine")
    matrix = getattr(aff, "affine_matrix", aff)
    if is_time_series(meta.get("metadata"), meta.get("axis_labels")):  # (t, ...): time as the 4th axis
        geo = Geometry.from_transform(meta.get("scale", (1.0,) * data.ndim), meta.get("translate", (0.0,) * data.ndim),
                                      matrix, ndim=data.ndim - 1)
        return [write_time_series(path, data, geo, time_step(meta.get("metadata"))[0], overwrite=True)]
    rgb = bool(meta.get("rgb"))  # (y, x, channels): a colour image of 2D geometry
    n = min(data.ndim - rgb, 3)
    geo = Geometry.from_transform(meta.get("scale", (1.0,) * n), meta.get("translate", (0.0,) * n), matrix, ndim=n)
    geo = geo.placed((meta.get("metadata") or {}).get("geometry"))  # a slice's place in 3D
    return [write_image(path, data, geo, overwrite=True, rgb=rgb)]
