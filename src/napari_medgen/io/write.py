"""Writing arrays with geometry to NIfTI, NRRD or MetaImage."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .geometry import Geometry
from ..atomic import in_users_names, replacing
from ..errors import UserError

WRITE_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def write_image(path: "str | os.PathLike", data: np.ndarray, geometry: Geometry | None = None,
                *, overwrite: bool = False, rgb: bool = False) -> str:
    """Write ``data`` (napari axis order) with ``geometry``; refuses to overwrite unless asked.

    2D data (grey or colour) on the grid of a slice read from a one-slice volume is written as that one-slice volume.
    ``rgb``: the last axis holds 8-bit colour channels (RGB or RGBA), written as a colour image the reader
    opens as RGB again.

    The file (and the data file beside a .mhd/.nhdr header) is written under a temporary folder first and
    moved in place, so a failure never leaves a half-written file behind.
    """
    p = Path(path).expanduser()
    if not str(p).lower().endswith(WRITE_EXTENSIONS):
        raise UserError(f"Cannot write {p.name}: use one of {', '.join(WRITE_EXTENSIONS)}.")
    check_writable(p, overwrite)
    given = np.asarray(data)
    arr = storable(given, p.name)
    if rgb and (given.dtype != np.uint8 or arr.shape[-1] not in (3, 4)):
        raise UserError(f"Cannot write {p.name}: RGB layers are saved with 3 or 4 channels of 8-bit values "
                        f"(this one has {arr.shape[-1]} of {given.dtype}).")
    if arr.dtype == np.int64 and arr.size and arr.min() >= 0 and arr.max() < 65536:
        arr = arr.astype(np.uint16 if arr.max() > 255 else np.uint8)
    geo = geometry or Geometry.identity(arr.ndim - rgb)
    arr, geo = geo.as_volume(arr, rgb)  # a slice goes back to its place in 3D
    if arr.ndim - rgb != geo.ndim:
        raise UserError(f"Cannot write a {arr.ndim - rgb}D {'RGB ' if rgb else ''}array with {geo.ndim}D geometry.")
    img = sitk.GetImageFromArray(arr, isVector=rgb)
    geo.apply_to_sitk(img)
    try:
        with replacing(p, folder=True) as tmp:  # check_writable refused an existing file
            sitk.WriteImage(img, str(tmp / p.name), True)
    except (OSError, RuntimeError) as err:
        said = (in_users_names(str(err), p).strip().splitlines() or [type(err).__name__])[-1][:200]
        raise UserError(f"Cannot write {p}: {said}") from None
    return str(p)


def storable(arr: np.ndarray, name: str) -> np.ndarray:
    """``arr`` in a type every format here stores (bool as uint8, float16 as float32); one sentence for values
    that are no numbers."""
    if arr.dtype.kind not in "biuf":
        raise UserError(f"Cannot write {arr.dtype} values to {name}; images hold numbers.")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype == np.float16:  # no file format here stores half floats
        return arr.astype(np.float32)
    return arr


def check_writable(path: "str | os.PathLike", overwrite: bool = False) -> None:
    """Refuse, before any computation, an output that exists (unless ``overwrite``) or cannot be written."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"Cannot write {p}: it is a folder; give a file name.")
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} already exists; not overwriting it.")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"Cannot write {p}: {folder} is a file, not a folder.")
    try:  # os.access says yes to root on a read-only file system; a real file says the truth
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        raise UserError(f"Cannot write {p}: the folder {folder} is not writable.") from None
