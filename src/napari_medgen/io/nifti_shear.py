"""NIfTI files whose affine is sheared, which ITK refuses to read ("ITK only supports orthonormal direction
cosines"): typically a gantry-tilted CT converted without correcting the tilt, whose slices are offset in-plane
from one another.  Read as dcm2niix reads such a DICOM series: the slices keep their in-plane axes and are
shifted onto a rectangular grid whose slice axis is their normal (spacing along the normal), with a note.  The
user's file is only read (a corrected copy of its header is read by ITK from a temporary folder)."""
from __future__ import annotations

import gzip
import struct
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.linalg import polar

NIFTI1 = 348


def is_shear_error(err: Exception) -> bool:
    return "orthonormal" in str(err)


def read_sheared(path: Path) -> tuple[sitk.Image, str]:
    """The image on a rectangular grid and a sentence saying what was done (RuntimeError when the file is
    not a NIfTI-1 file with an sform)."""
    raw = _bytes(path)
    end = next((e for e in "<>" if struct.unpack(e + "i", raw[:4])[0] == NIFTI1), None)
    if end is None or struct.unpack(end + "h", raw[254:256])[0] <= 0:
        raise RuntimeError("not a NIfTI-1 file with an sform")
    rows = np.array(struct.unpack(end + "12f", raw[280:328]), float).reshape(3, 4)
    affine = rows[:, :3]  # columns: the steps (mm, RAS) of the i, j, k voxel indices
    sizes = np.linalg.norm(affine[:, :2], axis=0)
    inplane = polar(affine[:, :2] / sizes)[0]  # the in-plane axes, squared if they were not
    normal = np.cross(inplane[:, 0], inplane[:, 1])
    qfac = 1.0 if normal @ affine[:, 2] > 0 else -1.0
    step = abs(normal @ affine[:, 2])  # slice spacing along the normal
    header = bytearray(raw[:NIFTI1])
    header[76:92] = struct.pack(end + "4f", qfac, *sizes, step)
    header[252:256] = struct.pack(end + "2h", max(1, struct.unpack(end + "h", raw[254:256])[0]), 0)
    header[256:280] = struct.pack(end + "6f", *_quaternion(np.column_stack([inplane, normal])), *rows[:, 3])
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "image.nii"
        copy.write_bytes(bytes(header) + raw[NIFTI1:])
        image = sitk.ReadImage(str(copy))
    drift = affine[:, 2] - qfac * step * normal  # each slice's in-plane offset from the one before (mm)
    shift = np.array([drift @ inplane[:, 1] / sizes[1], drift @ inplane[:, 0] / sizes[0]])  # (rows, columns)
    degrees = float(np.degrees(np.arctan2(np.linalg.norm(drift), step)))
    if np.abs(shift).max() * max(image.GetSize()[2] - 1, 0) > 0.1 and image.GetNumberOfComponentsPerPixel() == 1:
        image = _unshear(image, shift)
    return image, (f"{path.name}: its header's voxel axes are not at right angles (slices sheared by "
                   f"{degrees:.1f} degrees, as by a gantry tilt), so the slices were shifted onto a rectangular "
                   f"grid (as dcm2niix does).")


def _unshear(image: sitk.Image, shift: np.ndarray) -> sitk.Image:
    """Slice k moved by k x ``shift`` pixels (rows, columns), linear; integers rounded back, the minimum outside."""
    arr = sitk.GetArrayFromImage(image)
    frames = arr.reshape((-1,) + arr.shape[-3:])  # a 4D file's time points, each a volume
    fill = float(arr.min())
    out = np.empty_like(frames)
    for t, volume in enumerate(frames):
        for k, plane in enumerate(volume):
            moved = ndimage.shift(plane.astype(np.float64), k * shift, order=1, mode="grid-constant", cval=fill)
            out[t, k] = np.rint(moved) if arr.dtype.kind in "iu" else moved
    result = sitk.GetImageFromArray(out.reshape(arr.shape))
    result.CopyInformation(image)
    return result


def _bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _quaternion(r: np.ndarray) -> tuple[float, float, float]:
    """NIfTI's (b, c, d) of a proper rotation (a = sqrt(1 - b^2 - c^2 - d^2) >= 0)."""
    a = 0.5 * np.sqrt(max(0.0, 1.0 + np.trace(r)))
    if a > 1e-3:
        return tuple(float(v) / (4 * a) for v in (r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]))
    i = int(np.argmax(np.diag(r)))  # a half turn: from the largest diagonal element
    j, k = (i + 1) % 3, (i + 2) % 3
    q = np.zeros(3)
    q[i] = 0.5 * np.sqrt(max(0.0, 1.0 + r[i, i] - r[j, j] - r[k, k]))
    q[j], q[k] = (r[j, i] + r[i, j]) / (4 * q[i]), (r[k, i] + r[i, k]) / (4 * q[i])
    sign = 1.0 if (r[k, j] - r[j, k]) >= 0 else -1.0
    return tuple(float(v) * sign for v in q)
