"""npe2 writers: Image and Labels layers to NIfTI / NRRD / MetaImage with their geometry."""
from __future__ import annotations

import numpy as np

from .io.geometry import Geometry
from .io.write import write_image


def write_single(path: str, data, meta: dict) -> list[str]:
    """Write one layer; napari has already asked the user before overwriting."""
    data = np.asarray(data)
    n = min(data.ndim, 3)
    aff = meta.get("affine")
    matrix = getattr(aff, "affine_matrix", aff)
    geo = Geometry.from_transform(meta.get("scale", (1.0,) * data.ndim),
                                  meta.get("translate", (0.0,) * data.ndim), matrix, ndim=n)
    return [write_image(path, data, geo, overwrite=True)]
