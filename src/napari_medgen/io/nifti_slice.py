"""The place in 3D of a NIfTI colour (vector) slice.

ITK reads a NIfTI vector image (RGB) without its trailing axes of one voxel: a colour
slice of a volume comes back 2D, its z position and slice direction dropped, while a grey
slice reads as the one-slice volume it is.  :func:`vector_slice_geometry` gets that volume's
geometry from the header, by ITK's own rules (the header made a grey one-slice image's).
"""
from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .geometry import Geometry


def vector_slice_geometry(head: bytes) -> "Geometry | None":
    """The 3D geometry of the one-slice NIfTI-1 volume whose header is ``head``; None for other headers and for
    a slice at z = 0 across the z axis, which is as well a 2D image."""
    order = next((e for e in "<>" if len(head) >= 348 and struct.unpack(e + "i", head[:4])[0] == 348), None)
    if order is None:
        return None
    dim = struct.unpack(order + "8h", head[40:56])
    if dim[0] < 3 or dim[3] != 1 or min(dim[1:3]) < 1:
        return None
    grey = bytearray(head[:348])
    grey[40:56] = struct.pack(order + "8h", 3, dim[1], dim[2], 1, 1, 1, 1, 1)
    grey[68:74] = struct.pack(order + "3h", 0, 2, 8)  # no intent, uint8, 8 bits
    grey[108:112] = struct.pack(order + "f", 352.0)  # voxels right after the header, no extensions
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slice.nii"
        path.write_bytes(bytes(grey) + bytes(4 + dim[1] * dim[2]))
        info = sitk.ImageFileReader()
        info.SetFileName(str(path))
        try:
            info.ReadImageInformation()
        except RuntimeError:  # a header ITK refuses (e.g. a sheared affine): the 2D reading stands
            return None
    if info.GetDimension() != 3:
        return None
    direction = np.asarray(info.GetDirection(), float).reshape(3, 3)[::-1, ::-1]
    volume = Geometry(info.GetSpacing()[::-1], info.GetOrigin()[::-1], direction)
    flat = volume.origin[0] == 0 and np.allclose(np.abs(direction[:, 0]), (1, 0, 0))
    return None if flat else volume  # a 2D image (ITK writes one so too) is no slice of anything
